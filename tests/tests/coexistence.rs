//! Rampart beside other agents' programs on the same hooks, on a real kernel: a CNI's or a
//! monitoring agent's TC programs attached to a pod's interface before Rampart starts stay
//! attached and keep working (one counts packets, one drops a port), and Rampart's enforcement
//! holds even with a program among them that ends the hook's chain, across a Rampart restart.
//! An uplink that already has another agent's XDP program keeps it, and Rampart enforces there
//! with TC.

use std::net::Ipv4Addr;

use rampart_tests::fixtures::{a_reaches_b, shop_a_b_denying};
use rampart_tests::foreign_programs::{ForeignProgram, Hook};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, require_root};

/// Open to everyone.
const OPEN: u16 = 8080;
/// Dropped by the foreign program.
const FOREIGN_DROPS: u16 = 9000;
/// Denied by Rampart's policy.
const RAMPART_DENIES: u16 = 7000;

#[test]
fn programs_already_on_the_hook_keep_working_and_rampart_still_enforces() {
    require_root();
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 11));
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .pod("node-1", "shop/a", a_ip)
        .pod("node-1", "shop/b", b_ip)
        .build()
        .expect("topology");
    let _server = EchoServer::start(
        &topo.pod("shop/b").ns,
        &[OPEN, FOREIGN_DROPS, RAMPART_DENIES],
        &[],
    )
    .expect("echo");
    let node = &topo.node("node-1").ns;
    let b_if = topo.pod("shop/b").host_if.clone();
    // The other agents' programs, on what the node delivers to b, before Rampart starts: the
    // counter, the port dropper, then one that ends the chain.
    let mut counter = ForeignProgram::counter().expect("counter");
    let mut dropper = ForeignProgram::tcp_port_dropper(FOREIGN_DROPS).expect("dropper");
    let mut ender = ForeignProgram::chain_ender().expect("chain ender");
    for program in [&mut counter, &mut dropper, &mut ender] {
        program.attach(node, &b_if, Hook::Egress).expect("attach");
    }
    let reaches = |port: u16| a_reaches_b(&topo, b_ip, port);
    assert!(reaches(OPEN) && reaches(RAMPART_DENIES), "before Rampart");
    assert!(!reaches(FOREIGN_DROPS), "the foreign dropper works");

    let dir = std::env::temp_dir().join(format!("rampart-coexistence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(
        dir.join("objects.yaml"),
        shop_a_b_denying("node-1", a_ip, b_ip, RAMPART_DENIES),
    )
    .expect("write");
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    for run in ["first start", "restart"] {
        let agent = Agent::start(node, &opts).expect("agent");
        let seen = counter.count().expect("count");
        assert!(reaches(OPEN), "{run}: allowed traffic passes every program");
        assert!(
            counter.count().expect("count") > seen,
            "{run}: the foreign counter still sees what Rampart passes"
        );
        assert!(
            !reaches(FOREIGN_DROPS),
            "{run}: the foreign dropper still drops"
        );
        assert!(
            !reaches(RAMPART_DENIES),
            "{run}: Rampart's deny holds, though a program on the hook ends the chain"
        );
        let status = agent.cli(&["status"]).expect("status");
        assert!(
            status
                .lines()
                .any(|l| l.contains(&b_if) && l.contains("tcx")),
            "{run}: Rampart is on b's interface:\n{status}"
        );
        agent.stop().expect("stop");
    }
    // Rampart gone: the foreign programs are still attached and working.
    assert!(reaches(RAMPART_DENIES), "Rampart's programs left with it");
    assert!(
        !reaches(FOREIGN_DROPS),
        "the foreign dropper outlives Rampart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_uplink_with_another_xdp_program_keeps_it_and_rampart_enforces_with_tc() {
    require_root();
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 2, 10), Ipv4Addr::new(10, 244, 1, 11));
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-2", "shop/a", a_ip)
        .pod("node-1", "shop/b", b_ip)
        .build()
        .expect("topology");
    let _server =
        EchoServer::start(&topo.pod("shop/b").ns, &[OPEN, RAMPART_DENIES], &[]).expect("echo");
    let node = &topo.node("node-1").ns;
    let mut xdp = ForeignProgram::xdp_counter().expect("xdp counter");
    xdp.attach(node, "uplink", Hook::Xdp).expect("attach xdp");

    let dir = std::env::temp_dir().join(format!("rampart-coexistence-xdp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(
        dir.join("objects.yaml"),
        shop_a_b_denying("node-2", a_ip, b_ip, RAMPART_DENIES),
    )
    .expect("write");
    let mut opts = AgentOptions::new(vec!["uplink".into()]);
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(node, &opts).expect("the agent starts beside the XDP program");
    let reaches = |port: u16| a_reaches_b(&topo, b_ip, port);
    let seen = xdp.count().expect("count");
    assert!(reaches(OPEN));
    assert!(
        xdp.count().expect("count") > seen,
        "the other XDP program still runs"
    );
    assert!(!reaches(RAMPART_DENIES), "Rampart's deny holds");
    let status = agent.cli(&["status"]).expect("status");
    let uplink: Vec<&str> = status.lines().filter(|l| l.contains("uplink")).collect();
    assert!(
        uplink.iter().any(|l| l.contains("tc_ingress"))
            && !uplink.iter().any(|l| l.contains("xdp")),
        "TC only on the uplink:\n{status}"
    );
    assert!(
        agent.log().contains("another XDP program is attached"),
        "{}",
        agent.log()
    );
    agent.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}
