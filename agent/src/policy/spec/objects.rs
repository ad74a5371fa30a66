//! The objects Rampart reads, as they appear in files: Kubernetes `v1 Namespace`, `v1 Pod`,
//! `networking.k8s.io/v1 NetworkPolicy`, and `rampart.dev/v1alpha1 ClusterPolicy`.
//!
//! These are the raw shapes (serde). Kubernetes's own kinds read as the API server serves them:
//! every field the agent does not use (a Pod's image, probes, volumes, and fields that newer
//! Kubernetes versions add) is ignored, in metadata too, so objects dumped from any cluster read
//! as they are. Two exceptions stay strict, where a field the agent does not know could change
//! what is allowed: a NetworkPolicy's `spec` (an unknown rule field might narrow a peer or a port;
//! ignoring it would open traffic, so the object is an error — in API mode rejected on its own,
//! its last good version kept), and Rampart's own kinds (a typo is an error at its position).
//! Meaning and validation live in `model/`.

use std::collections::BTreeMap;

use crate::policy::spec::compact::Spanned;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::RuleAction;
use super::compact::{List, StringMap};

/// `apiVersion` and `kind`, read first to pick the type of the document.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// v1 Namespace

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
}

// ---------------------------------------------------------------------------------------------
// v1 Secret (API keys for the proxy's authentication)

/// A Secret: `data` values are base64, `stringData` values text. Its values never appear in
/// `Debug` output or diagnostics.
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("string_data", &self.string_data.keys().collect::<Vec<_>>())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// v1 ConfigMap (Rego policies)

