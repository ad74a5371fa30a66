//! The foundation slice, end to end on a real kernel: the agent loads its XDP and TC programs,
//! attaches them to the node-side veths of two pods, real TCP and UDP traffic flows between the
//! pods, and the per-CPU hook counters move by at least what that traffic must have produced.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Outcome, Topology, probe, require_root};

const HOOKS: [&str; 3] = ["xdp", "tc_ingress", "tc_egress"];

fn counters(agent: &Agent) -> [(f64, f64); 3] {
    let text = agent.metrics().expect("metrics");
    HOOKS.map(|hook| {
        let label = format!("hook=\"{hook}\"");
        let packets = sample(&text, "rampart_datapath_packets_total", &label)
            .unwrap_or_else(|| panic!("no packets sample for {hook} in:\n{text}"));
        let bytes = sample(&text, "rampart_datapath_bytes_total", &label)
            .unwrap_or_else(|| panic!("no bytes sample for {hook} in:\n{text}"));
        (packets, bytes)
    })
}

/// Removes a pin root on drop unless disarmed.
struct PinsGuard(Option<std::path::PathBuf>);

impl PinsGuard {
    fn disarm(mut self) -> Option<std::path::PathBuf> {
        self.0.take()
    }
}

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if let Some(root) = &self.0 {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn two_pod_topology() -> Topology {
    Topology::builder(TEST_PREFIX)
        .node("n1")
        .pod("n1", "a", "10.244.1.10".parse().expect("ip"))
        .pod("n1", "b", "10.244.1.11".parse().expect("ip"))
        .build()
        .expect("topology")
}

#[test]
fn programs_count_real_traffic_and_survive_an_agent_restart() {
    require_root();
    let topo = two_pod_topology();
    let (a, b) = (topo.pod("a"), topo.pod("b"));
    let node = topo.node("n1");
    let _server = EchoServer::start(&b.ns, &[8080], &[5353]).expect("servers");
    let agent =
        Agent::start(&node.ns, &AgentOptions::new(topo.pod_interfaces("n1"))).expect("agent");

    let status = agent.cli(&["status"]).expect("rampart status");
    for iface in topo.pod_interfaces("n1") {
        for hook in HOOKS {
            assert!(
                status
                    .lines()
                    .any(|l| l.contains(&iface) && l.contains(hook)),
                "status does not list {hook} on {iface}:\n{status}"
            );
        }
    }

    let before = counters(&agent);
    let timeout = Duration::from_secs(2);
    for _ in 0..5 {
        let tcp = probe::tcp(&a.ns, SocketAddr::from((b.ip, 8080)), timeout);
        assert_eq!(
            tcp,
            Outcome::Reached,
            "TCP a -> b:8080 with the programs attached"
        );
        let udp = probe::udp(&a.ns, SocketAddr::from((b.ip, 5353)), timeout);
        assert_eq!(
            udp,
            Outcome::Reached,
            "UDP a -> b:5353 with the programs attached"
        );
    }
    let after = counters(&agent);

    // Each TCP echo is at least SYN, ACK, data, FIN from a (into a's veth: XDP + TC ingress) and
    // SYN-ACK, data, FIN from b; each UDP echo one datagram each way. Both pods' node-side veths
    // are attached, so every packet of a and of b passes XDP and TC ingress once on the veth it
    // enters the node through, and TC egress once on the veth it leaves through.
    let min_packets = 5.0 * (4.0 + 3.0 + 2.0);
    for (i, hook) in HOOKS.iter().enumerate() {
        let (dp, db) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        assert!(
            dp >= min_packets,
            "{hook}: {dp} packets counted, expected at least {min_packets}"
        );
        assert!(
            db >= dp * 42.0,
            "{hook}: {db} bytes for {dp} packets is less than 42 bytes each"
        );
    }

    // SIGTERM: the agent exits cleanly and its pinned programs stay attached and counting.
    let (exit, root) = agent.stop_keeping_pins().expect("stop");
    // Until the next agent owns them, the pins are this guard's: a failure below removes them.
    let pins_guard = PinsGuard(Some(root.clone()));
    assert!(
        exit.success(),
        "the agent should exit 0 on SIGTERM, got {exit}"
    );
    let xdp_ids = |what: &str| -> Vec<String> {
        topo.pod_interfaces("n1")
            .iter()
            .map(|iface| {
                let link =
                    rampart_tests::cmd::ip(&["-n", node.ns.name(), "-d", "link", "show", iface])
                        .expect("ip link");
                let id = link
                    .split("prog/xdp id ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next());
                id.unwrap_or_else(|| panic!("{what}: no XDP program on {iface}:\n{link}"))
                    .to_owned()
            })
            .collect()
    };
    let old_ids = xdp_ids("after SIGTERM");
    for _ in 0..3 {
        assert!(probe::tcp(&a.ns, SocketAddr::from((b.ip, 8080)), timeout).reached());
    }

    // A new agent on the same --bpffs-root adopts the pinned maps and links: the counters go on
    // from where they were (plus what the programs counted while no agent ran), and its own
    // programs replaced the old ones inside the same links.
    let mut opts = AgentOptions::new(topo.pod_interfaces("n1"));
    opts.bpffs_root = Some(root);
    let agent = Agent::start(&node.ns, &opts).expect("restarted agent");
    drop(pins_guard.disarm());
    let resumed = counters(&agent);
    for (i, hook) in HOOKS.iter().enumerate() {
        assert!(
            resumed[i].0 >= after[i].0 + 3.0 * 4.0,
            "{hook}: {} packets after the restart, {} before it: pinned counters must carry on",
            resumed[i].0,
            after[i].0
        );
    }
    let new_ids = xdp_ids("after the restart");
    assert_ne!(
        old_ids, new_ids,
        "the new agent's XDP program replaced the old one"
    );

    // `rampart cleanup` (the guard runs it) removes the pins: the programs are detached.
    let exit = agent.stop().expect("stop");
    assert!(exit.success(), "second agent exit: {exit}");
    for iface in topo.pod_interfaces("n1") {
        let link = rampart_tests::cmd::ip(&["-n", node.ns.name(), "-d", "link", "show", &iface])
            .expect("ip link");
        assert!(
            !link.contains("prog/xdp"),
            "XDP still attached to {iface} after cleanup:\n{link}"
        );
    }
    assert!(probe::tcp(&a.ns, SocketAddr::from((b.ip, 8080)), timeout).reached());
}

#[test]
fn readyz_and_metrics_are_served_while_running() {
    require_root();
    let topo = two_pod_topology();
    let node = topo.node("n1");
    let agent =
        Agent::start(&node.ns, &AgentOptions::new(topo.pod_interfaces("n1"))).expect("agent");
    assert_eq!(agent.get("/readyz").expect("readyz").0, 200);
    assert_eq!(agent.get("/nope").expect("404").0, 404);
    let text = agent.metrics().expect("metrics");
    assert_eq!(
        sample(&text, "rampart_programs_attached", ""),
        Some(6.0),
        "{text}"
    );
    // Without an Accept header: the Prometheus text format 0.0.4.
    assert!(
        text.contains("# TYPE rampart_datapath_packets_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    // OpenMetrics when the scraper asks for it, as Prometheus does.
    let (code, om) = agent
        .get_with(
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
        )
        .expect("openmetrics");
    assert_eq!(code, 200);
    assert!(
        om.contains("# TYPE rampart_datapath_packets counter"),
        "{om}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}

#[test]
fn unknown_interface_fails_start_with_a_clear_error() {
    require_root();
    let topo = two_pod_topology();
    let node = topo.node("n1");
    let opts = AgentOptions::new(vec!["rpv0".into(), "rp-nosuch".into()]);
    let mut agent = Agent::spawn(&node.ns, &opts).expect("spawn");
    let exit = agent.wait_exit(Duration::from_secs(30)).expect("exits");
    let log = agent.log();
    assert!(
        !exit.success(),
        "start with a missing interface must fail; log:\n{log}"
    );
    assert!(
        log.contains("--interface rp-nosuch: no such interface"),
        "the error should name the flag and the interface; log:
{log}"
    );
    // Nothing is left attached to the interface that did exist.
    let link = rampart_tests::cmd::ip(&["-n", node.ns.name(), "-d", "link", "show", "rpv0"])
        .expect("ip link");
    assert!(
        !link.contains("prog/xdp"),
        "XDP left attached after a failed start:\n{link}"
    );
}
