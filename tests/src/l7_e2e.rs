//! End-to-end samples of the JWT and rate-limit conformance suites, through the real proxy: two
//! nodes, one agent each, pod a calling pod b across the mTLS tunnel, one destination port per
//! verifier (or bucket) configuration, each under a MeshPolicy whose `http` section says what
//! the case's settings say.
//!
//! - JWT: a case's `now` is fixed while the proxy reads the real clock, so the sample is the
//!   cases refused for a reason time does not change (signature, algorithm, key selection,
//!   malformed, crit, size, issuer, audience, ...); each must get `401`. A control per port with
//!   a symmetric key — a token signed here, valid now — must get `200`, so a port that refuses
//!   everything fails.
//! - Rate limits: scenarios of one `default` bucket (continuous model, intervals of 200 ms or
//!   more, at most 5 s long) are replayed in real time, each event sent 15 ms after its `t_ms`
//!   so that none lands on an interval boundary; `200` is an allow, `429` a deny.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::{Value, json};

use crate::Topology;
use crate::http_server::HttpServer;
use crate::jwt_cases::Case;
use crate::mesh::{MeshAgents, pod_object};
use crate::probe::http_request;
use crate::ratelimit_cases::Scenario;

/// Cases of the JWT sample at most.
pub const JWT_SAMPLE: usize = 32;
const FIRST_PORT: u16 = 9100;
/// A port without limits, for the first request through the tunnel.
const WARM_UP_PORT: u16 = 9099;
const TIMEOUT: Duration = Duration::from_secs(5);
/// JWK members that hold private key material, never written into a policy.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k_private"];

fn ip(node: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, d)
}

/// Two nodes, pod a on node 1, pod b on node 2 serving HTTP on `ports`, agents with `policies`.
struct World {
    // Dropped in this order: the agents clean up inside the namespaces the topology removes.
    _agents: MeshAgents,
    _origins: Vec<HttpServer>,
    _topo: Topology,
    a: String,
}

impl World {
    fn start(prefix: &str, bin: &Path, policies: &str, ports: &[u16]) -> anyhow::Result<World> {
        let topo = Topology::builder(prefix)
            .node("node-1")
            .node("node-2")
            .pod("node-1", "conf/a", ip(1, 10))
            .pod("node-2", "conf/b", ip(2, 10))
            .build()?;
        let origins = ports
            .iter()
            .map(|port| HttpServer::start(&topo.pod("conf/b").ns, *port))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let agents = MeshAgents::start(
            &topo,
            &["node-1", "node-2"],
            &world(policies),
            Some(bin),
            &[],
        )?;
        let a = topo.pod("conf/a").ns.path();
        Ok(World {
            _agents: agents,
            _origins: origins,
            _topo: topo,
            a,
        })
    }

    fn status(&self, port: u16, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
        let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), port);
        Ok(http_request(&self.a, b, "GET", "/", headers, TIMEOUT)?.status)
    }
}

fn world(policies: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: conf}}\n{}{}{policies}",
        pod_object("conf", "a", 1, ip(1, 10)),
        pod_object("conf", "b", 2, ip(2, 10))
    )
}

/// A MeshPolicy for pod b's `port` with this `http` section, as a YAML document (JSON flow).
fn mesh_policy(name: &str, port: u16, http: Value) -> String {
    let policy = json!({
        "apiVersion": "rampart.dev/v1alpha1",
        "kind": "MeshPolicy",
        "metadata": {"name": name},
        "spec": {
            "appliesTo": {"podSelector": {"matchLabels": {"app": "b"}}},
            "ports": [{"port": port}],
            "http": http,
        },
    });
    format!("---\n{policy}\n")
}

