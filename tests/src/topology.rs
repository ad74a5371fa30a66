//! Node/pod topologies, as the mission's test topology describes them: a node is a network
//! namespace; each pod is a namespace joined to its node by a veth pair; nodes are joined by an
//! underlay bridge in a fabric namespace.
//!
//! Addressing and routing, per pod (the model of Calico and Cilium's routed mode):
//! - the pod's `eth0` holds its IP as a /32 and routes everything via the gateway `169.254.1.1`;
//! - the node's end of the pair (`rpv<N>`) holds `169.254.1.1/32`, so the pod's ARP for its
//!   gateway is answered by the node, and the node routes the pod's /32 to `rpv<N>`;
//! - nodes forward (`ip_forward=1`); a node reaches a pod on another node through that node's
//!   underlay address (`192.168.200.<n>` on `uplink`).
//!
//! Every pod is dual-stack: its IPv6 address is derived from its IPv4 one (`fd00::a.b.c.d`, see
//! [`ipv6_of`]), the gateway is `fe80::1` on the node-side veth, and the underlay has
//! `fd00:ffff::<n>`. Duplicate address detection is off in every namespace, so addresses are
//! usable at once.
//!
//! With [`PodNetwork::Bridge`] ([`TopologyBuilder::network`]), pods are plugged as the bridge
//! plugin, flannel and kubenet do it instead: the node-side veths are ports of a bridge `cni0`
//! that holds the gateway (the first address of the smallest subnet covering the node's pods,
//! IPv4 and its IPv6 twin); each pod holds its address in that subnet with a default route via
//! the gateway; the node has no route per pod, and pods of one node reach each other through
//! the bridge alone.
//!
//! With [`TopologyBuilder::outside`], a client outside the cluster joins the underlay
//! ([`OUTSIDE_IP`], [`OUTSIDE_IP6`]) and reaches each pod through its node's underlay address, as
//! a load balancer in front of the nodes would; no agent knows its address (`world`).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail};

use crate::cmd;
use crate::netns::Netns;

/// The pod's gateway, held by every node-side veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway (link-local), held by every node-side veth.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The Kubernetes API server stand-in's address on the underlay (on the fabric's bridge), see
/// [`crate::kube_api::ApiServer::start_on_underlay`].
pub const API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 250);
/// The address of the client outside the cluster, on the underlay.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 100);
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 0x100);

/// A pod's IPv6 address: `fd00::` followed by its IPv4 address's 32 bits.
pub fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

/// How pods are plugged into their node (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodNetwork {
    /// A host route per pod on its veth (Calico, Cilium's routed mode, AWS VPC CNI).
    #[default]
    Routed,
    /// Pods' veths on a bridge with the gateway (the bridge plugin, flannel, kubenet).
    Bridge,
}

/// The bridge that holds a node's pods' veths in [`PodNetwork::Bridge`].
pub const POD_BRIDGE: &str = "cni0";

#[derive(Debug)]
pub struct Pod {
    /// As given to the builder, e.g. `x/a`.
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub ns: Netns,
    /// The node-side veth of this pod, in the node's namespace (where the agent attaches).
    pub host_if: String,
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ns: Netns,
    /// Address on the underlay, when the topology has more than one node.
    pub underlay_ip: Option<Ipv4Addr>,
    pub underlay_ip6: Option<Ipv6Addr>,
}

/// A built topology. Dropping it deletes every namespace (and with them every link).
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: pods, then nodes and the outside client, then the fabric.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    outside: Option<Netns>,
    _fabric: Option<Netns>,
    network: PodNetwork,
    /// Per node (bridge networks): the pods' prefix length, IPv4.
    subnets: Vec<(String, u8)>,
}

#[derive(Debug, Clone)]
struct PodSpec {
    node: String,
    name: String,
    ip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    prefix: String,
    nodes: Vec<String>,
    pods: Vec<PodSpec>,
    outside: bool,
    network: PodNetwork,
}

