//! Suite `proxy`: what Rampart's mTLS hop costs a pod-to-pod TCP flow between two nodes, against
//! the same flow without Rampart, in one run and one topology (two node namespaces on an
//! underlay bridge, pod a on node 1, pod b on node 2 running an echo server).
//!
//! Systems: `none` (no agent: the baseline), then `rampart-l4` (agents running, the port
//! governed by kernel policy only) and `rampart-mtls` (a MeshPolicy on the port: redirect, TLS
//! 1.3 tunnel between the agents, transparent delivery). Metrics: request/response latency of
//! 64-byte messages on one connection (p50, p99), connection setup (connect + first
//! request/response, p50), and echo throughput of a bulk transfer.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rampart_tests::{Agent, AgentOptions, EchoServer, Netns, Topology};

use crate::record::{Record, summarize};

const BENCH_PREFIX: &str = "rpx";
const MESH_PORT: u16 = 5432;
const L4_PORT: u16 = 8080;
const MESSAGE: usize = 64;

fn ip(node: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, d)
}

fn policy() -> String {
    let pod = |name: &str, node: u8| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}, nodeName: node-{node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {}, hostIP: 192.168.200.{node}}}\n",
            ip(node, 10)
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-mtls}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {MESH_PORT}}}]\n  allowedPrincipals: {{serviceAccounts: [bench/a]}}\n",
        pod("a", 1),
        pod("b", 2)
    )
}

/// A reported metric: name, unit, and how to read it from a sample.
type Metric = (&'static str, &'static str, fn(&Sample) -> f64);

/// One measurement run's raw numbers.
struct Sample {
    rr_p50_us: f64,
    rr_p99_us: f64,
    connect_p50_us: f64,
    throughput_mbps: f64,
}

/// Round trips on one connection, connection setups, and a bulk echo, from inside `ns`.
fn measure(
    ns: &Netns,
    dst: SocketAddr,
    rounds: usize,
    connects: usize,
    bulk: usize,
) -> anyhow::Result<Sample> {
    ns.run(move || -> anyhow::Result<Sample> {
        let timeout = Duration::from_secs(5);
        let mut s = TcpStream::connect_timeout(&dst, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        let msg = [0x5au8; MESSAGE];
        let mut back = [0u8; MESSAGE];
        // Warm-up: connection and caches.
        for _ in 0..50 {
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
        }
        let mut rtts = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtts.sort_by(f64::total_cmp);
        let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
        let mut setups = Vec::with_capacity(connects);
        for _ in 0..connects {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&dst, timeout)?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(timeout))?;
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            setups.push(t.elapsed().as_secs_f64() * 1e6);
        }
        setups.sort_by(f64::total_cmp);
        // Bulk: a writer thread sends `bulk` bytes while this thread reads them back.
        let mut writer = s.try_clone()?;
        let t = Instant::now();
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![0xa5u8; 64 * 1024];
            let mut left = bulk;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < bulk {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "the connection closed after {got} of {bulk} bytes");
            got += n;
        }
        let secs = t.elapsed().as_secs_f64();
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("bulk writer panicked"))??;
        Ok(Sample {
            rr_p50_us: pct(0.50),
            rr_p99_us: pct(0.99),
            connect_p50_us: setups[setups.len() / 2],
            throughput_mbps: bulk as f64 * 8.0 / secs / 1e6,
        })
    })?
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let (runs, rounds, connects, bulk) = if quick {
        (3, 2_000, 20, 32 << 20)
    } else {
        (5, 10_000, 100, 256 << 20)
    };
    rampart_tests::sweep_stale(BENCH_PREFIX)?;
    let topo = Topology::builder(BENCH_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "bench/a", ip(1, 10))
        .pod("node-2", "bench/b", ip(2, 10))
        .build()?;
    let _echo = EchoServer::start(&topo.pod("bench/b").ns, &[MESH_PORT, L4_PORT], &[])?;
    let a = &topo.pod("bench/a").ns;
    let dst = |port| SocketAddr::new(IpAddr::V4(ip(2, 10)), port);

    let mut samples: Vec<(&str, Vec<Sample>)> = Vec::new();
    let mut none = Vec::new();
    for _ in 0..runs {
        none.push(measure(a, dst(MESH_PORT), rounds, connects, bulk)?);
    }
    samples.push(("none", none));

    let work = std::env::temp_dir().join(format!("rampart-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (ca_dir, policy_dir) = (work.join("ca"), work.join("policy"));
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::write(policy_dir.join("bench.yaml"), policy())?;
    rampart_tests::agent::ca_init(&ca_dir)?;
    let start = |node: &str| {
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(policy_dir.clone());
        opts.extra_args = vec![
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--node-name".into(),
            node.into(),
        ];
        Agent::start(&topo.node(node).ns, &opts)
    };
    let agents = [start("node-1")?, start("node-2")?];
    let (mut l4, mut mtls) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Side by side: the two Rampart variants alternate within each run.
        l4.push(measure(a, dst(L4_PORT), rounds, connects, bulk)?);
        mtls.push(measure(a, dst(MESH_PORT), rounds, connects, bulk)?);
    }
    samples.push(("rampart-l4", l4));
    samples.push(("rampart-mtls", mtls));
    drop(agents);
    let _ = std::fs::remove_dir_all(&work);

    let metrics: [Metric; 4] = [
        ("rr_latency_p50", "us", |s| s.rr_p50_us),
        ("rr_latency_p99", "us", |s| s.rr_p99_us),
        ("connect_rr_p50", "us", |s| s.connect_p50_us),
        ("echo_throughput", "Mbit/s", |s| s.throughput_mbps),
    ];
    let mut out = Vec::new();
    for (metric, unit, pick) in metrics {
        let base = summarize(&mut samples[0].1.iter().map(pick).collect::<Vec<_>>()).0;
        for (system, list) in &samples {
            let (value, min, max) = summarize(&mut list.iter().map(pick).collect::<Vec<_>>());
            out.push(Record {
                suite: "proxy".into(),
                system: (*system).into(),
                rules: 0,
                metric: metric.into(),
                value,
                unit: unit.into(),
                ratio_to_baseline: value / base,
                runs: list.len(),
                min,
                max,
            });
        }
    }
    Ok(out)
}
