//! The shapes of a MeshPolicy's `http.waf` section (validated in `policy/waf.rs`).

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WafSpec {
    pub mode: Option<Spanned<String>>,
    pub paranoia_level: Option<Spanned<u8>>,
    pub inbound_anomaly_threshold: Option<Spanned<u32>>,
    #[serde(default)]
    pub exclude_rules: Vec<Spanned<u32>>,
    #[serde(default)]
    pub exclude_tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub extra_rules: Vec<Spanned<ExtraRulesSpec>>,
    pub request_body: Option<Spanned<RequestBodySpec>>,
    pub on_engine_error: Option<Spanned<String>>,
    pub response_body: Option<Spanned<ResponseBodySpec>>,
    pub outbound_anomaly_threshold: Option<Spanned<u32>>,
    pub audit_log: Option<Spanned<AuditLogSpec>>,
    pub block_page: Option<Spanned<BlockPageSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockPageSpec {
    pub status: Option<Spanned<u16>>,
    pub content_type: Option<Spanned<String>>,
    pub body: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditLogSpec {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
    pub parts: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBodySpec {
    pub inspect: Option<bool>,
    pub limit: Option<Spanned<usize>>,
    pub over_limit: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraRulesSpec {
    pub inline: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestBodySpec {
    pub inspect: Option<bool>,
    pub limit: Option<Spanned<usize>>,
    pub over_limit: Option<Spanned<String>>,
}
