//! The compiler: the validated model in, the kernel's state out (endpoints, ipcache, policy
//! trie entries), plus the tables that explain it (identities, rule cookies). Pure: no I/O.
//!
//! How Kubernetes semantics map onto the datapath:
//! - a local pod is an endpoint (keyed by its interface); a policy that selects it and isolates a
//!   direction sets `ENFORCE_<dir>` (with `AUDIT_<dir>` when only audit-mode policies isolate it);
//! - each allow rule becomes entries (endpoint, remote identity, direction, protocol, ports);
//!   "every peer" is the `ANY` identity; named ports resolve on the destination pod (the endpoint
//!   itself for ingress, each remote pod for egress);
//! - an ipBlock matches the CIDR identities of the prefixes inside it and, because pod addresses
//!   resolve to pod identities first, the identities of the pod addresses inside it (see
//!   `identity.rs` for why that is exact);
//! - deny rules of cluster policies become deny entries, which win over every allow (the policy
//!   trie builder and the kernel's lookup order guarantee it);
//! - a MeshPolicy marks (destination identity, TCP port) as mTLS-only in the kernel's mesh map and
//!   gives the proxy its routes (who may connect); NetworkPolicy and cluster policies still decide
//!   the flow at both ends, on its original addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use ipnet::IpNet;
use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::identity::Identity;
use rampart_common::policy::Verdict;
use rampart_common::reason::Direction;
use serde::Serialize;

pub use super::cookie::{RuleRef, RuleTable};
use super::identity::{Allocator, Discriminator, IdentityKey};
use super::model::{
    CidrBlock, EntityKind, MeshPolicyModel, Model, PROTO_TCP, PeerModel, PodModel, PolicyModel,
    PortMatch, PrincipalsModel, RuleModel,
};
use super::selector::Labels;
use super::services;
use super::spec::RuleAction;
use super::spec::objects::PolicyMode;
use crate::kernel_state::policy_map::{self, PolicyRule};
use crate::kernel_state::{IpcacheRecord, PolicyState};
use rampart_common::mesh::{MeshEntry, MeshFlags, MeshKey};

/// What the compiler needs besides the model.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// Addresses routed to a local pod interface → that interface's index.
    pub local: &'a BTreeMap<IpAddr, u32>,
    /// The node's own addresses (`host`).
    pub host: &'a BTreeSet<IpAddr>,
    pub trust_domain: &'a str,
    /// Agent-wide audit mode (`--mode audit`).
    pub audit: bool,
}

/// One workload identity and who has it.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityInfo {
    pub id: u32,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Shared with the [`WorkloadAddr`]s of its pods.
    pub spiffe_id: Arc<str>,
    /// `namespace/name` of the pods with this identity (shared with their [`WorkloadAddr`]s).
    pub pods: Vec<Arc<str>>,
}

/// A local pod the datapath enforces for.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSummary {
    pub pod: String,
    pub ifindex: u32,
    pub identity: u32,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
}

/// A destination (identity, TCP port) that takes only mTLS, and who may connect.
#[derive(Debug, Clone, Serialize)]
pub struct MeshDestination {
    pub identity: u32,
    pub port: u16,
    /// The MeshPolicies that ask for it.
    pub policies: Vec<String>,
    /// Allowed principals, any of; `None`: any workload of the trust domain.
    pub principals: Option<Vec<PrincipalsModel>>,
    /// The MeshPolicy whose `http` section the proxy applies to requests (the first by name if
    /// several have one; the others are reported as warnings).
    pub http_policy: Option<String>,
    #[serde(skip)]
    pub http: Option<std::sync::Arc<crate::policy::http::HttpPolicyModel>>,
    /// The kernel's flood brake on new connections to it (the strictest of the policies).
    pub brake: Option<crate::policy::model::BrakeModel>,
    /// The MeshPolicy whose `ingress` section applies to traffic from outside the cluster (the
    /// first by name if several have one; the others are reported as warnings).
    pub ingress_policy: Option<String>,
    #[serde(skip)]
    pub ingress: Option<std::sync::Arc<crate::policy::ingress::IngressModel>>,
}

/// A pod address, as the proxy needs it: who is there, and where that pod's node takes tunnels.
/// Its strings are shared (one per identity, pod and node): there is one per pod address of
/// the cluster, in every generation.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadAddr {
    pub addr: IpAddr,
    pub identity: u32,
    pub spiffe_id: Arc<str>,
    pub pod: Arc<str>,
    /// `spec.nodeName`.
    pub node: Option<Arc<str>>,
    pub host_ip: Option<IpAddr>,
    /// Behind an interface of this node.
    pub local: bool,
}

/// Every pod address of a generation, sorted by address: one list shared by the generation, its
/// flow names and the proxy's table (each used to keep a hash map of its own: a copy per pod),
/// looked up by binary search.
#[derive(Debug, Clone, Default)]
pub struct Workloads(Arc<[WorkloadAddr]>);

impl Workloads {
    /// The list of `addrs` (an address listed twice keeps its first entry).
    pub fn new(mut addrs: Vec<WorkloadAddr>) -> Workloads {
        addrs.sort_by_key(|w| w.addr);
        addrs.dedup_by_key(|w| w.addr);
        Workloads(addrs.into())
    }

