//! The objects Rampart reads, as they appear in files: Kubernetes `v1 Namespace`, `v1 Pod`,
//! `networking.k8s.io/v1 NetworkPolicy`, and `rampart.dev/v1alpha1 ClusterPolicy`.
//!
//! These are the raw shapes (serde, `deny_unknown_fields`): a field the kind does not have is an
//! error at its position. Fields the API server or other controllers own (a Pod's image, probes,
//! volumes, ...) are accepted and ignored, so objects dumped from a cluster read as they are.
//! Meaning and validation live in `model/`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::RuleAction;

/// `apiVersion` and `kind`, read first to pick the type of the document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    pub api_version: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // Set by the API server; accepted and ignored.
    #[serde(default, rename = "uid")]
    _uid: IgnoredAny,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: IgnoredAny,
    #[serde(default, rename = "generation")]
    _generation: IgnoredAny,
    #[serde(default, rename = "generateName")]
    _generate_name: IgnoredAny,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: IgnoredAny,
    #[serde(default, rename = "deletionTimestamp")]
    _deletion_timestamp: IgnoredAny,
    #[serde(default, rename = "deletionGracePeriodSeconds")]
    _deletion_grace_period_seconds: IgnoredAny,
    #[serde(default, rename = "ownerReferences")]
    _owner_references: IgnoredAny,
    #[serde(default, rename = "finalizers")]
    _finalizers: IgnoredAny,
    #[serde(default, rename = "managedFields")]
    _managed_fields: IgnoredAny,
    #[serde(default, rename = "selfLink")]
    _self_link: IgnoredAny,
}

// ---------------------------------------------------------------------------------------------
// v1 Namespace

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default, rename = "spec")]
    _spec: IgnoredAny,
    #[serde(default, rename = "status")]
    _status: IgnoredAny,
}

// ---------------------------------------------------------------------------------------------
// v1 Secret (API keys for the proxy's authentication)