/// A ConfigMap: `data` values are text, each kept with its position (a Rego error in one is
/// reported inside it). `binaryData` is not read.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// v1 Pod

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`.
    pub service_account: Option<String>,
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<Spanned<String>>,
    pub container_port: Spanned<i64>,
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Spanned<String>>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    /// The address of the pod's node (where that node's agent listens for tunnels).
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodIp {
    pub ip: Spanned<String>,
}

// ---------------------------------------------------------------------------------------------
// networking.k8s.io/v1 NetworkPolicy

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: Spanned<NetworkPolicySpec>,
    #[serde(default, rename = "status")]
    _status: IgnoredAny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub policy_types: Option<List<Spanned<String>>>,
    pub ingress: Option<List<NpIngressRule>>,
    pub egress: Option<List<NpEgressRule>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpIngressRule {
    pub from: Option<List<Spanned<NpPeer>>>,
    pub ports: Option<List<Spanned<PortEntry>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpEgressRule {
    pub to: Option<List<Spanned<NpPeer>>>,
    pub ports: Option<List<Spanned<PortEntry>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpPeer {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    #[schemars(with = "String")]
    pub cidr: Spanned<String>,
    #[schemars(with = "Option<Vec<String>>")]
    pub except: Option<List<Spanned<String>>>,
}

/// A port of a rule: `protocol`, `port` (number or name) and `endPort`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortEntry {
    #[schemars(with = "Option<String>")]
    pub protocol: Option<Spanned<String>>,
    #[schemars(with = "Option<IntOrString>")]
    pub port: Option<Spanned<IntOrString>>,
    #[schemars(with = "Option<i64>")]
    pub end_port: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl schemars::JsonSchema for IntOrString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrString".into()
    }

    // As Kubernetes's own IntOrString: the structural schema's marker, not an `anyOf`.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"x-kubernetes-int-or-string": true})
    }
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub match_labels: Option<StringMap>,
    #[schemars(with = "Option<Vec<LabelSelectorRequirement>>")]
    pub match_expressions: Option<List<Spanned<LabelSelectorRequirement>>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    pub values: Option<List<String>>,
}

// ---------------------------------------------------------------------------------------------
// rampart.dev/v1alpha1 ClusterPolicy

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicy {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: ClusterPolicySpec,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicySpec {
    #[serde(default)]
    pub mode: PolicyMode,
    /// The workloads the policy applies to; absent: every pod.
    pub applies_to: Option<WorkloadSelector>,
    /// Directions in which the selected workloads are isolated (default deny).
    pub default_deny: Option<List<PolicyType>>,
    pub ingress: Option<List<ClusterIngressRule>>,
    pub egress: Option<List<ClusterEgressRule>>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
pub enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[schemars(with = "Option<LabelSelector>")]
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    #[schemars(with = "Option<LabelSelector>")]
    pub pod_selector: Option<Spanned<LabelSelector>>,
    /// `sa` (in any namespace) or `namespace/sa`.
    #[schemars(with = "Option<Vec<String>>")]
    pub service_accounts: Option<List<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterIngressRule {
    pub action: RuleAction,
    #[schemars(with = "Option<Vec<ClusterPeer>>")]
    pub from: Option<List<Spanned<ClusterPeer>>>,
    #[schemars(with = "Option<Vec<PortEntry>>")]
    pub ports: Option<List<Spanned<PortEntry>>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterEgressRule {
    pub action: RuleAction,
    #[schemars(with = "Option<Vec<ClusterPeer>>")]
    pub to: Option<List<Spanned<ClusterPeer>>>,
    #[schemars(with = "Option<Vec<PortEntry>>")]
    pub ports: Option<List<Spanned<PortEntry>>>,
}

/// A peer of a cluster rule: workloads (namespace, pod and service-account selectors, ANDed),
/// or an ipBlock, or entities.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPeer {
    #[schemars(with = "Option<LabelSelector>")]
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    #[schemars(with = "Option<LabelSelector>")]
    pub pod_selector: Option<Spanned<LabelSelector>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub service_accounts: Option<List<Spanned<String>>>,
    pub ip_block: Option<IpBlock>,
    pub entities: Option<List<Entity>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything outside the cluster (addresses that are not pods or nodes).
    World,
    /// Every pod and node of the cluster.
    Cluster,
    /// This node.
    Host,
    /// The other nodes.
    RemoteNode,
    /// Everything.
    All,
}

// ---------------------------------------------------------------------------------------------
// rampart.dev/v1alpha1 MeshPolicy

/// Requires mutual TLS for selected destination workloads and ports, and names the source
/// principals that may connect (cluster-scoped).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshPolicy {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: Spanned<MeshPolicySpec>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// The destination workloads; absent: every pod.
    pub applies_to: Option<WorkloadSelector>,
    /// TCP ports of the destinations that require mTLS (required, at least one).
    #[schemars(with = "Option<Vec<PortEntry>>")]
    pub ports: Option<Vec<Spanned<PortEntry>>>,
    /// `Required` (the only mode so far).
    #[schemars(with = "Option<String>")]
    pub mtls: Option<Spanned<String>>,
    /// Who may connect (any of the lists); absent: any workload of the trust domain.
    pub allowed_principals: Option<AllowedPrincipals>,
    /// L7 rules for requests on these ports (see `policy::http`).
    #[schemars(with = "Option<super::http::HttpSpec>")]
    pub http: Option<Box<Spanned<super::http::HttpSpec>>>,
    /// New connections per source identity, braked in the kernel.
    #[schemars(with = "Option<FloodBrakeSpec>")]
    pub flood_brake: Option<Spanned<FloodBrakeSpec>>,
    /// Traffic from outside the cluster through the proxy (see `policy::ingress`).
    #[schemars(with = "Option<super::ingress::IngressSpec>")]
    pub ingress: Option<Spanned<super::ingress::IngressSpec>>,
}

/// A token bucket on new connections per (source identity, destination identity, port).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FloodBrakeSpec {
    /// Connections a source may open at once (the bucket's size).
    #[schemars(with = "u32")]
    pub max_connections: Spanned<u32>,
    /// Connections added back per `fillInterval` (default 1).
    #[schemars(with = "Option<u32>")]
    pub connections_per_fill: Option<Spanned<u32>>,
    /// `100ms`, `1s`, `1m`, ...
    #[schemars(with = "String")]
    pub fill_interval: Spanned<String>,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowedPrincipals {
    /// Exact SPIFFE IDs.
    #[schemars(with = "Option<Vec<String>>")]
    pub spiffe_ids: Option<Vec<Spanned<String>>>,
    /// `namespace/serviceaccount`.
    #[schemars(with = "Option<Vec<String>>")]
    pub service_accounts: Option<Vec<Spanned<String>>>,
    /// Every workload of these namespaces.
    #[schemars(with = "Option<Vec<String>>")]
    pub namespaces: Option<Vec<Spanned<String>>>,
}