    pub fn get(&self, addr: IpAddr) -> Option<&WorkloadAddr> {
        self.0
            .binary_search_by_key(&addr, |w| w.addr)
            .ok()
            .map(|i| &self.0[i])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, WorkloadAddr> {
        self.0.iter()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub state: PolicyState,
    pub identities: Vec<IdentityInfo>,
    pub cidr_identities: Vec<(IpNet, u32)>,
    /// Every rule of the set, by cookie (stable across compilations, see `policy::cookie`);
    /// shared with the flow names of the generation.
    pub rules: std::sync::Arc<RuleTable>,
    pub endpoints: Vec<EndpointSummary>,
    /// mTLS-only destinations, by (identity, port).
    pub mesh: Vec<MeshDestination>,
    /// Every pod address.
    pub workloads: Workloads,
    /// Service frontends and their backends.
    pub services: Vec<services::Frontend>,
    /// Policy rules before they became trie entries.
    pub rule_count: usize,
    /// Non-fatal findings (two pods with one address, ...).
    pub warnings: Vec<String>,
}

/// What the compiler keeps between compilations: identity numbers and rule cookies (stable while
/// what they name lives, see `policy::identity` and `policy::cookie`), and the trie entries of
/// each (endpoint, remote identity, direction) (built again only when its rules change).
#[derive(Debug, Default)]
pub struct Memory {
    pub ids: Allocator,
    trie: policy_map::BuildMemo,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    /// The compilation's result is in force (see [`Allocator::finish`]).
    pub fn finish(&mut self) {
        self.ids.finish();
    }

    /// The compilation's result was refused (see [`Allocator::abandon`]).
    pub fn abandon(&mut self) {
        self.ids.abandon();
    }
}

/// A remote end a rule can name: an identity, and the pod behind it if it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    identity: u32,
    pod: Option<usize>,
}

/// Compiles `model` for this node. Identities come from (and are remembered in) `memory`; the
/// caller calls `memory.finish()` once the result is in force, or `memory.abandon()`.
pub fn compile(model: &Model, node: Node<'_>, memory: &mut Memory) -> Compiled {
    let alloc = &mut memory.ids;
    let mut out = Compiled::default();
    let empty = BTreeMap::new();
    let ns_labels = |pod: &PodModel| model.namespaces.get(&*pod.namespace).unwrap_or(&empty);

    // 1. Identities of pod addresses.
    let blocks: BTreeSet<&CidrBlock> = model
        .policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| r.peers.iter().flat_map(|p| p.iter()))
        .filter_map(|peer| match peer {
            PeerModel::Cidr(b) => Some(b),
            _ => None,
        })
        .collect();
    let named_egress = model.policies.iter().flat_map(|p| &p.rules).any(|r| {
        r.direction == Direction::EGRESS
            && r.ports
                .iter()
                .flatten()
                .any(|p| matches!(p.port, PortMatch::Named(_)))
    });
    // Pods with one (namespace, labels, service account) have one identity key and match the
    // same selectors: the key is built, and each selector tried, once per group. Pods that
    // share their labels' allocation (the Kubernetes source interns them) are grouped by its
    // address; the labels are hashed once per allocation, not once per pod.
    let mut group_index: HashMap<(&str, &Labels, &str), usize> = HashMap::new();
    let mut group_by_address: HashMap<(&str, *const Labels, &str), usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut keys: Vec<IdentityKey> = Vec::new();
    let mut pod_group: Vec<usize> = Vec::with_capacity(model.pods.len());
    for (index, pod) in model.pods.iter().enumerate() {
        let by_address = (
            &*pod.namespace,
            Arc::as_ptr(&pod.labels),
            &*pod.service_account,
        );
        if let Some(&group) = group_by_address.get(&by_address) {
            groups[group].push(index);
            pod_group.push(group);
            continue;
        }
        let group = *group_index
            .entry((&pod.namespace, &*pod.labels, &pod.service_account))
            .or_insert_with(|| {
                groups.push(Vec::new());
                keys.push(IdentityKey {
                    namespace: pod.namespace.to_string(),
                    namespace_labels: ns_labels(pod).clone(),
                    labels: (*pod.labels).clone(),
                    service_account: pod.service_account.to_string(),
                });
                groups.len() - 1
            });
        group_by_address.insert(by_address, group);
        groups[group].push(index);
        pod_group.push(group);
    }
    let discriminator = |pod: &PodModel, addr: &IpAddr| Discriminator {
        blocks: blocks
            .iter()
            .filter(|b| b.contains(addr))
            .map(|b| (*b).clone())
            .collect(),
        ports: named_egress.then(|| pod.ports.to_vec()),
    };
    // Per pod, per address: what tells it apart (nothing, unless some rule names an ipBlock or
    // an egress port by name); per group: how many variants it has.
    let divides = !blocks.is_empty() || named_egress;
    let discs: Vec<Vec<Discriminator>> = if divides {
        model
            .pods
            .iter()
            .map(|pod| pod.ips.iter().map(|a| discriminator(pod, a)).collect())
            .collect()
    } else {
        Vec::new()
    };
    let mut variants: Vec<BTreeSet<&Discriminator>> = vec![BTreeSet::new(); groups.len()];
    for (&group, pod_discs) in pod_group.iter().zip(&discs) {
        variants[group].extend(pod_discs);
    }
    // Per group, per discriminator: the identity.
    let undivided = Discriminator::default();
    let mut group_ids: Vec<HashMap<&Discriminator, u32>> = vec![HashMap::new(); groups.len()];
    // Per pod: its addresses and their identities.
    let mut pod_ids: Vec<Vec<(IpAddr, u32)>> = Vec::with_capacity(model.pods.len());
    let mut owner: HashMap<IpAddr, usize> = HashMap::new();
    let mut infos: BTreeMap<u32, IdentityInfo> = BTreeMap::new();
    for (index, (pod, &group)) in model.pods.iter().zip(&pod_group).enumerate() {
        let key = &keys[group];
        let split = variants[group].len() > 1;
        let mut ids = Vec::new();
        for (i, addr) in pod.ips.iter().enumerate() {
            if let Some(&other) = owner.get(addr) {
                let o = &model.pods[other];
                out.warnings.push(format!(
                    "pods {} and {} both have address {addr}; the first keeps it",
                    o.full_name, pod.full_name
                ));
                continue;
            }
            owner.insert(*addr, index);
            let disc = match discs.get(index).and_then(|d| d.get(i)) {
                Some(disc) if split => disc,
                _ => &undivided,
            };
            let id = *group_ids[group]
                .entry(disc)
                .or_insert_with(|| alloc.workload(key, disc));
            ids.push((*addr, id));
            let info = infos.entry(id).or_insert_with(|| IdentityInfo {
                id,
                namespace: key.namespace.clone(),
                labels: key.labels.clone(),
                service_account: key.service_account.clone(),
                spiffe_id: key.spiffe_id(node.trust_domain).into(),
                pods: Vec::new(),
            });
            // A pod's addresses come one after another: a pod is listed once.
            if info.pods.last() != Some(&pod.full_name) {
                info.pods.push(Arc::clone(&pod.full_name));
            }
        }
        pod_ids.push(ids);
    }
    out.identities = infos.into_values().collect();

