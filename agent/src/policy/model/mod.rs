//! The policy model: the validated world the compiler works on (namespaces, pods, policies,
//! secrets). Built from the objects as read by `validate.rs`, with one file per kind of object
//! (`pod.rs`, `network_policy.rs`, `cluster_policy.rs`, `mesh_policy.rs`); every check the
//! Kubernetes API server makes is there, each failure a diagnostic at the offending value. A
//! set with any error is rejected as a whole by the caller.

mod cluster_policy;
mod memo;
mod mesh_policy;
mod network_policy;
mod pod;
#[cfg(test)]
mod tests;
pub mod validate;

pub use memo::{Validation, ValidationMemo};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rampart_common::reason::Direction;

use crate::policy::diag::Origin;
use crate::policy::selector::{Labels, Selector};
use crate::policy::spec::RuleAction;
use crate::policy::spec::objects::PolicyMode;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Annotation that puts a NetworkPolicy in audit mode (`audit` or `enforce`).
pub const MODE_ANNOTATION: &str = "policy.rampart.dev/mode";

/// The validated world: namespaces, pods, policies.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Namespace name → its labels (including [`NAMESPACE_NAME_LABEL`]).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<std::sync::Arc<PodModel>>,
    /// Node name → its addresses (from the Kubernetes source's Node objects): `remote-node`,
    /// unless they are this node's own.
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// Services and their EndpointSlices (from the Kubernetes source): translated in the kernel.
    pub services: Vec<Arc<ServiceModel>>,
    pub endpoint_slices: Vec<Arc<EndpointSliceModel>>,
    /// Shared with the [`ValidationMemo`] (unchanged objects are not validated again).
    pub policies: Vec<std::sync::Arc<PolicyModel>>,
    pub mesh_policies: Vec<MeshPolicyModel>,
    /// `(namespace, name)` → the Secret's entries (API keys for the proxy).
    pub secrets: BTreeMap<(String, String), crate::policy::secret::SecretModel>,
    /// `(namespace, name)` → the ConfigMap's entries (Rego modules and data).
    pub config_maps: BTreeMap<(String, String), crate::policy::config_map::ConfigMapModel>,
}

/// Objects a source validated itself, kept in their model form (the Kubernetes source's Pods,
/// Namespaces and Nodes: thousands of them change every minute, and re-reading each as a
/// document on every change would cost what the change does not touch).
#[derive(Debug, Clone, Default)]
pub struct Validated {
    /// Namespace name → its labels (including [`NAMESPACE_NAME_LABEL`]).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<std::sync::Arc<PodModel>>,
    /// Node name → its addresses.
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    pub services: Vec<Arc<ServiceModel>>,
    pub endpoint_slices: Vec<Arc<EndpointSliceModel>>,
}

impl Validated {
    /// Drops what `keys` name: `(kind, namespace, name)` as
    /// [`crate::policy::source::SourceObject::key`] gives them.
    pub fn remove_keys(
        &mut self,
        keys: &std::collections::HashSet<crate::policy::source::ObjectKey<'_>>,
    ) {
        if keys.is_empty() {
            return;
        }
        self.namespaces
            .retain(|name, _| !keys.contains(&("Namespace", None, Some(name.as_str()))));
        self.pods
            .retain(|p| !keys.contains(&("Pod", Some(&*p.namespace), Some(p.name()))));
        self.nodes
            .retain(|name, _| !keys.contains(&("Node", None, Some(name.as_str()))));
        self.services
            .retain(|s| !keys.contains(&("Service", Some(&*s.namespace), Some(&*s.name))));
        self.endpoint_slices
            .retain(|s| !keys.contains(&("EndpointSlice", Some(&*s.namespace), Some(&*s.name))));
    }

