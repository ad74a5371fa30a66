//! Pods' interfaces coming and going under a running agent, on a real kernel: a pod created again
//! under the same interface name (a new interface) is enforced again, and a deleted pod's pinned
//! links are dropped instead of kept until `rampart cleanup`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::fixtures::{a_reaches_b, shop_a_b_denying};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, probe, require_root};

const TIMEOUT: Duration = Duration::from_millis(700);
const OPEN: u16 = 8080;
const DENIED: u16 = 7000;

#[test]
fn a_pod_plugged_in_again_is_enforced_again_and_a_gone_one_leaves_no_pins() {
    require_root();
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 11));
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .pod("node-1", "shop/a", a_ip)
        .pod("node-1", "shop/b", b_ip)
        .build()
        .expect("topology");
    let _server = EchoServer::start(&topo.pod("shop/b").ns, &[OPEN, DENIED], &[]).expect("echo");
    let dir = std::env::temp_dir().join(format!("rampart-pod-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(
        dir.join("objects.yaml"),
        shop_a_b_denying("node-1", a_ip, b_ip, DENIED),
    )
    .expect("write");
    // The agent's --bpffs-root: the harness's default for the node's namespace.
    let bpffs = rampart_tests::agent::test_bpffs()
        .expect("bpffs")
        .join(topo.node("node-1").ns.name());
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(&topo.node("node-1").ns, &opts).expect("agent");
    let reaches = |port: u16| a_reaches_b(&topo, b_ip, port);
    assert!(reaches(OPEN));
    assert!(!reaches(DENIED), "b's ingress deny is enforced");
    let b_if = topo.pod("shop/b").host_if.clone();
    let b_links = bpffs.join("links").join(&b_if);
    assert!(
        b_links.exists(),
        "b's links are pinned at {}",
        b_links.display()
    );

    // b comes back on a new interface of the same name (as a CNI that names veths after pods
    // makes it for a pod created again): its programs go on the new one.
    // (b's namespace and its server stay: only the interface is new.)
    topo.replug("shop/b").expect("replug");
    rampart_tests::eventually(
        "b's new interface to be enforced",
        Duration::from_secs(10),
        || (reaches(OPEN) && !reaches(DENIED)).then_some(()),
    );
    let node_ns = topo.node("node-1").ns.name().to_owned();
    let link =
        rampart_tests::cmd::ip(&["-n", &node_ns, "-d", "link", "show", &b_if]).expect("ip link");
    let status = agent.cli(&["status"]).expect("status");
    assert!(
        status.lines().filter(|l| l.contains(&b_if)).count() >= 2,
        "b's interface is listed with its programs:\n{status}\n{link}"
    );

    // b's interface gone for good: its pins go with it.
    rampart_tests::cmd::ip(&["-n", &node_ns, "link", "del", &b_if]).expect("delete b's veth");
    rampart_tests::eventually(
        "b's pinned links to be dropped",
        Duration::from_secs(10),
        || (!b_links.exists()).then_some(()),
    );
    let status = agent.cli(&["status"]).expect("status");
    assert!(
        !status.lines().any(|l| l.contains(&b_if)),
        "a gone interface is no longer listed:\n{status}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod the CNI plugged in before its object reached the agent: denied both ways (the node's
/// own probes aside) until the object arrives, then enforced as any pod.
#[test]
fn a_pod_whose_object_has_not_arrived_is_denied_until_it_does() {
    require_root();
    let (a_ip, c_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 12));
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .pod("node-1", "shop/a", a_ip)
        .pod("node-1", "shop/c", c_ip)
        .build()
        .expect("topology");
    let _servers = [
        EchoServer::start(&topo.pod("shop/a").ns, &[OPEN], &[]).expect("echo a"),
        EchoServer::start(&topo.pod("shop/c").ns, &[OPEN], &[]).expect("echo c"),
    ];
    let dir = std::env::temp_dir().join(format!("rampart-pod-early-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    // Only a's object (b's is absent from this topology: its rules select nothing).
    std::fs::write(
        dir.join("objects.yaml"),
        shop_a_b_denying("node-1", a_ip, Ipv4Addr::new(10, 244, 1, 11), DENIED),
    )
    .expect("write");
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(&topo.node("node-1").ns, &opts).expect("agent");
    let tcp = |from: &str, to: Ipv4Addr| {
        probe::tcp(
            &topo.pod(from).ns,
            SocketAddr::new(IpAddr::V4(to), OPEN),
            TIMEOUT,
        )
        .reached()
    };
    let from_node = || {
        probe::tcp(
            &topo.node("node-1").ns,
            SocketAddr::new(IpAddr::V4(c_ip), OPEN),
            TIMEOUT,
        )
        .reached()
    };
    assert!(
        !tcp("shop/a", c_ip),
        "nothing reaches a pod of no known object"
    );
    assert!(!tcp("shop/c", a_ip), "and it reaches nothing");
    assert!(from_node(), "but its node's probes");
    let status = agent.cli(&["status"]).expect("status");
    let c_if = topo.pod("shop/c").host_if.clone();
    assert!(
        status.lines().any(|l| l.contains(&c_if)),
        "its interface carries Rampart's programs:\n{status}"
    );

    std::fs::write(
        dir.join("c.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: c, namespace: shop, labels: {{app: c}}}}\nspec: {{nodeName: node-1, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {c_ip}}}\n"
        ),
    )
    .expect("write");
    rampart_tests::eventually("c's object to be in force", Duration::from_secs(10), || {
        (tcp("shop/a", c_ip) && tcp("shop/c", a_ip)).then_some(())
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
