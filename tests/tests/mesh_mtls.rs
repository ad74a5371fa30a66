//! mTLS between nodes, on a real kernel: two nodes (namespaces on an underlay bridge), one agent
//! each with the trust domain's CA, and a MeshPolicy that requires mTLS for pod b's port 5432 and
//! allows only service account shop/a.
//!
//! - a (node 1) reaches b (node 2) on 5432 as a plain TCP connection: the kernel redirects it to
//!   the local proxy, which tunnels it (HTTP/2 CONNECT over mutual TLS 1.3) to node 2's agent;
//!   a capture of the underlay has no trace of the payload, while a plaintext control flow to
//!   port 8080 shows there;
//! - c (node 1, another service account) is refused by node 2's proxy (counted);
//! - plaintext sent to b:5432 from node 1's host (not through the proxy) is dropped by node 2's
//!   kernel as `mtls_required`; plaintext to the tunnel port is refused and counted;
//! - a connection stays up across certificate renewals (10 s certificates);
//! - the policy routing for the proxy's mark, removed by someone else, is put back and counted.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use rampart_tests::capture::{Capture, contains};
use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::netns::{Netns, TEST_PREFIX};
use rampart_tests::{Agent, EchoServer, Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(3);
const SECRET: &[u8] = b"RAMPART-MTLS-SECRET-7f3a9c";
const CONTROL: &[u8] = b"RAMPART-PLAINTEXT-CONTROL-51be";

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn workloads() -> String {
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-requires-mtls}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: 5432}}]\n  allowedPrincipals:\n    serviceAccounts: [shop/a]\n",
        pod("a", 1, 10),
        pod("c", 1, 11),
        pod("b", 2, 10)
    )
}

/// `rounds` echoes of `payload` over one connection from `ns` to `dst`, `pause` apart.
fn exchange(
    ns: &Netns,
    dst: SocketAddr,
    payload: &'static [u8],
    rounds: u32,
    pause: Duration,
) -> bool {
    rampart_tests::probe::echo_rounds(ns, dst, payload, rounds, pause, TIMEOUT)
}

fn metric(agent: &Agent, name: &str, labels: &str) -> f64 {
    agent.sample(name, labels)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    rampart_tests::eventually(what, Duration::from_secs(10), || f().then_some(()));
}

