//! The `ingress` section of a MeshPolicy: traffic from outside the cluster (`world`, or an
//! ipBlock's addresses) to the selected ports is redirected by the kernel at the node's uplink to
//! the local proxy, which runs the port's `http` chain on it (authentication, authorization, rate
//! limits), and can terminate TLS for it first with server certificates from `kubernetes.io/tls`
//! Secrets, chosen by the client's SNI, as an API gateway would.
//!
//! ```yaml
//! ingress:
//!   tls:                       # absent: plaintext from outside, through the same chain
//!     certificates:            # by SNI (exact name, then `*.` wildcard); else the first one
//!     - secretRef: {namespace: shop, name: api-tls}   # data: tls.crt (chain), tls.key
//! ```
//!
//! The Secrets are parsed when the policy set is checked: a missing Secret, a PEM that does not
//! parse, or a key that does not match its certificate is an error at the `secretRef`, and the
//! last good set stays in force.

use std::sync::Arc;

use crate::policy::spec::compact::Spanned;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::diag::{Diagnostic, Origin};
use super::secret::SecretModel;
use super::source::SourceObject;
use super::spec::ingress::IngressSpec;

/// The Secret entries of a `kubernetes.io/tls` Secret.
const CERT_ENTRY: &str = "tls.crt";
const KEY_ENTRY: &str = "tls.key";
/// Certificates per policy: SNI selection is a linear scan.
const MAX_CERTIFICATES: usize = 64;

/// Ingress as the proxy runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressModel {
    /// `None`: plaintext from outside.
    pub tls: Option<Vec<ServerCertificate>>,
}

/// One server certificate, from a Secret.
#[derive(Clone)]
pub struct ServerCertificate {
    /// The Secret's namespace and name.
    pub secret: (String, String),
    pub origin: Origin,
    /// The leaf's subjectAltName DNS names, lowercase (`*.example.com` kept as a wildcard).
    pub names: Vec<String>,
    /// The chain and its key, once the Secret is resolved.
    pub key: Option<Arc<CertifiedKey>>,
}

impl PartialEq for ServerCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret && self.names == other.names && {
            let cert = |c: &ServerCertificate| c.key.as_ref().map(|k| k.cert.clone());
            cert(self) == cert(other)
        }
    }
}

impl Eq for ServerCertificate {}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerCertificate")
            .field("secret", &self.secret)
            .field("names", &self.names)
            .field("resolved", &self.key.is_some())
            .finish()
    }
}

