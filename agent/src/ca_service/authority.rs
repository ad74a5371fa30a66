//! What the trust domain's CA signs, and for whom (node authorization, as istiod does for
//! ztunnel): a node's certificate for the node its bootstrap credential names; a workload's
//! X.509-SVID for a node only when the cluster says a pod with that namespace and service account
//! runs on that node. Every refusal has a reason, counted by the service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::mesh::ca::{Ca, CaError};
use crate::policy::model::PodModel;
use crate::spiffe::SpiffeId;

/// How long the service's own TLS certificate is valid (it is issued again at each start).
pub const OWN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Which workload identities each node runs: node name → (namespace, service account).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    by_node: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Placement {
    /// From the cluster's pods (`spec.nodeName`, namespace, `serviceAccountName`); pods not yet
    /// scheduled place nothing.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a PodModel>) -> Placement {
        Placement::from_assignments(pods.into_iter().filter_map(|pod| {
            let node = pod.node_name.as_ref()?;
            Some((
                node.to_string(),
                pod.namespace.to_string(),
                pod.service_account.to_string(),
            ))
        }))
    }

    /// From (node, namespace, service account) triples.
    pub fn from_assignments(
        assignments: impl IntoIterator<Item = (String, String, String)>,
    ) -> Placement {
        let mut by_node: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for (node, namespace, sa) in assignments {
            by_node.entry(node).or_default().insert((namespace, sa));
        }
        Placement { by_node }
    }

    /// Whether a pod of `namespace` with service account `sa` runs on `node`.
    pub fn runs(&self, node: &str, namespace: &str, sa: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|ids| ids.contains(&(namespace.to_owned(), sa.to_owned())))
    }
}

/// Why the CA did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not an ID of trust domain {1}")]
    OtherTrustDomain(String, String),
    #[error(
        "{0} is not a workload's ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
    )]
    NotAWorkload(String),
    #[error("no pod of namespace {namespace} with service account {sa} runs on node {node}")]
    NotOnNode {
        node: String,
        namespace: String,
        sa: String,
    },
    #[error("{0}")]
    BadRequest(String),
}

impl Refusal {
    /// The `reason` label of the CA's refusal counter.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::OtherTrustDomain(..) => "other_trust_domain",
            Refusal::NotAWorkload(_) => "not_a_workload",
            Refusal::NotOnNode { .. } => "not_on_node",
            Refusal::BadRequest(_) => "bad_request",
        }
    }

    pub const NAMES: [&'static str; 4] = [
        "other_trust_domain",
        "not_a_workload",
        "not_on_node",
        "bad_request",
    ];
}

impl From<CaError> for Refusal {
    fn from(e: CaError) -> Refusal {
        Refusal::BadRequest(e.to_string())
    }
}

/// The CA's signing key and the lifetimes it grants.
pub struct Authority {
    /// The signing key and certificate in force, replaced whole when the user's PKI rotates
    /// the intermediate (or the root) in the CA's directory.
    ca: RwLock<Arc<Ca>>,
    trust_domain: String,
    /// Node and workload certificates: short, renewed at half-life.
    pub ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(ca: Ca, ttl: Duration) -> Authority {
        Authority {
            trust_domain: ca.trust_domain().to_owned(),
            ca: RwLock::new(Arc::new(ca)),
            ttl,
        }
    }

