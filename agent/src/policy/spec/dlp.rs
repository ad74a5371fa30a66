//! The shapes of a MeshPolicy's `http.dlp` section (validated in `policy/dlp.rs`).

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DlpSpec {
    #[serde(default)]
    pub shadow: bool,
    /// Detectors on responses.
    #[serde(default)]
    pub detectors: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    pub response_headers: Vec<Spanned<String>>,
    pub compressed: Option<Spanned<String>>,
    pub requests: Option<Spanned<RequestsSpec>>,
}

/// Detectors on requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestsSpec {
    pub detectors: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    pub body_limit: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectorSpec {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// A custom detector's name (its metric label).
    pub name: Option<String>,
    /// A custom detector's pattern.
    pub pattern: Option<String>,
    pub action: Spanned<String>,
    pub keep_last: Option<usize>,
    pub mask_with: Option<Spanned<String>>,
}
