//! The rate-limit conformance format (`ratelimit_scenarios.jsonl`): token-bucket scenarios with
//! Envoy's local rate-limit semantics, each a bucket configuration and timed requests with the
//! expected allow / deny. Runs them against the agent's limiter (`rampart_l7::ratelimit`) on a
//! fake clock: every event is applied at its `t_ms` since the buckets were created.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use governor::clock::FakeRelativeClock;
use rampart_l7::ratelimit::{BucketSpec, Decision, TokenBucket, take_each};
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
    /// Absent: 1 from every bucket the request uses.
    #[serde(default)]
    pub cost: Option<Cost>,
}

impl Event {
    /// The buckets the request uses (absent: the `default` bucket).
    pub fn bucket_names(&self) -> Vec<String> {
        self.buckets
            .clone()
            .unwrap_or_else(|| vec!["default".to_string()])
    }

    /// The tokens the request takes from `bucket`, one of those it uses.
    pub fn cost_of(&self, bucket: &str) -> u32 {
        self.cost.as_ref().map_or(1, |cost| cost.of(bucket))
    }
}

/// The tokens a request takes (Envoy's `hits_addend`): one number for every bucket it uses
/// (`"cost": 2`), or a number per bucket (`"cost": {"A": 2, "B": 3}`). A bucket the request uses
/// that the map does not name takes 1: the format does not say, and in Envoy a descriptor's own
/// `hits_addend` overrides the request's, which is 1 when unset; the map form has no request-level
/// number, so an unnamed bucket falls back to that default. A map may name only buckets the
/// request uses ([`Scenario::check`]). 0 is passed on as it is: the limiter counts it as 1, as
/// Envoy does an unset `hits_addend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub enum Cost {
    Each(u32),
    PerBucket(BTreeMap<String, u32>),
}

impl Cost {
    /// The tokens taken from `bucket`.
    pub fn of(&self, bucket: &str) -> u32 {
        match self {
            Cost::Each(cost) => *cost,
            Cost::PerBucket(costs) => costs.get(bucket).copied().unwrap_or(1),
        }
    }
}

impl TryFrom<serde_json::Value> for Cost {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Cost, String> {
        fn tokens(value: &serde_json::Value) -> Option<u32> {
            value.as_u64().and_then(|n| u32::try_from(n).ok())
        }
        const EXPECTED: &str = "cost must be a whole number of tokens (0 to 4294967295) or a map \
                                from bucket name to one";
        match &value {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(bucket, cost)| match tokens(cost) {
                    Some(cost) => Ok((bucket.clone(), cost)),
                    None => Err(format!("{EXPECTED}; bucket {bucket:?} has {cost}")),
                })
                .collect::<Result<_, _>>()
                .map(Cost::PerBucket),
            other => tokens(other)
                .map(Cost::Each)
                .ok_or_else(|| format!("{EXPECTED}, not {other}")),
        }
    }
}

/// A scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    /// Holds only for a refill model Rampart does not implement.
    Skipped(String),
}