    // 2. CIDR identities: every prefix a block names (its net and its exceptions).
    let prefixes: BTreeSet<IpNet> = blocks
        .iter()
        .flat_map(|b| std::iter::once(b.net).chain(b.except.iter().copied()))
        .collect();
    for net in &prefixes {
        let id = alloc.cidr(*net);
        out.cidr_identities.push((*net, id));
        out.state
            .ipcache
            .push(IpcacheRecord::remote(net.addr(), net.prefix_len(), id));
    }

    // 3. Local pods (endpoints) and the ipcache entries of every pod address.
    let mut local_pods: Vec<(usize, u32)> = Vec::new();
    out.state
        .ipcache
        .reserve_exact(pod_ids.iter().map(Vec::len).sum());
    for (index, ids) in pod_ids.iter().enumerate() {
        let ifindex = ids
            .iter()
            .find_map(|(addr, _)| node.local.get(addr).copied());
        for &(addr, id) in ids {
            out.state.ipcache.push(match ifindex {
                Some(ifindex) => IpcacheRecord::local(addr, id, ifindex),
                None => IpcacheRecord::remote(addr, if addr.is_ipv4() { 32 } else { 128 }, id),
            });
        }
        if let Some(ifindex) = ifindex
            && ifindex != 0
        {
            local_pods.push((index, ifindex));
        }
    }

    // 3b. The node's own addresses are `host`; the other nodes', as their Node objects and the
    // pods' `hostIP` name them, `remote-node`. A pod's address is the pod's, whatever else
    // claims it.
    let host_identity = |addr: &IpAddr| {
        if node.host.contains(addr) {
            Identity::HOST.0
        } else {
            Identity::REMOTE_NODE.0
        }
    };
    let nodes: BTreeSet<IpAddr> = node
        .host
        .iter()
        .copied()
        .chain(model.pods.iter().filter_map(|p| p.host_ip))
        .chain(model.nodes.values().flatten().copied())
        .filter(|addr| !owner.contains_key(addr))
        .collect();
    for addr in &nodes {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        out.state
            .ipcache
            .push(IpcacheRecord::remote(*addr, prefix, host_identity(addr)));
    }

    // 3c. Addresses on pods' interfaces that no known pod has: the pod's object has not arrived
    // yet (the CNI plugged it in first). Its interface is an endpoint that denies everything
    // both ways (but the node's own probes) until the object arrives: never unenforced.
    let known_interfaces: HashSet<u32> = local_pods.iter().map(|(_, i)| *i).collect();
    let mut unknown: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for (addr, ifindex) in node.local {
        if !owner.contains_key(addr) && !known_interfaces.contains(ifindex) && *ifindex != 0 {
            unknown.entry(*ifindex).or_default().push(*addr);
        }
    }
    for (ifindex, addrs) in &unknown {
        for addr in addrs {
            out.state.ipcache.push(IpcacheRecord::local(
                *addr,
                Identity::UNKNOWN_POD.0,
                *ifindex,
            ));
        }
    }

    // 4. Rule cookies, and the resolver that turns peers into remote identities.
    let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (group, key) in keys.iter().enumerate() {
        for (k, v) in &key.labels {
            by_label.entry((k, v)).or_default().push(group);
        }
    }
    let mut compiler = RuleCompiler {
        model,
        groups: &groups,
        group_ns_labels: keys.iter().map(|k| &k.namespace_labels).collect(),
        by_label,
        pod_ids: &pod_ids,
        cidr_ids: &out.cidr_identities,
        resolved: Vec::new(),
        resolved_index: HashMap::new(),
        last: None,
        // As many as last time: growing a 100k-rule list by doubling copied it and faulted in
        // fresh pages on every reload.
        rules: Vec::with_capacity(memory.trie.rules_last_built()),
    };
    // Each rule's cookie, per policy.
    let names: Vec<std::sync::Arc<str>> = model
        .policies
        .iter()
        .map(|p| p.display_name().into())
        .collect();
    let cookies: Vec<std::sync::Arc<[u32]>> = model
        .policies
        .iter()
        .zip(&names)
        .map(|(policy, name)| alloc.cookies.of_policy(name, policy))
        .collect();
    out.rules = alloc.cookies.table(&model.policies, &names, &cookies);

    // 5. Per local pod: the rules of the policies that select it, and its isolation.
    for &(pod_index, ifindex) in &local_pods {
        let pod = &model.pods[pod_index];
        let mut ingress = Isolation::default();
        let mut egress = Isolation::default();
        for (policy, cookies) in model.policies.iter().zip(&cookies) {
            if !policy.applies_to.matches(pod, ns_labels(pod)) {
                continue;
            }
            let audit = policy.mode == PolicyMode::Audit;
            ingress.add(policy.isolate_ingress, audit);
            egress.add(policy.isolate_egress, audit);
            for (rule, cookie) in policy.rules.iter().zip(cookies.iter()) {
                compiler.rule(policy, rule, *cookie, pod_index, ifindex);
            }
        }
        let flags = ingress.flags(EndpointFlags::ENFORCE_INGRESS, EndpointFlags::AUDIT_INGRESS)
            | egress.flags(EndpointFlags::ENFORCE_EGRESS, EndpointFlags::AUDIT_EGRESS);
        let ids = &pod_ids[pod_index];
        let identity = ids.first().map_or(Identity::WORLD.0, |(_, id)| *id);
        let mut info = EndpointInfo {
            endpoint_id: ifindex,
            identity,
            flags,
            ..EndpointInfo::default()
        };
        set_own_addresses(&mut info, &pod.ips);
        out.state.endpoints.push((ifindex, info));
        out.endpoints.push(EndpointSummary {
            pod: pod.full_name.to_string(),
            ifindex,
            identity,
            isolated_ingress: flags & EndpointFlags::ENFORCE_INGRESS != 0,
            isolated_egress: flags & EndpointFlags::ENFORCE_EGRESS != 0,
        });
    }
    for (ifindex, addrs) in &unknown {
        let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        out.warnings.push(format!(
            "interface {ifindex} carries {}, which no known pod has: denied both ways until its Pod arrives",
            names.join(", ")
        ));
        let mut info = EndpointInfo {
            endpoint_id: *ifindex,
            identity: Identity::UNKNOWN_POD.0,
            flags: EndpointFlags::ENFORCE_INGRESS | EndpointFlags::ENFORCE_EGRESS,
            ..EndpointInfo::default()
        };
        set_own_addresses(&mut info, addrs);
        out.state.endpoints.push((*ifindex, info));
        out.endpoints.push(EndpointSummary {
            pod: format!("(no known pod: {})", names.join(", ")),
            ifindex: *ifindex,
            identity: Identity::UNKNOWN_POD.0,
            isolated_ingress: true,
            isolated_egress: true,
        });
    }
    let rules = compiler.rules;
    out.rule_count = rules.len();
    out.state.policy = memory.trie.build(rules);
    out.state.audit = node.audit;

