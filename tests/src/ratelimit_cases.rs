//! The rate-limit conformance format (`ratelimit_scenarios.jsonl`): token-bucket scenarios with
//! Envoy's local rate-limit semantics, each a bucket configuration and timed requests with the
//! expected allow / deny. Runs them against the agent's limiter (`rampart_l7::ratelimit`) on a
//! fake clock: every event is applied at its `t_ms` since the buckets were created.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use governor::clock::FakeRelativeClock;
use rampart_l7::ratelimit::{BucketSpec, Decision, TokenBucket, take_all};
use serde::Deserialize;

/// The scenarios kept in this repository (a copy of the shared suite's, unedited).
pub const DEFAULT_CASES: &str = "tests/conformance/ratelimit_scenarios.jsonl";

/// The refill model Rampart implements (Envoy's current, continuous bucket).
pub const MODEL: &str = "continuous";

#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    pub id: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub config: Config,
    #[serde(default)]
    pub events: Vec<Event>,
    pub config_expect: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub fill_interval_ms: Option<u64>,
    pub buckets: BTreeMap<String, BucketConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BucketConfig {
    pub max_tokens: u32,
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    #[serde(default)]
    pub fill_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub t_ms: u64,
    pub expect: String,
    #[serde(default)]
    pub buckets: Option<Vec<String>>,
    #[serde(default)]
    pub cost: Option<u32>,
}

/// A scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    /// Holds only for a refill model Rampart does not implement.
    Skipped(String),
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Scenario>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).with_context(|| {
                format!(
                    "{}:{}: not a rate-limit scenario",
                    path.display(),
                    index + 1
                )
            })
        })
        .collect()
}

/// Runs one scenario on a fake clock.
pub fn run_scenario(scenario: &Scenario) -> anyhow::Result<Outcome> {
    if !scenario.models.is_empty() && !scenario.models.iter().any(|m| m == MODEL) {
        return Ok(Outcome::Skipped(format!(
            "holds only for {:?}; Rampart refills continuously",
            scenario.models
        )));
    }
    let clock = FakeRelativeClock::default();
    let mut buckets = BTreeMap::new();
    let mut config_error = None;
    for (name, bucket) in &scenario.config.buckets {
        let interval_ms = bucket
            .fill_interval_ms
            .or(scenario.config.fill_interval_ms)
            .with_context(|| format!("bucket {name}: no fill_interval_ms"))?;
        let spec = BucketSpec::new(
            bucket.max_tokens,
            bucket.tokens_per_fill.unwrap_or(1),
            Duration::from_millis(interval_ms),
        );
        match spec {
            Ok(spec) => {
                buckets.insert(name.clone(), TokenBucket::with_clock(spec, clock.clone()));
            }
            Err(error) => config_error = Some(format!("bucket {name}: {error}")),
        }
    }
    if let Some(interval_ms) = scenario.config.fill_interval_ms
        && let Err(error) = BucketSpec::new(1, 1, Duration::from_millis(interval_ms))
    {
        config_error = Some(format!("fill_interval_ms: {error}"));
    }
    match (scenario.config_expect.as_str(), &config_error) {
        ("reject", Some(_)) | ("reject_or_deny_all", Some(_)) => return Ok(Outcome::Passed),
        ("reject", None) => {
            return Ok(Outcome::Failed(
                "configuration accepted, expected a rejection".into(),
            ));
        }
        ("accept", Some(error)) => return Ok(Outcome::Failed(format!("refused: {error}"))),
        ("accept", None) | ("reject_or_deny_all", None) => {}
        (other, _) => bail!("scenario {}: config_expect {other:?}", scenario.id),
    }
    let deny_all = scenario.config_expect == "reject_or_deny_all";
    let mut elapsed_ms = 0;
    for (index, event) in scenario.events.iter().enumerate() {
        if event.t_ms < elapsed_ms {
            bail!("scenario {}: event {index} goes back in time", scenario.id);
        }
        clock.advance(Duration::from_millis(event.t_ms - elapsed_ms));
        elapsed_ms = event.t_ms;
        let names = event
            .buckets
            .clone()
            .unwrap_or_else(|| vec!["default".to_string()]);
        let mut matched = Vec::new();
        for name in &names {
            let bucket = buckets
                .get(name)
                .with_context(|| format!("scenario {}: no bucket {name:?}", scenario.id))?;
            matched.push((name.as_str(), bucket));
        }
        let allowed = matches!(
            take_all(&matched, event.cost.unwrap_or(1)),
            Decision::Allowed { .. }
        );
        let expect_allow = match event.expect.as_str() {
            _ if deny_all => false,
            "allow" => true,
            "deny" => false,
            other => bail!("scenario {}: expect {other:?}", scenario.id),
        };
        if allowed != expect_allow {
            return Ok(Outcome::Failed(format!(
                "event {index} at {} ms on {names:?}: {} where {} was expected",
                event.t_ms,
                if allowed { "allowed" } else { "denied" },
                if expect_allow { "allow" } else { "deny" },
            )));
        }
    }
    Ok(Outcome::Passed)
}

/// Runs every scenario of `path`, one line each; returns (passed, failed). Skipped scenarios
/// (another refill model only) are listed and counted apart.
pub fn run(path: &Path) -> anyhow::Result<(usize, usize)> {
    let scenarios = load(path)?;
    println!(
        "ratelimit conformance: {} scenarios from {} (model: {MODEL})",
        scenarios.len(),
        path.display()
    );
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for scenario in &scenarios {
        match run_scenario(scenario)? {
            Outcome::Passed => {
                passed += 1;
                println!("PASS {}", scenario.id);
            }
            Outcome::Failed(why) => {
                failed += 1;
                println!("FAIL {}: {why}", scenario.id);
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                println!("SKIP {}: {why}", scenario.id);
            }
        }
    }
    if skipped > 0 {
        println!("{skipped} skipped");
    }
    Ok((passed, failed))
}
