//! Runs NetworkPolicy conformance cases against the real agent: one node namespace with a pod
//! namespace per case pod (at the case's addresses), echo servers on every case port, the agent
//! (`rampart run --policy-dir`) attaching to the pods it finds from the node's routes. Each case
//! is written to the policy directory as a live update (atomically, by rename); once the agent
//! reports that exact file in force, every probe runs as a real TCP connect or UDP echo.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netpol_cases::{Case, Expect, Probe};
use crate::topology::PodNetwork;
use crate::{Agent, AgentOptions, EchoServer, Outcome, Topology, probe};

/// How long a probe waits for its answer (the upstream e2e tests use 1 s).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the agent may take to put a written case in force.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);
const NODE: &str = "node-1";

/// Probes matched and not, over all cases run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Score {
    pub passed: usize,
    pub failed: usize,
    pub cases_failed: usize,
}

/// A running world for cases that share one set of pods.
struct World {
    pods: Vec<(String, std::net::Ipv4Addr)>,
    // Field order is drop order: the agent stops before its namespaces go.
    agent: Agent,
    _servers: Vec<EchoServer>,
    topology: Topology,
    policy_dir: PathBuf,
}

/// Runs `cases` in order (a case whose pods differ from the previous one gets a new world) and
/// prints each case's result. `prefix` names the namespaces; `bin` is the agent binary.
/// Pods are plugged as `network` says (a routed CNI's veths, or a bridge's).
pub fn run(
    cases: &[Case],
    prefix: &str,
    work_dir: &Path,
    bin: &Path,
    network: PodNetwork,
) -> anyhow::Result<Score> {
    let mut score = Score::default();
    let mut world: Option<World> = None;
    for case in cases {
        let pods: Vec<(String, std::net::Ipv4Addr)> =
            case.pods.iter().map(|p| (p.key(), p.ip)).collect();
        if world.as_ref().is_none_or(|w| w.pods != pods) {
            drop(world.take());
            world = Some(World::start(case, prefix, work_dir, bin, network)?);
        }
        let w = world.as_ref().context("world")?;
        w.apply(case)?;
        let failures = w.probe_all(case)?;
        let total = case.probes.len();
        score.passed += total - failures.len();
        score.failed += failures.len();
        if failures.is_empty() {
            println!("PASS {} ({total} probes)", case.name);
        } else {
            score.cases_failed += 1;
            println!(
                "FAIL {} ({} of {total} probes wrong)",
                case.name,
                failures.len()
            );
            for f in failures.iter().take(20) {
                println!("    {f}");
            }
        }
    }
    Ok(score)
}

impl World {
    fn start(
        case: &Case,
        prefix: &str,
        work_dir: &Path,
        bin: &Path,
        network: PodNetwork,
    ) -> anyhow::Result<World> {
        let mut builder = Topology::builder(prefix).node(NODE).network(network);
        for pod in &case.pods {
            builder = builder.pod(NODE, &pod.key(), pod.ip);
        }
        let topology = builder.build().context("building the pod topology")?;
        let tcp: BTreeSet<u16> = case.container_ports.iter().map(|p| p.port).collect();
        let udp: BTreeSet<u16> = case
            .container_ports
            .iter()
            .filter(|p| p.protocol == "UDP")
            .map(|p| p.port)
            .collect();
        let tcp: Vec<u16> = tcp.into_iter().collect();
        let udp: Vec<u16> = udp.into_iter().collect();
        let mut servers = Vec::new();
        for pod in topology.pods() {
            servers.push(EchoServer::start(&pod.ns, &tcp, &udp)?);
        }
        let policy_dir = work_dir.join(format!("policies-{}", std::process::id()));
        if policy_dir.exists() {
            std::fs::remove_dir_all(&policy_dir)?;
        }
        std::fs::create_dir_all(&policy_dir)?;
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(policy_dir.clone());
        opts.bin = Some(bin.to_owned());
        let agent = Agent::start(&topology.node(NODE).ns, &opts)?;
        Ok(World {
            pods: case.pods.iter().map(|p| (p.key(), p.ip)).collect(),
            agent,
            _servers: servers,
            topology,
            policy_dir,
        })
    }

    /// Writes the case's objects and waits until the agent has exactly them in force, with an
    /// endpoint for every pod.
    fn apply(&self, case: &Case) -> anyhow::Result<()> {
        let text = case.objects_yaml(NODE)?;
        let digest = sha256_of(&text)?;
        let tmp = self.policy_dir.join(".case.yaml.tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, self.policy_dir.join("case.yaml"))?;
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            if let Ok((200, body)) = self.agent.admin_get("/status") {
                let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let policy = &doc["policy"];
                let in_force = policy["sources"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|f| f["sha256"] == digest.as_str()));
                let endpoints = policy["endpoints"].as_u64().unwrap_or(0) as usize;
                if in_force && endpoints == case.pods.len() {
                    return Ok(());
                }
                if let Some(e) = policy["last_error"].as_str()
                    && Instant::now() > deadline
                {
                    bail!("case {}: not in force; last error: {e}", case.name);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "case {}: the agent did not put it in force within {APPLY_TIMEOUT:?}; log:\n{}",
                    case.name,
                    self.agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs every probe of the case (in parallel) and returns the mismatches.
    fn probe_all(&self, case: &Case) -> anyhow::Result<Vec<String>> {
        let mut jobs = Vec::new();
        for p in &case.probes {
            let from = self.topology.pod(&p.from);
            let to = case.pod(&p.to)?;
            jobs.push((p, from, SocketAddr::new(IpAddr::V4(to.ip), p.port)));
        }
        let results: Vec<(&Probe, Outcome)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(p, from, dst)| {
                    let (p, ns, dst) = (*p, &from.ns, *dst);
                    s.spawn(move || {
                        let once = || match p.proto.as_str() {
                            "UDP" => probe::udp(ns, dst, PROBE_TIMEOUT),
                            // SCTP appears only in policies; its probes are TCP.
                            _ => probe::tcp(ns, dst, PROBE_TIMEOUT),
                        };
                        let mut outcome = once();
                        // An allowed path that failed once is tried again (first packets may
                        // wait for neighbour resolution); a deny that got through is final.
                        if p.expect == Expect::Allow && !outcome.reached() {
                            outcome = once();
                        }
                        (p, outcome)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| panic!("probe thread panicked")))
                .collect()
        });
        let mut failures = Vec::new();
        for (p, outcome) in results {
            let got = if outcome.reached() {
                Expect::Allow
            } else {
                Expect::Deny
            };
            if got != p.expect {
                failures.push(format!(
                    "{} -> {} {}/{}: expected {:?}, got {:?}",
                    p.from, p.to, p.proto, p.port, p.expect, outcome
                ));
            }
        }
        Ok(failures)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.policy_dir);
    }
}

/// SHA-256 (hex) of `text`, as the agent reports its source files.
fn sha256_of(text: &str) -> anyhow::Result<String> {
    use sha2::Digest as _;
    Ok(sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
