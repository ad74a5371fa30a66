//! `cargo xtask demo`: a node with four pods (network namespaces joined by veth pairs) governed
//! by the example policy set in `policies/`, applied the way an operator would:
//!
//! 1. The agent starts on the zero-trust baseline alone (`rampart run --policy-dir`): every pod
//!    isolated both ways, only DNS allowed. It finds the pods' interfaces from the node's routes.
//! 2. The shop's allows and an audit-mode policy are dropped into the directory: in force within
//!    a second, atomically; the audited flow passes and is counted as `audit`.
//! 3. An over-broad allow is pushed (`rampart policy push`), then the explicit deny rules land:
//!    the deny wins over the allow.
//! 4. A file with an error changes nothing: `rampart policy check` names file:line:col, the agent
//!    keeps the last good set and counts the error.
//! 5. What the kernel counted: drops by reason and direction, `rampart status`.
//!
//! Everything the demo creates is removed at the end, also when it fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rampart_tests::metrics::sample;
use rampart_tests::netns::DEMO_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Outcome, Topology, probe};

/// The pods of `policies/workloads.yaml`: name as `namespace/pod`, and address.
const PODS: [(&str, u8); 4] = [
    ("shop/frontend", 10),
    ("shop/backend", 11),
    ("shop/db", 12),
    ("kube-system/coredns", 53),
];

struct Flow {
    from: &'static str,
    to: &'static str,
    proto: &'static str,
    port: u16,
}

const fn flow(from: &'static str, to: &'static str, proto: &'static str, port: u16) -> Flow {
    Flow {
        from,
        to,
        proto,
        port,
    }
}

const FLOWS: &[Flow] = &[
    flow("shop/frontend", "shop/backend", "tcp", 8080),
    flow("shop/backend", "shop/db", "tcp", 5432),
    flow("shop/frontend", "shop/db", "tcp", 5432),
    flow("shop/db", "shop/frontend", "tcp", 8080),
    flow("shop/frontend", "kube-system/coredns", "udp", 53),
    flow("shop/backend", "shop/frontend", "icmp", 0),
];

/// Pushed in step 3: a too-wide allow someone might write in a hurry (every shop pod may reach
/// the database).
const OVERBROAD: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-shop, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: shop-to-db, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
";

/// Written in step 4: a typo'd port.
const BROKEN: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open-backend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports:
    - {port: 80800}