/// A Secret: `data` values are base64, `stringData` values text. Its values never appear in
/// `Debug` output or diagnostics.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
    #[serde(default, rename = "type")]
    _type: IgnoredAny,
    #[serde(default, rename = "immutable")]
    _immutable: IgnoredAny,
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
// v1 Pod

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
    // The rest of the PodSpec: accepted and ignored.
    #[serde(default, rename = "activeDeadlineSeconds")]
    _active_deadline_seconds: IgnoredAny,
    #[serde(default, rename = "affinity")]
    _affinity: IgnoredAny,
    #[serde(default, rename = "automountServiceAccountToken")]
    _automount_service_account_token: IgnoredAny,
    #[serde(default, rename = "dnsConfig")]
    _dns_config: IgnoredAny,
    #[serde(default, rename = "dnsPolicy")]
    _dns_policy: IgnoredAny,
    #[serde(default, rename = "enableServiceLinks")]
    _enable_service_links: IgnoredAny,
    #[serde(default, rename = "ephemeralContainers")]
    _ephemeral_containers: IgnoredAny,
    #[serde(default, rename = "hostAliases")]
    _host_aliases: IgnoredAny,
    #[serde(default, rename = "hostIPC")]
    _host_ipc: IgnoredAny,
    #[serde(default, rename = "hostPID")]
    _host_pid: IgnoredAny,
    #[serde(default, rename = "hostUsers")]
    _host_users: IgnoredAny,
    #[serde(default, rename = "hostname")]
    _hostname: IgnoredAny,
    #[serde(default, rename = "imagePullSecrets")]
    _image_pull_secrets: IgnoredAny,
    #[serde(default, rename = "nodeSelector")]
    _node_selector: IgnoredAny,
    #[serde(default, rename = "os")]
    _os: IgnoredAny,
    #[serde(default, rename = "overhead")]
    _overhead: IgnoredAny,
    #[serde(default, rename = "preemptionPolicy")]
    _preemption_policy: IgnoredAny,
    #[serde(default, rename = "priority")]
    _priority: IgnoredAny,
    #[serde(default, rename = "priorityClassName")]
    _priority_class_name: IgnoredAny,
    #[serde(default, rename = "readinessGates")]
    _readiness_gates: IgnoredAny,
    #[serde(default, rename = "resourceClaims")]
    _resource_claims: IgnoredAny,
    #[serde(default, rename = "resources")]
    _resources: IgnoredAny,
    #[serde(default, rename = "restartPolicy")]
    _restart_policy: IgnoredAny,
    #[serde(default, rename = "runtimeClassName")]
    _runtime_class_name: IgnoredAny,
    #[serde(default, rename = "schedulerName")]
    _scheduler_name: IgnoredAny,
    #[serde(default, rename = "schedulingGates")]
    _scheduling_gates: IgnoredAny,
    #[serde(default, rename = "securityContext")]
    _security_context: IgnoredAny,
    #[serde(default, rename = "setHostnameAsFQDN")]
    _set_hostname_as_fqdn: IgnoredAny,
    #[serde(default, rename = "shareProcessNamespace")]
    _share_process_namespace: IgnoredAny,
    #[serde(default, rename = "subdomain")]
    _subdomain: IgnoredAny,
    #[serde(default, rename = "terminationGracePeriodSeconds")]
    _termination_grace_period_seconds: IgnoredAny,
    #[serde(default, rename = "tolerations")]
    _tolerations: IgnoredAny,
    #[serde(default, rename = "topologySpreadConstraints")]
    _topology_spread_constraints: IgnoredAny,
    #[serde(default, rename = "volumes")]
    _volumes: IgnoredAny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    // The rest of the Container: accepted and ignored.
    #[serde(default, rename = "args")]
    _args: IgnoredAny,
    #[serde(default, rename = "command")]
    _command: IgnoredAny,
    #[serde(default, rename = "env")]
    _env: IgnoredAny,
    #[serde(default, rename = "envFrom")]
    _env_from: IgnoredAny,
    #[serde(default, rename = "image")]
    _image: IgnoredAny,
    #[serde(default, rename = "imagePullPolicy")]
    _image_pull_policy: IgnoredAny,
    #[serde(default, rename = "lifecycle")]
    _lifecycle: IgnoredAny,
    #[serde(default, rename = "livenessProbe")]
    _liveness_probe: IgnoredAny,
    #[serde(default, rename = "readinessProbe")]
    _readiness_probe: IgnoredAny,
    #[serde(default, rename = "resizePolicy")]
    _resize_policy: IgnoredAny,
    #[serde(default, rename = "resources")]
    _resources: IgnoredAny,
    #[serde(default, rename = "restartPolicy")]
    _restart_policy: IgnoredAny,
    #[serde(default, rename = "securityContext")]
    _security_context: IgnoredAny,
    #[serde(default, rename = "startupProbe")]
    _startup_probe: IgnoredAny,
    #[serde(default, rename = "stdin")]
    _stdin: IgnoredAny,
    #[serde(default, rename = "stdinOnce")]
    _stdin_once: IgnoredAny,
    #[serde(default, rename = "terminationMessagePath")]
    _termination_message_path: IgnoredAny,
    #[serde(default, rename = "terminationMessagePolicy")]
    _termination_message_policy: IgnoredAny,
    #[serde(default, rename = "tty")]
    _tty: IgnoredAny,
    #[serde(default, rename = "volumeDevices")]
    _volume_devices: IgnoredAny,
    #[serde(default, rename = "volumeMounts")]
    _volume_mounts: IgnoredAny,
    #[serde(default, rename = "workingDir")]
    _working_dir: IgnoredAny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<Spanned<String>>,
    pub container_port: Spanned<i64>,
    pub protocol: Option<Spanned<String>>,
    #[serde(default, rename = "hostPort")]
    _host_port: IgnoredAny,
    #[serde(default, rename = "hostIP")]
    _host_ip: IgnoredAny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Spanned<String>>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    // The rest of the PodStatus: accepted and ignored.
    #[serde(default, rename = "phase")]
    _phase: IgnoredAny,
    #[serde(default, rename = "conditions")]
    _conditions: IgnoredAny,
    #[serde(default, rename = "message")]
    _message: IgnoredAny,
    #[serde(default, rename = "reason")]
    _reason: IgnoredAny,
    /// The address of the pod's node (where that node's agent listens for tunnels).
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Spanned<String>>,
    #[serde(default, rename = "hostIPs")]
    _host_ips: IgnoredAny,
    #[serde(default, rename = "startTime")]
    _start_time: IgnoredAny,
    #[serde(default, rename = "containerStatuses")]
    _container_statuses: IgnoredAny,
    #[serde(default, rename = "initContainerStatuses")]
    _init_container_statuses: IgnoredAny,
    #[serde(default, rename = "ephemeralContainerStatuses")]
    _ephemeral_container_statuses: IgnoredAny,
    #[serde(default, rename = "nominatedNodeName")]
    _nominated_node_name: IgnoredAny,
    #[serde(default, rename = "qosClass")]
    _qos_class: IgnoredAny,
    #[serde(default, rename = "resize")]
    _resize: IgnoredAny,
    #[serde(default, rename = "resourceClaimStatuses")]
    _resource_claim_statuses: IgnoredAny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIp {
    pub ip: Spanned<String>,
}