#[test]
fn flows_that_require_mtls_cross_the_tunnel_and_nothing_bypasses_it() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", ip(1, 10))
        .pod("node-1", "shop/c", ip(1, 11))
        .pod("node-2", "shop/b", ip(2, 10))
        .build()
        .expect("topology");
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[5432, 8080], &[]).expect("echo");

    let mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &workloads(),
        None,
        &["--cert-ttl", "10"],
    )
    .expect("agents");
    let node1 = mesh.node("node-1");
    let node2 = mesh.node("node-2");
    let b = |port| SocketAddr::new(IpAddr::V4(ip(2, 10)), port);
    let fabric = topo.fabric().expect("two nodes have an underlay");
    let work = mesh.work_dir();
    let capture = Capture::start(fabric, &work.join("underlay.pcap"));

    // a -> b:5432 works as a plain connection for the application, through the tunnel.
    assert!(
        exchange(&topo.pod("shop/a").ns, b(5432), SECRET, 3, Duration::ZERO),
        "a reaches b:5432 through mTLS; node-1 log:\n{}\nnode-2 log:\n{}",
        node1.log(),
        node2.log()
    );
    assert!(metric(node1, "rampart_proxy_flows_total", "direction=\"outbound\"") >= 1.0);
    assert!(metric(node2, "rampart_proxy_flows_total", "direction=\"inbound\"") >= 1.0);

    // Someone removes node 1's policy routing (the IPv4 rule, the IPv6 route): the agent finds
    // it missing, installs it again and counts it, and the tunnel works again.
    let node1_ns = topo.node("node-1").ns.name().to_owned();
    for args in [
        &["rule", "del", "pref", "90"][..],
        &[
            "-6", "route", "del", "local", "default", "dev", "lo", "table", "21072",
        ][..],
    ] {
        let status = std::process::Command::new("ip")
            .args(["-n", node1_ns.as_str()])
            .args(args)
            .status()
            .expect("ip");
        assert!(status.success(), "ip {args:?}");
    }
    wait_for("node-1 to repair its policy routing", || {
        metric(node1, "rampart_policy_routing_repaired_total", "") >= 1.0
    });
    let rules = std::process::Command::new("ip")
        .args(["-n", node1_ns.as_str(), "rule", "show", "pref", "90"])
        .output()
        .expect("ip rule show");
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("lookup 21072"),
        "the rule is back: {}",
        String::from_utf8_lossy(&rules.stdout)
    );
    assert!(
        exchange(&topo.pod("shop/a").ns, b(5432), SECRET, 1, Duration::ZERO),
        "a reaches b:5432 through the repaired routing; node-1 log:\n{}",
        node1.log()
    );
    assert!(node1.log().contains("installed again"), "{}", node1.log());
    // A port without a MeshPolicy stays plaintext (and shows the capture sees payloads).
    assert!(exchange(
        &topo.pod("shop/a").ns,
        b(8080),
        CONTROL,
        1,
        Duration::ZERO
    ));
    let (raw, text) = capture.finish();
    assert!(
        contains(&raw, CONTROL),
        "the capture must see plaintext payloads on the underlay ({} bytes):\n{text}\n{}",
        raw.len(),
        std::fs::read_to_string(work.join("underlay.err")).unwrap_or_default()
    );
    assert!(
        !contains(&raw, SECRET),
        "the mTLS flow's payload crossed the underlay in plaintext"
    );
    assert!(
        text.contains("192.168.200.2.15008"),
        "the flow crossed as a tunnel to node-2's port 15008:\n{text}"
    );

    // c is not an allowed principal: node-2's proxy refuses it.
    assert!(!exchange(
        &topo.pod("shop/c").ns,
        b(5432),
        SECRET,
        1,
        Duration::ZERO
    ));
    wait_for("node-2 to count principal_not_allowed", || {
        metric(
            node2,
            "rampart_proxy_denied_total",
            "filter=\"mtls\",reason=\"principal_not_allowed\"",
        ) >= 1.0
    });
    // The refusal is in node-2's flow log, like a kernel drop, naming both pods and the peer.
    let flows = node2
        .cli(&["flows", "--json", "--verdict", "deny"])
        .expect("rampart flows");
    let refusal = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["observer"] == "proxy" && r["drop_reason"] == "principal_not_allowed")
        .unwrap_or_else(|| panic!("no proxy refusal in the flow log:\n{flows}"));
    assert_eq!(refusal["src"]["pod"], "shop/c", "{refusal}");
    assert_eq!(refusal["dst"]["pod"], "shop/b", "{refusal}");
    assert_eq!(refusal["dst"]["port"], 5432, "{refusal}");
    assert_eq!(refusal["decided_by"], "mesh_policy", "{refusal}");
    assert!(
        refusal["proxy"]["peer_spiffe_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("/ns/shop/sa/c")),
        "{refusal}"
    );
    assert!(
        !refusal["mesh_policies"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{refusal}"
    );

    // Plaintext from node-1's host (not a pod, not the proxy) is dropped by node-2's kernel.
    let plain = topo
        .node("node-1")
        .ns
        .run(move || TcpStream::connect_timeout(&b(5432), Duration::from_secs(1)).is_ok())
        .expect("netns");
    assert!(!plain, "plaintext to an mTLS port must not connect");
    // Plaintext that forges an allowed pod's address (a process on a's node that binds a's
    // address) is no tunnel either: node-2's kernel drops it as mtls_required.
    let required = |n| {
        metric(
            n,
            "rampart_drops_total",
            "reason=\"mtls_required\",direction=\"ingress\"",
        )
    };
    let before = required(node2);
    let spoofed = rampart_tests::probe::tcp_spoofed(
        &topo.node("node-1").ns,
        IpAddr::V4(ip(1, 10)),
        b(5432),
        Duration::from_secs(1),
    );
    assert!(
        !spoofed.reached(),
        "forged plaintext reached b: {spoofed:?}"
    );
    wait_for("node-2 to count the forged SYN", || {
        required(node2) > before
    });
    // The pod's own node is another matter: its kubelet probes the port in plaintext.
    let probe = topo
        .node("node-2")
        .ns
        .run(move || TcpStream::connect_timeout(&b(5432), Duration::from_secs(1)).is_ok())
        .expect("netns");
    assert!(
        probe,
        "the pod's own node reaches its mTLS port (a kubelet probe)"
    );
    assert!(
        metric(
            node2,
            "rampart_drops_total",
            "reason=\"mtls_required\",direction=\"ingress\""
        ) >= 1.0,
        "{}",
        node2.metrics().unwrap_or_default()
    );

    // Plaintext to the tunnel port is refused and counted.
    let tunnel = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 200, 2)), 15008);
    let _ = topo.node("node-1").ns.run(move || {
        if let Ok(mut s) = TcpStream::connect_timeout(&tunnel, TIMEOUT) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let _ = s.read(&mut [0u8; 64]);
        }
    });
    wait_for("node-2 to count plaintext", || {
        metric(
            node2,
            "rampart_proxy_denied_total",
            "filter=\"mtls\",reason=\"plaintext\"",
        ) >= 1.0
    });

    // A long-lived connection outlives its certificates' renewal (10 s, renewed at 5 s).
    assert!(
        exchange(
            &topo.pod("shop/a").ns,
            b(5432),
            SECRET,
            13,
            Duration::from_secs(1)
        ),
        "the connection survives certificate renewal"
    );
    assert!(
        node2.log().contains("node certificate renewed"),
        "node-2 renewed its certificate during the connection:\n{}",
        node2.log()
    );
    // And new connections work with the renewed certificates.
    assert!(exchange(
        &topo.pod("shop/a").ns,
        b(5432),
        SECRET,
        1,
        Duration::ZERO
    ));

    drop(mesh);
}

