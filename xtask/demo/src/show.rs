//! What the demo prints and checks: the flows table (probed in parallel), the agents' policy
//! generations and counters, CLI output and HTTP replies.

use std::time::{Duration, Instant};

use anyhow::ensure;
use rampart_tests::metrics::sample;
use rampart_tests::probe::{self, HttpReply};
use rampart_tests::{Agent, Outcome};

use crate::world::{World, pod_addr, pod_ip};

/// How long a probe waits for an answer (a dropped flow costs this much).
pub const TIMEOUT: Duration = Duration::from_millis(800);

pub struct Flow {
    pub from: &'static str,
    pub to: &'static str,
    /// `tcp` (an echo), `udp` (an echo), `http` (any HTTP answer) or `icmp` (a ping).
    pub proto: &'static str,
    pub port: u16,
}

pub const fn flow(from: &'static str, to: &'static str, proto: &'static str, port: u16) -> Flow {
    Flow {
        from,
        to,
        proto,
        port,
    }
}

/// Probes every flow at once, prints one line each, and checks each against `expected`
/// (answered or not).
pub fn flows(world: &World, flows: &[Flow], expected: &[bool]) -> anyhow::Result<()> {
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = flows.iter().map(|f| s.spawn(|| send(world, f))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Error("probe panicked".into()))
            })
            .collect()
    });
    for (f, outcome) in flows.iter().zip(&outcomes) {
        println!("  {:<44} {}", describe(f), verdict_word(outcome));
    }
    for ((f, outcome), want) in flows.iter().zip(&outcomes).zip(expected) {
        ensure!(
            outcome.reached() == *want,
            "{} should be {}: {outcome:?}",
            describe(f),
            if *want { "answered" } else { "dropped" }
        );
    }
    Ok(())
}

fn send(world: &World, f: &Flow) -> Outcome {
    let src = &world.topo.pod(f.from).ns;
    let dst = pod_addr(f.to, f.port);
    match f.proto {
        "tcp" => probe::tcp(src, dst, TIMEOUT),
        "udp" => probe::udp(src, dst, TIMEOUT),
        "http" => match probe::http_request(&src.path(), dst, "GET", "/", &[], TIMEOUT) {
            Ok(_) => Outcome::Reached,
            Err(_) => Outcome::TimedOut,
        },
        _ => probe::ping(src, std::net::IpAddr::V4(pod_ip(f.to)), TIMEOUT),
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

pub fn verdict_word(o: &Outcome) -> String {
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

pub fn generation(agent: &Agent) -> f64 {
    metric(agent, "rampart_policy_generation")
}

pub fn generations(world: &World) -> Vec<f64> {
    world.agents().map(generation).collect()
}

pub fn errors(agent: &Agent) -> f64 {
    metric(agent, "rampart_policy_errors_total")
}

/// The audited flows, summed over directions.
pub fn audited(agent: &Agent) -> f64 {
    agent.metrics().map_or(f64::NAN, |m| {
        m.lines()
            .filter(|l| l.starts_with("rampart_audited_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

/// Waits until every agent installs a set newer than `before`; returns how long it took.
pub fn wait_generations(world: &World, before: &[f64]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while generations(world)
        .iter()
        .zip(before)
        .any(|(now, was)| now <= was)
    {
        if start.elapsed() > Duration::from_secs(10) {
            let logs: Vec<String> = world.agents().map(Agent::log).collect();
            anyhow::bail!(
                "the agents did not install the new files; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// Polls `f` for up to 5 seconds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        ensure!(Instant::now() < deadline, "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// The last `n` lines of `text` that `keep` keeps.
pub fn last_lines(text: &str, n: usize, keep: impl Fn(&str) -> bool) {
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("  {line}");
    }
}

/// One request's outcome: the status line, the named headers, and the body of a refusal.
pub fn request(what: &str, reply: &HttpReply, headers: &[&str]) {
    let status = reply.head.lines().next().unwrap_or_default();
    println!("  {what:<58} -> {}", status.trim());
    for name in headers {
        if let Some(value) = reply.header(name) {
            println!("      {name}: {value}");
        }
    }
}

/// `rampart ca request` on `node` with `token_of`'s token for `id`: what it printed, or its
/// error.
pub fn ca_request(
    world: &World,
    mesh: &rampart_tests::mesh::MeshAgents,
    token_of: &str,
    id: &str,
) -> Result<String, String> {
    let agent = mesh.node(token_of);
    let trust = mesh.trust_dir();
    let token = mesh.token_file(token_of);
    let url = rampart_tests::ca_service::CaServer::url();
    let args = [
        "ca",
        "request",
        "--ca-url",
        url.as_str(),
        "--ca-dir",
        trust.to_str().unwrap_or_default(),
        "--node-token-file",
        token.to_str().unwrap_or_default(),
        "--id",
        id,
    ];
    rampart_tests::cmd::in_ns(
        world.topo.node(token_of).ns.name(),
        agent.bin().to_str().unwrap_or_default(),
        &args,
    )
    .map_err(|e| format!("{e:#}"))
}