// ---------------------------------------------------------------------------------------------
// networking.k8s.io/v1 NetworkPolicy

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub policy_types: Option<Vec<Spanned<String>>>,
    pub ingress: Option<Vec<NpIngressRule>>,
    pub egress: Option<Vec<NpEgressRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpIngressRule {
    pub from: Option<Vec<Spanned<NpPeer>>>,
    pub ports: Option<Vec<Spanned<PortEntry>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpEgressRule {
    pub to: Option<Vec<Spanned<NpPeer>>>,
    pub ports: Option<Vec<Spanned<PortEntry>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NpPeer {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: Spanned<String>,
    pub except: Option<Vec<Spanned<String>>>,
}

/// A port of a rule: `protocol`, `port` (number or name) and `endPort`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortEntry {
    pub protocol: Option<Spanned<String>>,
    pub port: Option<Spanned<IntOrString>>,
    pub end_port: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<Spanned<LabelSelectorRequirement>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// rampart.dev/v1alpha1 ClusterPolicy

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicy {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: ClusterPolicySpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPolicySpec {
    #[serde(default)]
    pub mode: PolicyMode,
    /// The workloads the policy applies to; absent: every pod.
    pub applies_to: Option<WorkloadSelector>,
    /// Directions in which the selected workloads are isolated (default deny).
    pub default_deny: Option<Vec<PolicyType>>,
    pub ingress: Option<Vec<ClusterIngressRule>>,
    pub egress: Option<Vec<ClusterEgressRule>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    pub pod_selector: Option<Spanned<LabelSelector>>,
    /// `sa` (in any namespace) or `namespace/sa`.
    pub service_accounts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterIngressRule {
    pub action: RuleAction,
    pub from: Option<Vec<Spanned<ClusterPeer>>>,
    pub ports: Option<Vec<Spanned<PortEntry>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterEgressRule {
    pub action: RuleAction,
    pub to: Option<Vec<Spanned<ClusterPeer>>>,
    pub ports: Option<Vec<Spanned<PortEntry>>>,
}

/// A peer of a cluster rule: workloads (namespace, pod and service-account selectors, ANDed),
/// or an ipBlock, or entities.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterPeer {
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub service_accounts: Option<Vec<Spanned<String>>>,
    pub ip_block: Option<IpBlock>,
    pub entities: Option<Vec<Entity>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshPolicy {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: Spanned<MeshPolicySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// The destination workloads; absent: every pod.
    pub applies_to: Option<WorkloadSelector>,
    /// TCP ports of the destinations that require mTLS (required, at least one).
    pub ports: Option<Vec<Spanned<PortEntry>>>,
    /// `Required` (the only mode so far).
    pub mtls: Option<Spanned<String>>,
    /// Who may connect (any of the lists); absent: any workload of the trust domain.
    pub allowed_principals: Option<AllowedPrincipals>,
    /// L7 rules for requests on these ports (see `policy::http`).
    pub http: Option<Box<Spanned<super::http::HttpSpec>>>,
    /// New connections per source identity, braked in the kernel.
    pub flood_brake: Option<Spanned<FloodBrakeSpec>>,
    /// Traffic from outside the cluster through the proxy (see `policy::ingress`).
    pub ingress: Option<Spanned<super::ingress::IngressSpec>>,
}

/// A token bucket on new connections per (source identity, destination identity, port).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FloodBrakeSpec {
    /// Connections a source may open at once (the bucket's size).
    pub max_connections: Spanned<u32>,
    /// Connections added back per `fillInterval` (default 1).
    pub connections_per_fill: Option<Spanned<u32>>,
    /// `100ms`, `1s`, `1m`, ...
    pub fill_interval: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowedPrincipals {
    /// Exact SPIFFE IDs.
    pub spiffe_ids: Option<Vec<Spanned<String>>>,
    /// `namespace/serviceaccount`.
    pub service_accounts: Option<Vec<Spanned<String>>>,
    /// Every workload of these namespaces.
    pub namespaces: Option<Vec<Spanned<String>>>,
}
