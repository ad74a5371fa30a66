//! The shapes of a MeshPolicy's `http.dlp` section (validated in `policy/dlp.rs`).

use crate::policy::spec::compact::Spanned;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DlpSpec {
    #[serde(default)]
    pub shadow: bool,
    /// Detectors on responses.
    #[serde(default)]
    #[schemars(with = "Vec<DetectorSpec>")]
    pub detectors: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub response_headers: Vec<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub compressed: Option<Spanned<String>>,
    #[schemars(with = "Option<RequestsSpec>")]
    pub requests: Option<Spanned<RequestsSpec>>,
}

/// Detectors on requests.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestsSpec {
    #[schemars(with = "Vec<DetectorSpec>")]
    pub detectors: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub headers: Vec<Spanned<String>>,
    #[schemars(with = "Option<usize>")]
    pub body_limit: Option<Spanned<usize>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectorSpec {
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// A custom detector's name (its metric label).
    pub name: Option<String>,
    /// A custom detector's pattern.
    pub pattern: Option<String>,
    #[schemars(with = "String")]
    pub action: Spanned<String>,
    pub keep_last: Option<usize>,
    #[schemars(with = "Option<String>")]
    pub mask_with: Option<Spanned<String>>,
}