impl Scenario {
    /// What the format requires beyond its types: a cost map names only buckets that the
    /// configuration defines and that its request uses (an entry for any other bucket would take
    /// nothing, so it can only be a mistake in the scenario).
    pub fn check(&self) -> anyhow::Result<()> {
        for (index, event) in self.events.iter().enumerate() {
            let Some(Cost::PerBucket(costs)) = &event.cost else {
                continue;
            };
            let used = event.bucket_names();
            for bucket in costs.keys() {
                if !self.config.buckets.contains_key(bucket) {
                    bail!(
                        "scenario {}: event {index}: cost names bucket {bucket:?}, which the \
                         configuration does not define (it has {:?})",
                        self.id,
                        self.config.buckets.keys().collect::<Vec<_>>()
                    );
                }
                if !used.contains(bucket) {
                    bail!(
                        "scenario {}: event {index}: cost names bucket {bucket:?}, which the \
                         request does not use (it uses {used:?})",
                        self.id
                    );
                }
            }
        }
        Ok(())
    }
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Scenario>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// The scenarios of a JSON-lines text, checked; `origin` (a path) names it in errors, which also
/// name the line and the scenario's id.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<Scenario>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let scenario = serde_json::from_str::<Scenario>(line).with_context(|| {
                // The id, if the line has one, to name the scenario that is wrong.
                let id = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
                match id {
                    Some(id) => format!(
                        "{origin}:{}: scenario {id}: not a valid rate-limit scenario",
                        index + 1
                    ),
                    None => format!("{origin}:{}: not a rate-limit scenario", index + 1),
                }
            })?;
            scenario
                .check()
                .with_context(|| format!("{origin}:{}", index + 1))?;
            Ok(scenario)
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
    scenario.check()?;
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
        let names = event.bucket_names();
        let mut matched = Vec::new();
        for name in &names {
            let bucket = buckets
                .get(name)
                .with_context(|| format!("scenario {}: no bucket {name:?}", scenario.id))?;
            matched.push((name.as_str(), bucket, event.cost_of(name)));
        }
        let allowed = matches!(take_each(&matched), Decision::Allowed { .. });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Scenario {
        let mut scenarios = parse(line, "test").unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(scenarios.len(), 1);
        scenarios.remove(0)
    }

    fn parse_error(line: &str) -> String {
        match parse(line, "test") {
            Ok(scenarios) => panic!("accepted: {scenarios:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    /// One line: buckets `slow` (max 4, 1/s) and `fast` (max 6, 10/s) and `events` (a JSON list's
    /// items, on any number of lines).
    fn two_buckets(id: &str, events: &str) -> String {
        let events = events.replace('\n', "");
        format!(
            r#"{{"id": "{id}", "models": ["continuous"], "config": {{"fill_interval_ms": 50, "buckets": {{"slow": {{"max_tokens": 4, "tokens_per_fill": 1, "fill_interval_ms": 1000}}, "fast": {{"max_tokens": 6, "tokens_per_fill": 1, "fill_interval_ms": 100}}}}}}, "events": [{events}], "config_expect": "accept"}}"#
        )
    }

    #[test]
    fn a_cost_map_charges_each_bucket_its_own_tokens() {
        // slow is consulted first (slower fill). Event 2 names only slow: fast, unnamed, takes
        // 1 and denies, after slow paid its last token (not returned: event 4 is denied).
        let scenario = one(&two_buckets(
            "map-cost",
            r#"{"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"], "cost": {"slow": 2, "fast": 3}},
               {"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"], "cost": {"slow": 1, "fast": 3}},
               {"t_ms": 0, "expect": "deny", "buckets": ["slow", "fast"], "cost": {"slow": 1}},
               {"t_ms": 0, "expect": "deny", "buckets": ["fast"], "cost": {"fast": 1}},
               {"t_ms": 0, "expect": "deny", "buckets": ["slow"], "cost": 1},
               {"t_ms": 1000, "expect": "allow", "buckets": ["slow", "fast"], "cost": {"slow": 1, "fast": 6}}"#,
        ));
        assert_eq!(
            scenario.events[0].cost,
            Some(Cost::PerBucket(BTreeMap::from([
                ("fast".to_string(), 3),
                ("slow".to_string(), 2)
            ])))
        );
        assert_eq!(scenario.events[2].cost_of("fast"), 1);
        assert_eq!(run_scenario(&scenario).ok(), Some(Outcome::Passed));

        // Had fast been charged 2 then 1 instead of 3 and 3, it would still hold tokens at event
        // 2, which would pass: the runner must tell the two apart.
        let wrong = one(&two_buckets(
            "map-cost-wrong",
            r#"{"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"], "cost": {"slow": 2, "fast": 2}},
               {"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"], "cost": {"slow": 1, "fast": 1}},
               {"t_ms": 0, "expect": "deny", "buckets": ["slow", "fast"], "cost": {"slow": 1}}"#,
        ));
        assert!(matches!(
            run_scenario(&wrong).ok(),
            Some(Outcome::Failed(_))
        ));
    }

    #[test]
    fn a_cost_number_charges_every_bucket_the_same() {
        let scenario = one(&two_buckets(
            "number-cost",
            r#"{"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"], "cost": 3},
               {"t_ms": 0, "expect": "deny", "buckets": ["slow", "fast"], "cost": 2},
               {"t_ms": 0, "expect": "allow", "buckets": ["slow", "fast"]},
               {"t_ms": 0, "expect": "allow", "buckets": ["fast"], "cost": 2},
               {"t_ms": 0, "expect": "deny", "buckets": ["slow"]}"#,
        ));
        assert_eq!(scenario.events[0].cost, Some(Cost::Each(3)));
        assert_eq!(scenario.events[2].cost, None);
        assert_eq!(scenario.events[0].cost_of("fast"), 3);
        assert_eq!(scenario.events[2].cost_of("fast"), 1);
        assert_eq!(run_scenario(&scenario).ok(), Some(Outcome::Passed));
    }

    #[test]
    fn the_repository_cases_all_pass() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/ratelimit_scenarios.jsonl");
        let scenarios = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!scenarios.is_empty());
        for scenario in &scenarios {
            let outcome = run_scenario(scenario).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(
                matches!(outcome, Outcome::Passed | Outcome::Skipped(_)),
                "{}: {outcome:?}",
                scenario.id
            );
        }
    }

    #[test]
    fn a_malformed_cost_is_refused_naming_the_scenario() {
        let on_slow = |cost: &str| {
            format!(r#"{{"t_ms": 0, "expect": "allow", "buckets": ["slow"], "cost": {cost}}}"#)
        };
        for (id, cost, why) in [
            ("cost-string", r#""2""#, r#"not "2""#),
            ("cost-negative", "-1", "not -1"),
            ("cost-fraction", "1.5", "not 1.5"),
            ("cost-too-big", "4294967296", "not 4294967296"),
            ("cost-list", "[1]", "not [1]"),
            (
                "cost-map-string",
                r#"{"slow": "2"}"#,
                r#"bucket "slow" has "2""#,
            ),
            (
                "cost-map-negative",
                r#"{"slow": -2}"#,
                r#"bucket "slow" has -2"#,
            ),
            (
                "cost-map-unknown",
                r#"{"slow": 1, "user=C": 2}"#,
                r#"event 0: cost names bucket "user=C", which the configuration does not define"#,
            ),
            (
                "cost-map-unused",
                r#"{"slow": 1, "fast": 2}"#,
                r#"event 0: cost names bucket "fast", which the request does not use"#,
            ),
        ] {
            let error = parse_error(&two_buckets(id, &on_slow(cost)));
            assert!(
                error.contains(&format!("scenario {id}:")) && error.contains(why),
                "{id}: {error}"
            );
        }
    }
}
