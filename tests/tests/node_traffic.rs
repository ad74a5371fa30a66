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

const FROM_OTHER: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-other, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: other}}}]
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
    let pod_reaches = || {
        probe::http_get(&topo.pod("shop/other").ns.path(), web, "/healthz", TIMEOUT)
            .is_ok_and(|(status, _)| status == 200)
    };

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
    std::fs::write(dir.join("from-other.yaml"), FROM_OTHER).expect("write");
    rampart_tests::eventually(
        "the pod's allow to be in force",
        Duration::from_secs(10),
        || pod_reaches().then_some(()),
    );

    // Not even a deny of everything stops the node's own probes; it stops the other node's.
    std::fs::write(dir.join("zz-deny.yaml"), DENY_EVERYTHING).expect("write");
    rampart_tests::eventually("the deny to be in force", Duration::from_secs(10), || {
        (!probe_from("node-2")).then_some(())
    });
    assert!(
        probe_from("node-1"),
        "the node's probe passes a deny of everything"
    );
    assert!(!pod_reaches(), "the pod's does not");
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

/// From the Kubernetes API: a Node object's addresses are `remote-node` while it exists (here
/// the outside client's address, named by a third Node with no pods on it: only the Node object
/// can make it one).
#[test]
fn node_objects_from_the_api_make_their_addresses_remote_node() {
    use rampart_tests::kube_api::ApiServer;
    use rampart_tests::topology::OUTSIDE_IP;
    use serde_json::json;

    require_root();
    let web_ip = Ipv4Addr::new(10, 244, 2, 10);
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .outside()
        .pod("node-2", "shop/web", web_ip)
        .build()
        .expect("topology");
    let _server = HttpServer::start(&topo.pod("shop/web").ns, PROBE_PORT).expect("server");
    let api = ApiServer::start_on_underlay(&topo).expect("API server stand-in");
    let node_object = |name: &str, addr: &str| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
               "status": {"addresses": [{"type": "InternalIP", "address": addr}]}})
    };
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        node_object("node-1", "192.168.200.1"),
        node_object("node-2", "192.168.200.2"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
               "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "c"}]},
               "status": {"phase": "Running", "podIP": web_ip.to_string(), "hostIP": "192.168.200.2"}}),
        json!({"apiVersion": "rampart.dev/v1alpha1", "kind": "ClusterPolicy",
               "metadata": {"name": "probes-from-other-nodes"},
               "spec": {"appliesTo": {"podSelector": {"matchLabels": {"app": "web"}}},
                        "defaultDeny": ["Ingress"],
                        "ingress": [{"action": "Allow", "from": [{"entities": ["remote-node"]}],
                                     "ports": [{"port": PROBE_PORT}]}]}}),
    ] {
        api.apply(&object).expect("object");
    }
    let work = std::env::temp_dir().join(format!("rampart-node-objects-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let kubeconfig = work.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut opts = AgentOptions::new(vec!["uplink".into()]);
    opts.extra_args = vec![
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--node-name".into(),
        "node-2".into(),
    ];
    let agent = Agent::start(&topo.node("node-2").ns, &opts).expect("agent");
    let web = SocketAddr::new(IpAddr::V4(web_ip), PROBE_PORT);
    let get_from = |ns: &rampart_tests::Netns| {
        probe::http_get(&ns.path(), web, "/healthz", TIMEOUT).is_ok_and(|(status, _)| status == 200)
    };
    let from_outside = || get_from(topo.outside());
    let from_node_1 = || get_from(&topo.node("node-1").ns);
    assert!(from_node_1(), "node-1 is a Node: remote-node, allowed");
    assert!(!from_outside(), "{OUTSIDE_IP} is no node's: world, denied");

    api.apply(&node_object("node-3", &OUTSIDE_IP.to_string()))
        .expect("node-3");
    rampart_tests::eventually(
        "node-3's address to be remote-node",
        Duration::from_secs(15),
        || from_outside().then_some(()),
    );
    api.delete("v1", "Node", "", "node-3")
        .expect("delete node-3");
    rampart_tests::eventually(
        "node-3's address to be world again",
        Duration::from_secs(15),
        || (!from_outside()).then_some(()),
    );
    assert!(from_node_1());
    drop(agent);
    let _ = std::fs::remove_dir_all(&work);
}
