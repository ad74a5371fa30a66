//! The WAF engine alone, in the benchmark's own process: the Core Rule Set (4.28.0 from
//! `../shared`) at its defaults evaluating the proxy suite's benign and attack requests,
//! microseconds per request. The proxy's WAF rows minus this floor is the integration's cost
//! (HTTP parsing, the blocking-thread hop, the body buffer).

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

/// `waf-engine` rows: microseconds per evaluation of the benign and the attack request, and
/// the attack's over the benign's.
pub fn records(crs: &std::path::Path, quick: bool) -> anyhow::Result<Vec<Record>> {
    let engine = Engine::load(&CrsLayout::discover(crs)?, &Profile::default())?;
    let evaluations = if quick { 500 } else { 2_000 };
    let runs = if quick { 3 } else { 5 };
    let time = |uri: &str, block: bool| -> anyhow::Result<Vec<f64>> {
        let request = Request {
            client: "10.244.1.10:40000".parse()?,
            server: "10.244.2.10:8085".parse()?,
            method: "GET",
            uri,
            http_version: "1.1",
            headers: HEADERS,
            body: b"",
        };
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
    let mut benign = time(crate::proxy::WAF_BENIGN, false)?;
    let mut attack = time(crate::proxy::WAF_ATTACK, true)?;
    let base = summarize(&mut benign.clone()).0;
    let mut out = Vec::new();
    for (system, values) in [
        ("waf-engine-benign", &mut benign),
        ("waf-engine-attack", &mut attack),
    ] {
        let (value, min, max) = summarize(values);
        out.push(Record {
            suite: "proxy".into(),
            system: system.into(),
            rules: 0,
            metric: "engine_us_per_request".into(),
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
