//! The shapes of a MeshPolicy's `http.waf` section (validated in `policy/waf.rs`).

use crate::policy::spec::compact::Spanned;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WafSpec {
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    #[schemars(with = "Option<u8>")]
    pub paranoia_level: Option<Spanned<u8>>,
    #[schemars(with = "Option<u32>")]
    pub inbound_anomaly_threshold: Option<Spanned<u32>>,
    #[serde(default)]
    #[schemars(with = "Vec<u32>")]
    pub exclude_rules: Vec<Spanned<u32>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub exclude_tags: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<ExtraRulesSpec>")]
    pub extra_rules: Vec<Spanned<ExtraRulesSpec>>,
    #[schemars(with = "Option<RequestBodySpec>")]
    pub request_body: Option<Spanned<RequestBodySpec>>,
    #[schemars(with = "Option<String>")]
    pub on_engine_error: Option<Spanned<String>>,
    #[schemars(with = "Option<ResponseBodySpec>")]
    pub response_body: Option<Spanned<ResponseBodySpec>>,
    #[schemars(with = "Option<u32>")]
    pub outbound_anomaly_threshold: Option<Spanned<u32>>,
    #[schemars(with = "Option<AuditLogSpec>")]
    pub audit_log: Option<Spanned<AuditLogSpec>>,
    #[schemars(with = "Option<BlockPageSpec>")]
    pub block_page: Option<Spanned<BlockPageSpec>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockPageSpec {
    #[schemars(with = "Option<u16>")]
    pub status: Option<Spanned<u16>>,
    #[schemars(with = "Option<String>")]
    pub content_type: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub body: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditLogSpec {
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub format: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub parts: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBodySpec {
    pub inspect: Option<bool>,
    #[schemars(with = "Option<usize>")]
    pub limit: Option<Spanned<usize>>,
    #[schemars(with = "Option<String>")]
    pub over_limit: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraRulesSpec {
    pub inline: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestBodySpec {
    pub inspect: Option<bool>,
    #[schemars(with = "Option<usize>")]
    pub limit: Option<Spanned<usize>>,
    #[schemars(with = "Option<String>")]
    pub over_limit: Option<Spanned<String>>,
}