/// Validates the section's shape (the Secrets are resolved later, see [`resolve_secrets`]).
pub fn validate(
    so: &SourceObject,
    raw: &Spanned<IngressSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<IngressModel> {
    let Some(tls) = &raw.value.tls else {
        return Some(IngressModel { tls: None });
    };
    let refs = &tls.value.certificates;
    if refs.is_empty() {
        diags.push(Diagnostic::error(
            so.at(tls),
            "ingress.tls.certificates: at least one (a kubernetes.io/tls Secret)",
        ));
        return None;
    }
    if refs.len() > MAX_CERTIFICATES {
        diags.push(Diagnostic::error(
            so.at(tls),
            format!("ingress.tls.certificates: at most {MAX_CERTIFICATES}"),
        ));
        return None;
    }
    let mut ok = true;
    let mut certificates = Vec::new();
    for cert in refs {
        let secret_ref = &cert.value.secret_ref;
        if !crate::dns_name::is_dns_label(&secret_ref.value.namespace)
            || !crate::dns_name::is_dns_subdomain(&secret_ref.value.name)
        {
            diags.push(Diagnostic::error(
                so.at(secret_ref),
                "secretRef: namespace and name of a Secret",
            ));
            ok = false;
            continue;
        }
        certificates.push(ServerCertificate {
            secret: (
                secret_ref.value.namespace.clone(),
                secret_ref.value.name.clone(),
            ),
            origin: so.at(secret_ref),
            names: Vec::new(),
            key: None,
        });
    }
    ok.then_some(IngressModel {
        tls: Some(certificates),
    })
}

/// Fills the ingress certificates from the Secrets they name; errors at the `secretRef`.
pub fn resolve_certificates(
    ingress: &mut IngressModel,
    secrets: &std::collections::BTreeMap<(String, String), SecretModel>,
    diags: &mut Vec<Diagnostic>,
) {
    for cert in ingress.tls.iter_mut().flatten() {
        let (ns, name) = &cert.secret;
        let Some(secret) = secrets.get(&cert.secret) else {
            diags.push(Diagnostic::error(
                cert.origin.clone(),
                format!(
                    "ingress.tls: no Secret {ns}/{name} in the policy set ({})",
                    crate::policy::secret::LABEL_HINT
                ),
            ));
            continue;
        };
        match load(secret) {
            Ok((key, names)) => {
                if names.is_empty() {
                    diags.push(Diagnostic::warning(
                        cert.origin.clone(),
                        format!(
                            "Secret {ns}/{name}: the certificate names no DNS subjectAltName; it is served only when no other certificate matches the client's SNI"
                        ),
                    ));
                }
                cert.key = Some(Arc::new(key));
                cert.names = names;
            }
            Err(problem) => diags.push(Diagnostic::error(
                cert.origin.clone(),
                format!("Secret {ns}/{name}: {problem}"),
            )),
        }
    }
}

/// The chain and key of a `kubernetes.io/tls` Secret, checked to belong together, and the leaf's
/// DNS names. The problem is described without any of the Secret's bytes.
fn load(secret: &SecretModel) -> Result<(CertifiedKey, Vec<String>), String> {
    let entry = |name: &str| {
        secret.entries.get(name).ok_or_else(|| {
            format!("no {name} (a kubernetes.io/tls Secret has {CERT_ENTRY} and {KEY_ENTRY})")
        })
    };
    let chain = CertificateDer::pem_slice_iter(entry(CERT_ENTRY)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{CERT_ENTRY} is not PEM certificates"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{CERT_ENTRY} holds no certificate"));
    };
    let names = dns_names(leaf).ok_or_else(|| format!("{CERT_ENTRY}: not an X.509 certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(entry(KEY_ENTRY)?)
        .map_err(|_| format!("{KEY_ENTRY} is not a PEM private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{KEY_ENTRY} is not the key of the certificate in {CERT_ENTRY}")
        }
        _ => format!("{KEY_ENTRY}: an unsupported key (RSA, ECDSA P-256/P-384 or Ed25519)"),
    })?;
    Ok((certified, names))
}