    // 6. mTLS: the destinations MeshPolicies select, and every pod address for the proxy.
    out.mesh = mesh_destinations(model, &pod_ids, &ns_labels, &mut out.warnings);
    out.state.mesh = out
        .mesh
        .iter()
        .map(|r| {
            (
                MeshKey {
                    identity: r.identity,
                    port: r.port,
                    proto: PROTO_TCP,
                    _pad: 0,
                },
                MeshEntry {
                    flags: if r.ingress.is_some() {
                        MeshFlags::REQUIRE_MTLS | MeshFlags::INGRESS
                    } else {
                        MeshFlags::REQUIRE_MTLS
                    },
                    cookie: 0,
                    brake_period_ns: r.brake.map_or(0, |b| b.period_ns),
                    brake_tau_ns: r.brake.map_or(0, |b| b.tau_ns),
                },
            )
        })
        .collect();
    let spiffe: HashMap<u32, &Arc<str>> = out
        .identities
        .iter()
        .map(|i| (i.id, &i.spiffe_id))
        .collect();
    let mut nodes: HashMap<&str, Arc<str>> = HashMap::new();
    let mut workloads = Vec::with_capacity(pod_ids.iter().map(Vec::len).sum());
    for (pod, ids) in model.pods.iter().zip(&pod_ids) {
        let node_name = pod
            .node_name
            .as_deref()
            .map(|n| Arc::clone(nodes.entry(n).or_insert_with(|| Arc::from(n))));
        for &(addr, identity) in ids {
            workloads.push(WorkloadAddr {
                addr,
                identity,
                spiffe_id: spiffe
                    .get(&identity)
                    .map_or_else(|| Arc::from(""), |id| Arc::clone(id)),
                pod: Arc::clone(&pod.full_name),
                node: node_name.clone(),
                host_ip: pod.host_ip,
                local: node.local.contains_key(&addr),
            });
        }
    }
    out.workloads = Workloads::new(workloads);

    // 7. Services: translated in the kernel at the client pod's interface.
    out.services = services::frontends(model, node.host);
    let ingress_ports: HashSet<(u32, u16)> = out
        .mesh
        .iter()
        .filter(|m| m.ingress.is_some())
        .map(|m| (m.identity, m.port))
        .collect();
    let workloads = &out.workloads;
    let takes_ingress = |addr: IpAddr, port: u16| {
        workloads
            .get(addr)
            .is_some_and(|w| w.local && ingress_ports.contains(&(w.identity, port)))
    };
    out.state.services = services::entries(&out.services, takes_ingress, &mut out.warnings);
    out
}

/// The endpoint's own addresses (its first IPv4 and first IPv6), which its egress must send
/// from.
fn set_own_addresses(info: &mut EndpointInfo, addrs: &[IpAddr]) {
    if let Some(IpAddr::V4(v4)) = addrs.iter().find(|a| a.is_ipv4()) {
        info.ipv4 = v4.octets();
    }
    if let Some(IpAddr::V6(v6)) = addrs.iter().find(|a| a.is_ipv6()) {
        info.ipv6 = v6.octets();
    }
}

/// (identity, port) → the MeshPolicies that select it and their principals.
fn mesh_destinations<'m>(
    model: &'m Model,
    pod_ids: &[Vec<(IpAddr, u32)>],
    ns_labels: &impl Fn(&PodModel) -> &'m BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Vec<MeshDestination> {
    let mut routes: BTreeMap<(u32, u16), MeshDestination> = BTreeMap::new();
    let mut policies: Vec<&MeshPolicyModel> = model.mesh_policies.iter().collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    for policy in policies {
        for (pod, ids) in model.pods.iter().zip(pod_ids) {
            if !policy.applies_to.matches(pod, ns_labels(pod)) {
                continue;
            }
            for port in mesh_ports(policy, pod) {
                for &(_, identity) in ids {
                    let route = routes
                        .entry((identity, port))
                        .or_insert_with(|| MeshDestination {
                            identity,
                            port,
                            policies: Vec::new(),
                            principals: Some(Vec::new()),
                            http_policy: None,
                            http: None,
                            brake: None,
                            ingress_policy: None,
                            ingress: None,
                        });
                    let name = format!("MeshPolicy {}", policy.name);
                    if !route.policies.contains(&name) {
                        if let Some(brake) = policy.brake {
                            let stricter = route.brake.is_none_or(|b| {
                                (brake.period_ns, std::cmp::Reverse(brake.tau_ns))
                                    > (b.period_ns, std::cmp::Reverse(b.tau_ns))
                            });
                            if stricter {
                                route.brake = Some(brake);
                            }
                        }
                        if let Some(http) = &policy.http {
                            match &route.http_policy {
                                None => {
                                    route.http_policy = Some(policy.name.clone());
                                    route.http = Some(std::sync::Arc::clone(http));
                                }
                                Some(first) => warnings.push(format!(
                                    "MeshPolicy {} and {first} both set http rules for identity {identity} port {port}; {first} applies",
                                    policy.name
                                )),
                            }
                        }
                        if let Some(ingress) = &policy.ingress {
                            match &route.ingress_policy {
                                None => {
                                    route.ingress_policy = Some(policy.name.clone());
                                    route.ingress = Some(std::sync::Arc::clone(ingress));
                                }
                                Some(first) => warnings.push(format!(
                                    "MeshPolicy {} and {first} both set ingress for identity {identity} port {port}; {first} applies",
                                    policy.name
                                )),
                            }
                        }
                        route.policies.push(name);
                        // Any policy that allows every principal opens the route to all of them.
                        route.principals = match (route.principals.take(), &policy.principals) {
                            (Some(mut list), Some(p)) => {
                                list.push(p.clone());
                                Some(list)
                            }
                            _ => None,
                        };
                    }
                }
            }
        }
    }
    routes.into_values().collect()
}

