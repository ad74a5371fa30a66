//! Suite `kube`: the agent fed from the Kubernetes API (the harness's stand-in, on the node's
//! loopback) in clusters of 1k and 10k pods with 10k and 100k policy rules (the `policy` suite's
//! synthetic set): how long an API event takes to be in force in the kernel, seen by real probes
//! from a pod (a pod added, relabelled and removed; a policy added and removed), the agent's
//! resident memory, live allocations and bytes per pod of each, and its CPU for a burst of 1,000 pod events. Ratios
//! are to the smallest cluster.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rampart_tests::kube_api::ApiServer;
use rampart_tests::{Agent, AgentOptions, Netns};
use serde_json::{Value, json};

use crate::datapath::{CLIENT, PORT, SERVER};
use crate::policy::synthetic_set_at;
use crate::record::Record;

const BENCH_PREFIX: &str = "rpk";
/// Longest an event may take before the suite gives up.
const FLIP_LIMIT: Duration = Duration::from_secs(60);
/// Pod events in the CPU burst.
const BURST: usize = 1_000;

/// A pod of no node of this topology (its address is routed nowhere; it only fills the maps).
fn filler_pod(i: usize) -> Value {
    let ip = Ipv4Addr::new(
        10,
        200 + (i / 65_536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8,
    );
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("filler-{i}"), "namespace": "bench",
                     "labels": {"app": format!("filler-{}", i % 50), "tier": "filler"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "c"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "hostIP": "192.168.200.2"},
    })
}

/// The measured client pod, labelled `app`.
fn client(app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a", "namespace": "bench", "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "c"}]},
        "status": {"phase": "Running", "podIP": CLIENT.to_string(), "hostIP": "192.168.200.1"},
    })
}

fn allow_measured() -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: measured, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: measured}}}}}}]\n    ports: [{{port: {PORT}}}]\n"
    )
}

fn deny_measured() -> Value {
    json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "ClusterPolicy",
        "metadata": {"name": "bench-deny"},
        "spec": {
            "appliesTo": {"podSelector": {"matchLabels": {"app": "server"}}},
            "ingress": [{"action": "Deny", "from": [{"podSelector": {"matchLabels": {"app": "measured"}}}]}],
        },
    })
}

/// Milliseconds from `change` until new connections from `ns` to the server are `reached`.
fn flip(
    ns: &Netns,
    reached: bool,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    crate::agent::flip_within(ns, reached, FLIP_LIMIT, change)
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

/// Waits until `pid` has used no CPU for `quiet`, at most `limit`.
fn settle(pid: u32, quiet: Duration, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = cpu_seconds(pid)?;
    let mut still = Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_seconds(pid)?;
        if now > last + 0.005 {
            last = now;
            still = Instant::now();
        } else if still.elapsed() >= quiet {
            return Ok(());
        }
    }
    anyhow::bail!("the agent did not settle within {limit:?}")
}

