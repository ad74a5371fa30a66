//! What several namespace tests share: policy objects, as the directory source reads them, and
//! the probe between their pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::{Topology, probe};

/// Whether pod `shop/a` reaches `b`:`port` over TCP (an echo round trip within 700 ms).
pub fn a_reaches_b(topo: &Topology, b: Ipv4Addr, port: u16) -> bool {
    probe::tcp(
        &topo.pod("shop/a").ns,
        SocketAddr::new(IpAddr::V4(b), port),
        Duration::from_millis(700),
    )
    .reached()
}

/// Namespace `shop`; pod `a` (label `app: a`) on `a_node` and pod `b` (`app: b`) on node-1;
/// a ClusterPolicy denying a → b on TCP `denied` (nothing else is isolated).
pub fn shop_a_b_denying(a_node: &str, a: Ipv4Addr, b: Ipv4Addr, denied: u16) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: a, namespace: shop, labels: {{app: a}}}}
spec: {{nodeName: {a_node}, containers: [{{name: c, image: c}}]}}
status: {{podIP: {a}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: shop, labels: {{app: b}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: c}}]}}
status: {{podIP: {b}}}
---
apiVersion: rampart.dev/v1alpha1
kind: ClusterPolicy
metadata: {{name: no-{denied}}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ingress:
  - action: Deny
    from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]
    ports: [{{port: {denied}}}]
"
    )
}