impl Topology {
    /// A builder whose namespaces are named with `prefix` (see [`crate::netns`]).
    pub fn builder(prefix: &str) -> TopologyBuilder {
        TopologyBuilder {
            prefix: prefix.to_owned(),
            nodes: Vec::new(),
            pods: Vec::new(),
            outside: false,
            network: PodNetwork::Routed,
        }
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The namespace of the underlay bridge (`br0`), when there is more than one node.
    pub fn fabric(&self) -> Option<&Netns> {
        self._fabric.as_ref()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The client outside the cluster (see [`TopologyBuilder::outside`]); panics if there is
    /// none (a test bug).
    pub fn outside(&self) -> &Netns {
        match &self.outside {
            Some(ns) => ns,
            None => panic!("this topology has no outside client"),
        }
    }

    /// The pod called `name`; panics if there is none (a test bug).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in this topology"))
    }

    /// The node called `name`; panics if there is none (a test bug).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in this topology"))
    }

    /// The node-side veth names of the pods on `node`: the interfaces an agent there attaches to.
    /// Deletes pod `name`'s veth pair and makes a new one with the same names and addresses
    /// (a new interface index): what a CNI does when a pod of the same name is created again
    /// (a StatefulSet's pod, or a restarted one on a CNI that names veths after pods).
    pub fn replug(&self, name: &str) -> anyhow::Result<()> {
        let pod = self.pod(name);
        let node = self.node(&pod.node);
        cmd::ip(&["-n", node.ns.name(), "link", "del", &pod.host_if])?;
        match self.network {
            PodNetwork::Routed => plug(node.ns.name(), pod.ns.name(), &pod.host_if, pod.ip),
            PodNetwork::Bridge => {
                let prefix_len = self
                    .subnets
                    .iter()
                    .find(|(n, _)| *n == pod.node)
                    .map(|(_, len)| *len)
                    .context("the pod's node has no bridge")?;
                plug_bridged(
                    node.ns.name(),
                    pod.ns.name(),
                    &pod.host_if,
                    pod.ip,
                    prefix_len,
                )
            }
        }
    }

    /// How this topology's pods are plugged.
    pub fn network(&self) -> PodNetwork {
        self.network
    }

    pub fn pod_interfaces(&self, node: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.host_if.clone())
            .collect()
    }
}

impl TopologyBuilder {
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// How pods are plugged (default: [`PodNetwork::Routed`]).
    pub fn network(mut self, network: PodNetwork) -> Self {
        self.network = network;
        self
    }

    /// A client outside the cluster on the underlay (needs two nodes or more).
    pub fn outside(mut self) -> Self {
        self.outside = true;
        self
    }

    /// A pod `name` (e.g. `x/a`) on `node` with IPv4 address `ip`.
    pub fn pod(mut self, node: &str, name: &str, ip: Ipv4Addr) -> Self {
        self.pods.push(PodSpec {
            node: node.to_owned(),
            name: name.to_owned(),
            ip,
        });
        self
    }

