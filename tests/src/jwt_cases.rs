//! The JWT conformance format (`jwt_cases.jsonl` + `jwt_keys.json`): one case per line, a
//! compact token, the verifier's settings, and accept / reject. Runs every case through the
//! agent's verifier (`rampart_l7::jwt`). Accept/reject is the score; the reject reason is
//! compared and shown, but advisory (libraries classify some attacks differently).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rampart_l7::jwt::{self, ClaimRules, KeySet, TrustedKey, VerifierConfig};
use serde::Deserialize;
use serde_json::Value;

/// The cases kept in this repository (a copy of the shared suite's, unedited).
pub const DEFAULT_CASES: &str = "tests/conformance/jwt_cases.jsonl";
/// The keys file, looked up next to the cases file.
pub const KEYS_FILE: &str = "jwt_keys.json";

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub mode: String,
    pub token: String,
    pub verifier: VerifierSpec,
    pub expected: String,
    #[serde(default)]
    pub reject_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VerifierSpec {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub trusted_keys: Option<String>,
    pub allowed_algs: Vec<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<Value>,
    #[serde(default)]
    pub now: Option<u64>,
    #[serde(default)]
    pub leeway_s: Option<u64>,
    #[serde(default)]
    pub require: Option<Vec<String>>,
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub id: String,
    pub passed: bool,
    /// `accept`, or `reject (<reason>)`.
    pub got: String,
    pub expected: String,
    /// The expected reason differs from ours (advisory only).
    pub reason_differs: bool,
}

/// Reads a cases file; the keys file is `jwt_keys.json` beside it.
pub fn load(path: &Path) -> anyhow::Result<(Vec<Case>, Value)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cases = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JWT case", path.display(), index + 1))?;
        cases.push(case);
    }
    let keys_path = keys_path(path);
    let keys_text = std::fs::read_to_string(&keys_path)
        .with_context(|| format!("reading {}", keys_path.display()))?;
    let keys: Value = serde_json::from_str(&keys_text)
        .with_context(|| format!("{}: not JSON", keys_path.display()))?;
    Ok((cases, keys))
}

fn keys_path(cases: &Path) -> PathBuf {
    cases
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(KEYS_FILE)
}

/// Runs one case through the verifier.
pub fn run_case(case: &Case, keys: &Value) -> anyhow::Result<CaseResult> {
    let outcome = match (
        verifier_config(&case.verifier),
        key_set(&case.verifier, keys)?,
    ) {
        // A configuration the verifier refuses can accept nothing.
        (Err(error), _) => Err(format!("config_error: {error}")),
        (Ok(config), keys) => match case.mode.as_str() {
            "jws" => jwt::verify_jws(&config, &keys, &case.token)
                .map(|_| ())
                .map_err(|r| r.reason.as_str().to_string()),
            "jwt" => {
                let now = case.verifier.now.unwrap_or_else(now_s);
                jwt::verify_jwt(&config, &keys, &case.token, now)
                    .map(|_| ())
                    .map_err(|r| r.reason.as_str().to_string())
            }
            other => bail!("case {}: unknown mode {other:?}", case.id),
        },
    };
    let (accepted, got, reason) = match outcome {
        Ok(()) => (true, "accept".to_string(), None),
        Err(reason) => (false, format!("reject ({reason})"), Some(reason)),
    };
    let expected_accept = match case.expected.as_str() {
        "accept" => true,
        "reject" => false,
        other => bail!("case {}: expected is {other:?}", case.id),
    };
    let expected = match (&case.reject_reason, expected_accept) {
        (Some(reason), false) => format!("reject ({reason})"),
        _ => case.expected.clone(),
    };
    Ok(CaseResult {
        id: case.id.clone(),
        passed: accepted == expected_accept,
        reason_differs: !expected_accept
            && case.reject_reason.is_some()
            && reason != case.reject_reason,
        got,
        expected,
    })
}

fn verifier_config(spec: &VerifierSpec) -> Result<VerifierConfig, jwt::ConfigError> {
    let audiences = match &spec.audience {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        Some(other) => vec![other.to_string()],
    };
    let rules = ClaimRules {
        issuer: spec.issuer.clone(),
        audiences,
        leeway_s: spec.leeway_s.unwrap_or(0),
        required: spec.require.clone().unwrap_or_default(),
    };
    VerifierConfig::new(
        &spec.allowed_algs,
        rules,
        spec.max_token_bytes.unwrap_or(jwt::DEFAULT_MAX_TOKEN_BYTES),
    )
}

/// The trusted keys of a case: one named key (`verifier.key`), or a named set.
fn key_set(spec: &VerifierSpec, keys: &Value) -> anyhow::Result<KeySet> {
    if let Some(name) = &spec.trusted_keys {
        let document = &keys[name.as_str()];
        return match name.as_str() {
            _ if document.get("keys").is_some() => {
                KeySet::from_jwks(document.to_string().as_bytes())
                    .with_context(|| format!("key set {name}"))
            }
            _ if document.get("jwk").is_some() => Ok(KeySet::new(vec![
                TrustedKey::from_jwk(&document["jwk"]).with_context(|| format!("key {name}"))?,
            ])),
            _ => bail!("no key set {name:?} in the keys file"),
        };
    }
    match &spec.key {
        None => Ok(KeySet::default()),
        Some(name) => {
            let jwk = keys["keys"][name.as_str()]
                .get("jwk")
                .with_context(|| format!("no key {name:?} in the keys file"))?;
            let key = TrustedKey::from_jwk(jwk).with_context(|| format!("key {name}"))?;
            Ok(KeySet::new(vec![key]))
        }
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs every case of `path`, printing one line each, and returns (passed, failed).
pub fn run(path: &Path) -> anyhow::Result<(usize, usize)> {
    let (cases, keys) = load(path)?;
    println!(
        "jwt conformance: {} cases from {}",
        cases.len(),
        path.display()
    );
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        let result = run_case(case, &keys)?;
        let verdict = if result.passed { "PASS" } else { "FAIL" };
        let note = if result.passed && result.reason_differs {
            "  (reason differs; advisory)"
        } else {
            ""
        };
        println!(
            "{verdict} {}: expected {}, got {}{note}",
            result.id, result.expected, result.got
        );
        if result.passed {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    Ok((passed, failed))
}