    /// The signing material in force.
    fn ca(&self) -> Arc<Ca> {
        match self.ca.read() {
            Ok(ca) => Arc::clone(&ca),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Signs with `ca` from now on (a rotated intermediate or root of the same trust domain);
    /// certificates issued before stay valid until they expire.
    pub fn replace(&self, ca: Ca) -> Result<(), CaError> {
        if ca.trust_domain() != self.trust_domain {
            return Err(CaError::OtherTrustDomain {
                new: ca.trust_domain().to_owned(),
                current: self.trust_domain.clone(),
            });
        }
        let ca = Arc::new(ca);
        match self.ca.write() {
            Ok(mut current) => *current = ca,
            Err(poisoned) => *poisoned.into_inner() = ca,
        }
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's own certificate (the root, or the intermediate it signs with).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.ca().cert_der().clone()
    }

    /// The roots what it signs chains to (what agents trust; the SPIFFE bundle).
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.ca().roots().to_vec()
    }

    /// The service's own TLS certificate (`id`, the CA's SPIFFE ID), valid for [`OWN_TTL`].
    pub fn issue_own(
        &self,
        id: &SpiffeId,
        now: SystemTime,
    ) -> Result<crate::mesh::ca::WorkloadCert, CaError> {
        self.ca().issue(id, OWN_TTL, now)
    }

    /// The node certificate of `node` (already authenticated), over the request's key.
    pub fn sign_node(
        &self,
        node: &str,
        csr_der: &[u8],
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Refusal> {
        let id = SpiffeId::node(self.trust_domain(), node)
            .map_err(|e| Refusal::BadRequest(format!("node {node:?}: {e}")))?;
        Ok(self.ca().sign_request(&id, csr_der, self.ttl, now)?)
    }

    /// The X.509-SVID `id` for node `node` (authenticated by its node certificate), over the
    /// request's key, if `placement` says a pod with that identity runs on the node.
    pub fn sign_workload(
        &self,
        node: &str,
        id: &SpiffeId,
        csr_der: &[u8],
        placement: &Placement,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Refusal> {
        if id.trust_domain() != self.trust_domain() {
            return Err(Refusal::OtherTrustDomain(
                id.to_string(),
                self.trust_domain().to_owned(),
            ));
        }
        let segments: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
        let ["ns", namespace, "sa", sa] = segments.as_slice() else {
            return Err(Refusal::NotAWorkload(id.to_string()));
        };
        if !placement.runs(node, namespace, sa) {
            return Err(Refusal::NotOnNode {
                node: node.to_owned(),
                namespace: (*namespace).to_owned(),
                sa: (*sa).to_owned(),
            });
        }
        Ok(self.ca().sign_request(id, csr_der, self.ttl, now)?)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    const TD: &str = "example.org";

    fn pod(namespace: &str, name: &str, sa: &str, node: &str) -> PodModel {
        PodModel {
            namespace: namespace.into(),
            full_name: PodModel::full_name_of(namespace, name),
            labels: Arc::default(),
            service_account: sa.into(),
            node_name: Some(node.into()),
            ips: Box::new([IpAddr::from([10, 0, 0, 1])]),
            host_ip: None,
            ports: Box::new([]),
        }
    }

    fn csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let request = CertificateParams::new(vec!["ignored.example".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr");
        let der = request.der().to_vec();
        (key, der)
    }

    fn authority() -> Authority {
        let ca = Ca::generate(TD, Duration::from_secs(86_400), SystemTime::now()).expect("ca");
        Authority::new(ca, Duration::from_secs(600))
    }

    fn workload(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::workload(TD, ns, sa).expect("id")
    }

    #[test]
    fn a_node_gets_svids_for_its_own_pods_only() {
        let a = authority();
        let placement = Placement::from_pods(&[
            pod("shop", "backend-1", "backend", "node-1"),
            pod("shop", "db-0", "db", "node-2"),
        ]);
        let now = SystemTime::now();
        let (key, request) = csr();
        let chain = a
            .sign_workload(
                "node-1",
                &workload("shop", "backend"),
                &request,
                &placement,
                now,
            )
            .expect("backend runs on node 1");
        // The requester's key, the CA's identity, whatever names the request asked for.
        let leaf = &chain[0];
        assert_eq!(
            SpiffeId::from_certificate(leaf),
            Ok(workload("shop", "backend"))
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).expect("parse");
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(chain[1], a.cert_der());

        let refused = a
            .sign_workload("node-1", &workload("shop", "db"), &request, &placement, now)
            .expect_err("db runs on node 2");
        assert_eq!(refused.name(), "not_on_node");
        let other = SpiffeId::parse("spiffe://other.org/ns/shop/sa/backend").expect("id");
        let refused = a
            .sign_workload("node-1", &other, &request, &placement, now)
            .expect_err("another trust domain");
        assert_eq!(refused.name(), "other_trust_domain");
        let node_id = SpiffeId::node(TD, "node-2").expect("id");
        let refused = a
            .sign_workload("node-1", &node_id, &request, &placement, now)
            .expect_err("a node's ID is no workload's");
        assert_eq!(refused.name(), "not_a_workload");
    }

    #[test]
    fn a_node_certificate_names_the_authenticated_node_and_bad_requests_are_refused() {
        let a = authority();
        let (_, request) = csr();
        let chain = a
            .sign_node("node-1", &request, SystemTime::now())
            .expect("signed");
        assert_eq!(
            SpiffeId::from_certificate(&chain[0]),
            Ok(SpiffeId::node(TD, "node-1").expect("id"))
        );
        let mut tampered = request.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        let refused = a
            .sign_node("node-1", &tampered, SystemTime::now())
            .expect_err("a request whose signature does not verify");
        assert_eq!(refused.name(), "bad_request");
        assert!(
            a.sign_node("node-1", b"garbage", SystemTime::now())
                .is_err()
        );
    }
}
