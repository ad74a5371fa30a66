//! Traffic from the nodes themselves, on a real kernel: the node's own addresses are `host` and
//! always reach its pods (the kubelet's health probes, which Kubernetes lets through whatever
//! the policy), even under default deny; other nodes' addresses are `remote-node`, which policy
//! decides like any peer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::http_server::HttpServer;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, Topology, probe, require_root};

const TIMEOUT: Duration = Duration::from_millis(700);
const PROBE_PORT: u16 = 8080;

/// The pods as the API would list them (with their nodes' addresses as `hostIP`), and default
/// deny for both directions of every pod in `shop`.
fn objects(pod_ip: Ipv4Addr, other_ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: c}}]}}
status: {{podIP: {pod_ip}, hostIP: 192.168.200.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: shop, labels: {{app: other}}}}
spec: {{nodeName: node-2, containers: [{{name: c, image: c}}]}}
status: {{podIP: {other_ip}, hostIP: 192.168.200.2}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: shop}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
"
    )
}

const FROM_REMOTE_NODES: &str = "apiVersion: rampart.dev/v1alpha1
kind: ClusterPolicy
metadata: {name: probes-from-other-nodes}
spec:
  appliesTo: {podSelector: {matchLabels: {app: web}}}
  ingress:
  - action: Allow
    from: [{entities: [remote-node]}]
    ports: [{port: 8080}]
";

const DENY_EVERYTHING: &str = "apiVersion: rampart.dev/v1alpha1
kind: ClusterPolicy
metadata: {name: deny-everything}
spec:
  appliesTo: {podSelector: {matchLabels: {app: web}}}
  ingress:
  - action: Deny
    from: [{entities: [all]}]
";

#[test]
fn the_node_always_reaches_its_pods_and_other_nodes_are_decided_by_policy() {
    require_root();
    let web_ip = Ipv4Addr::new(10, 244, 1, 10);
    let other_ip = Ipv4Addr::new(10, 244, 2, 10);
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/web", web_ip)
        .pod("node-2", "shop/other", other_ip)
        .build()
        .expect("topology");
    let server = HttpServer::start(&topo.pod("shop/web").ns, PROBE_PORT).expect("server");
    let dir = std::env::temp_dir().join(format!("rampart-node-traffic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(dir.join("objects.yaml"), objects(web_ip, other_ip)).expect("write");
    let mut opts = AgentOptions::new(vec!["uplink".into()]);
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(&topo.node("node-1").ns, &opts).expect("agent");

    let web = SocketAddr::new(IpAddr::V4(web_ip), PROBE_PORT);
    // The kubelet's probe: an HTTP GET from the node's own namespace.
    let probe_from = |node: &str| {
        probe::http_get(&topo.node(node).ns.path(), web, "/healthz", TIMEOUT)
            .is_ok_and(|(status, _)| status == 200)
    };
    let pod_reaches = || probe::tcp(&topo.pod("shop/other").ns, web, TIMEOUT).reached();

    assert!(
        probe_from("node-1"),
        "the node's probe reaches its pod under default deny"
    );
    assert!(
        !probe_from("node-2"),
        "another node is remote-node: denied by default"
    );
    assert!(!pod_reaches(), "a pod is denied by default");

    // Policy lets other nodes in, by the remote-node entity (and nothing else).
    std::fs::write(dir.join("remote-nodes.yaml"), FROM_REMOTE_NODES).expect("write");
    rampart_tests::eventually(
        "the remote-node allow to be in force",
        Duration::from_secs(10),
        || probe_from("node-2").then_some(()),
    );
    assert!(!pod_reaches(), "remote-node is not every peer");
    assert!(probe_from("node-1"));

    // Not even a deny of everything stops the node's own probes; it stops the other node's.
    std::fs::write(dir.join("zz-deny.yaml"), DENY_EVERYTHING).expect("write");
    rampart_tests::eventually("the deny to be in force", Duration::from_secs(10), || {
        (!probe_from("node-2")).then_some(())
    });
    assert!(
        probe_from("node-1"),
        "the node's probe passes a deny of everything"
    );
    let flows = agent.cli(&["flows"]).expect("flows");
    assert!(
        flows
            .lines()
            .any(|l| l.contains("host") && l.contains("allow")),
        "the node's flows are logged as host:\n{flows}"
    );
    assert!(server.requests() >= 3, "the probes reached the server");
    let _ = std::fs::remove_dir_all(&dir);
}