    /// Creates every namespace, link, address and route. On error, whatever was created is
    /// deleted again (the guards built so far are dropped).
    pub fn build(self) -> anyhow::Result<Topology> {
        for pod in &self.pods {
            if !self.nodes.contains(&pod.node) {
                bail!("pod {} is on unknown node {}", pod.name, pod.node);
            }
        }
        let mut nodes = Vec::new();
        for (i, name) in self.nodes.iter().enumerate() {
            let ns = Netns::create(&self.prefix, &format!("n{i}"))?;
            no_dad(&ns)?;
            sysctl(&ns, "net.ipv4.ip_forward", "1")?;
            sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
            nodes.push(Node {
                name: name.clone(),
                ns,
                underlay_ip: None,
                underlay_ip6: None,
            });
        }
        let fabric = if nodes.len() > 1 {
            Some(build_underlay(&self.prefix, &mut nodes)?)
        } else {
            None
        };
        let outside = match (&fabric, self.outside) {
            (Some(fabric), true) => Some(build_outside(&self.prefix, fabric)?),
            (None, true) => bail!("an outside client needs an underlay (two nodes or more)"),
            (_, false) => None,
        };

        let subnets = match self.network {
            PodNetwork::Routed => Vec::new(),
            PodNetwork::Bridge => build_bridges(&nodes, &self.pods)?,
        };
        let mut pods = Vec::new();
        for (i, spec) in self.pods.iter().enumerate() {
            let node = nodes
                .iter()
                .find(|n| n.name == spec.node)
                .context("pod's node")?;
            let bridged = subnets
                .iter()
                .find(|(n, _)| *n == spec.node)
                .map(|(_, len)| *len);
            let pod = build_pod(&self.prefix, i, spec, node, bridged)?;
            pods.push(pod);
        }
        // Every node routes the pods of the other nodes through their node's underlay address;
        // the outside client routes every pod that way.
        let routers = nodes
            .iter()
            .map(|n| (n.ns.name(), Some(n.name.as_str())))
            .chain(outside.iter().map(|ns| (ns.name(), None)));
        for (n, own) in routers {
            for pod in pods.iter().filter(|p| Some(p.node.as_str()) != own) {
                let remote = nodes
                    .iter()
                    .find(|n| n.name == pod.node)
                    .context("pod's node")?;
                let (Some(via), Some(via6)) = (remote.underlay_ip, remote.underlay_ip6) else {
                    bail!("remote node without an underlay address");
                };
                let (dst, dst6) = (format!("{}/32", pod.ip), format!("{}/128", pod.ip6));
                cmd::ip(&[
                    "-n",
                    n,
                    "route",
                    "add",
                    &dst,
                    "via",
                    &via.to_string(),
                    "dev",
                    "uplink",
                ])?;
                cmd::ip(&[
                    "-n",
                    n,
                    "-6",
                    "route",
                    "add",
                    &dst6,
                    "via",
                    &via6.to_string(),
                    "dev",
                    "uplink",
                ])?;
            }
        }
        Ok(Topology {
            pods,
            nodes,
            outside,
            _fabric: fabric,
            network: self.network,
            subnets,
        })
    }
}

fn build_underlay(prefix: &str, nodes: &mut [Node]) -> anyhow::Result<Netns> {
    let fabric = Netns::create(prefix, "fab")?;
    let f = fabric.name().to_owned();
    cmd::ip(&["-n", &f, "link", "add", "br0", "type", "bridge"])?;
    cmd::ip(&["-n", &f, "link", "set", "br0", "up"])?;
    cmd::ip(&[
        "-n",
        &f,
        "addr",
        "add",
        &format!("{API_SERVER_IP}/24"),
        "dev",
        "br0",
    ])?;
    for (i, node) in nodes.iter_mut().enumerate() {
        let port = format!("n{i}");
        let index = u8::try_from(i + 1).context("too many nodes")?;
        let addr = Ipv4Addr::new(192, 168, 200, index);
        let addr6 = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, u16::from(index));
        let n = node.ns.name();
        cmd::ip(&[
            "link", "add", "uplink", "netns", n, "type", "veth", "peer", "name", &port, "netns", &f,
        ])?;
        cmd::ip(&["-n", &f, "link", "set", &port, "master", "br0", "up"])?;
        cmd::ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "uplink",
        ])?;
        cmd::ip(&[
            "-n",
            n,
            "-6",
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            "uplink",
            "nodad",
        ])?;
        cmd::ip(&["-n", n, "link", "set", "uplink", "up"])?;
        node.underlay_ip = Some(addr);
        node.underlay_ip6 = Some(addr6);
    }
    Ok(fabric)
}

