//! Pods on a bridge CNI's network, on a real kernel: each node's pods are ports of a bridge
//! `cni0` that holds their gateway, with no route per pod (the bridge plugin, flannel, kubenet).
//! The agents run as the shipped DaemonSet runs them: root with only its capabilities (the
//! bounding set `deploy/daemonset.yaml` names). The agent finds pods from their veths' peers, enforces between two pods of one bridge (whose
//! traffic the bridge switches without routing it), and redirects flows to mTLS ports through
//! the proxy: to another node's pod (through the tunnel) and to a pod of the same bridge (whose
//! frames the bridge would otherwise switch straight to it). The NetworkPolicy conformance cases run on this topology too
//! (`cargo xtask conformance netpol --topology bridge`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::topology::PodNetwork;
use rampart_tests::{EchoServer, Topology, cmd, probe, require_root};

const TIMEOUT: Duration = Duration::from_secs(2);
const OPEN: u16 = 8080;
const DENIED: u16 = 7000;
const MTLS: u16 = 5432;
const SECRET: &[u8] = b"RAMPART-BRIDGE-MTLS-SECRET-90ab";

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

fn world() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
{}{}{}---
apiVersion: rampart.dev/v1alpha1
kind: ClusterPolicy
metadata: {{name: no-{DENIED}}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ingress:
  - action: Deny
    from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]
    ports: [{{port: {DENIED}}}]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: c-mtls}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: c}}}}}}
  ports: [{{port: {MTLS}}}]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: b-mtls}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: {MTLS}}}]
",
        pod_object("shop", "a", 1, A),
        pod_object("shop", "b", 1, B),
        pod_object("shop", "c", 2, C),
    )
}

fn drops(agent: &rampart_tests::Agent) -> String {
    agent
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            (l.starts_with("rampart_drops_total") || l.starts_with("rampart_proxy"))
                && !l.ends_with(" 0")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pods_on_a_bridge_are_found_enforced_and_tunnelled() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .network(PodNetwork::Bridge)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", A)
        .pod("node-1", "shop/b", B)
        .pod("node-2", "shop/c", C)
        .build()
        .expect("topology");
    let routes = cmd::ip(&["-n", topo.node("node-1").ns.name(), "route"]).expect("routes");
    assert!(
        !routes.contains(&A.to_string()) && !routes.contains(&B.to_string()),
        "a bridge network has no route per pod:\n{routes}"
    );
    let _b = EchoServer::start(&topo.pod("shop/b").ns, &[OPEN, DENIED, MTLS], &[]).expect("b");
    let _c = EchoServer::start(&topo.pod("shop/c").ns, &[MTLS], &[]).expect("c");
    let work = std::env::temp_dir().join(format!("rampart-bridge-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let bin = rampart_tests::deploy::agent_with_daemonset_capabilities(
        &rampart_tests::agent::rampart_bin().expect("agent binary"),
        &work,
    )
    .expect("the DaemonSet's capabilities");
    let mesh =
        MeshAgents::start(&topo, &["node-1", "node-2"], &world(), Some(&bin), &[]).expect("agents");
    let node1 = mesh.node("node-1");
    let a = &topo.pod("shop/a").ns;
    let b = |port| SocketAddr::new(IpAddr::V4(B), port);

    // Two pods of one bridge: switched, never routed, and still judged on both veths.
    rampart_tests::eventually("a to reach b", Duration::from_secs(10), || {
        probe::tcp(a, b(OPEN), TIMEOUT).reached().then_some(())
    });
    assert!(
        !probe::tcp(a, b(DENIED), Duration::from_millis(700)).reached(),
        "b's ingress deny holds on the bridge"
    );
    let status = node1.cli(&["status"]).expect("status");
    for pod in ["shop/a", "shop/b"] {
        assert!(
            status.contains(pod),
            "{pod} is an endpoint on node-1:\n{status}"
        );
    }

    // To another node's mTLS port: redirected at a's veth, through the tunnel.
    assert!(
        probe::echo_exchange(a, SocketAddr::new(IpAddr::V4(C), MTLS), SECRET, TIMEOUT),
        "a -> c:{MTLS} through the tunnel; node-1 log:\n{}\nnode-2 log:\n{}\nnode-1 drops:\n{}\nnode-2 drops:\n{}",
        node1.log(),
        mesh.node("node-2").log(),
        drops(node1),
        drops(mesh.node("node-2"))
    );
    let flows = |direction: &str| {
        let text = node1.metrics().unwrap_or_default();
        sample(
            &text,
            "rampart_proxy_flows_total",
            &format!("direction=\"{direction}\""),
        )
        .unwrap_or(0.0)
    };
    assert!(
        flows("outbound") >= 1.0,
        "the flow went through node-1's proxy"
    );

    // Between two pods of one bridge: the frame the bridge would switch straight to b goes up
    // to node-1's proxy instead, which delivers it to b as mTLS requires.
    assert!(
        probe::echo_exchange(a, b(MTLS), SECRET, TIMEOUT),
        "a -> b:{MTLS} on one bridge through the proxy; node-1 log:\n{}\nnode-1 drops:\n{}",
        node1.log(),
        drops(node1)
    );
    assert!(flows("outbound") >= 2.0 && flows("inbound") >= 1.0);
    drop(mesh);
    let _ = std::fs::remove_dir_all(&work);
}
