//! The shapes of a MeshPolicy's `ingress` section (validated in `policy/ingress.rs`).

use crate::policy::spec::compact::Spanned;
use serde::Deserialize;

use super::http::SecretRefSpec;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressSpec {
    #[schemars(with = "Option<IngressTlsSpec>")]
    pub tls: Option<Spanned<IngressTlsSpec>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressTlsSpec {
    #[schemars(with = "Vec<CertificateSpec>")]
    pub certificates: Vec<Spanned<CertificateSpec>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    #[schemars(with = "SecretRefSpec")]
    pub secret_ref: Spanned<SecretRefSpec>,
}
