//! `cargo xtask demo`: a node with three pods (network namespaces joined by veth pairs).
//!
//! 1. The agent process (`rampart run`) attaches its programs to the pods' veths; traffic flows
//!    and `rampart status` / `/metrics` show what the kernel counted.
//! 2. The datapath enforcing a zero-trust policy (default deny, two allowed paths), installed
//!    through the loader's atomic `apply` — the step policy files will drive once the policy
//!    compiler lands: allowed flows pass, lateral movement is dropped, counted by reason and
//!    reported as events.
//!
//! Everything the demo creates is removed at the end, also when it fails.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rampart_agent::config::XdpAttachMode;
use rampart_agent::datapath::{Datapath, IpcacheRecord, PolicyState};
use rampart_agent::policy_map::{PolicyRule, build};
use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::identity::Identity;
use rampart_common::policy::Verdict;
use rampart_common::reason::{Direction, DropReason};
use rampart_tests::netns::DEMO_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Outcome, Topology, probe};

const PODS: [(&str, &str); 3] = [
    ("frontend", "10.244.1.10"),
    ("backend", "10.244.1.11"),
    ("db", "10.244.1.12"),
];
const TCP: u8 = 6;

struct Flow {
    from: usize,
    to: usize,
    proto: &'static str,
    port: u16,
}

