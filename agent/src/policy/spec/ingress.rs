//! The shapes of a MeshPolicy's `ingress` section (validated in `policy/ingress.rs`).

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::http::SecretRefSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressSpec {
    pub tls: Option<Spanned<IngressTlsSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressTlsSpec {
    pub certificates: Vec<Spanned<CertificateSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_ref: Spanned<SecretRefSpec>,
}