/// The outside client's namespace, its `uplink` on the fabric's bridge (routes are added by
/// the caller).
fn build_outside(prefix: &str, fabric: &Netns) -> anyhow::Result<Netns> {
    let ns = Netns::create(prefix, "out")?;
    no_dad(&ns)?;
    let (n, f) = (ns.name(), fabric.name());
    cmd::ip(&[
        "link", "add", "uplink", "netns", n, "type", "veth", "peer", "name", "out", "netns", f,
    ])?;
    cmd::ip(&["-n", f, "link", "set", "out", "master", "br0", "up"])?;
    cmd::ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{OUTSIDE_IP}/24"),
        "dev",
        "uplink",
    ])?;
    cmd::ip(&[
        "-n",
        n,
        "-6",
        "addr",
        "add",
        &format!("{OUTSIDE_IP6}/64"),
        "dev",
        "uplink",
        "nodad",
    ])?;
    cmd::ip(&["-n", n, "link", "set", "uplink", "up"])?;
    Ok(ns)
}

/// Joins a pod's namespace to its node with a veth pair (`host_if` on the node, `eth0` in the
/// pod) and the addresses and routes of the routed model (see the module's comment).
fn plug(n: &str, p: &str, host_if: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let ip6 = ipv6_of(ip);
    let gw6 = POD_GATEWAY6.to_string();
    let gw = POD_GATEWAY.to_string();
    cmd::ip(&[
        "link", "add", host_if, "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p,
    ])?;
    cmd::ip(&["-n", p, "addr", "add", &format!("{}/32", ip), "dev", "eth0"])?;
    cmd::ip(&["-n", p, "link", "set", "eth0", "up"])?;
    cmd::ip(&["-n", p, "route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    cmd::ip(&[
        "-n", p, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    cmd::ip(&["-n", n, "addr", "add", &format!("{gw}/32"), "dev", host_if])?;
    cmd::ip(&["-n", n, "link", "set", host_if, "up"])?;
    cmd::ip(&[
        "-n",
        n,
        "route",
        "add",
        &format!("{}/32", ip),
        "dev",
        host_if,
    ])?;
    cmd::ip(&[
        "-n",
        p,
        "-6",
        "addr",
        "add",
        &format!("{ip6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    cmd::ip(&[
        "-n", p, "-6", "route", "add", "default", "via", &gw6, "dev", "eth0",
    ])?;
    cmd::ip(&[
        "-n",
        n,
        "-6",
        "addr",
        "add",
        &format!("{gw6}/64"),
        "dev",
        host_if,
        "nodad",
    ])?;
    cmd::ip(&[
        "-n",
        n,
        "-6",
        "route",
        "add",
        &format!("{ip6}/128"),
        "dev",
        host_if,
    ])?;
    Ok(())
}

/// `bridged`: the node's pod prefix length on its bridge; `None`: routed.
fn build_pod(
    prefix: &str,
    index: usize,
    spec: &PodSpec,
    node: &Node,
    bridged: Option<u8>,
) -> anyhow::Result<Pod> {
    let label = format!("p{index}");
    let ns = Netns::create(prefix, &label)?;
    no_dad(&ns)?;
    let ip6 = ipv6_of(spec.ip);
    let host_if = format!("rpv{index}");
    match bridged {
        None => plug(node.ns.name(), ns.name(), &host_if, spec.ip)?,
        Some(len) => plug_bridged(node.ns.name(), ns.name(), &host_if, spec.ip, len)?,
    }
    Ok(Pod {
        name: spec.name.clone(),
        node: node.name.clone(),
        ip: spec.ip,
        ip6,
        ns,
        host_if,
    })
}

/// The smallest prefix (at most a /24) covering `ips`: (network, length).
fn covering(ips: &[Ipv4Addr]) -> (Ipv4Addr, u8) {
    let first = ips.first().map_or(0, |ip| u32::from(*ip));
    let differ = ips
        .iter()
        .fold(0u32, |acc, ip| acc | (u32::from(*ip) ^ first));
    let len = (differ.leading_zeros() as u8).min(24);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    (Ipv4Addr::from(first & mask), len)
}

/// The gateway of a bridge subnet: its first address.
fn gateway_of(network: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(network) + 1)
}

/// A bridge `cni0` on each node with pods, holding the gateway of the smallest subnet covering
/// them (and its IPv6 twin); fails if two nodes' subnets overlap or the gateway is a pod's.
/// Returns each node's prefix length.
fn build_bridges(nodes: &[Node], pods: &[PodSpec]) -> anyhow::Result<Vec<(String, u8)>> {
    let mut subnets: Vec<(String, Ipv4Addr, u8)> = Vec::new();
    for node in nodes {
        let ips: Vec<Ipv4Addr> = pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| p.ip)
            .collect();
        if ips.is_empty() {
            continue;
        }
        let (network, len) = covering(&ips);
        let gw = gateway_of(network);
        if ips.contains(&gw) {
            bail!(
                "bridge topology: node {}'s gateway {gw} is a pod's address",
                node.name
            );
        }
        let inside = |ip: Ipv4Addr, net: Ipv4Addr, len: u8| {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(ip) & mask == u32::from(net)
        };
        if let Some(other) = pods
            .iter()
            .find(|p| p.node != node.name && inside(p.ip, network, len))
        {
            bail!(
                "bridge topology: {} of node {} is inside node {}'s subnet {network}/{len}",
                other.ip,
                other.node,
                node.name
            );
        }
        let n = node.ns.name();
        cmd::ip(&["-n", n, "link", "add", POD_BRIDGE, "type", "bridge"])?;
        cmd::ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{gw}/{len}"),
            "dev",
            POD_BRIDGE,
        ])?;
        cmd::ip(&[
            "-n",
            n,
            "-6",
            "addr",
            "add",
            &format!("{}/{}", ipv6_of(gw), 96 + u32::from(len)),
            "dev",
            POD_BRIDGE,
            "nodad",
        ])?;
        cmd::ip(&["-n", n, "link", "set", POD_BRIDGE, "up"])?;
        subnets.push((node.name.clone(), network, len));
    }
    Ok(subnets
        .into_iter()
        .map(|(name, _, len)| (name, len))
        .collect())
}