/// The subjectAltName DNS names of a certificate, lowercase; `None` if it does not parse.
fn dns_names(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, &[u8])]) -> SecretModel {
        SecretModel {
            entries: entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect(),
        }
    }

    fn certificate(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A policy set: pod `api`, a MeshPolicy on its port 8443 with `ingress`, and `secrets`.
    fn policy_set(ingress: &str, secrets: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: api, namespace: shop, labels: {{app: api}}}}\nspec: {{containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.0.0.5}}\n---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: api-ingress}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: api}}}}}}\n  ports: [{{port: 8443}}]\n  ingress: {ingress}\n{secrets}"
        )
    }

    fn tls_secret(name: &str, cert: &str, key: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: shop}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
            b64(cert),
            b64(key)
        )
    }

    fn check(text: &str) -> Result<crate::policy::Checked, Vec<String>> {
        crate::policy::check(crate::policy::source::parse_str(
            std::path::Path::new("t.yaml"),
            text,
        ))
        .map_err(|diags| {
            diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| format!("{}:{}: {}", d.origin.pos.line, d.origin.pos.col, d.message))
                .collect()
        })
    }

    #[test]
    fn an_ingress_port_is_flagged_for_the_kernel_with_its_certificates() {
        use rampart_common::mesh::MeshFlags;
        let (cert, key) = certificate(&["api.shop.test"]);
        let text = policy_set(
            "{tls: {certificates: [{secretRef: {namespace: shop, name: api-tls}}]}}",
            &tls_secret("api-tls", &cert, &key),
        );
        let checked = check(&text).expect("valid");
        let compiled = crate::policy::compile::compile_all_local(&checked.model, "cluster.local");
        let route = &compiled.mesh[0];
        assert_eq!(route.ingress_policy.as_deref(), Some("api-ingress"));
        let certs = route
            .ingress
            .as_ref()
            .and_then(|i| i.tls.as_ref())
            .expect("tls");
        assert_eq!(certs[0].names, ["api.shop.test"]);
        assert!(certs[0].key.is_some());
        let flags = compiled.state.mesh[0].1.flags;
        assert_eq!(flags, MeshFlags::REQUIRE_MTLS | MeshFlags::INGRESS);

        // Plaintext ingress: no Secret needed.
        let plain = check(&policy_set("{}", "")).expect("valid");
        let compiled = crate::policy::compile::compile_all_local(&plain.model, "cluster.local");
        assert_eq!(
            compiled.mesh[0].ingress.as_ref().map(|i| i.tls.is_none()),
            Some(true)
        );
    }

    #[test]
    fn bad_ingress_sections_are_errors_at_their_place() {
        let (cert, key) = certificate(&["api.shop.test"]);
        let (_, other_key) = certificate(&["other.test"]);
        let one_ref = "{tls: {certificates: [{secretRef: {namespace: shop, name: api-tls}}]}}";
        for (ingress, secrets, expected) in [
            (
                one_ref,
                String::new(),
                "13:46: ingress.tls: no Secret shop/api-tls",
            ),
            (
                one_ref,
                tls_secret("api-tls", &cert, &other_key),
                "13:46: Secret shop/api-tls: tls.key is not the key of the certificate",
            ),
            (
                "{tls: {certificates: []}}",
                String::new(),
                "13:18: ingress.tls.certificates: at least one",
            ),
            (
                "{tls: {certificates: [{secretRef: {namespace: Shop, name: x}}]}}",
                String::new(),
                "13:46: secretRef: namespace and name",
            ),
            ("{mode: gateway}", String::new(), "unknown field"),
        ] {
            let errors = check(&policy_set(ingress, &secrets)).expect_err(expected);
            assert!(
                errors.len() == 1 && errors[0].contains(expected),
                "{ingress}: {errors:?} should say {expected:?}"
            );
            assert!(!errors[0].contains(&key[..30]), "the key is never echoed");
        }
    }

    /// The example in `policies/mesh/`, with the workloads it selects, is a valid set whose
    /// frontend port takes ingress with the example certificate.
    #[test]
    fn the_example_ingress_policy_checks() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let text = ["workloads.yaml", "mesh/frontend-ingress.yaml"]
            .map(|f| std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
            .join("---\n");
        let checked = check(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let compiled = crate::policy::compile::compile_all_local(&checked.model, "cluster.local");
        let route = compiled
            .mesh
            .iter()
            .find(|r| r.ingress_policy.as_deref() == Some("frontend-ingress"))
            .unwrap_or_else(|| panic!("no ingress route"));
        assert_eq!(route.port, 8080);
        let waf = route.http.as_ref().and_then(|h| h.waf.as_ref());
        assert!(waf.is_some_and(|w| w.block && w.profile.paranoia_level == 1));
        let certs = route.ingress.as_ref().and_then(|i| i.tls.as_ref());
        assert_eq!(
            certs.map(|c| c[0].names.clone()),
            Some(vec!["shop.example.com".into(), "*.shop.example.com".into()])
        );
    }

    #[test]
    fn a_tls_secret_loads_with_its_dns_names() {
        let (cert, key) = certificate(&["API.shop.test", "*.shop.test"]);
        let (certified, names) = load(&secret(&[
            ("tls.crt", cert.as_bytes()),
            ("tls.key", key.as_bytes()),
        ]))
        .expect("loads");
        assert_eq!(names, ["api.shop.test", "*.shop.test"]);
        assert_eq!(certified.cert.len(), 1);
    }

    #[test]
    fn bad_tls_secrets_are_named_without_their_bytes() {
        let (cert, key) = certificate(&["api.shop.test"]);
        let (_, other_key) = certificate(&["other.test"]);
        type Entries<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Entries, &str); 5] = [
            (&[("tls.key", key.as_bytes())], "no tls.crt"),
            (&[("tls.crt", cert.as_bytes())], "no tls.key"),
            (
                &[("tls.crt", b"garbage"), ("tls.key", key.as_bytes())],
                "holds no certificate",
            ),
            (
                &[
                    ("tls.crt", cert.as_bytes()),
                    ("tls.key", b"-----BEGIN NOTHING"),
                ],
                "not a PEM private key",
            ),
            (
                &[
                    ("tls.crt", cert.as_bytes()),
                    ("tls.key", other_key.as_bytes()),
                ],
                "not the key of the certificate",
            ),
        ];
        for (entries, expected) in cases {
            let err = load(&secret(entries)).expect_err(expected);
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(!err.contains("BEGIN"), "{err:?} echoes the Secret");
        }
    }
}