    /// The keys of what this holds (see [`Validated::remove_keys`]).
    pub fn keys(&self) -> impl Iterator<Item = crate::policy::source::ObjectKey<'_>> + '_ {
        self.namespaces
            .keys()
            .map(|n| ("Namespace", None, Some(n.as_str())))
            .chain(
                self.pods
                    .iter()
                    .map(|p| ("Pod", Some(&*p.namespace), Some(p.name()))),
            )
            .chain(self.nodes.keys().map(|n| ("Node", None, Some(n.as_str()))))
            .chain(
                self.services
                    .iter()
                    .map(|s| ("Service", Some(&*s.namespace), Some(&*s.name))),
            )
            .chain(
                self.endpoint_slices
                    .iter()
                    .map(|s| ("EndpointSlice", Some(&*s.namespace), Some(&*s.name))),
            )
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.nodes.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
    }

    /// Adds `other`'s objects; the caller has removed those they replace
    /// ([`Validated::remove_keys`]).
    pub fn append(&mut self, other: Validated) {
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.nodes.extend(other.nodes);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
    }
}

/// A MeshPolicy: these destinations' ports take only mTLS from these principals.
#[derive(Debug, Clone)]
pub struct MeshPolicyModel {
    pub name: String,
    pub applies_to: WorkloadMatch,
    /// TCP ports (numbers, ranges or names resolved per destination pod).
    pub ports: Vec<PortModel>,
    /// `None`: any workload of the trust domain.
    pub principals: Option<PrincipalsModel>,
    /// The proxy's L7 rules for requests on these ports.
    pub http: Option<std::sync::Arc<crate::policy::http::HttpPolicyModel>>,
    /// The kernel's brake on new connections per source identity.
    pub brake: Option<BrakeModel>,
    /// Traffic from outside the cluster through the proxy's chain.
    pub ingress: Option<std::sync::Arc<crate::policy::ingress::IngressModel>>,
    pub origin: Origin,
}

/// A flood brake as the kernel runs it (GCRA): one connection per `period_ns` on average,
/// `tau_ns / period_ns + 1` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BrakeModel {
    pub period_ns: u64,
    pub tau_ns: u64,
}

/// Allowed source principals: any of the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrincipalsModel {
    pub spiffe_ids: Vec<String>,
    /// `(namespace, service account)`.
    pub service_accounts: Vec<(String, String)>,
    pub namespaces: Vec<String>,
}

/// What the agent keeps of a pod. Strings that many pods carry (namespace, service account,
/// node) are `Arc`s the Kubernetes source shares between pods; the name is the end of
/// `full_name`, not a string of its own (a pod's model is most of what the agent keeps per pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodModel {
    pub namespace: Arc<str>,
    /// `namespace/name`, shared with the tables of each generation that name the pod.
    pub full_name: Arc<str>,
    /// Shared by the pods that carry the same labels (the Kubernetes source interns them).
    pub labels: Arc<Labels>,
    pub service_account: Arc<str>,
    pub node_name: Option<Arc<str>>,
    pub ips: Box<[IpAddr]>,
    /// `status.hostIP`: the pod's node, where that node's agent takes tunnels.
    pub host_ip: Option<IpAddr>,
    pub ports: Box<[NamedPort]>,
}

impl PodModel {
    /// `namespace/name`, the form of [`PodModel::full_name`].
    pub fn full_name_of(namespace: &str, name: &str) -> Arc<str> {
        format!("{namespace}/{name}").into()
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        self.full_name
            .get(self.namespace.len() + 1..)
            .unwrap_or_default()
    }
}