/// Joins a pod's namespace to its node's bridge: `host_if` a port of `cni0`, the pod's `eth0`
/// in the node's subnet (`prefix_len`) with a default route via the bridge's gateway.
fn plug_bridged(
    n: &str,
    p: &str,
    host_if: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> anyhow::Result<()> {
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    };
    let gw = gateway_of(Ipv4Addr::from(u32::from(ip) & mask));
    let (ip6, gw6) = (ipv6_of(ip), ipv6_of(gw));
    let len6 = 96 + u32::from(prefix_len);
    cmd::ip(&[
        "link", "add", host_if, "netns", n, "type", "veth", "peer", "name", "eth0", "netns", p,
    ])?;
    cmd::ip(&[
        "-n",
        p,
        "addr",
        "add",
        &format!("{ip}/{prefix_len}"),
        "dev",
        "eth0",
    ])?;
    cmd::ip(&[
        "-n",
        p,
        "-6",
        "addr",
        "add",
        &format!("{ip6}/{len6}"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    cmd::ip(&["-n", p, "link", "set", "eth0", "up"])?;
    cmd::ip(&[
        "-n",
        p,
        "route",
        "add",
        "default",
        "via",
        &gw.to_string(),
        "dev",
        "eth0",
    ])?;
    cmd::ip(&[
        "-n",
        p,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gw6.to_string(),
        "dev",
        "eth0",
    ])?;
    cmd::ip(&["-n", n, "link", "set", host_if, "master", POD_BRIDGE, "up"])?;
    Ok(())
}

/// Duplicate address detection off for interfaces created from now on in `ns`.
fn no_dad(ns: &Netns) -> anyhow::Result<()> {
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
}

fn sysctl(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    cmd::in_ns(ns.name(), "sysctl", &["-qw", &format!("{key}={value}")])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_subnet_is_the_smallest_covering_the_nodes_pods_at_most_a_24() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("address");
        assert_eq!(
            covering(&[ip("10.244.1.10"), ip("10.244.2.11"), ip("10.244.3.12")]),
            (ip("10.244.0.0"), 22)
        );
        assert_eq!(covering(&[ip("10.244.1.10")]), (ip("10.244.1.0"), 24));
        assert_eq!(gateway_of(ip("10.244.0.0")), ip("10.244.0.1"));
    }
}