/// Both ends prove who they are: the destination's agent presents the certificate of the
/// workload at the destination address. Node 2 here believes another workload (`shop/imposter`,
/// its own service account) holds b's address, as a node that lies about its pods would: it
/// presents that workload's certificate, and node 1, whose policy says the address is b's,
/// refuses the tunnel and counts it; the flow never reaches the pod.
#[test]
fn a_destination_that_proves_another_workload_is_refused_by_the_source() {
    require_root();
    let topo = rampart_tests::mesh::shop::two_nodes().expect("topology");
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[5432], &[]).expect("echo");
    let truth = workloads();
    // Node 2's view: the pod at b's address is shop/imposter (labelled app: b, so the same
    // MeshPolicy applies), with a service account of its own.
    let lie = truth.replace(
        &pod_object("shop", "b", 2, ip(2, 10)),
        &pod_object("shop", "b", 2, ip(2, 10))
            .replace("serviceAccountName: b", "serviceAccountName: imposter"),
    );
    assert_ne!(truth, lie, "the lie changes the pod's service account");
    let mesh = MeshAgents::start_each(
        &topo,
        &[("node-1", truth.as_str()), ("node-2", lie.as_str())],
        None,
        &[],
    )
    .expect("agents");
    let node1 = mesh.node("node-1");
    let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), 5432);
    assert!(
        !exchange(&topo.pod("shop/a").ns, b, SECRET, 1, Duration::ZERO),
        "a reached a destination whose agent proved another workload"
    );
    wait_for("node-1 to count the wrong destination identity", || {
        metric(
            node1,
            "rampart_proxy_outbound_errors_total",
            "reason=\"destination_identity_mismatch\"",
        ) >= 1.0
    });
    assert!(
        node1
            .log()
            .contains("did not prove the destination workload's identity"),
        "{}",
        node1.log()
    );
    drop(mesh);
}
