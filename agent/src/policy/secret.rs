//! Secrets as the policy set carries them (Kubernetes `v1 Secret`): their entries, decoded,
//! for the sections that name them (API keys, ingress certificates). Entries never appear in
//! diagnostics or `Debug` output.

use std::collections::BTreeMap;

use super::diag::Diagnostic;
use super::source::SourceObject;
use super::spec::objects::Secret;

/// The label a Secret needs for the agent to read it from the Kubernetes API: agents never
/// list every Secret of the cluster (a node agent holding every credential in memory is a
/// target); a policy that names a Secret without it reads as naming a missing Secret.
pub const SECRET_LABEL: &str = "rampart.dev/secret";

/// Said where a policy names a Secret that is not there.
pub const LABEL_HINT: &str =
    "from the Kubernetes API, only Secrets labelled rampart.dev/secret are read";

/// A Secret's entries (name → bytes), never printed.
#[derive(Clone)]
pub struct SecretModel {
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SecretModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretModel")
            .field("entries", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Validates a Secret: `data` values must be base64; `stringData` wins over `data` for a name
/// in both (as the API server merges them).
pub fn secret(so: &SourceObject, raw: &Secret, diags: &mut Vec<Diagnostic>) -> Option<SecretModel> {
    use base64::Engine as _;
    let mut entries = BTreeMap::new();
    let mut ok = true;
    for (name, value) in &raw.data {
        match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            Ok(bytes) => {
                entries.insert(name.clone(), bytes);
            }
            Err(_) => {
                // The value itself is never echoed.
                diags.push(Diagnostic::error(
                    so.whole(),
                    format!("Secret data.{name}: not base64"),
                ));
                ok = false;
            }
        }
    }
    for (name, value) in &raw.string_data {
        entries.insert(name.clone(), value.as_bytes().to_vec());
    }
    ok.then_some(SecretModel { entries })
}

/// The PEM of `ca.crt` in the Secret `(namespace, name)`, holding at least one certificate (a
/// `caSecretRef`: the CAs a server the proxy asks must chain to). `field` names the reference
/// in the error, which is placed at `origin`.
pub fn ca_bundle(
    secrets: &BTreeMap<(String, String), SecretModel>,
    (namespace, name): &(String, String),
    field: &str,
    origin: &super::diag::Origin,
) -> Result<Vec<u8>, Diagnostic> {
    use rustls_pki_types::pem::PemObject as _;
    let error = |message: String| Diagnostic::error(origin.clone(), message);
    let Some(secret) = secrets.get(&(namespace.clone(), name.clone())) else {
        return Err(error(format!(
            "{field}: no Secret {namespace}/{name} in the policy set ({LABEL_HINT})"
        )));
    };
    let Some(pem) = secret.entries.get("ca.crt") else {
        return Err(error(format!("Secret {namespace}/{name}: no entry ca.crt")));
    };
    // Every block must parse, and one at least must be there.
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_or(0, |certs| certs.len());
    if certificates == 0 {
        return Err(error(format!(
            "Secret {namespace}/{name}, ca.crt: no PEM certificate"
        )));
    }
    Ok(pem.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hint_names_the_label() {
        assert!(super::LABEL_HINT.contains(super::SECRET_LABEL));
    }
}
