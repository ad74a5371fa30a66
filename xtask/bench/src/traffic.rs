//! Real TCP traffic between two pods, measured from inside the client's namespace: round trips
//! of small messages on one connection (latency p50/p99 and the rate they imply), connection
//! setups (connect + first round trip), and a bulk echo. The `datapath` and `proxy` suites use it
//! against the harness's echo server.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rampart_tests::Netns;

use crate::record::{Record, summarize};

/// Bytes of each request and response.
const MESSAGE: usize = 64;

/// How much traffic one measurement sends.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rounds: usize,
    pub connects: usize,
    pub bulk: usize,
}

impl Load {
    pub fn new(quick: bool) -> Load {
        if quick {
            Load {
                rounds: 2_000,
                connects: 20,
                bulk: 32 << 20,
            }
        } else {
            Load {
                rounds: 10_000,
                connects: 100,
                bulk: 256 << 20,
            }
        }
    }

    pub fn runs(quick: bool) -> usize {
        if quick { 3 } else { 5 }
    }
}

/// One measurement's raw numbers.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// Round trips per second on one connection (from the mean round trip).
    pub rr_rate: f64,
    pub connect_p50_us: f64,
    pub throughput_mbps: f64,
}

/// A metric: its name, its unit, and how to read it from a sample of type `S`.
pub type Metric<S = Sample> = (&'static str, &'static str, fn(&S) -> f64);

pub const METRICS: [Metric; 5] = [
    ("rr_rate", "req/s", |s| s.rr_rate),
    ("rr_latency_p50", "us", |s| s.rr_p50_us),
    ("rr_latency_p99", "us", |s| s.rr_p99_us),
    ("connect_rr_p50", "us", |s| s.connect_p50_us),
    ("echo_throughput", "Mbit/s", |s| s.throughput_mbps),
];

/// Round trips on one connection, connection setups, and a bulk echo, from inside `ns`. Every
/// loop is bounded in count, every socket operation in time.
pub fn measure(ns: &Netns, dst: SocketAddr, load: &Load) -> anyhow::Result<Sample> {
    let load = *load;
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
        let mut rtts = Vec::with_capacity(load.rounds);
        let all = Instant::now();
        for _ in 0..load.rounds {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let rr_rate = load.rounds as f64 / all.elapsed().as_secs_f64();
        rtts.sort_by(f64::total_cmp);
        let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
        let mut setups = Vec::with_capacity(load.connects);
        for _ in 0..load.connects {
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
        let bulk = load.bulk;
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
            rr_rate,
            connect_p50_us: setups[setups.len() / 2],
            throughput_mbps: bulk as f64 * 8.0 / secs / 1e6,
        })
    })?
}

/// `n` round trips of small messages on one new connection from inside `ns` (for CPU
/// accounting: nothing else runs meanwhile).
pub fn round_trips(ns: &Netns, dst: SocketAddr, n: usize) -> anyhow::Result<()> {
    ns.run(move || -> anyhow::Result<()> {
        let timeout = Duration::from_secs(5);
        let mut s = TcpStream::connect_timeout(&dst, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        let msg = [0x5au8; MESSAGE];
        let mut back = [0u8; MESSAGE];
        for _ in 0..n {
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
        }
        Ok(())
    })?
}

/// CPU seconds (user + system) `pids` have used so far. `/proc` counts in `USER_HZ`, which is
/// 100 on Linux whatever the kernel's tick.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command field"))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After the command: state is field 3, utime 14, stime 15.
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no CPU times"))?;
        }
    }
    Ok(ticks as f64 / 100.0)
}

/// Records of every metric for every (system, samples) row; the first row is the baseline.
/// `rules` is the same for every row.
pub fn records<S>(
    suite: &str,
    samples: &[(String, Vec<S>)],
    rules: u64,
    metrics: &[Metric<S>],
) -> Vec<Record> {
    let mut out = Vec::new();
    let Some(base_row) = samples.first() else {
        return out;
    };
    for &(metric, unit, pick) in metrics {
        let base = summarize(&mut base_row.1.iter().map(pick).collect::<Vec<_>>()).0;
        for (system, list) in samples {
            out.push(record(suite, system, rules, metric, unit, list, pick, base));
        }
    }
    out
}

/// One record: the median of `pick` over `list`, as a ratio to `base`.
#[allow(
    clippy::too_many_arguments,
    reason = "one record is its fields, named at every call in the suites' tables"
)]
pub fn record<S>(
    suite: &str,
    system: &str,
    rules: u64,
    metric: &str,
    unit: &str,
    list: &[S],
    pick: fn(&S) -> f64,
    base: f64,
) -> Record {
    let (value, min, max) = summarize(&mut list.iter().map(pick).collect::<Vec<_>>());
    Record {
        suite: suite.into(),
        system: system.into(),
        rules,
        metric: metric.into(),
        value,
        unit: unit.into(),
        ratio_to_baseline: if base > 0.0 { value / base } else { f64::NAN },
        runs: list.len(),
        min,
        max,
    }
}