/// The TCP ports of `policy` on `pod` (names resolved on the pod; a name it lacks adds none).
fn mesh_ports(policy: &MeshPolicyModel, pod: &PodModel) -> Vec<u16> {
    let mut ports = Vec::new();
    for p in &policy.ports {
        match &p.port {
            PortMatch::Range(start, end) => ports.extend(*start..=*end),
            PortMatch::Named(name) => ports.extend(
                pod.ports
                    .iter()
                    .filter(|np| np.name == *name && np.proto == PROTO_TCP)
                    .map(|np| np.port),
            ),
            PortMatch::All => {}
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether the policies selecting a pod isolate it in one direction, and how.
#[derive(Debug, Default, Clone, Copy)]
struct Isolation {
    enforced: bool,
    audited: bool,
}

impl Isolation {
    fn add(&mut self, isolates: bool, audit: bool) {
        if isolates {
            if audit {
                self.audited = true;
            } else {
                self.enforced = true;
            }
        }
    }

    /// `enforce` when isolated at all; `audit` too when only audit-mode policies isolate.
    fn flags(self, enforce: u32, audit: u32) -> u32 {
        let mut flags = 0;
        if self.enforced || self.audited {
            flags |= enforce;
        }
        if self.audited && !self.enforced {
            flags |= audit;
        }
        flags
    }
}

struct RuleCompiler<'m> {
    model: &'m Model,
    /// Pod indices, grouped by identity key (what a workload selector looks at).
    groups: &'m [Vec<usize>],
    /// Per group: its namespace's labels.
    group_ns_labels: Vec<&'m Labels>,
    /// (label key, value) → the groups whose pods carry it, ascending.
    by_label: HashMap<(&'m str, &'m str), Vec<usize>>,
    pod_ids: &'m [Vec<(IpAddr, u32)>],
    cidr_ids: &'m [(IpNet, u32)],
    /// Resolved peers, and where each peer's is.
    resolved: Vec<Vec<Target>>,
    resolved_index: HashMap<&'m [PeerModel], usize>,
    /// The last peer list looked up, and its slot.
    last: Option<(&'m std::sync::Arc<[PeerModel]>, usize)>,
    rules: Vec<PolicyRule>,
}

impl<'m> RuleCompiler<'m> {
    fn rule(
        &mut self,
        policy: &'m PolicyModel,
        rule: &'m RuleModel,
        cookie: u32,
        pod_index: usize,
        endpoint_id: u32,
    ) {
        const EVERY_PEER: &[Target] = &[Target {
            identity: Identity::ANY.0,
            pod: None,
        }];
        let targets: &[Target] = match &rule.peers {
            None => EVERY_PEER,
            Some(peers) => {
                let slot = self.slot(peers);
                self.resolved.get(slot).map_or(&[], Vec::as_slice)
            }
        };
        let verdict = match rule.action {
            RuleAction::Allow => Verdict::ALLOW,
            RuleAction::Deny => Verdict::DENY,
        };
        let audit = verdict == Verdict::DENY && policy.mode == PolicyMode::Audit;
        let mut emit = |remote: u32, proto: Option<u8>, ports: Option<RangeInclusive<u16>>| {
            self.rules.push(PolicyRule {
                endpoint_id,
                remote: Identity(remote),
                direction: rule.direction,
                proto,
                ports,
                verdict,
                cookie,
                audit,
                proxy_port: 0,
            });
        };
        let Some(ports) = &rule.ports else {
            for t in targets {
                emit(t.identity, None, None);
            }
            return;
        };
        let ingress = rule.direction == Direction::INGRESS;
        for port in ports {
            let proto = Some(port.proto);
            match &port.port {
                PortMatch::All => targets.iter().for_each(|t| emit(t.identity, proto, None)),
                PortMatch::Range(a, b) => targets
                    .iter()
                    .for_each(|t| emit(t.identity, proto, Some(*a..=*b))),
                PortMatch::Named(name) => {
                    let number = |pod: usize| {
                        self.model.pods[pod]
                            .ports
                            .iter()
                            .find(|p| p.name == *name && p.proto == port.proto)
                            .map(|p| p.port)
                    };
                    if ingress {
                        // The destination is the endpoint itself.
                        if let Some(n) = number(pod_index) {
                            targets
                                .iter()
                                .for_each(|t| emit(t.identity, proto, Some(n..=n)));
                        }
                        continue;
                    }
                    // Egress: the name resolves on each destination pod; only pods have names.
                    let mut resolved = Vec::new();
                    for t in targets {
                        if t.identity == Identity::ANY.0 {
                            for (pod, ids) in self.pod_ids.iter().enumerate() {
                                if let Some(n) = number(pod) {
                                    resolved.extend(ids.iter().map(|(_, id)| (*id, n)));
                                }
                            }
                        } else if let Some(pod) = t.pod
                            && let Some(n) = number(pod)
                        {
                            resolved.push((t.identity, n));
                        }
                    }
                    for (id, n) in resolved {
                        emit(id, proto, Some(n..=n));
                    }
                }
            }
        }
    }

    /// Where in `resolved` the remote identities (and pods) a peer list names are (sorted,
    /// without duplicates). A list is resolved once per compile: rules of one policy that name
    /// equal lists share one (`model::share_peer_lists`), recognised here by address (a policy
    /// often names one peer in rule after rule); other equal lists are found by content.
    fn slot(&mut self, peers: &'m std::sync::Arc<[PeerModel]>) -> usize {
        if let Some((last, slot)) = self.last
            && std::sync::Arc::ptr_eq(last, peers)
        {
            return slot;
        }
        let slot = match self.resolved_index.get(&**peers) {
            Some(&slot) => slot,
            None => {
                let mut targets: Vec<Target> = peers.iter().flat_map(|p| self.compute(p)).collect();
                targets.sort();
                targets.dedup();
                self.resolved.push(targets);
                self.resolved_index.insert(peers, self.resolved.len() - 1);
                self.resolved.len() - 1
            }
        };
        self.last = Some((peers, slot));
        slot
    }

    fn compute(&self, peer: &PeerModel) -> Vec<Target> {
        let pod_targets = |filter: &dyn Fn(usize, &IpAddr) -> bool| {
            let mut out = Vec::new();
            for (pod, ids) in self.pod_ids.iter().enumerate() {
                for (addr, id) in ids {
                    if filter(pod, addr) {
                        out.push(Target {
                            identity: *id,
                            pod: Some(pod),
                        });
                    }
                }
            }
            out
        };
        match peer {
            PeerModel::Workloads(m) => {
                let mut out = Vec::new();
                let mut visit = |group: usize| {
                    let pods = &self.groups[group];
                    let Some(p) = pods.first().map(|&pod| &self.model.pods[pod]) else {
                        return;
                    };
                    if !m.matches(p, self.group_ns_labels[group]) {
                        return;
                    }
                    for &pod in pods {
                        out.extend(self.pod_ids[pod].iter().map(|(_, id)| Target {
                            identity: *id,
                            pod: Some(pod),
                        }));
                    }
                };
                // Only the groups carrying the selector's rarest required label can match.
                let candidates = m
                    .pods
                    .required_labels()
                    .map(|label| self.by_label.get(&label).map_or(&[][..], Vec::as_slice))
                    .min_by_key(|groups| groups.len());
                match candidates {
                    Some(groups) => groups.iter().for_each(|&g| visit(g)),
                    None => (0..self.groups.len()).for_each(visit),
                }
                out
            }
            PeerModel::Cidr(block) => {
                let mut t = pod_targets(&|_, addr| block.contains(addr));
                // A prefix's identity matches when the prefix lies inside the block and inside
                // none of its exceptions (longest-prefix resolution makes that exact).
                for (net, id) in self.cidr_ids {
                    if block.net.contains(net) && !block.except.iter().any(|e| e.contains(net)) {
                        t.push(Target {
                            identity: *id,
                            pod: None,
                        });
                    }
                }
                t
            }
            PeerModel::Entities(entities) => {
                let mut t = Vec::new();
                let reserved = |id: Identity| Target {
                    identity: id.0,
                    pod: None,
                };
                for e in entities {
                    match e {
                        EntityKind::All => t.push(reserved(Identity::ANY)),
                        EntityKind::Host => t.push(reserved(Identity::HOST)),
                        EntityKind::RemoteNode => t.push(reserved(Identity::REMOTE_NODE)),
                        EntityKind::World => {
                            t.push(reserved(Identity::WORLD));
                            t.extend(self.cidr_ids.iter().map(|(_, id)| Target {
                                identity: *id,
                                pod: None,
                            }));
                        }
                        EntityKind::Cluster => {
                            t.push(reserved(Identity::HOST));
                            t.push(reserved(Identity::REMOTE_NODE));
                            t.extend(pod_targets(&|_, _| true));
                        }
                    }
                }
                t
            }
        }
    }
}

/// Compiles `model` for a node where every pod is local, so that both ends of any pod-to-pod
/// flow are enforced (what offline explanations use).
pub fn compile_all_local(model: &Model, trust_domain: &str) -> Compiled {
    let mut local = BTreeMap::new();
    for (i, pod) in model.pods.iter().enumerate() {
        for ip in &pod.ips {
            // Any distinct non-zero index will do: it stands for the pod's interface.
            local.insert(*ip, i as u32 + 1);
        }
    }
    let node = Node {
        local: &local,
        host: &BTreeSet::new(),
        trust_domain,
        audit: false,
    };
    compile(model, node, &mut Memory::new())
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::path::Path;

    use super::*;
    use crate::policy::{self, source, verdict};

    const PROTO_TCP: u8 = 6;
    const PROTO_UDP: u8 = 17;

    /// The example set in `policies/`, compiled with every pod local, decided for a fixed list of
    /// flows: compared with `policies/expected-verdicts.txt` (regenerate with
    /// `RAMPART_UPDATE_GOLDEN=1`).
    #[test]
    fn the_example_policies_decide_as_documented() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let checked = match policy::check(source::read_dir(&dir)) {
            Ok(c) => c,
            Err(d) => panic!("policies/ has errors: {d:?}"),
        };
        let pods: Vec<(String, IpAddr)> = checked
            .model
            .pods
            .iter()
            .map(|p| (p.full_name.to_string(), p.ips[0]))
            .collect();
        let local: BTreeMap<IpAddr, u32> = pods
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| (*ip, 10 + i as u32))
            .collect();
        let node = Node {
            local: &local,
            host: &BTreeSet::new(),
            trust_domain: "cluster.local",
            audit: false,
        };
        let compiled = compile(&checked.model, node, &mut Memory::new());
        let mut out = String::from(
            "# What the example policies decide (generated by the compiler's golden test; see\n# agent/src/policy/compile.rs). Every pod is local.\n\nidentities:\n",
        );
        for i in &compiled.identities {
            let _ = writeln!(out, "  {} {} {}", i.id, i.pods.join(","), i.spiffe_id);
        }
        out.push_str("\nflows:\n");
        let world: IpAddr = "203.0.113.7".parse().expect("addr");
        let metadata: IpAddr = "169.254.169.254".parse().expect("addr");
        let mut flows: Vec<(String, IpAddr, String, IpAddr, u8, u16)> = Vec::new();
        for (from, src) in &pods {
            for (to, dst) in &pods {
                if from == to {
                    continue;
                }
                for (proto, port) in [(PROTO_TCP, 8080), (PROTO_TCP, 5432), (PROTO_UDP, 53)] {
                    flows.push((from.clone(), *src, to.clone(), *dst, proto, port));
                }
            }
            flows.push((
                from.clone(),
                *src,
                "metadata".into(),
                metadata,
                PROTO_TCP,
                80,
            ));
        }
        for (to, dst) in &pods {
            flows.push(("world".into(), world, to.clone(), *dst, PROTO_TCP, 8080));
        }
        for (from, src, to, dst, proto, port) in flows {
            let d = verdict::decide(&compiled.state, src, dst, proto, port);
            let end = |e: Option<verdict::EndDecision>| match e {
                None => "-".to_owned(),
                Some(e) => {
                    let rule = match e.cookie {
                        0 => "default".to_owned(),
                        c => compiled
                            .rules
                            .get(&c)
                            .map(|r| {
                                format!(
                                    "{}#{}[{}]",
                                    r.policy.replace(' ', ":"),
                                    r.direction,
                                    r.index
                                )
                            })
                            .unwrap_or_default(),
                    };
                    let v = if e.verdict == Verdict::DENY && e.audit {
                        "audit"
                    } else {
                        e.verdict.name()
                    };
                    format!("{v}({rule})")
                }
            };
            let _ = writeln!(
                out,
                "  {:<18} -> {:<18} {}/{:<5} {:<5}  egress {}  ingress {}",
                from,
                to,
                if proto == PROTO_TCP { "tcp" } else { "udp" },
                port,
                if d.allowed() { "PASS" } else { "DROP" },
                end(d.egress),
                end(d.ingress),
            );
        }
        let golden = dir.join("expected-verdicts.txt");
        if std::env::var_os("RAMPART_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &out).expect("writing the golden file");
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(
            want == out,
            "policies/ decide differently from {} (RAMPART_UPDATE_GOLDEN=1 regenerates it):\n{out}",
            golden.display()
        );
    }

    /// A policy added (before the others by name) or removed leaves every other rule's cookie
    /// as it was: cookies were numbered in a row, so one new policy renumbered the rest, which
    /// rewrote their kernel entries and moved their counters to other policies.
    #[test]
    fn rule_cookies_stay_with_their_rules_across_compilations() {
        let policy = |name: &str, port: u16| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {port}}}]\n  - ports: [{{port: {}}}]\n",
                port + 1
            )
        };
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: c}]}\nstatus: {podIP: 10.0.1.5}\n";
        let local: BTreeMap<IpAddr, u32> = [("10.0.1.5".parse().expect("ip"), 7)].into();
        let node = Node {
            local: &local,
            host: &BTreeSet::new(),
            trust_domain: "cluster.local",
            audit: false,
        };
        let mut alloc = Memory::new();
        let mut compile_set = |names: &[(&str, u16)]| {
            let mut text = pod.to_owned();
            for (name, port) in names {
                text.push_str("---\n");
                text.push_str(&policy(name, *port));
            }
            let checked =
                policy::check(source::parse_str(Path::new("c.yaml"), &text)).expect("valid");
            let compiled = compile(&checked.model, node, &mut alloc);
            alloc.finish();
            compiled
                .rules
                .iter()
                .map(|(cookie, r)| (format!("{}#{}", r.policy, r.index), cookie))
                .collect::<BTreeMap<String, u32>>()
        };
        let before = compile_set(&[("b", 80), ("c", 90)]);
        let after = compile_set(&[("a", 70), ("b", 80), ("c", 90)]);
        assert_eq!(after.len(), 6);
        for (rule, cookie) in &before {
            assert_eq!(after.get(rule), Some(cookie), "{rule} kept its cookie");
        }
        let removed = compile_set(&[("a", 70), ("c", 90)]);
        for rule in ["NetworkPolicy shop/c#0", "NetworkPolicy shop/c#1"] {
            assert!(before.contains_key(rule), "{rule} in {before:?}");
            assert_eq!(removed.get(rule), before.get(rule), "{rule}");
        }
        let fresh: std::collections::BTreeSet<u32> = removed.values().copied().collect();
        assert_eq!(fresh.len(), 4, "every rule has its own cookie");
    }

    /// Whether the compiled state lets a new TCP flow from `from` to `to`:80 through.
    fn tcp_80_allowed(compiled: &Compiled, from: &str, to: &str) -> bool {
        crate::policy::verdict::decide(
            &compiled.state,
            from.parse().expect("ip"),
            to.parse().expect("ip"),
            6,
            80,
        )
        .allowed()
    }

    /// The node's own addresses are `host` and the other nodes' (their Node objects', the pods'
    /// `hostIP`) `remote-node`, for the `host` and `remote-node` entities; a pod's address stays
    /// the pod's.
    #[test]
    fn node_addresses_are_host_and_remote_node() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: c}]}