const FLOWS: &[Flow] = &[
    Flow {
        from: 0,
        to: 1,
        proto: "tcp",
        port: 8080,
    },
    Flow {
        from: 1,
        to: 2,
        proto: "tcp",
        port: 5432,
    },
    Flow {
        from: 0,
        to: 2,
        proto: "tcp",
        port: 5432,
    },
    Flow {
        from: 2,
        to: 0,
        proto: "udp",
        port: 5353,
    },
    Flow {
        from: 1,
        to: 0,
        proto: "icmp",
        port: 0,
    },
];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    rampart_tests::require_root();
    let bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: rampart-demo PATH-TO-RAMPART")?,
    );
    rampart_tests::sweep_stale(DEMO_PREFIX)?;

    println!("\n== Rampart demo ==\n");
    let mut builder = Topology::builder(DEMO_PREFIX).node("node-1");
    for (name, ip) in PODS {
        builder = builder.pod("node-1", name, ip.parse()?);
    }
    let topo = builder.build().context("creating the demo topology")?;
    let node = topo.node("node-1");
    println!(
        "A node (network namespace {}) with three pods, each its own namespace on a veth pair:",
        node.ns.name()
    );
    for pod in topo.pods() {
        println!(
            "  {:<9} {:<12} {:<18} node-side veth {}",
            pod.name, pod.ip, pod.ip6, pod.host_if
        );
    }
    let pod = |i: usize| topo.pod(PODS[i].0);
    let _servers = [
        EchoServer::start(&pod(1).ns, &[8080], &[])?,
        EchoServer::start(&pod(2).ns, &[5432], &[])?,
        EchoServer::start(&pod(0).ns, &[], &[5353])?,
    ];
    let send = |f: &Flow| -> Outcome {
        let (src, dst) = (pod(f.from), pod(f.to));
        let timeout = Duration::from_millis(800);
        match f.proto {
            "tcp" => probe::tcp(&src.ns, SocketAddr::from((dst.ip, f.port)), timeout),
            "udp" => probe::udp(&src.ns, SocketAddr::from((dst.ip, f.port)), timeout),
            _ => probe::ping(&src.ns, IpAddr::from(dst.ip), timeout),
        }
    };
    let describe = |f: &Flow| {
        let port = if f.port == 0 {
            String::new()
        } else {
            format!("/{}", f.port)
        };
        format!(
            "{:<9} -> {:<9} {}{}",
            PODS[f.from].0, PODS[f.to].0, f.proto, port
        )
    };

    println!("\n-- 1. The agent counts what the kernel sees --\n");
    let mut opts = AgentOptions::new(topo.pod_interfaces("node-1"));
    opts.bin = Some(bin);
    let flags: Vec<String> = opts
        .interfaces
        .iter()
        .map(|i| format!("--interface {i}"))
        .collect();
    println!("rampart run {}", flags.join(" "));
    let agent = Agent::start(&node.ns, &opts)?;
    for f in FLOWS {
        println!("  {:<28} {}", describe(f), verdict_word(&send(f)));
    }
    println!("\n`rampart status` on the node:\n");
    for line in agent.cli(&["status"])?.lines() {
        println!("  {line}");
    }
    let exit = agent.stop()?;
    println!(
        "\nAgent stopped on SIGTERM ({exit}). Its programs stay attached and enforcing (pinned on"
    );
    println!("bpffs, so a restart has no gap) until `rampart cleanup`, which the demo ran.");

    println!("\n-- 2. Zero trust: default deny, two allowed paths --\n");
    println!(
        "Policy: every pod isolated both ways; allowed: frontend -> backend tcp/8080 (rule 1),"
    );
    println!(
        "backend -> db tcp/5432 (rule 2). Installed atomically through the loader (policy files"
    );
    println!("will feed the same step once the policy compiler lands).\n");
    let mut state = PolicyState::default();
    for (i, p) in topo.pods().iter().enumerate() {
        let id = 1000 + u32::try_from(i)?;
        let ifindex = node.ns.ifindex(&p.host_if)?;
        let flags = EndpointFlags::ENFORCE_INGRESS | EndpointFlags::ENFORCE_EGRESS;
        state.endpoints.push((
            ifindex,
            EndpointInfo {
                endpoint_id: id,
                identity: id,
                flags,
                ipv4: p.ip.octets(),
                ipv6: p.ip6.octets(),
            },
        ));
        state
            .ipcache
            .push(IpcacheRecord::local(p.ip.into(), id, ifindex));
        state
            .ipcache
            .push(IpcacheRecord::local(p.ip6.into(), id, ifindex));
    }
    let allow = |cookie, from: u32, to: u32, port: u16| {
        let tcp = |r: PolicyRule| PolicyRule {
            proto: Some(TCP),
            ports: Some(port..=port),
            cookie,
            verdict: Verdict::ALLOW,
            ..r
        };
        [
            tcp(PolicyRule::allow(
                1000 + from,
                Identity(1000 + to),
                Direction::EGRESS,
            )),
            tcp(PolicyRule::allow(
                1000 + to,
                Identity(1000 + from),
                Direction::INGRESS,
            )),
        ]
    };
    let rules: Vec<PolicyRule> = allow(1, 0, 1, 8080)
        .into_iter()
        .chain(allow(2, 1, 2, 5432))
        .collect();
    state.policy = build(&rules);

    let mut dp = Datapath::load().context("loading the kernel programs")?;
    dp.apply(&state)?;
    let stats = dp.take_stats()?;
    let mut events = dp.take_events()?;
    let interfaces = topo.pod_interfaces("node-1");
    let _dp = node.ns.run(move || -> anyhow::Result<Datapath> {
        for iface in &interfaces {
            dp.attach(iface, XdpAttachMode::Auto)?;
        }
        Ok(dp)
    })??;
    for f in FLOWS {
        println!("  {:<28} {}", describe(f), verdict_word(&send(f)));
    }
    println!("\nDrops counted by the kernel, by reason and direction:");
    for row in stats.drops()?.iter().filter(|r| r.counter.packets > 0) {
        println!(
            "  {:<18} {:<8} {:>4} packets",
            row.reason.name(),
            row.direction.name(),
            row.counter.packets
        );
    }
    println!("\nFlow events from the kernel (new flows and drops, with the rule that decided):");
    for e in events.drain(64) {
        let addr = |a: [u8; 16]| {
            std::net::Ipv6Addr::from(a).to_ipv4_mapped().map_or_else(
                || std::net::Ipv6Addr::from(a).to_string(),
                |v4| v4.to_string(),
            )
        };
        println!(
            "  {:<6} {:<7} {}:{} -> {}:{} proto {:<2} identities {} -> {}  rule {}{}",
            Verdict(e.verdict).name(),
            Direction(e.direction).name(),
            addr(e.saddr),
            e.sport,
            addr(e.daddr),
            e.dport,
            e.proto,
            e.src_identity,
            e.dst_identity,
            e.cookie,
            if e.reason == 0 {
                String::new()
            } else {
                format!("  ({})", DropReason(e.reason).name())
            },
        );
    }
    drop(_dp);
    drop(topo);
    println!("\nCleaned up: every namespace, link and program the demo created is gone.");
    Ok(())
}

fn verdict_word(o: &Outcome) -> String {
    match o {
        Outcome::Reached => "allowed (answered)".into(),
        Outcome::TimedOut => "DROPPED".into(),
        other => format!("{other:?}"),
    }
}
