//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), validated as the SPIFFE ID specification says,
//! and read from an X.509-SVID: the certificate's one URI subject alternative name.

use std::fmt;

use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpiffeError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "{0:?}: the trust domain must be non-empty lower-case letters, digits, '.', '-' or '_'"
    )]
    TrustDomain(String),
    #[error(
        "{0:?}: each path segment must be non-empty letters, digits, '.', '-' or '_', and not . or .."
    )]
    Path(String),
    #[error("{0:?}: a SPIFFE ID has no query, fragment, port or user")]
    Extra(String),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    UriCount(usize),
}

/// A valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Length of `spiffe://<trust-domain>`.
    authority_end: usize,
}

const SCHEME: &str = "spiffe://";
/// The path prefix of node IDs.
const NODE_PATH: &str = "/rampart/node/";

impl SpiffeId {
    pub fn parse(text: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeError::Scheme(text.to_owned()))?;
        if rest.contains(['?', '#', ':', '@']) {
            return Err(SpiffeError::Extra(text.to_owned()));
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let domain_ok = !domain.is_empty()
            && domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !domain_ok {
            return Err(SpiffeError::TrustDomain(text.to_owned()));
        }
        if !path.is_empty() {
            let segments_ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
            if !segments_ok {
                return Err(SpiffeError::Path(text.to_owned()));
            }
        }
        Ok(SpiffeId {
            id: text.to_owned(),
            authority_end: SCHEME.len() + domain.len(),
        })
    }

    /// The workload ID Rampart gives a service account: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The ID a node's agent holds: `spiffe://<td>/rampart/node/<node>`.
    pub fn node(trust_domain: &str, node: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!("{SCHEME}{trust_domain}{NODE_PATH}{node}"))
    }

    /// The node an ID of [`SpiffeId::node`]'s form names.
    pub fn node_name(&self) -> Option<&str> {
        self.path()
            .strip_prefix(NODE_PATH)
            .filter(|n| !n.contains('/'))
    }

    /// The ID of the trust domain's CA service: `spiffe://<td>/rampart/ca`.
    pub fn ca(trust_domain: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!("{SCHEME}{trust_domain}/rampart/ca"))
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.authority_end]
    }

    /// The path, starting with `/` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.id[self.authority_end..]
    }

    /// `(namespace, service account)` of an ID of the form `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa)) if parts.next().is_none() => {
                Some((ns, sa))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The SPIFFE ID of an X.509-SVID (DER): its only URI SAN.
    pub fn from_certificate(der: &[u8]) -> Result<SpiffeId, SpiffeError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [uri] => SpiffeId::parse(uri),
            other => Err(SpiffeError::UriCount(other.len())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids_and_names_their_parts() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/backend");
        assert_eq!(
            id.namespace_and_service_account(),
            Some(("shop", "backend"))
        );
        let td = SpiffeId::parse("spiffe://example.org").expect("a trust domain's ID");
        assert_eq!(td.path(), "");
        assert_eq!(td.namespace_and_service_account(), None);
        assert_eq!(
            SpiffeId::workload("cluster.local", "a", "b")
                .expect("valid")
                .as_str(),
            "spiffe://cluster.local/ns/a/sa/b"
        );
    }

    #[test]
    fn rejects_what_the_specification_forbids() {
        for (bad, kind) in [
            ("https://cluster.local/ns/a", "scheme"),
            ("spiffe://", "domain"),
            ("spiffe://Cluster.Local/x", "domain"),
            ("spiffe://cluster.local/", "path"),
            ("spiffe://cluster.local/a//b", "path"),
            ("spiffe://cluster.local/a/../b", "path"),
            ("spiffe://cluster.local/a b", "path"),
            ("spiffe://cluster.local:8443/a", "extra"),
            ("spiffe://cluster.local/a?x=1", "extra"),
            ("spiffe://user@cluster.local/a", "extra"),
        ] {
            let err = SpiffeId::parse(bad).expect_err(bad);
            let matches = match kind {
                "scheme" => matches!(err, SpiffeError::Scheme(_)),
                "domain" => matches!(err, SpiffeError::TrustDomain(_)),
                "path" => matches!(err, SpiffeError::Path(_)),
                _ => matches!(err, SpiffeError::Extra(_)),
            };
            assert!(matches, "{bad}: {err}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            SpiffeId::from_certificate(b"not a certificate"),
            Err(SpiffeError::Certificate(_))
        ));
    }
}