status: {podIP: 10.0.1.5, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c, image: c}]}
status: {podIP: 10.0.2.5, hostIP: 192.168.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
";
        let mut checked =
            policy::check(source::parse_str(Path::new("n.yaml"), text)).expect("valid");
        // Node objects (from the Kubernetes source): this node's and a node without pods.
        // Also a Node that claims a pod's address and repeats another node's (the pod keeps
        // its address; each address is in the ipcache once).
        for (name, addrs) in [
            ("n1", &["192.168.0.1"][..]),
            ("n3", &["192.168.0.3"]),
            ("n4", &["10.0.2.5", "192.168.0.2", "192.168.0.2"]),
        ] {
            checked.model.nodes.insert(
                name.into(),
                addrs.iter().map(|a| a.parse().expect("ip")).collect(),
            );
        }
        let local: BTreeMap<IpAddr, u32> = [("10.0.1.5".parse().expect("ip"), 7)].into();
        let host: BTreeSet<IpAddr> = ["192.168.0.1", "10.0.1.1", "10.0.2.5"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let node = Node {
            local: &local,
            host: &host,
            trust_domain: "cluster.local",
            audit: false,
        };
        let compiled = compile(&checked.model, node, &mut Memory::new());
        let identity_of = |addr: &str| {
            let addr: IpAddr = addr.parse().expect("ip");
            let found: Vec<u32> = compiled
                .state
                .ipcache
                .iter()
                .filter(|r| r.addr == addr)
                .map(|r| r.identity)
                .collect();
            assert!(found.len() <= 1, "{addr} once in the ipcache: {found:?}");
            found.first().copied()
        };
        assert_eq!(identity_of("192.168.0.1"), Some(Identity::HOST.0));
        assert_eq!(identity_of("10.0.1.1"), Some(Identity::HOST.0));
        assert_eq!(identity_of("192.168.0.2"), Some(Identity::REMOTE_NODE.0));
        assert_eq!(identity_of("192.168.0.3"), Some(Identity::REMOTE_NODE.0));
        let pod = identity_of("10.0.2.5").expect("a pod's address");
        assert!(
            pod >= Identity::FIRST_WORKLOAD.0,
            "the pod's, not the host's: {pod}"
        );
        // Under default deny the node still reaches its pod; another node does not.
        assert!(tcp_80_allowed(&compiled, "192.168.0.1", "10.0.1.5"));
        assert!(!tcp_80_allowed(&compiled, "192.168.0.2", "10.0.1.5"));
    }

    /// A pod's interface whose address no known pod has (its object has not arrived): an
    /// endpoint that denies both ways, but the node's own probes; never left unenforced.
    #[test]
    fn an_address_of_no_known_pod_on_a_pods_interface_is_denied_both_ways() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: c}]}
