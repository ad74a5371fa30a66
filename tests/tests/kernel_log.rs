//! The kernel programs' logs (aya-log) on a running agent. The agent starts with
//! `--kernel-log-level warn`; a pod sends a frame whose IPv4 header is cut short, which
//! `rp_tc_ingress` (a pod's veth carries TC only) drops as `truncated_header` and counts, but
//! logs only at debug: no record. `rampart kernel-log --program rp_tc_ingress debug` turns that
//! one program up, and the next such frame's drop
//! is in the agent's log (target `rampart::kernel`, naming the program and the reason) and in
//! `rampart_kernel_log_records_total`; `rampart kernel-log off` stops the records again.

use std::time::Duration;

use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, Topology, probe, require_root};

const RECORD: &str = "dropped a malformed packet as truncated_header";

/// An Ethernet frame to the node with an IPv4 ethertype and 6 bytes of a 20-byte header.
fn truncated_ipv4() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&[0x45, 0, 0, 20, 0, 0]);
    frame
}

fn truncated_drops(agent: &Agent) -> f64 {
    agent.sample(
        "rampart_drops_total",
        "reason=\"truncated_header\",direction=\"egress\"",
    )
}

/// Sends the frame from pod `a` and waits until the agent has counted its drop; then gives the
/// log reader (every 250 ms) time to write any record.
fn send_and_see_dropped(topo: &Topology, agent: &Agent) {
    let before = truncated_drops(agent);
    probe::raw_frame(&topo.pod("a").ns, "eth0", truncated_ipv4()).expect("frame sent");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while truncated_drops(agent) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the truncated frame's drop was not counted:\n{}\n{}",
            agent
                .metrics()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("rampart_drops_total")
                    || l.starts_with("rampart_datapath_packets"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
fn a_program_s_records_appear_when_its_level_is_turned_up_on_a_running_agent() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("n1")
        .pod("n1", "a", "10.244.1.10".parse().expect("ip"))
        .build()
        .expect("topology");
    // Pod a, known to policy: its interface is an endpoint the programs judge.
    let dir = std::env::temp_dir().join(format!("rampart-kernel-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(
        dir.join("pods.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: a}}\nspec: {nodeName: n1, containers: [{name: c, image: c}]}\nstatus: {podIP: 10.244.1.10}\n",
    )
    .expect("write");
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    opts.extra_args = vec![
        "--node-name".into(),
        "n1".into(),
        "--kernel-log-level".into(),
        "warn".into(),
    ];
    let agent = Agent::start(&topo.node("n1").ns, &opts).expect("agent");

    let levels = agent.cli(&["kernel-log"]).expect("rampart kernel-log");
    for program in ["rp_xdp", "rp_tc_ingress", "rp_tc_egress", "rp_tc_bridge"] {
        assert!(
            levels
                .lines()
                .any(|l| l.starts_with(program) && l.trim_end().ends_with("warn")),
            "{program} starts at warn:\n{levels}"
        );
    }

    // Below the level in force: dropped and counted, no record.
    send_and_see_dropped(&topo, &agent);
    assert!(!agent.log().contains(RECORD), "{}", agent.log());

    // One program turned up on the running agent.
    let changed = agent
        .cli(&["kernel-log", "--program", "rp_tc_ingress", "debug"])
        .expect("rampart kernel-log --program rp_tc_ingress debug");
    assert!(
        changed
            .lines()
            .any(|l| l.starts_with("rp_tc_ingress") && l.ends_with("debug"))
            && changed
                .lines()
                .any(|l| l.starts_with("rp_tc_egress") && l.ends_with("warn")),
        "{changed}"
    );
    send_and_see_dropped(&topo, &agent);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !agent
        .log()
        .lines()
        .any(|l| l.contains(RECORD) && l.contains("rampart::kernel") && l.contains("rp_tc_ingress"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel record in the agent's log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = agent.sample("rampart_kernel_log_records_total", "level=\"debug\"");
    assert!(records >= 1.0, "{}", agent.metrics().unwrap_or_default());

    // Off again: the drop is counted, no new record.
    agent
        .cli(&["kernel-log", "off"])
        .expect("rampart kernel-log off");
    let logged = agent.log().matches(RECORD).count();
    send_and_see_dropped(&topo, &agent);
    assert_eq!(
        agent.log().matches(RECORD).count(),
        logged,
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.sample("rampart_kernel_log_records_total", "level=\"debug\""),
        records
    );

    // A program that does not exist is refused, naming the ones that do.
    let refused = agent
        .cli(&["kernel-log", "--program", "rp_nope", "debug"])
        .expect_err("an unknown program is refused");
    assert!(format!("{refused:#}").contains("rp_xdp"), "{refused:#}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
