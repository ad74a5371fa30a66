//! Suite `agent`: the agent itself with 0, 10k and 100k policy rules (the `datapath` suite's
//! set: fillers plus the rule the measured flow needs) — its resident memory once idle, and how
//! long a policy file change takes to be enforced, seen by real probes: a deny rule dropped into
//! the policy directory until a pod's new connections fail, and its removal until they pass
//! again. Ratios are to the agent with no filler rules.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use rampart_tests::{Agent, AgentOptions, Netns, probe};

use crate::datapath::{PORT, SERVER, policy_set};
use crate::record::Record;

const BENCH_PREFIX: &str = "rpa";
/// Longest a flip may take before the suite gives up.
const FLIP_LIMIT: Duration = Duration::from_secs(30);

const DENY: &str = "apiVersion: rampart.dev/v1alpha1
kind: ClusterPolicy
metadata: {name: bench-deny}
spec:
  appliesTo: {podSelector: {matchLabels: {app: server}}}
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {app: measured}}}]
";

/// `VmRSS` of `pid` in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kib / 1024.0)
}

/// Milliseconds from `change` until new connections from `ns` to the server are `reached`:
/// the start of the first probe that shows it (a failing probe waits out its timeout, which is
/// not part of the policy's delay). Probes every few milliseconds, each bounded in time.
fn flip(
    ns: &Netns,
    reached: bool,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    flip_within(ns, reached, FLIP_LIMIT, change)
}

/// [`flip`], giving up after `limit`.
///
/// A probe starts every [`PROBE_EVERY`], each on its own thread: a blocked probe (a dropped
/// SYN) takes its whole timeout to fail, and probing one after another would hide when the path
/// opened by up to that timeout. The result is the start of the earliest probe that saw the new
/// state, once every probe started before it has answered.
pub fn flip_within(
    ns: &Netns,
    reached: bool,
    limit: Duration,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    const PROBE_EVERY: Duration = Duration::from_millis(2);
    const PROBE_TIMEOUT: Duration = Duration::from_millis(25);
    const IN_FLIGHT: usize = 32;
    let dst = SocketAddr::new(IpAddr::V4(SERVER), PORT);
    let start = Instant::now();
    change()?;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(Duration, probe::Outcome)>();
        let mut in_flight = 0usize;
        let mut next = Duration::ZERO;
        let mut earliest: Option<Duration> = None;
        loop {
            let now = start.elapsed();
            if earliest.is_none() && now < limit && now >= next && in_flight < IN_FLIGHT {
                let tx = tx.clone();
                scope.spawn(move || {
                    let _ = tx.send((now, probe::tcp(ns, dst, PROBE_TIMEOUT)));
                });
                in_flight += 1;
                next = now + PROBE_EVERY;
            }
            if let Ok((probe_start, outcome)) = rx.recv_timeout(Duration::from_millis(1)) {
                in_flight -= 1;
                // Only a dropped or refused connection shows a blocked path: an error of the
                // probe itself shows nothing.
                let shown = match outcome {
                    probe::Outcome::Reached => Some(true),
                    probe::Outcome::TimedOut | probe::Outcome::Refused => Some(false),
                    probe::Outcome::Error(e) => {
                        eprintln!("probe error (ignored): {e}");
                        None
                    }
                };
                if shown == Some(reached) {
                    earliest = Some(earliest.map_or(probe_start, |e| e.min(probe_start)));
                }
            }
            match earliest {
                Some(at) if in_flight == 0 => return Ok(at.as_secs_f64() * 1e3),
                None if in_flight == 0 && start.elapsed() >= limit => {
                    anyhow::bail!("the probe did not flip within {limit:?}")
                }
                _ => {}
            }
        }
    })
}

/// Writes `text` to `dir/name` atomically (the watcher sees one complete file).
fn put(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let runs = if quick { 3 } else { 5 };
    let sizes: &[usize] = &[0, 10_000, 100_000];
    let (topo, _echo) = crate::datapath::measured_node(BENCH_PREFIX)?;
    let a = &topo.pod("bench/a").ns;
    let work = std::env::temp_dir().join(format!("rampart-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);

    let mut rows: Vec<(usize, &str, &str, Vec<f64>)> = Vec::new();
    for &fillers in sizes {
        let dir = work.join(format!("policy-{fillers}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.yaml"), policy_set(fillers))?;
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(dir.clone());
        let agent = Agent::start(&topo.node("node-1").ns, &opts)?;
        let pid = agent
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
        let (mut rss, mut deny, mut allow) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            std::thread::sleep(Duration::from_millis(500));
            rss.push(rss_mib(pid)?);
            deny.push(flip(a, false, || put(&dir, "zz-deny.yaml", DENY))?);
            allow.push(flip(a, true, || {
                Ok(std::fs::remove_file(dir.join("zz-deny.yaml"))?)
            })?);
        }
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
        rows.push((fillers, "rss_idle", "MiB", rss));
        rows.push((fillers, "change_to_deny_ms", "ms", deny));
        rows.push((fillers, "change_to_allow_ms", "ms", allow));
    }
    let _ = std::fs::remove_dir_all(&work);

    let mut out = Vec::new();
    for metric in ["rss_idle", "change_to_deny_ms", "change_to_allow_ms"] {
        let mut base = None;
        for (fillers, m, unit, values) in rows.iter_mut().filter(|r| r.1 == metric) {
            out.push(Record::of_samples(
                "agent",
                "rampart".into(),
                *fillers as u64 + 1,
                m,
                unit,
                values,
                &mut base,
            ));
        }
    }
    Ok(out)
}