status: {podIP: 10.0.1.5}
";
        let checked = policy::check(source::parse_str(Path::new("u.yaml"), text)).expect("valid");
        let local: BTreeMap<IpAddr, u32> = [
            ("10.0.1.5".parse().expect("ip"), 7),
            ("10.0.1.6".parse().expect("ip"), 8),
        ]
        .into();
        let host: BTreeSet<IpAddr> = ["192.168.0.1".parse().expect("ip")].into();
        let node = Node {
            local: &local,
            host: &host,
            trust_domain: "cluster.local",
            audit: false,
        };
        let compiled = compile(&checked.model, node, &mut Memory::new());
        let (_, newcomer) = compiled
            .state
            .endpoints
            .iter()
            .find(|(i, _)| *i == 8)
            .expect("an endpoint for the unknown pod's interface");
        assert_eq!(newcomer.identity, Identity::UNKNOWN_POD.0);
        assert!(compiled.warnings.iter().any(|w| w.contains("10.0.1.6")));
        let decide = |from: &str, to: &str| tcp_80_allowed(&compiled, from, to);
        assert!(!decide("10.0.1.5", "10.0.1.6"), "nothing reaches it");
        assert!(!decide("10.0.1.6", "10.0.1.5"), "it reaches nothing");
        assert!(!decide("10.0.1.6", "8.8.8.8"), "not even outside");
        assert!(decide("192.168.0.1", "10.0.1.6"), "but the node's probes");
        assert!(
            decide("10.0.1.5", "8.8.8.8"),
            "the known pod is not isolated"
        );
    }

    #[test]
    fn mesh_policies_mark_destinations_and_resolve_named_ports() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {serviceAccountName: db, nodeName: n2, containers: [{name: c, image: c, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIP: 10.0.2.5, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {serviceAccountName: api, nodeName: n1, containers: [{name: c, image: c}]}
status: {podIP: 10.0.1.5, hostIP: 192.168.0.1}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {name: db-mtls}
spec:
  appliesTo: {podSelector: {matchLabels: {app: db}}}
  ports: [{port: pg}, {port: 9000, endPort: 9001}]
  allowedPrincipals: {serviceAccounts: [shop/api]}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {name: db-metrics-open}
spec:
  appliesTo: {podSelector: {matchLabels: {app: db}}}
  ports: [{port: 9001}]
";
        let checked = policy::check(source::parse_str(Path::new("m.yaml"), text)).expect("valid");
        let local: BTreeMap<IpAddr, u32> = [("10.0.1.5".parse().expect("ip"), 7)].into();
        let node = Node {
            local: &local,
            host: &BTreeSet::new(),
            trust_domain: "cluster.local",
            audit: false,
        };
        let compiled = compile(&checked.model, node, &mut Memory::new());
        let db = compiled
            .identities
            .iter()
            .find(|i| i.pods.len() == 1 && &*i.pods[0] == "shop/db")
            .expect("db identity")
            .id;
        let ports: Vec<u16> = compiled.mesh.iter().map(|r| r.port).collect();
        assert_eq!(ports, [5432, 9000, 9001]);
        assert!(compiled.mesh.iter().all(|r| r.identity == db));
        assert_eq!(compiled.state.mesh.len(), 3);
        assert!(compiled.state.mesh.iter().all(|(k, v)| k.identity == db
            && k.proto == PROTO_TCP
            && v.flags == MeshFlags::REQUIRE_MTLS));
        // 9001 is opened to every principal by the second policy; 5432 only to shop/api.
        let route = |port| {
            compiled
                .mesh
                .iter()
                .find(|r| r.port == port)
                .expect("route")
        };
        assert!(route(9001).principals.is_none());
        assert_eq!(route(9001).policies.len(), 2);
        let p = route(5432).principals.as_ref().expect("restricted");
        assert_eq!(
            p[0].service_accounts,
            [("shop".to_owned(), "api".to_owned())]
        );
        // Every pod address, with its node's address and whether it is local.
        let api = compiled
            .workloads
            .iter()
            .find(|w| &*w.pod == "shop/api")
            .expect("api");
        assert!(api.local);
        assert_eq!(&*api.spiffe_id, "spiffe://cluster.local/ns/shop/sa/api");
        let dbw = compiled
            .workloads
            .iter()
            .find(|w| &*w.pod == "shop/db")
            .expect("db");
        assert!(!dbw.local);
        assert_eq!(dbw.host_ip, Some("192.168.0.2".parse().expect("ip")));
        assert_eq!(dbw.node.as_deref(), Some("n2"));
    }
}
