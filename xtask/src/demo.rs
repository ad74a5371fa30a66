//! `cargo xtask demo`: builds the agent, creates a node with three pods (network namespaces joined
//! by veth pairs), runs the agent on the node, sends traffic between the pods, shows what the
//! agent saw, and removes everything it created.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use rampart_tests::netns::DEMO_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, probe};

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

struct Flow {
    from: &'static str,
    to: &'static str,
    proto: &'static str,
    port: u16,
}

const FLOWS: &[Flow] = &[
    Flow {
        from: "frontend",
        to: "backend",
        proto: "tcp",
        port: 8080,
    },
    Flow {
        from: "backend",
        to: "db",
        proto: "tcp",
        port: 5432,
    },
    Flow {
        from: "frontend",
        to: "db",
        proto: "tcp",
        port: 5432,
    },
    Flow {
        from: "backend",
        to: "frontend",
        proto: "udp",
        port: 5353,
    },
];

pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs { check: false })?;
    rampart_tests::require_root();
    exec(cargo().args(["build", "--locked", "--release", "-p", "rampart-agent"]))?;
    let bin = workspace_root().join("target/release/rampart");
    rampart_tests::sweep_stale(DEMO_PREFIX)?;

    println!("\n== Rampart demo ==\n");
    let topo = Topology::builder(DEMO_PREFIX)
        .node("node-1")
        .pod("node-1", "frontend", "10.244.1.10".parse()?)
        .pod("node-1", "backend", "10.244.1.11".parse()?)
        .pod("node-1", "db", "10.244.1.12".parse()?)
        .build()
        .context("creating the demo topology")?;
    let node = topo.node("node-1");
    println!(
        "A node (network namespace {}) with three pods, each its own namespace on a veth pair:",
        node.ns.name()
    );
    for pod in topo.pods() {
        println!(
            "  {:<9} {:<12} node-side veth {}",
            pod.name, pod.ip, pod.host_if
        );
    }
    let _servers = [
        EchoServer::start(&topo.pod("backend").ns, &[8080], &[])?,
        EchoServer::start(&topo.pod("db").ns, &[5432], &[])?,
        EchoServer::start(&topo.pod("frontend").ns, &[], &[5353])?,
    ];

    let mut opts = AgentOptions::new(topo.pod_interfaces("node-1"));
    opts.bin = Some(bin);
    println!(
        "\nStarting the agent on the node: rampart run {}",
        opts.interfaces
            .iter()
            .map(|i| format!("--interface {i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let agent = Agent::start(&node.ns, &opts)?;
    println!("Ready: its XDP and TC programs are attached to every pod's veth.\n");

    println!("Traffic between the pods (every flow is seen by the kernel programs):");
    for flow in FLOWS {
        let (src, dst) = (topo.pod(flow.from), topo.pod(flow.to));
        let addr = SocketAddr::from((dst.ip, flow.port));
        let outcome = match flow.proto {
            "tcp" => probe::tcp(&src.ns, addr, Duration::from_secs(2)),
            _ => probe::udp(&src.ns, addr, Duration::from_secs(2)),
        };
        println!(
            "  {:<9} -> {:<9} {}/{:<5} {:?}",
            flow.from, flow.to, flow.proto, flow.port, outcome
        );
    }

    println!("\n`rampart status` on the node:\n");
    print!("{}", indent(&agent.cli(&["status"])?));
    println!("\nThe same counters on /metrics (Prometheus):\n");
    let metrics = agent.metrics()?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("rampart_datapath_packets_total"))
    {
        println!("  {line}");
    }

    let exit = agent.stop()?;
    println!("\nAgent stopped on SIGTERM ({exit}); its programs are detached.");
    println!(
        "At this stage Rampart counts every packet and lets it pass. Identity policy (default deny,"
    );
    println!(
        "allow by workload and port) is the next step of the roadmap; this demo will show drops then."
    );
    drop(topo);
    println!("Cleaned up: every namespace and link the demo created is gone.");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