/// Whether `rampart policy check` accepts the document (alone, with the world).
fn policy_checks(bin: &Path, document: &str) -> bool {
    let dir = std::env::temp_dir().join(format!("rampart-l7-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = std::fs::create_dir_all(&dir).is_ok()
        && std::fs::write(dir.join("p.yaml"), world(document)).is_ok()
        && Command::new(bin)
            .args(["policy", "check"])
            .arg(&dir)
            .output()
            .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

fn public_jwk(jwk: &Value) -> Value {
    let mut jwk = jwk.clone();
    if let Some(members) = jwk.as_object_mut() {
        let private_oct = members.get("kty").and_then(Value::as_str) == Some("oct");
        if !private_oct {
            for m in PRIVATE_MEMBERS {
                members.remove(m);
            }
        }
    }
    jwk
}

/// The JWKS a case's verifier trusts.
fn case_jwks(case: &Case, keys: &Value) -> Option<Value> {
    let v = &case.verifier;
    if let Some(name) = &v.trusted_keys {
        let document = &keys[name.as_str()];
        if let Some(list) = document.get("keys").and_then(Value::as_array) {
            return Some(json!({"keys": list.iter().map(public_jwk).collect::<Vec<_>>()}));
        }
        return document
            .get("jwk")
            .map(|jwk| json!({"keys": [public_jwk(jwk)]}));
    }
    let jwk = keys["keys"][v.key.as_deref()?].get("jwk")?;
    Some(json!({"keys": [public_jwk(jwk)]}))
}

/// The verifier settings of a case as a provider, and its key set.
fn provider(case: &Case, jwks: &Value) -> Value {
    let v = &case.verifier;
    let mut jwt = json!({
        "algorithms": v.allowed_algs,
        "clockSkewSeconds": v.leeway_s.unwrap_or(0),
        "requiredClaims": v.require.clone().unwrap_or_default(),
        "maxTokenBytes": v.max_token_bytes.unwrap_or(8192),
        "jwks": {"inline": jwks.to_string()},
    });
    if let Some(issuer) = &v.issuer {
        jwt["issuer"] = json!(issuer);
    }
    match &v.audience {
        Some(Value::String(aud)) => jwt["audiences"] = json!([aud]),
        Some(Value::Array(list)) => jwt["audiences"] = json!(list),
        _ => {}
    }
    json!({"authentication": {"providers": [{"name": "p", "jwt": jwt}]}})
}

/// A token valid now for a port's provider, signed with its symmetric key (if it has one).
fn control_token(case: &Case, jwks: &Value) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let v = &case.verifier;
    let (alg, algorithm) = [
        ("HS256", jsonwebtoken::Algorithm::HS256),
        ("HS384", jsonwebtoken::Algorithm::HS384),
        ("HS512", jsonwebtoken::Algorithm::HS512),
    ]
    .into_iter()
    .find(|(name, _)| v.allowed_algs.iter().any(|a| a == name))?;
    let jwk = jwks["keys"]
        .as_array()?
        .iter()
        .find(|k| k["kty"] == "oct" && k.get("alg").is_none_or(|a| a == alg))?;
    let secret = URL_SAFE_NO_PAD.decode(jwk["k"].as_str()?).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let mut claims = json!({"exp": now + 600, "iat": now - 5, "nbf": now - 5, "sub": "control"});
    for name in v.require.iter().flatten() {
        if claims.get(name).is_none() {
            claims[name] = json!("control");
        }
    }
    if let Some(issuer) = &v.issuer {
        claims["iss"] = json!(issuer);
    }
    match &v.audience {
        Some(Value::String(aud)) => claims["aud"] = json!(aud),
        Some(Value::Array(list)) => claims["aud"] = json!(list),
        _ => {}
    }
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = jwk.get("kid") {
        header["kid"] = kid.clone();
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(&secret);
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, algorithm).ok()?;
    Some(format!("{input}.{signature}"))
}

/// Runs the JWT sample; prints a line per case and returns (passed, failed).
pub fn jwt_sample(
    cases: &[Case],
    keys: &Value,
    bin: &Path,
    prefix: &str,
) -> anyhow::Result<(usize, usize)> {
    let time_bound = ["expired", "not_yet_valid"];
    let mut groups: BTreeMap<String, (u16, Value, Vec<&Case>)> = BTreeMap::new();
    let mut documents = String::new();
    let mut skipped = 0;
    for case in cases {
        let eligible = case.mode == "jwt"
            && case.expected == "reject"
            && case
                .reject_reason
                .as_deref()
                .is_none_or(|r| !time_bound.contains(&r));
        if !eligible || groups.values().map(|g| g.2.len()).sum::<usize>() >= JWT_SAMPLE {
            continue;
        }
        let Some(jwks) = case_jwks(case, keys) else {
            skipped += 1;
            continue;
        };
        let group_key = provider(case, &jwks).to_string();
        if !groups.contains_key(&group_key) {
            let port = FIRST_PORT + groups.len() as u16;
            let document = mesh_policy(
                &format!("jwt-conformance-{port}"),
                port,
                provider(case, &jwks),
            );
            if !policy_checks(bin, &document) {
                println!(
                    "E2E SKIP {}: the proxy refuses its verifier settings as policy",
                    case.id
                );
                skipped += 1;
                continue;
            }
            documents.push_str(&document);
            groups.insert(group_key.clone(), (port, jwks, Vec::new()));
        }
        if let Some(group) = groups.get_mut(&group_key) {
            group.2.push(case);
        }
    }
    if groups.is_empty() {
        println!(
            "jwt end to end: no case of the file is time-independent and refused; nothing to run"
        );
        return Ok((0, 0));
    }
    let ports: Vec<u16> = groups.values().map(|g| g.0).collect();
    println!(
        "jwt end to end: {} cases on {} proxy ports ({} skipped)",
        groups.values().map(|g| g.2.len()).sum::<usize>(),
        ports.len(),
        skipped
    );
    let world = World::start(prefix, bin, &documents, &ports)?;
    let (mut passed, mut failed) = (0, 0);
    for (port, jwks, members) in groups.values() {
        let mut check = |label: String, headers: &[(&str, &str)], want: u16| {
            let got = world.status(*port, headers);
            let ok = matches!(got, Ok(status) if status == want);
            println!(
                "E2E {} {label}: expected {want}, got {}",
                if ok { "PASS" } else { "FAIL" },
                got.map_or_else(|e| format!("error {e:#}"), |s| s.to_string())
            );
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
        };
        if let Some(token) = members.first().and_then(|case| control_token(case, jwks)) {
            let bearer = format!("Bearer {token}");
            check(
                format!("control (port {port})"),
                &[("authorization", &bearer)],
                200,
            );
        }
        for case in members {
            let bearer = format!("Bearer {}", case.token);
            check(case.id.clone(), &[("authorization", &bearer)], 401);
        }
    }
    println!(
        "jwt end to end: {passed} of {} checks through the proxy as expected",
        passed + failed
    );
    Ok((passed, failed))
}

/// Runs the rate-limit sample; prints a line per scenario and returns (passed, failed).
pub fn ratelimit_sample(
    scenarios: &[Scenario],
    bin: &Path,
    prefix: &str,
) -> anyhow::Result<(usize, usize)> {
    let mut chosen = Vec::new();
    let mut documents = String::new();
    for scenario in scenarios {
        let Some(bucket) = scenario.config.buckets.get("default") else {
            continue;
        };
        let interval = bucket
            .fill_interval_ms
            .or(scenario.config.fill_interval_ms)
            .unwrap_or(0);
        let eligible = scenario.config_expect == "accept"
            && scenario.config.buckets.len() == 1
            && (scenario.models.is_empty() || scenario.models.iter().any(|m| m == "continuous"))
            && interval >= 200
            && !scenario.events.is_empty()
            && scenario.events.iter().all(|e| {
                e.t_ms <= 5_000
                    && e.cost_of("default") == 1
                    && e.buckets
                        .as_ref()
                        .is_none_or(|b| b == &["default".to_string()])
            });
        if !eligible {
            continue;
        }
        let port = FIRST_PORT + chosen.len() as u16;
        let http = json!({"rateLimits": {"buckets": [{
            "name": "default",
            "maxTokens": bucket.max_tokens,
            "tokensPerFill": bucket.tokens_per_fill.unwrap_or(1),
            "fillInterval": format!("{interval}ms"),
        }]}});
        documents.push_str(&mesh_policy(
            &format!("ratelimit-conformance-{port}"),
            port,
            http,
        ));
        chosen.push((port, scenario));
    }
    if chosen.is_empty() {
        println!("ratelimit end to end: no scenario of the file suits real time; nothing to run");
        return Ok((0, 0));
    }
    let allow_all = json!({"rules": [{"action": "Allow"}]});
    documents.push_str(&mesh_policy("warm-up", WARM_UP_PORT, allow_all));
    let mut ports: Vec<u16> = chosen.iter().map(|c| c.0).collect();
    ports.push(WARM_UP_PORT);
    println!(
        "ratelimit end to end: {} scenarios in real time",
        chosen.len()
    );
    let world = World::start(prefix, bin, &documents, &ports)?;
    let (mut passed, mut failed) = (0, 0);
    // The first request through the tunnel also issues certificates: make it before any bucket
    // is timed.
    world.status(WARM_UP_PORT, &[])?;
    for (port, scenario) in &chosen {
        // Time runs from the first event's answer: the proxy took its token a little before, so
        // every later event reaches the proxy at least its offset after that take.
        let mut start = None;
        let t0 = scenario.events.first().map_or(0, |e| e.t_ms);
        let mut verdict = Ok(());
        for (index, event) in scenario.events.iter().enumerate() {
            if let Some(start) = start {
                let at = Duration::from_millis(event.t_ms - t0 + 15);
                if let Some(wait) = at.checked_sub(Instant::elapsed(&start)) {
                    std::thread::sleep(wait);
                }
            }
            let want = if event.expect == "allow" { 200 } else { 429 };
            let got = world.status(*port, &[]);
            start.get_or_insert_with(Instant::now);
            match got {
                Ok(got) if got == want => {}
                Ok(got) => {
                    verdict = Err(format!(
                        "event {index} at {} ms: {got}, expected {want}",
                        event.t_ms
                    ));
                    break;
                }
                Err(e) => {
                    verdict = Err(format!("event {index}: {e:#}"));
                    break;
                }
            }
        }
        match verdict {
            Ok(()) => {
                passed += 1;
                println!("E2E PASS {}", scenario.id);
            }
            Err(why) => {
                failed += 1;
                println!("E2E FAIL {}: {why}", scenario.id);
            }
        }
    }
    println!(
        "ratelimit end to end: {passed} of {} scenarios through the proxy as expected",
        passed + failed
    );
    Ok((passed, failed))
}

/// Fails when any end-to-end check failed (after the cases' own count is printed).
pub fn ensure_passed(what: &str, passed: usize, failed: usize) -> anyhow::Result<()> {
    if failed > 0 {
        bail!(
            "{failed} of {} end-to-end checks of {what} failed",
            passed + failed
        );
    }
    Ok(())
}