/// A Service as the datapath translates it (from the Kubernetes source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` (`ExternalName` and headless Services are not kept).
    pub kind: String,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortModel>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortModel {
    pub name: Option<String>,
    pub proto: u8,
    pub port: u16,
    pub node_port: Option<u16>,
    /// A number, or the name of a container port of each backend.
    pub target: PortTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortTarget {
    Number(u16),
    Named(String),
}

/// An EndpointSlice: a Service's backends with the port numbers they resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceModel {
    pub namespace: String,
    pub name: String,
    /// The Service (`kubernetes.io/service-name`).
    pub service: String,
    pub endpoints: Vec<EndpointModel>,
    /// (name, protocol, port).
    pub ports: Vec<(Option<String>, u8, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointModel {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// `namespace/name` of the pod behind it.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    ClusterPolicy,
}

#[derive(Debug, Clone)]
pub struct PolicyModel {
    pub kind: PolicyKind,
    /// The namespace of a NetworkPolicy; none for a cluster policy.
    pub namespace: Option<String>,
    pub name: String,
    pub mode: PolicyMode,
    pub applies_to: WorkloadMatch,
    /// Whether the selected pods are isolated for ingress / egress.
    pub isolate_ingress: bool,
    pub isolate_egress: bool,
    pub rules: Vec<RuleModel>,
    pub origin: Origin,
}

impl PolicyModel {
    /// `NetworkPolicy x/name` or `ClusterPolicy name`.
    pub fn display_name(&self) -> String {
        match (&self.kind, &self.namespace) {
            (PolicyKind::NetworkPolicy, Some(ns)) => format!("NetworkPolicy {ns}/{}", self.name),
            (kind, _) => format!("{kind:?} {}", self.name),
        }
    }
}

/// Which workloads: namespaces, pod labels, service accounts, all ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadMatch {
    pub namespaces: NamespaceMatch,
    pub pods: Selector,
    /// `None`: any service account.
    pub service_accounts: Option<Vec<ServiceAccountRef>>,
}

impl WorkloadMatch {
    pub fn everything() -> WorkloadMatch {
        WorkloadMatch {
            namespaces: NamespaceMatch::Selector(Selector::everything()),
            pods: Selector::everything(),
            service_accounts: None,
        }
    }

    pub fn matches(&self, pod: &PodModel, namespace_labels: &Labels) -> bool {
        let ns_ok = match &self.namespaces {
            NamespaceMatch::Named(ns) => **ns == *pod.namespace,
            NamespaceMatch::Selector(sel) => sel.matches(namespace_labels),
        };
        ns_ok
            && self.pods.matches(&pod.labels)
            && self.service_accounts.as_ref().is_none_or(|sas| {
                sas.iter().any(|sa| {
                    *sa.name == *pod.service_account
                        && sa
                            .namespace
                            .as_ref()
                            .is_none_or(|ns| **ns == *pod.namespace)
                })
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceMatch {
    Named(String),
    Selector(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountRef {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct RuleModel {
    pub direction: Direction,
    pub action: RuleAction,
    /// Index of the rule in its direction's list (for attribution).
    pub index: usize,
    /// `None`: every peer. Rules of one policy that name the same peers share one list (see
    /// [`share_peer_lists`]).
    pub peers: Option<std::sync::Arc<[PeerModel]>>,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<PortModel>>,
}

/// Makes the rules of one policy that name equal peer lists share one allocation. A policy
/// often names one peer in many rules (one rule per port); the compiler then recognises a list
/// it has resolved by its address, without comparing selectors rule by rule. Done once per
/// validated version of a policy.
pub fn share_peer_lists(rules: &mut [RuleModel]) {
    let mut seen: std::collections::HashSet<std::sync::Arc<[PeerModel]>> =
        std::collections::HashSet::new();
    for peers in rules.iter_mut().filter_map(|r| r.peers.as_mut()) {
        match seen.get(&**peers) {
            Some(shared) => *peers = std::sync::Arc::clone(shared),
            None => {
                seen.insert(std::sync::Arc::clone(peers));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerModel {
    Workloads(WorkloadMatch),
    Cidr(CidrBlock),
    Entities(Vec<EntityKind>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    World,
    Cluster,
    Host,
    RemoteNode,
    All,
}

/// An ipBlock: `net` minus `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrBlock {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl CidrBlock {
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.net.contains(addr) && !self.except.iter().any(|e| e.contains(addr))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortModel {
    pub proto: u8,
    pub port: PortMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    All,
    Range(u16, u16),
    Named(String),
}

/// `TCP`, `UDP` or `SCTP` (as Kubernetes spells them) to an IP protocol number.
pub fn protocol(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// A port name (IANA service name): 1-15 lowercase letters, digits and `-`, at least one letter,
/// no `-` at either end or twice in a row.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "port name {name:?}: must be 1-15 lowercase letters, digits and '-', with a letter, no '-' at an end or twice in a row"
        ))
    }
}
