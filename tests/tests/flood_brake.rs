//! The kernel's flood brake, on a real kernel: a MeshPolicy lets each source identity open at
//! most 3 connections to pod b's port at once (then one a minute). Pod c (node 1) tries 12 in a
//! row: the first 3 connect, the rest are dropped by node 1's kernel at c's egress, before the
//! proxy, and counted as `flood_brake`; pod a, another identity, still connects.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::metrics::sample;
use rampart_tests::netns::{Netns, TEST_PREFIX};
use rampart_tests::{EchoServer, Topology, require_root};

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn policy() -> String {
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-brake}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: 5432}}]\n  floodBrake: {{maxConnections: 3, connectionsPerFill: 1, fillInterval: 1m}}\n",
        pod("a", 1, 10),
        pod("c", 1, 11),
        pod("b", 2, 10)
    )
}

/// One connection from `ns` that echoes a byte back within the timeout.
fn connects(ns: &Netns, dst: SocketAddr) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_millis(400)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut back = [0u8; 1];
        s.write_all(b"x").is_ok() && s.read_exact(&mut back).is_ok()
    })
    .unwrap_or(false)
}

#[test]
fn a_connection_flood_from_one_identity_is_braked_while_another_connects() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", ip(1, 10))
        .pod("node-1", "shop/c", ip(1, 11))
        .pod("node-2", "shop/b", ip(2, 10))
        .build()
        .expect("topology");
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[5432], &[]).expect("echo");
    let mesh =
        MeshAgents::start(&topo, &["node-1", "node-2"], &policy(), None, &[]).expect("agents");
    let node1 = mesh.node("node-1");
    let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), 5432);

    let c = &topo.pod("shop/c").ns;
    let outcomes: Vec<bool> = (0..12).map(|_| connects(c, b)).collect();
    let made = outcomes.iter().filter(|ok| **ok).count();
    assert!(
        outcomes[..3].iter().all(|ok| *ok),
        "the burst of 3 passes: {outcomes:?}\n{}",
        node1.log()
    );
    assert!(
        made <= 4,
        "at most the burst (and a refill) passes: {outcomes:?}"
    );
    let drops = node1
        .metrics()
        .ok()
        .and_then(|m| {
            sample(
                &m,
                "rampart_drops_total",
                r#"reason="flood_brake",direction="egress""#,
            )
        })
        .unwrap_or(0.0);
    assert!(
        drops >= 8.0,
        "braked SYNs are counted: {drops}\n{}",
        node1.metrics().unwrap_or_default()
    );

    // The drops are in node-1's flow log, decided by the MeshPolicy.
    let flows = node1
        .cli(&["flows", "--json", "--verdict", "deny"])
        .expect("rampart flows");
    let braked = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["drop_reason"] == "flood_brake")
        .unwrap_or_else(|| panic!("no flood_brake record:\n{flows}"));
    assert_eq!(braked["src"]["pod"], "shop/c", "{braked}");
    assert_eq!(braked["decided_by"], "mesh_policy", "{braked}");
    assert_eq!(braked["mesh_policies"][0], "MeshPolicy b-brake", "{braked}");

    // Another identity has its own bucket.
    let a = &topo.pod("shop/a").ns;
    assert!((0..3).all(|_| connects(a, b)), "a still connects");
}
