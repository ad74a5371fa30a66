//! Validation: objects as read (`objects.rs`) become the policy model the compiler works on.
//! Every check the issue and the Kubernetes API server make is here, each failure a diagnostic
//! at the offending value. A set with any error is rejected as a whole by the caller.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::diag::{Diagnostic, Origin};
use super::objects::{
    self, ClusterPeer, Entity, IntOrString, LabelSelector, NpPeer, PolicyMode, PolicyType,
    PortEntry, RuleAction,
};
use super::selector::{self, Labels, Selector};
use super::source::{Object, SourceObject};
use rampart_common::reason::Direction;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Annotation that puts a NetworkPolicy in audit mode (`audit` or `enforce`).
pub const MODE_ANNOTATION: &str = "policy.rampart.dev/mode";
/// Most ports one MeshPolicy port range may name (each is a kernel map entry per identity).
const MAX_MESH_RANGE: u16 = 1024;

/// The validated world: namespaces, pods, policies.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Namespace name → its labels (including [`NAMESPACE_NAME_LABEL`]).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodModel>,
    pub policies: Vec<PolicyModel>,
    pub mesh_policies: Vec<MeshPolicyModel>,
    /// `(namespace, name)` → the Secret's entries (API keys for the proxy).
    pub secrets: BTreeMap<(String, String), super::http::SecretModel>,
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
    pub http: Option<std::sync::Arc<super::http::HttpPolicyModel>>,
    /// The kernel's brake on new connections per source identity.
    pub brake: Option<BrakeModel>,
    /// Traffic from outside the cluster through the proxy's chain.
    pub ingress: Option<std::sync::Arc<super::ingress::IngressModel>>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodModel {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub service_account: String,
    pub node_name: Option<String>,
    pub ips: Vec<IpAddr>,
    /// `status.hostIP`: the pod's node, where that node's agent takes tunnels.
    pub host_ip: Option<IpAddr>,
    pub ports: Vec<NamedPort>,
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
            NamespaceMatch::Named(ns) => *ns == pod.namespace,
            NamespaceMatch::Selector(sel) => sel.matches(namespace_labels),
        };
        ns_ok
            && self.pods.matches(&pod.labels)
            && self.service_accounts.as_ref().is_none_or(|sas| {
                sas.iter().any(|sa| {
                    sa.name == pod.service_account
                        && sa.namespace.as_ref().is_none_or(|ns| *ns == pod.namespace)
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
    /// `None`: every peer.
    pub peers: Option<Vec<PeerModel>>,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<PortModel>>,
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

/// Validates `objects` into a model; every problem is added to `diags`.
pub fn build(objects: &[SourceObject], diags: &mut Vec<Diagnostic>) -> Model {
    let mut model = Model::default();
    let mut seen: HashMap<(&'static str, String, String), Origin> = HashMap::new();
    for so in objects {
        let mut v = Validator { so, diags };
        let Some((namespace, name)) = v.identity() else {
            continue;
        };
        let key = (
            so.object.kind(),
            namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let here = so
            .object
            .metadata()
            .name
            .as_ref()
            .map(|n| so.at(n))
            .unwrap_or_else(|| so.whole());
        if let Some(first) = seen.get(&key) {
            let shown = match &namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            };
            v.diags.push(Diagnostic::error(
                here,
                format!(
                    "duplicate {} {shown} (first defined at {first})",
                    so.object.kind()
                ),
            ));
            continue;
        }
        seen.insert(key, here);
        match &so.object {
            Object::Namespace(_) => {
                let mut labels = v.labels().unwrap_or_default();
                labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
                model.namespaces.insert(name, labels);
            }
            Object::Pod(pod) => {
                if let Some(p) = v.pod(pod, namespace.unwrap_or_default(), name) {
                    model.pods.push(p);
                }
            }
            Object::NetworkPolicy(np) => {
                if let Some(p) = v.network_policy(np, namespace.unwrap_or_default(), name) {
                    model.policies.push(p);
                }
            }
            Object::ClusterPolicy(cp) => {
                if let Some(p) = v.cluster_policy(cp, name) {
                    model.policies.push(p);
                }
            }
            Object::MeshPolicy(mp) => {
                if let Some(p) = v.mesh_policy(mp, name) {
                    model.mesh_policies.push(p);
                }
            }
            Object::Secret(secret) => {
                let namespace = namespace.unwrap_or_default();
                if let Some(s) = super::http::secret(so, secret, v.diags) {
                    model.secrets.insert((namespace, name), s);
                }
            }
        }
    }
    super::http::resolve_secrets(&mut model.mesh_policies, &model.secrets, diags);
    super::ingress::resolve_secrets(&mut model.mesh_policies, &model.secrets, diags);
    // Pods in namespaces no object describes still have the namespace's own-name label.
    for pod in &model.pods {
        model
            .namespaces
            .entry(pod.namespace.clone())
            .or_insert_with(|| {
                Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), pod.namespace.clone())])
            });
    }
    model
}

struct Validator<'a> {
    so: &'a SourceObject,
    diags: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let origin = self.so.at(spanned);
        self.diags.push(Diagnostic::error(origin, message));
    }

    fn error_whole(&mut self, message: impl Into<String>) {
        let origin = self.so.whole();
        self.diags.push(Diagnostic::error(origin, message));
    }

    /// `(namespace, name)` of the object, checked; `None` after reporting an error.
    fn identity(&mut self) -> Option<(Option<String>, String)> {
        let kind = self.so.object.kind();
        let meta = self.so.object.metadata();
        let Some(name) = &meta.name else {
            self.error_whole(format!("{kind}: metadata.name is required"));
            return None;
        };
        let name_ok = match self.so.object {
            Object::Namespace(_) => crate::dns_name::is_dns_label(&name.value),
            _ => crate::dns_name::is_dns_subdomain(&name.value),
        };
        if !name_ok {
            self.error(
                name,
                format!(
                    "metadata.name {:?}: must be a lowercase RFC 1123 name",
                    name.value
                ),
            );
            return None;
        }
        let namespaced = matches!(
            self.so.object,
            Object::Pod(_) | Object::NetworkPolicy(_) | Object::Secret(_)
        );
        let namespace = match (&meta.namespace, namespaced) {
            (Some(ns), true) => {
                if !crate::dns_name::is_dns_label(&ns.value) {
                    self.error(
                        ns,
                        format!(
                            "metadata.namespace {:?}: must be an RFC 1123 label",
                            ns.value
                        ),
                    );
                    return None;
                }
                Some(ns.value.clone())
            }
            (None, true) => Some("default".to_owned()),
            (Some(ns), false) => {
                self.error(
                    ns,
                    format!("{kind} is cluster-scoped: metadata.namespace is not allowed"),
                );
                return None;
            }
            (None, false) => None,
        };
        Some((namespace, name.value.clone()))
    }

    fn labels(&mut self) -> Option<Labels> {
        let meta = self.so.object.metadata();
        let Some(labels) = &meta.labels else {
            return Some(Labels::new());
        };
        for (k, v) in &labels.value {
            if let Err(e) = selector::validate_key(k).and_then(|()| selector::validate_value(v)) {
                self.error(labels, format!("metadata.labels: {e}"));
                return None;
            }
        }
        Some(labels.value.clone())
    }

    fn pod(&mut self, pod: &objects::Pod, namespace: String, name: String) -> Option<PodModel> {
        let labels = self.labels()?;
        let mut ok = true;
        let mut ips = Vec::new();
        let raw_ips: Vec<&Spanned<String>> = if pod.status.pod_ips.is_empty() {
            pod.status.pod_ip.iter().collect()
        } else {
            pod.status.pod_ips.iter().map(|p| &p.ip).collect()
        };
        for ip in raw_ips {
            match ip.value.parse::<IpAddr>() {
                Ok(addr) if !ips.contains(&addr) => ips.push(addr),
                Ok(_) => {}
                Err(_) => {
                    self.error(
                        ip,
                        format!("status.podIP {:?}: not an IP address", ip.value),
                    );
                    ok = false;
                }
            }
        }
        let mut ports = Vec::new();
        for c in pod.spec.containers.iter().chain(&pod.spec.init_containers) {
            for p in &c.ports {
                let port =
                    self.port_number(&p.container_port, "containerPort", p.container_port.value);
                let proto = self.protocol(p.protocol.as_ref());
                let (Some(port), Some(proto)) = (port, proto) else {
                    ok = false;
                    continue;
                };
                if let Some(n) = &p.name {
                    if let Err(e) = validate_port_name(&n.value) {
                        self.error(n, e);
                        ok = false;
                        continue;
                    }
                    ports.push(NamedPort {
                        name: n.value.clone(),
                        port,
                        proto,
                    });
                }
            }
        }
        let host_ip = match &pod.status.host_ip {
            None => None,
            Some(raw) => match raw.value.parse::<IpAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        raw,
                        format!("status.hostIP {:?}: not an IP address", raw.value),
                    );
                    ok = false;
                    None
                }
            },
        };
        if !ok {
            return None;
        }
        if pod.spec.host_network {
            // A host-network pod has the node's addresses and identity: nothing to model.
            return None;
        }
        ports.sort();
        ports.dedup();
        Some(PodModel {
            namespace,
            name,
            labels,
            service_account: pod
                .spec
                .service_account_name
                .clone()
                .or_else(|| pod.spec.service_account.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            node_name: pod.spec.node_name.clone(),
            ips,
            host_ip,
            ports,
        })
    }

    fn selector(&mut self, raw: &Spanned<LabelSelector>, what: &str) -> Option<Selector> {
        match selector::compile(&raw.value) {
            Ok(s) => Some(s),
            Err((index, message)) => {
                let origin = match index
                    .and_then(|i| raw.value.match_expressions.as_ref().and_then(|e| e.get(i)))
                {
                    Some(expr) => self.so.at(expr),
                    None => self.so.at(raw),
                };
                self.diags
                    .push(Diagnostic::error(origin, format!("{what}: {message}")));
                None
            }
        }
    }

    fn mode_annotation(&mut self) -> Option<PolicyMode> {
        let meta = self.so.object.metadata();
        match meta.annotations.get(MODE_ANNOTATION).map(String::as_str) {
            None | Some("enforce") => Some(PolicyMode::Enforce),
            Some("audit") => Some(PolicyMode::Audit),
            Some(other) => {
                self.error_whole(format!(
                    "annotation {MODE_ANNOTATION}: {other:?} is not enforce or audit"
                ));
                None
            }
        }
    }

    fn network_policy(
        &mut self,
        np: &objects::NetworkPolicy,
        namespace: String,
        name: String,
    ) -> Option<PolicyModel> {
        let mode = self.mode_annotation()?;
        let spec = &np.spec.value;
        let Some(pod_selector) = &spec.pod_selector else {
            self.error(
                &np.spec,
                "spec.podSelector is required (use {} for every pod)",
            );
            return None;
        };
        let pods = self.selector(pod_selector, "spec.podSelector")?;
        let mut ok = true;
        // policyTypes defaulting: Ingress always, Egress when there is an egress section.
        let (mut ingress, mut egress) = (false, false);
        match &spec.policy_types {
            None => {
                ingress = true;
                egress = spec.egress.is_some();
            }
            Some(types) => {
                for t in types {
                    match t.value.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => {
                            self.error(
                                t,
                                format!("policyTypes: {other:?} is not Ingress or Egress"),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let mut rules = Vec::new();
        if ingress {
            for (index, rule) in spec.ingress.iter().flatten().enumerate() {
                let peers = self.np_peers(rule.from.as_deref(), &namespace, &mut ok);
                let ports = self.ports(rule.ports.as_deref(), &mut ok);
                rules.push(RuleModel {
                    direction: Direction::INGRESS,
                    action: RuleAction::Allow,
                    index,
                    peers,
                    ports,
                });
            }
        }
        if egress {
            for (index, rule) in spec.egress.iter().flatten().enumerate() {
                let peers = self.np_peers(rule.to.as_deref(), &namespace, &mut ok);
                let ports = self.ports(rule.ports.as_deref(), &mut ok);
                rules.push(RuleModel {
                    direction: Direction::EGRESS,
                    action: RuleAction::Allow,
                    index,
                    peers,
                    ports,
                });
            }
        }
        ok.then(|| PolicyModel {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace.clone()),
            name,
            mode,
            applies_to: WorkloadMatch {
                namespaces: NamespaceMatch::Named(namespace),
                pods,
                service_accounts: None,
            },
            isolate_ingress: ingress,
            isolate_egress: egress,
            rules,
            origin: self.so.whole(),
        })
    }

    /// Peers of a NetworkPolicy rule; `None` (absent or empty list) is every peer.
    fn np_peers(
        &mut self,
        raw: Option<&[Spanned<NpPeer>]>,
        namespace: &str,
        ok: &mut bool,
    ) -> Option<Vec<PeerModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        let mut peers = Vec::new();
        for peer in raw {
            let p = &peer.value;
            let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
            match (&p.ip_block, selectors) {
                (Some(_), true) => {
                    self.error(
                        peer,
                        "a peer with ipBlock may not also have podSelector or namespaceSelector",
                    );
                    *ok = false;
                }
                (Some(block), false) => match self.ip_block(block) {
                    Some(b) => peers.push(PeerModel::Cidr(b)),
                    None => *ok = false,
                },
                (None, false) => {
                    self.error(
                        peer,
                        "a peer needs one of podSelector, namespaceSelector or ipBlock",
                    );
                    *ok = false;
                }
                (None, true) => {
                    let pods = match &p.pod_selector {
                        Some(s) => self.selector(s, "podSelector"),
                        None => Some(Selector::everything()),
                    };
                    let namespaces = match &p.namespace_selector {
                        Some(s) => self
                            .selector(s, "namespaceSelector")
                            .map(NamespaceMatch::Selector),
                        None => Some(NamespaceMatch::Named(namespace.to_owned())),
                    };
                    match (pods, namespaces) {
                        (Some(pods), Some(namespaces)) => {
                            peers.push(PeerModel::Workloads(WorkloadMatch {
                                namespaces,
                                pods,
                                service_accounts: None,
                            }))
                        }
                        _ => *ok = false,
                    }
                }
            }
        }
        Some(peers)
    }

    fn ip_block(&mut self, block: &objects::IpBlock) -> Option<CidrBlock> {
        let net = self.cidr(&block.cidr, "ipBlock.cidr")?;
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            let ex = self.cidr(e, "ipBlock.except")?;
            if !(net.contains(&ex) && ex.prefix_len() > net.prefix_len()) {
                self.error(
                    e,
                    format!(
                        "ipBlock.except {}: must be a strict subset of cidr {net}",
                        e.value
                    ),
                );
                return None;
            }
            except.push(ex);
        }
        except.sort();
        except.dedup();
        Some(CidrBlock { net, except })
    }

    fn cidr(&mut self, raw: &Spanned<String>, what: &str) -> Option<IpNet> {
        match raw.value.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(
                    raw,
                    format!("{what} {:?}: not a CIDR (address/prefix-length)", raw.value),
                );
                None
            }
        }
    }

    /// Ports of a rule; `None` (absent or empty list) is every protocol and port.
    fn ports(
        &mut self,
        raw: Option<&[Spanned<PortEntry>]>,
        ok: &mut bool,
    ) -> Option<Vec<PortModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        let mut ports = Vec::new();
        for entry in raw {
            match self.port(entry) {
                Some(p) => ports.push(p),
                None => *ok = false,
            }
        }
        Some(ports)
    }

    fn port(&mut self, entry: &Spanned<PortEntry>) -> Option<PortModel> {
        let e = &entry.value;
        let proto = self.protocol(e.protocol.as_ref())?;
        let port = match &e.port {
            None => {
                if let Some(end) = &e.end_port {
                    self.error(end, "endPort needs a numeric port");
                    return None;
                }
                PortMatch::All
            }
            Some(p) => match &p.value {
                IntOrString::Int(n) => {
                    let start = self.port_number(p, "port", *n)?;
                    match &e.end_port {
                        None => PortMatch::Range(start, start),
                        Some(end) => {
                            let stop = self.port_number(end, "endPort", end.value)?;
                            if stop < start {
                                self.error(
                                    end,
                                    format!("endPort {stop} is less than port {start}"),
                                );
                                return None;
                            }
                            PortMatch::Range(start, stop)
                        }
                    }
                }
                IntOrString::String(name) => {
                    if let Err(e) = validate_port_name(name) {
                        self.error(p, e);
                        return None;
                    }
                    if let Some(end) = &e.end_port {
                        self.error(end, "endPort may not be used with a named port");
                        return None;
                    }
                    PortMatch::Named(name.clone())
                }
            },
        };
        Some(PortModel { proto, port })
    }

    /// A rule's or container port's protocol; absent means TCP.
    fn protocol(&mut self, raw: Option<&Spanned<String>>) -> Option<u8> {
        let Some(raw) = raw else {
            return Some(PROTO_TCP);
        };
        let proto = protocol(&raw.value);
        if proto.is_none() {
            self.error(
                raw,
                format!("protocol {:?}: must be TCP, UDP or SCTP", raw.value),
            );
        }
        proto
    }

    /// A port number (`what` names the field): 1-65535.
    fn port_number<T>(&mut self, at: &Spanned<T>, what: &str, value: i64) -> Option<u16> {
        let port = u16::try_from(value).ok().filter(|v| *v != 0);
        if port.is_none() {
            self.error(at, format!("{what} {value}: must be 1-65535"));
        }
        port
    }

    fn cluster_policy(&mut self, cp: &objects::ClusterPolicy, name: String) -> Option<PolicyModel> {
        let spec = &cp.spec;
        let mut ok = true;
        let applies_to = match &spec.applies_to {
            None => Some(WorkloadMatch::everything()),
            Some(sel) => self.workloads(
                sel.namespace_selector.as_ref(),
                sel.pod_selector.as_ref(),
                sel.service_accounts.as_deref(),
                "appliesTo",
            ),
        };
        let types = spec.default_deny.clone().unwrap_or_default();
        let mut rules = Vec::new();
        for (index, rule) in spec.ingress.iter().flatten().enumerate() {
            let peers = self.cluster_peers(rule.from.as_deref(), &mut ok);
            let ports = self.ports(rule.ports.as_deref(), &mut ok);
            rules.push(RuleModel {
                direction: Direction::INGRESS,
                action: rule.action,
                index,
                peers,
                ports,
            });
        }
        for (index, rule) in spec.egress.iter().flatten().enumerate() {
            let peers = self.cluster_peers(rule.to.as_deref(), &mut ok);
            let ports = self.ports(rule.ports.as_deref(), &mut ok);
            rules.push(RuleModel {
                direction: Direction::EGRESS,
                action: rule.action,
                index,
                peers,
                ports,
            });
        }
        let applies_to = applies_to?;
        ok.then(|| PolicyModel {
            kind: PolicyKind::ClusterPolicy,
            namespace: None,
            name,
            mode: spec.mode,
            applies_to,
            isolate_ingress: types.contains(&PolicyType::Ingress),
            isolate_egress: types.contains(&PolicyType::Egress),
            rules,
            origin: self.so.whole(),
        })
    }

    fn mesh_policy(&mut self, mp: &objects::MeshPolicy, name: String) -> Option<MeshPolicyModel> {
        let spec = &mp.spec.value;
        let mut ok = true;
        let applies_to = match &spec.applies_to {
            None => Some(WorkloadMatch::everything()),
            Some(sel) => self.workloads(
                sel.namespace_selector.as_ref(),
                sel.pod_selector.as_ref(),
                sel.service_accounts.as_deref(),
                "appliesTo",
            ),
        };
        if let Some(mode) = &spec.mtls
            && mode.value != "Required"
        {
            self.error(
                mode,
                format!("mtls {:?}: the only mode is Required", mode.value),
            );
            ok = false;
        }
        let ports = self
            .ports(spec.ports.as_deref(), &mut ok)
            .unwrap_or_default();
        if ports.is_empty() && ok {
            self.error(&mp.spec, "ports: at least one TCP port is required");
            ok = false;
        }
        for (p, raw) in ports.iter().zip(spec.ports.iter().flatten()) {
            if p.proto != PROTO_TCP {
                self.error(raw, "mTLS applies to TCP ports only");
                ok = false;
            }
            match p.port {
                PortMatch::All => {
                    self.error(raw, "port is required (mTLS is asked for per port)");
                    ok = false;
                }
                PortMatch::Range(start, end) if end - start >= MAX_MESH_RANGE => {
                    self.error(
                        raw,
                        format!("a range of more than {MAX_MESH_RANGE} ports is not supported"),
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        let principals = spec
            .allowed_principals
            .as_ref()
            .map(|p| self.principals(p, &mut ok));
        let http = match &spec.http {
            None => None,
            Some(raw) => match super::http::validate(self.so, raw, self.diags) {
                Some(model) => Some(std::sync::Arc::new(model)),
                None => {
                    ok = false;
                    None
                }
            },
        };
        let brake = spec
            .flood_brake
            .as_ref()
            .and_then(|raw| self.flood_brake(raw, &mut ok));
        let ingress = match &spec.ingress {
            None => None,
            Some(raw) => match super::ingress::validate(self.so, raw, self.diags) {
                Some(model) => Some(std::sync::Arc::new(model)),
                None => {
                    ok = false;
                    None
                }
            },
        };
        let applies_to = applies_to?;
        ok.then(|| MeshPolicyModel {
            name,
            applies_to,
            ports,
            principals,
            http,
            brake,
            ingress,
            origin: self.so.whole(),
        })
    }

    fn flood_brake(
        &mut self,
        raw: &Spanned<objects::FloodBrakeSpec>,
        ok: &mut bool,
    ) -> Option<BrakeModel> {
        let spec = &raw.value;
        let max = spec.max_connections.value;
        let per_fill = spec.connections_per_fill.as_ref().map_or(1, |p| p.value);
        let interval = super::http::parse_duration(&spec.fill_interval.value);
        let problem = match interval {
            None => Some((
                "floodBrake.fillInterval: a duration such as 100ms, 1s, 1m".to_owned(),
                self.so.at(&spec.fill_interval),
            )),
            Some(d) if d.as_millis() < 1 => Some((
                "floodBrake.fillInterval: at least 1ms".to_owned(),
                self.so.at(&spec.fill_interval),
            )),
            _ if max == 0 => Some((
                "floodBrake.maxConnections: at least 1".to_owned(),
                self.so.at(&spec.max_connections),
            )),
            _ if per_fill == 0 => Some((
                "floodBrake.connectionsPerFill: at least 1".to_owned(),
                self.so.at(raw),
            )),
            _ => None,
        };
        if let Some((message, origin)) = problem {
            self.diags.push(Diagnostic::error(origin, message));
            *ok = false;
            return None;
        }
        let interval_ns = u64::try_from(interval?.as_nanos()).unwrap_or(u64::MAX);
        let period_ns = (interval_ns / u64::from(per_fill)).max(1);
        Some(BrakeModel {
            period_ns,
            tau_ns: period_ns.saturating_mul(u64::from(max - 1)),
        })
    }

    fn principals(&mut self, raw: &objects::AllowedPrincipals, ok: &mut bool) -> PrincipalsModel {
        let mut out = PrincipalsModel::default();
        for id in raw.spiffe_ids.iter().flatten() {
            match crate::spiffe::SpiffeId::parse(&id.value) {
                Ok(_) => out.spiffe_ids.push(id.value.clone()),
                Err(e) => {
                    self.error(id, format!("allowedPrincipals.spiffeIds: {e}"));
                    *ok = false;
                }
            }
        }
        for sa in raw.service_accounts.iter().flatten() {
            match sa.value.split_once('/') {
                Some((ns, name))
                    if crate::dns_name::is_dns_label(ns)
                        && crate::dns_name::is_dns_subdomain(name) =>
                {
                    out.service_accounts.push((ns.to_owned(), name.to_owned()));
                }
                _ => {
                    self.error(
                        sa,
                        format!(
                            "allowedPrincipals.serviceAccounts: {:?} is not `namespace/name`",
                            sa.value
                        ),
                    );
                    *ok = false;
                }
            }
        }
        for ns in raw.namespaces.iter().flatten() {
            if crate::dns_name::is_dns_label(&ns.value) {
                out.namespaces.push(ns.value.clone());
            } else {
                self.error(
                    ns,
                    format!(
                        "allowedPrincipals.namespaces: {:?} is not a namespace name",
                        ns.value
                    ),
                );
                *ok = false;
            }
        }
        out
    }

    fn workloads(
        &mut self,
        namespaces: Option<&Spanned<LabelSelector>>,
        pods: Option<&Spanned<LabelSelector>>,
        service_accounts: Option<&[Spanned<String>]>,
        what: &str,
    ) -> Option<WorkloadMatch> {
        let namespaces = match namespaces {
            Some(s) => {
                NamespaceMatch::Selector(self.selector(s, &format!("{what}.namespaceSelector"))?)
            }
            None => NamespaceMatch::Selector(Selector::everything()),
        };
        let pods = match pods {
            Some(s) => self.selector(s, &format!("{what}.podSelector"))?,
            None => Selector::everything(),
        };
        let service_accounts = match service_accounts {
            None => None,
            Some(list) => {
                let mut refs = Vec::new();
                for sa in list {
                    let (ns, name) = match sa.value.split_once('/') {
                        Some((ns, name)) => (Some(ns), name),
                        None => (None, sa.value.as_str()),
                    };
                    let valid = ns.is_none_or(crate::dns_name::is_dns_label)
                        && crate::dns_name::is_dns_subdomain(name);
                    if !valid {
                        self.error(
                            sa,
                            format!(
                                "{what}.serviceAccounts: {:?} is not `name` or `namespace/name`",
                                sa.value
                            ),
                        );
                        return None;
                    }
                    refs.push(ServiceAccountRef {
                        namespace: ns.map(str::to_owned),
                        name: name.to_owned(),
                    });
                }
                refs.sort();
                Some(refs)
            }
        };
        Some(WorkloadMatch {
            namespaces,
            pods,
            service_accounts,
        })
    }

    fn cluster_peers(
        &mut self,
        raw: Option<&[Spanned<ClusterPeer>]>,
        ok: &mut bool,
    ) -> Option<Vec<PeerModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        let mut peers = Vec::new();
        for peer in raw {
            let p = &peer.value;
            let workloads = p.namespace_selector.is_some()
                || p.pod_selector.is_some()
                || p.service_accounts.is_some();
            let kinds = usize::from(workloads)
                + usize::from(p.ip_block.is_some())
                + usize::from(p.entities.is_some());
            if kinds != 1 {
                self.error(
                    peer,
                    "a peer needs exactly one of: workload selectors (namespaceSelector, podSelector, serviceAccounts), ipBlock, entities",
                );
                *ok = false;
                continue;
            }
            let model = if let Some(block) = &p.ip_block {
                self.ip_block(block).map(PeerModel::Cidr)
            } else if let Some(entities) = &p.entities {
                Some(PeerModel::Entities(
                    entities
                        .iter()
                        .map(|e| match e {
                            Entity::World => EntityKind::World,
                            Entity::Cluster => EntityKind::Cluster,
                            Entity::Host => EntityKind::Host,
                            Entity::RemoteNode => EntityKind::RemoteNode,
                            Entity::All => EntityKind::All,
                        })
                        .collect(),
                ))
            } else {
                self.workloads(
                    p.namespace_selector.as_ref(),
                    p.pod_selector.as_ref(),
                    p.service_accounts.as_deref(),
                    "peer",
                )
                .map(PeerModel::Workloads)
            };
            match model {
                Some(m) => peers.push(m),
                None => *ok = false,
            }
        }
        Some(peers)
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::{self, source};

    /// The errors `text` gets, as `line:col: message`.
    fn errors(text: &str) -> Vec<String> {
        match policy::check(source::parse_str(Path::new("t.yaml"), text)) {
            Ok(_) => Vec::new(),
            Err(diags) => diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| format!("{}:{}: {}", d.origin.pos.line, d.origin.pos.col, d.message))
                .collect(),
        }
    }

    fn np(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}"
        )
    }

    fn one_error(text: &str) -> String {
        let e = errors(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:?}");
        e[0].clone()
    }

    #[test]
    fn a_valid_policy_has_no_errors() {
        let text = np(
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports:\n    - {port: 80, endPort: 90}\n    - {protocol: UDP, port: dns}\n",
        );
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn unknown_fields_are_errors_at_their_position() {
        let e = one_error(&np("  podSelector: {}\n  ingres: []\n"));
        assert!(e.starts_with("8:3: "), "{e}");
        assert!(e.contains("ingres"), "{e}");
    }

    #[test]
    fn invalid_cidrs() {
        let e = one_error(&np(
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.300/8}\n",
        ));
        assert!(e.starts_with("10:23: ") && e.contains("not a CIDR"), "{e}");
        let e = one_error(&np(
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [192.168.0.0/16]\n",
        ));
        assert!(
            e.starts_with("12:18: ") && e.contains("strict subset"),
            "{e}"
        );
    }

    #[test]
    fn port_bounds() {
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 0\n",
        ));
        assert!(e.starts_with("10:13: ") && e.contains("1-65535"), "{e}");
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 65536\n",
        ));
        assert!(e.contains("1-65535"), "{e}");
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 90\n      endPort: 80\n",
        ));
        assert!(
            e.starts_with("11:16: ") && e.contains("less than port 90"),
            "{e}"
        );
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 80}\n",
        ));
        assert!(e.contains("named port"), "{e}");
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: \"80\"\n",
        ));
        assert!(e.contains("port name"), "{e}");
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: ICMP, port: 1}\n",
        ));
        assert!(e.contains("TCP, UDP or SCTP"), "{e}");
    }

    #[test]
    fn selector_syntax() {
        let e = one_error(&np(
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n",
        ));
        assert!(
            e.starts_with("9:7: ") && e.contains("non-empty values"),
            "{e}"
        );
        let e = one_error(&np("  podSelector:\n    matchLabels: {\"a b\": c}\n"));
        assert!(e.contains("label key"), "{e}");
    }

    #[test]
    fn peers_need_exactly_one_kind() {
        let e = one_error(&np(
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
        ));
        assert!(e.contains("ipBlock may not also"), "{e}");
        let e = one_error(&np("  podSelector: {}\n  ingress:\n  - from:\n    - {}\n"));
        assert!(e.contains("needs one of"), "{e}");
    }

    #[test]
    fn duplicate_names() {
        let text = format!(
            "{}---\n{}",
            np("  podSelector: {}\n"),
            np("  podSelector: {}\n")
        );
        let e = one_error(&text);
        assert!(
            e.starts_with("12:9: ")
                && e.contains("duplicate NetworkPolicy x/p")
                && e.contains("t.yaml:4:9"),
            "{e}"
        );
    }

    #[test]
    fn cluster_policy_kinds_and_modes() {
        let text = "apiVersion: rampart.dev/v1alpha1\nkind: ClusterPolicy\nmetadata: {name: base}\nspec:\n  mode: audit\n  defaultDeny: [Ingress, Egress]\n  egress:\n  - action: Deny\n    to:\n    - entities: [world]\n  - action: Allow\n    to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      serviceAccounts: [kube-system/coredns]\n    ports: [{protocol: UDP, port: 53}]\n";
        assert_eq!(errors(text), Vec::<String>::new());
        let bad = text.replace("mode: audit", "mode: sometimes");
        let e = one_error(&bad);
        assert!(e.starts_with("5:9: "), "{e}");
        let bad = text.replace(
            "metadata: {name: base}",
            "metadata: {name: base, namespace: x}",
        );
        assert!(one_error(&bad).contains("cluster-scoped"));
    }

    fn mesh(spec: &str) -> String {
        format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: m\nspec:\n{spec}"
        )
    }

    #[test]
    fn mesh_policies_need_tcp_ports_and_valid_principals() {
        assert_eq!(
            errors(&mesh(
                "  appliesTo: {podSelector: {matchLabels: {app: db}}}\n  ports: [{port: 5432}, {port: pg}]\n  mtls: Required\n  allowedPrincipals:\n    spiffeIds: [spiffe://cluster.local/ns/a/sa/b]\n    serviceAccounts: [shop/backend]\n    namespaces: [shop]\n"
            )),
            Vec::<String>::new()
        );
        assert_eq!(
            one_error(&mesh("  appliesTo: {}\n")),
            "6:3: ports: at least one TCP port is required"
        );
        assert_eq!(
            one_error(&mesh("  ports: [{protocol: UDP, port: 53}]\n")),
            "6:11: mTLS applies to TCP ports only"
        );
        assert_eq!(
            one_error(&mesh("  ports: [{port: 1, endPort: 5000}]\n")),
            "6:11: a range of more than 1024 ports is not supported"
        );
        assert_eq!(
            one_error(&mesh("  ports: [{port: 80}]\n  mtls: Permissive\n")),
            "7:9: mtls \"Permissive\": the only mode is Required"
        );
        let e = one_error(&mesh(
            "  ports: [{port: 80}]\n  allowedPrincipals:\n    spiffeIds: [https://x/y]\n",
        ));
        assert!(e.starts_with("8:17: allowedPrincipals.spiffeIds:"), "{e}");
        assert_eq!(
            one_error(&mesh(
                "  ports: [{port: 80}]\n  allowedPrincipals:\n    serviceAccounts: [backend]\n"
            )),
            "8:23: allowedPrincipals.serviceAccounts: \"backend\" is not `namespace/name`"
        );
        assert!(one_error(&mesh("  ports: [{port: 80}]\n  bogus: 1\n")).contains("bogus"));
        let e = one_error(
            "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: m, namespace: x}\nspec: {ports: [{port: 80}]}\n",
        );
        assert!(e.contains("cluster-scoped"), "{e}");
    }

    #[test]
    fn flood_brakes_validate_into_a_gcra_rate() {
        let brake = |spec: &str| format!("  ports: [{{port: 80}}]\n  floodBrake: {spec}\n");
        for (spec, expected) in [
            ("{maxConnections: 0, fillInterval: 1s}", "maxConnections"),
            ("{maxConnections: 5, fillInterval: soon}", "fillInterval"),
            (
                "{maxConnections: 5, connectionsPerFill: 0, fillInterval: 1s}",
                "connectionsPerFill",
            ),
            ("{maxConnections: 5, fillInterval: 1s, burst: 2}", "burst"),
        ] {
            let e = one_error(&mesh(&brake(spec)));
            assert!(e.contains(expected), "{spec}: {e}");
        }
        let checked = policy::check(source::parse_str(
            Path::new("t.yaml"),
            &mesh(&brake(
                "{maxConnections: 10, connectionsPerFill: 5, fillInterval: 1s}",
            )),
        ))
        .unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(
            checked.model.mesh_policies[0].brake,
            Some(super::BrakeModel {
                period_ns: 200_000_000,
                tau_ns: 1_800_000_000
            })
        );
    }
}
