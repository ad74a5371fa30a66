//! Policy objects several namespace tests share, as the directory source reads them.

use std::net::Ipv4Addr;

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
