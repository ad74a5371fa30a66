//! The WAF engine alone, in the benchmark's own process: the Core Rule Set (4.28.0 from
//! `../shared`) at its defaults evaluating the proxy suite's benign and attack requests,
//! microseconds per request. The proxy's WAF rows minus this floor is the integration's cost
//! (HTTP parsing, the blocking-thread hop, the body buffer).
//!
//! The agent evaluates requests on as many threads at once as the machine has cores, and the
//! engine (libmodsecurity, which allocates hundreds of times per request) costs more CPU per
//! request when its threads share the cores' caches and the allocator: the `*-parallel` rows
//! measure the same evaluations on one thread per core, as CPU time per request, the floor the
//! agent's `agent_cpu_us_per_request` compares to (`rampart-mtls-waf-vs-engine`).

use std::path::PathBuf;
use std::time::Instant;

use rampart_waf::{CrsLayout, Engine, Profile, Request};

use crate::record::{Record, summarize};

/// The Core Rule Set the suite loads: CRS 4.28.0 beside the project.
pub fn crs_dir() -> anyhow::Result<PathBuf> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Ok(rampart_tests::waf_cases::shared_dir(&workspace)?
        .join(rampart_tests::waf_cases::DEFAULT_CRS))
}

const HEADERS: &[(&[u8], &[u8])] = &[
    (b"host", b"bench"),
    (b"user-agent", b"rampart-bench"),
    (b"accept", b"*/*"),
];

/// The proxy suite's GET of `uri`, as the engine takes it.
fn request(uri: &str) -> anyhow::Result<Request<'_>> {
    Ok(Request {
        client: "10.244.1.10:40000".parse()?,
        server: "10.244.2.10:8085".parse()?,
        method: "GET",
        uri,
        http_version: "1.1",
        headers: HEADERS,
        body: b"",
    })
}

/// `waf-engine` rows: microseconds per evaluation of the benign and the attack request, and
/// the attack's over the benign's.
pub fn records(crs: &std::path::Path, quick: bool) -> anyhow::Result<Vec<Record>> {
    let engine = Engine::load(&CrsLayout::discover(crs)?, &Profile::default())?;
    let evaluations = if quick { 500 } else { 2_000 };
    let runs = if quick { 3 } else { 5 };
    let time = |uri: &str, block: bool| -> anyhow::Result<Vec<f64>> {
        let request = request(uri)?;
        let mut per_run = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            for _ in 0..evaluations {
                let e = engine.evaluate(&request)?;
                anyhow::ensure!(e.disruptive == block, "{uri}: unexpected verdict {e:?}");
            }
            per_run.push(start.elapsed().as_secs_f64() * 1e6 / evaluations as f64);
        }
        Ok(per_run)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // CPU time per request with one evaluating thread per core.
    let parallel = |uri: &str, block: bool| -> anyhow::Result<Vec<f64>> {
        let request = request(uri)?;
        let mut per_run = Vec::with_capacity(runs);
        for _ in 0..runs {
            let cpu: anyhow::Result<Vec<f64>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| -> anyhow::Result<f64> {
                            let start = thread_cpu_seconds();
                            for _ in 0..evaluations {
                                let e = engine.evaluate(&request)?;
                                anyhow::ensure!(e.disruptive == block, "{uri}: unexpected verdict");
                            }
                            Ok(thread_cpu_seconds() - start)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| anyhow::anyhow!("an evaluating thread panicked"))?
                    })
                    .collect()
            });
            let total: f64 = cpu?.iter().sum();
            per_run.push(total * 1e6 / (threads * evaluations) as f64);
        }
        Ok(per_run)
    };
    let mut benign = time(crate::proxy::WAF_BENIGN, false)?;
    let mut attack = time(crate::proxy::WAF_ATTACK, true)?;
    let mut benign_parallel = parallel(crate::proxy::WAF_BENIGN, false)?;
    let mut attack_parallel = parallel(crate::proxy::WAF_ATTACK, true)?;
    let base = summarize(&mut benign.clone()).0;
    let mut out = Vec::new();
    for (system, metric, values) in [
        ("waf-engine-benign", "engine_us_per_request", &mut benign),
        ("waf-engine-attack", "engine_us_per_request", &mut attack),
        (
            "waf-engine-benign-parallel",
            "engine_cpu_us_per_request",
            &mut benign_parallel,
        ),
        (
            "waf-engine-attack-parallel",
            "engine_cpu_us_per_request",
            &mut attack_parallel,
        ),
    ] {
        let (value, min, max) = summarize(values);
        out.push(Record {
            suite: "proxy".into(),
            system: system.into(),
            rules: 0,
            metric: metric.into(),
            value,
            unit: "us".into(),
            ratio_to_baseline: value / base,
            runs: values.len(),
            min,
            max,
        });
    }
    Ok(out)
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