";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Removes the demo's policy directory on drop (also on failure).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run() -> anyhow::Result<()> {
    rampart_tests::require_root();
    let mut args = std::env::args().skip(1);
    let usage = "usage: rampart-demo PATH-TO-RAMPART PATH-TO-POLICIES";
    let bin = PathBuf::from(args.next().context(usage)?);
    let policies = PathBuf::from(args.next().context(usage)?);
    rampart_tests::sweep_stale(DEMO_PREFIX)?;

    println!("\n== Rampart demo ==\n");
    let ip = |d: u8| Ipv4Addr::new(10, 244, 1, d);
    let mut builder = Topology::builder(DEMO_PREFIX).node("node-1");
    for (name, d) in PODS {
        builder = builder.pod("node-1", name, ip(d));
    }
    let topo = builder.build().context("creating the demo topology")?;
    let node = topo.node("node-1");
    println!(
        "A node (network namespace {}) with the four pods of policies/workloads.yaml, each its",
        node.ns.name()
    );
    println!(
        "own namespace on a veth pair, each running echo servers on tcp/8080, tcp/5432, udp/53:"
    );
    for pod in topo.pods() {
        println!(
            "  {:<20} {:<12} node-side veth {}",
            pod.name, pod.ip, pod.host_if
        );
    }
    let _servers = topo
        .pods()
        .iter()
        .map(|p| EchoServer::start(&p.ns, &[8080, 5432], &[53]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let show_flows = || {
        for f in FLOWS {
            println!("  {:<44} {}", describe(f), verdict_word(&send(&topo, f)));
        }
    };

    let dir = TempDir(std::env::temp_dir().join(format!("rampart-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0)?;
    let install = |name: &str| -> anyhow::Result<()> {
        // Written next to the directory and renamed in: the agent never reads half a file.
        let tmp = dir.0.with_extension("tmp");
        std::fs::copy(policies.join(name), &tmp).with_context(|| format!("copying {name}"))?;
        std::fs::rename(&tmp, dir.0.join(name))?;
        println!("  + {name}");
        Ok(())
    };

    println!("\n-- 1. The zero-trust baseline: default deny both ways, DNS allowed --\n");
    install("workloads.yaml")?;
    install("00-baseline.yaml")?;
    let mut opts = AgentOptions::new(Vec::new());
    opts.bin = Some(bin.clone());
    opts.policy_dir = Some(dir.0.clone());
    println!("\nrampart run --policy-dir {}", dir.0.display());
    let agent = Agent::start(&node.ns, &opts)?;
    println!(
        "(ready: policy generation {}; it found the pods' veths from the node's routes)\n",
        generation(&agent)
    );
    show_flows();

    println!("\n-- 2. Live update: the shop's allows, and an audit-mode policy --\n");
    let before = generation(&agent);
    install("20-shop-allows.yaml")?;
    install("30-audit-plaintext.yaml")?;
    let took = wait_generation(&agent, before)?;
    println!(
        "in force after {took:?} (generation {}):\n",
        generation(&agent)
    );
    show_flows();
    println!(
        "\nfrontend -> backend tcp/8080 passes, and the audit policy counted it: rampart_audited_total = {}",
        audited(&agent)
    );

    println!("\n-- 3. Explicit deny wins over any allow --\n");
    let pushed = dir.0.with_extension("push.yaml");
    std::fs::write(&pushed, OVERBROAD)?;
    let before = generation(&agent);
    let path = pushed.to_str().context("temp path is not UTF-8")?;
    println!("rampart policy push (an over-broad allow: every shop pod may reach the database)");
    let out = agent.cli(&["policy", "push", path]);
    let _ = std::fs::remove_file(&pushed);
    println!("  {}", out?.trim());
    anyhow::ensure!(generation(&agent) > before, "the push was not installed");
    show_flows();
    println!("\nNow the guardrails (web tier never reaches the data tier; no metadata service):");
    let before = generation(&agent);
    install("10-deny-rules.yaml")?;
    wait_generation(&agent, before)?;
    println!();
    show_flows();
    println!("\nWhy is frontend -> db dropped? `rampart policy explain` asks the agent:\n");
    for line in agent
        .cli(&[
            "policy",
            "explain",
            "--from",
            "shop/frontend",
            "--to",
            "shop/db",
            "--port",
            "5432",
        ])?
        .lines()
    {
        println!("  {line}");
    }
    println!("\nThe flow log names the same rule (`rampart flows --verdict deny`, last 4):\n");
    let denies = agent.cli(&["flows", "--verdict", "deny"])?;
    let lines: Vec<&str> = denies.lines().collect();
    for line in &lines[lines.len().saturating_sub(4)..] {
        println!("  {line}");
    }

    println!("\n-- 4. Bad input changes nothing --\n");
    let before = generation(&agent);
    let broken = dir.0.join("zz-typo.yaml");
    std::fs::write(&broken, BROKEN)?;
    println!(
        "  + zz-typo.yaml (port 80800)\n\nrampart policy check {}:",
        dir.0.display()
    );
    let check = std::process::Command::new(&bin)
        .args(["policy", "check"])
        .arg(&dir.0)
        .output()
        .context("running rampart policy check")?;
    for line in String::from_utf8_lossy(&check.stdout).lines() {
        println!("  {}", line.trim());
    }
    println!("  (exit status {})", check.status.code().unwrap_or(-1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while errors(&agent) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "\nThe agent rejected the set: rampart_policy_errors_total = {}, generation still {} (was {before}).",
        errors(&agent),
        generation(&agent)
    );
    show_flows();

    println!("\n-- 5. What the kernel counted --\n");
    let metrics = agent.metrics()?;
    println!("Drops by reason and direction (rampart_drops_total):");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("rampart_drops_total{"))
    {
        if !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
    println!("\n`rampart status` on the node:\n");
    for line in agent.cli(&["status"])?.lines() {
        println!("  {line}");
    }
    let exit = agent.stop()?;
    println!("\nAgent stopped on SIGTERM ({exit}); its programs stay pinned and enforcing until");
    println!("`rampart cleanup`, which the demo ran.");
    drop(topo);
    drop(dir);
    println!("\nCleaned up: every namespace, link, program and file the demo created is gone.");
    Ok(())
}

fn pod_ip(name: &str) -> Ipv4Addr {
    let d = PODS.iter().find(|(n, _)| *n == name).map_or(0, |(_, d)| *d);
    Ipv4Addr::new(10, 244, 1, d)
}

fn send(topo: &Topology, f: &Flow) -> Outcome {
    let src = &topo.pod(f.from).ns;
    let dst = IpAddr::V4(pod_ip(f.to));
    let timeout = Duration::from_millis(800);
    match f.proto {
        "tcp" => probe::tcp(src, SocketAddr::new(dst, f.port), timeout),
        "udp" => probe::udp(src, SocketAddr::new(dst, f.port), timeout),
        _ => probe::ping(src, dst, timeout),
    }
}

fn describe(f: &Flow) -> String {
    let port = if f.port == 0 {
        String::new()
    } else {
        format!("/{}", f.port)
    };
    format!("{:<13} -> {:<19} {}{}", f.from, f.to, f.proto, port)
}

fn verdict_word(o: &Outcome) -> String {
    match o {
        Outcome::Reached => "allowed (answered)".into(),
        Outcome::TimedOut => "DROPPED".into(),
        other => format!("{other:?}"),
    }
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent
        .metrics()
        .ok()
        .and_then(|m| sample(&m, name, ""))
        .unwrap_or(f64::NAN)
}

fn generation(agent: &Agent) -> f64 {
    metric(agent, "rampart_policy_generation")
}

fn errors(agent: &Agent) -> f64 {
    metric(agent, "rampart_policy_errors_total")
}

/// The audited flows, summed over directions.
fn audited(agent: &Agent) -> f64 {
    agent.metrics().map_or(f64::NAN, |m| {
        m.lines()
            .filter(|l| l.starts_with("rampart_audited_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

/// Waits until the agent installs a set newer than `before`; returns how long it took.
fn wait_generation(agent: &Agent, before: f64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while generation(agent) <= before {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the agent did not install the new files; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}