/// The `q` quantile of `samples` by nearest rank (`samples` not empty).
fn nearest_rank(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

struct Size {
    pods: usize,
    rules: usize,
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    // Enough events per kind for a p99 (by nearest rank: of fewer than 100 samples, the largest).
    let runs = if quick { 10 } else { 30 };
    let mut sizes = vec![
        Size {
            pods: 1_000,
            rules: 10_000,
        },
        Size {
            pods: 10_000,
            rules: 10_000,
        },
        Size {
            pods: 10_000,
            rules: 100_000,
        },
    ];
    if !quick {
        sizes.push(Size {
            pods: 50_000,
            rules: 10_000,
        });
    }
    let (topo, _echo) = crate::datapath::measured_node(BENCH_PREFIX)?;
    let a = &topo.pod("bench/a").ns;
    let node = topo.node("node-1").ns.path();
    let work = std::env::temp_dir().join(format!("rampart-bench-kube-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    type Row = (usize, usize, &'static str, &'static str, Vec<f64>);
    let mut rows: Vec<Row> = Vec::new();
    for size in &sizes {
        let node = node.clone();
        let api = ApiServer::start(Box::new(move || {
            rampart_tests::netns::run_in(&node, || {
                std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 6443)))
            })
            .map_err(std::io::Error::other)?
        }))?;
        let (set, _) = synthetic_set_at(size.rules, SERVER);
        api.apply_yaml(&set)?;
        api.apply_yaml(&allow_measured())?;
        for i in 0..size.pods {
            api.apply(&filler_pod(i))?;
        }
        let kubeconfig = work.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let mut opts = AgentOptions::new(Vec::new());
        opts.extra_args = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--node-name".into(),
            "node-1".into(),
        ];
        let agent = Agent::start(&topo.node("node-1").ns, &opts)?;
        let pid = agent.pid().context("the agent is not running")?;
        settle(pid, Duration::from_secs(1), FLIP_LIMIT)?;
        let mut m: Vec<(&'static str, &'static str, Vec<f64>)> = [
            "rss_idle",
            "allocated_idle",
            "pod_added_ms",
            "pod_relabelled_ms",
            "pod_removed_ms",
            "policy_added_ms",
            "policy_removed_ms",
        ]
        .iter()
        .map(|name| {
            (
                *name,
                if name.ends_with("_idle") { "MiB" } else { "ms" },
                Vec::new(),
            )
        })
        .collect();
        for _ in 0..runs {
            settle(pid, Duration::from_millis(500), FLIP_LIMIT)?;
            m[0].2.push(crate::agent::rss_mib(pid)?);
            let allocated = agent
                .metrics()
                .ok()
                .and_then(|text| {
                    rampart_tests::metrics::sample(&text, "rampart_memory_allocated_bytes", "")
                })
                .context("the agent reports no rampart_memory_allocated_bytes")?;
            m[1].2.push(allocated / (1024.0 * 1024.0));
            m[2].2
                .push(flip(a, true, || api.apply(&client("measured")).map(drop))?);
            m[3].2
                .push(flip(a, false, || api.apply(&client("other")).map(drop))?);
            api.apply(&client("measured"))?;
            flip(a, true, || Ok(()))?;
            m[4].2
                .push(flip(a, false, || api.delete("v1", "Pod", "bench", "a"))?);
            api.apply(&client("measured"))?;
            flip(a, true, || Ok(()))?;
            m[5].2
                .push(flip(a, false, || api.apply(&deny_measured()).map(drop))?);
            m[6].2.push(flip(a, true, || {
                api.delete("rampart.dev/v1alpha1", "ClusterPolicy", "", "bench-deny")
            })?);
            api.delete("v1", "Pod", "bench", "a")?;
        }
        // A burst of pod events: every filler relabelled (up to BURST of them), the agent's CPU
        // until it is idle again.
        settle(pid, Duration::from_millis(500), FLIP_LIMIT)?;
        let before = cpu_seconds(pid)?;
        for i in 0..BURST.min(size.pods) {
            let mut pod = filler_pod(i);
            pod["metadata"]["labels"]["tier"] = json!("relabelled");
            api.apply(&pod)?;
        }
        settle(pid, Duration::from_secs(1), FLIP_LIMIT)?;
        let burst_cpu = (cpu_seconds(pid)? - before) * 1e3;
        m.push(("burst_1000_pod_events_cpu", "ms", vec![burst_cpu]));
        drop(agent);
        drop(api);
        for (name, unit, values) in m {
            rows.push((size.pods, size.rules, name, unit, values));
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let mut out = Vec::new();
    let metrics: Vec<&'static str> = rows.iter().map(|r| r.2).fold(Vec::new(), |mut v, n| {
        if !v.contains(&n) {
            v.push(n);
        }
        v
    });
    for metric in metrics {
        let mut base = None;
        let mut p99_base = None;
        let mut p99s = Vec::new();
        for (pods, rules, m, unit, values) in rows.iter_mut().filter(|r| r.2 == metric) {
            out.push(Record::of_samples(
                "kube",
                format!("rampart, {pods} pods"),
                *rules as u64,
                m,
                unit,
                values,
                &mut base,
            ));
            if m.ends_with("_ms") && values.len() > 1 {
                let p99 = nearest_rank(values, 0.99);
                let base = *p99_base.get_or_insert(p99);
                p99s.push(Record {
                    metric: format!("{m}_p99"),
                    value: p99,
                    ratio_to_baseline: if base > 0.0 { p99 / base } else { f64::NAN },
                    ..out[out.len() - 1].clone()
                });
            }
        }
        out.extend(p99s);
    }
    // Bytes per pod: the growth between the smallest and each larger pod count at the same
    // rule count, of the resident memory (what the node pays; it moves with the allocator's free
    // pages) and of the live allocations (what the agent keeps). Each size's figure is the median
    // of its idle samples.
    for (idle, metric) in [
        ("rss_idle", "rss_bytes_per_pod"),
        ("allocated_idle", "allocated_bytes_per_pod"),
    ] {
        let at: Vec<(usize, usize, f64)> = out
            .iter()
            .filter(|r| r.metric == idle)
            .filter_map(|r| {
                let pods = r.system.split_whitespace().nth(1)?.parse().ok()?;
                Some((pods, r.rules as usize, r.value))
            })
            .collect();
        for &(pods_hi, rules, mib_hi) in &at {
            if let Some(&(pods_lo, _, mib_lo)) = at
                .iter()
                .filter(|(p, r, _)| *r == rules && *p < pods_hi)
                .min_by_key(|(p, _, _)| *p)
            {
                let per_pod = (mib_hi - mib_lo) * 1024.0 * 1024.0 / (pods_hi - pods_lo) as f64;
                out.push(Record {
                    suite: "kube".into(),
                    system: format!("rampart, {pods_lo} -> {pods_hi} pods"),
                    rules: rules as u64,
                    metric: metric.into(),
                    value: per_pod,
                    unit: "B".into(),
                    // To the goal of 1 KiB per pod.
                    ratio_to_baseline: per_pod / 1024.0,
                    runs: 1,
                    min: per_pod,
                    max: per_pod,
                });
            }
        }
    }
    Ok(out)
}
