//! The `rego` step of `authz`: the route's Rego policy evaluated on each request, over the
//! input OPA's Envoy plugin gives its policies (`input.attributes.request.http`,
//! `input.attributes.source`, `input.parsed_path`, `input.parsed_query`, ...), so policies
//! written for OPA-Envoy run unchanged. What `authn` established is in
//! `input.attributes.metadataContext.filterMetadata`: under `envoy.filters.http.jwt_authn`
//! (`payload`: a token's claims, as Envoy's JWT filter puts them) and `rampart.authn`
//! (`provider`, `claims`, `apiKeyClient`). Evaluation is bounded by the policy's time budget;
//! an error or an overrun refuses (fail closed). It runs inline for up to [`INLINE_BUDGET`]
//! (then again on the blocking pool), on a copy of the compiled engine each thread keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use rampart_common::reason::AuthzReason;
use serde_json::{Value, json};

use super::context::{Denial, Passed, Peer};
use crate::policy::http::rego::RegoModel;

/// What the policy decided.
#[derive(Debug)]
pub enum Decision {
    /// Allowed; headers to set on the request to the pod.
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny(Denial),
}

/// The request as OPA's Envoy plugin shows it to a policy.
pub fn input(parts: &Parts, peer: &Peer, passed: &Passed, scheme: &str) -> Value {
    let mut headers: serde_json::Map<String, Value> =
        super::context::joined_headers(&parts.headers)
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect();
    let host = super::context::authority(parts).unwrap_or_default();
    headers.insert(":authority".into(), Value::String(host.clone()));
    headers.insert(":method".into(), Value::String(parts.method.to_string()));
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    headers.insert(":path".into(), Value::String(path.clone()));
    let parsed_path: Vec<Value> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(percent_decode(s)))
        .collect();
    let mut parsed_query: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pair in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        parsed_query
            .entry(percent_decode(k))
            .or_default()
            .push(Value::String(percent_decode(v)));
    }
    let address = |addr: std::net::SocketAddr| json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}});
    let mut source = json!({"address": address(peer.source)});
    if let Some(id) = &peer.spiffe_id {
        source["principal"] = Value::String(id.as_str().to_owned());
    }
    let mut destination = json!({"address": address(peer.destination)});
    if let Some(id) = &peer.destination_spiffe_id {
        destination["principal"] = Value::String(id.as_str().to_owned());
    }
    let mut filter_metadata = serde_json::Map::new();
    if let Some(principal) = &passed.principal {
        let claims = Value::Object(principal.claims.0.clone());
        filter_metadata.insert(
            "envoy.filters.http.jwt_authn".into(),
            json!({"payload": claims}),
        );
        filter_metadata.insert(
            "rampart.authn".into(),
            json!({"provider": principal.provider, "claims": claims}),
        );
    }
    if let Some(client) = &passed.api_key_client {
        filter_metadata.insert("rampart.authn".into(), json!({"apiKeyClient": client}));
    }
    let protocol = match parts.version {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    json!({
        "attributes": {
            "source": source,
            "destination": destination,
            "request": {"http": {
                "method": parts.method.as_str(),
                "headers": headers,
                "path": path,
                "host": host,
                "scheme": scheme,
                "protocol": protocol,
            }},
            "metadataContext": {"filterMetadata": filter_metadata},
        },
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "version": {"encoding": "protojson", "ext_authz": "v3"},
    })
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Longest a policy runs on the event loop's thread: most policies decide in microseconds,
/// and a hop to the blocking pool waits for a pool thread to be scheduled (on a busy node, most
/// of the latency Rego added). A policy still running past this is stopped and evaluated again
/// on the blocking pool within its whole budget (evaluation is a pure function of the policy
/// and the input, so the second run decides as the first would have).
pub const INLINE_BUDGET: Duration = Duration::from_micros(250);

/// Evaluates `model` on `input` within its budget: inline up to [`INLINE_BUDGET`], then off
/// the event loop (a policy may loop up to its budget).
pub async fn decide(model: &RegoModel, input: Value) -> Decision {
    if model.pending.is_some() {
        // Never in force: a set with an unresolved ConfigMap is rejected. Refused all the same.
        return Decision::Deny(Denial::new(AuthzReason::RegoError, StatusCode::FORBIDDEN));
    }
    let input = regorus::Value::from(input);
    let inline_budget = INLINE_BUDGET.min(model.budget);
    let evaluated = match evaluate(&model.engine, &model.query, inline_budget, input.clone()) {
        Err(e) if inline_budget < model.budget && e.over_budget => {
            let engine = std::sync::Arc::clone(&model.engine);
            let (query, budget) = (model.query.clone(), model.budget);
            tokio::task::spawn_blocking(move || evaluate(&engine, &query, budget, input)).await
        }
        inline => Ok(inline),
    };
    match evaluated {
        Ok(Ok(result)) => interpret(&result),
        Ok(Err(e)) => {
            tracing::warn!(policy = %model.source, query = %model.query, error = %e, "rego: evaluation failed; refused");
            Decision::Deny(Denial::new(AuthzReason::RegoError, StatusCode::FORBIDDEN))
        }
        Err(e) => {
            tracing::warn!(policy = %model.source, error = %e, "rego: evaluation task failed; refused");
            Decision::Deny(Denial::new(AuthzReason::RegoError, StatusCode::FORBIDDEN))
        }
    }
}

/// Why an evaluation gave no result.
#[derive(Debug)]
pub struct EvalError {
    pub message: String,
    /// Stopped at its time budget (rather than failed).
    pub over_budget: bool,
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Engines a thread has evaluated with, each a copy of a compiled one: a copy allocates the
/// interpreter's working state (sized to the policy), so each thread keeps its own and
/// evaluates on it again (every evaluation starts from a clean state). Keyed by the compiled
/// engine: a `Weak` keeps its allocation, so a new policy never takes a dead one's address.
const ENGINES_PER_THREAD: usize = 8;

thread_local! {
    static ENGINES: std::cell::RefCell<Vec<(std::sync::Weak<regorus::Engine>, regorus::Engine)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One evaluation of `engine` (this thread's copy of it), stopped past `budget`.
pub fn evaluate(
    engine: &std::sync::Arc<regorus::Engine>,
    query: &str,
    budget: Duration,
    input: regorus::Value,
) -> Result<Value, EvalError> {
    let cached = ENGINES.with_borrow_mut(|engines| {
        engines.retain(|(compiled, _)| compiled.strong_count() > 0);
        let at = engines.iter().position(|(compiled, _)| {
            std::ptr::eq(compiled.as_ptr(), std::sync::Arc::as_ptr(engine))
        })?;
        Some(engines.swap_remove(at).1)
    });
    let mut copy = cached.unwrap_or_else(|| regorus::Engine::clone(engine));
    copy.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: budget,
        check_interval: std::num::NonZeroU32::MIN,
    });
    copy.set_input(input);
    let evaluated = copy.eval_rule(query.to_owned());
    let result = match evaluated {
        Ok(result) => {
            // Kept for the next evaluation on this thread (a failed one's copy is dropped),
            // without this request's input.
            copy.set_input(regorus::Value::Null);
            ENGINES.with_borrow_mut(|engines| {
                if engines.len() >= ENGINES_PER_THREAD {
                    engines.remove(0);
                }
                engines.push((std::sync::Arc::downgrade(engine), copy));
            });
            result
        }
        Err(e) => {
            return Err(EvalError {
                over_budget: e.chain().any(|cause| {
                    cause
                        .downcast_ref::<regorus::utils::limits::LimitError>()
                        .is_some()
                }),
                message: e.to_string(),
            });
        }
    };
    serde_json::to_value(&result).map_err(|e| EvalError {
        message: e.to_string(),
        over_budget: false,
    })
}

/// `true`: allowed; `false`, undefined or anything else: refused; an object as OPA-Envoy reads
/// it: `allowed`, and `headers` (to the pod when allowed, to the client when not), `body` and
/// `http_status` (when not).
pub fn interpret(result: &Value) -> Decision {
    let deny = |status: StatusCode| Decision::Deny(Denial::new(AuthzReason::RegoDenied, status));
    match result {
        Value::Bool(true) => Decision::Allow(Vec::new()),
        Value::Object(object) => {
            let headers: Vec<(HeaderName, HeaderValue)> = object
                .get("headers")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
                    if !super::context::authorizer_may_set(&name) {
                        return None;
                    }
                    Some((name, HeaderValue::from_str(&value).ok()?))
                })
                .collect();
            if object.get("allowed") == Some(&Value::Bool(true)) {
                return Decision::Allow(headers);
            }
            let status = object
                .get("http_status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            let mut denial = Denial::new(AuthzReason::RegoDenied, status);
            denial.headers = headers;
            denial.body = object.get("body").map(|b| match b {
                Value::String(s) => Bytes::from(s.clone()),
                other => Bytes::from(other.to_string()),
            });
            Decision::Deny(denial)
        }
        _ => deny(StatusCode::FORBIDDEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVOY_ALLOW: &str = "data.envoy.authz.allow";

    /// `text` compiled with OPA-Envoy's default query.
    fn envoy_policy(text: &str) -> regorus::Engine {
        crate::policy::http::rego::compile("p.rego", text, ENVOY_ALLOW)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// OPA-Envoy's input for a GET of `uri` from [`peer`], without credentials.
    fn get(uri: &str) -> Value {
        input(
            &request("GET", uri, None),
            &peer(),
            &Passed::default(),
            "http",
        )
    }

    fn eval(
        engine: &regorus::Engine,
        query: &str,
        budget: Duration,
        input: Value,
    ) -> Result<Value, EvalError> {
        let engine = std::sync::Arc::new(engine.clone());
        evaluate(&engine, query, budget, regorus::Value::from(input))
    }

    /// OPA's Istio tutorial policy for its Envoy plugin (the quick start's `opa-policy`), as
    /// `policies/auth/rego.yaml` carries it: users from a Basic credential, their roles, and the
    /// paths each role may GET.
    fn opa_example() -> String {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/auth/rego.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("rego.yaml: {e}"));
        doc["spec"]["http"]["rego"]["inline"]
            .as_str()
            .unwrap_or_else(|| panic!("rego.yaml has no inline policy"))
            .to_owned()
    }

    fn request(method: &str, uri: &str, user: Option<&str>) -> Parts {
        use base64::Engine as _;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "shop");
        if let Some(user) = user {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
            builder = builder.header("authorization", format!("Basic {encoded}"));
        }
        builder.body(()).unwrap_or_default().into_parts().0
    }

    fn peer() -> Peer {
        Peer {
            spiffe_id: crate::spiffe::SpiffeId::parse("spiffe://td/ns/web/sa/frontend").ok(),
            source: "10.0.0.1:1000".parse().unwrap_or_else(|e| panic!("{e}")),
            destination: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_spiffe_id: crate::spiffe::SpiffeId::parse("spiffe://td/ns/web/sa/api").ok(),
            server_name: None,
        }
    }

    fn allowed(engine: &regorus::Engine, query: &str, parts: &Parts) -> Result<bool, String> {
        let value = eval(
            engine,
            query,
            Duration::from_millis(200),
            input(parts, &peer(), &Passed::default(), "http"),
        )
        .map_err(|e| e.message)?;
        Ok(matches!(interpret(&value), Decision::Allow(_)))
    }

    /// The input names both ends as OPA's Envoy plugin does: addresses, and the SPIFFE IDs of
    /// the source and of the destination workload.
    #[test]
    fn the_input_names_both_ends_by_address_and_spiffe_id() {
        let value = input(
            &request("GET", "/orders", None),
            &peer(),
            &Passed::default(),
            "http",
        );
        let ends = &value["attributes"];
        assert_eq!(
            ends["source"]["principal"],
            "spiffe://td/ns/web/sa/frontend"
        );
        assert_eq!(
            ends["source"]["address"]["socketAddress"]["address"],
            "10.0.0.1"
        );
        assert_eq!(
            ends["destination"]["principal"],
            "spiffe://td/ns/web/sa/api"
        );
        assert_eq!(
            ends["destination"]["address"]["socketAddress"]["portValue"],
            8080
        );
        let anonymous = Peer {
            spiffe_id: None,
            destination_spiffe_id: None,
            ..peer()
        };
        let value = input(
            &request("GET", "/", None),
            &anonymous,
            &Passed::default(),
            "http",
        );
        assert!(value["attributes"]["source"].get("principal").is_none());
        assert!(
            value["attributes"]["destination"]
                .get("principal")
                .is_none()
        );
    }

    /// A thread's reused copy decides each input afresh: nothing of one evaluation (rule
    /// values, the input) carries into the next.
    #[test]
    fn a_reused_engine_decides_each_request_afresh() {
        let engine = std::sync::Arc::new(
            crate::policy::http::rego::compile(
                "istio.rego",
                &opa_example(),
                "data.istio.authz.allow",
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let q = "data.istio.authz.allow";
        let decide_for = |uri: &str, user: Option<&str>| {
            let value = evaluate(
                &engine,
                q,
                Duration::from_millis(200),
                regorus::Value::from(input(
                    &request("GET", uri, user),
                    &peer(),
                    &Passed::default(),
                    "http",
                )),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            matches!(interpret(&value), Decision::Allow(_))
        };
        for _ in 0..3 {
            assert!(decide_for("/api/v1/products", Some("bob")));
            assert!(!decide_for("/api/v1/products", Some("alice")));
            assert!(!decide_for("/api/v1/products", None));
            assert!(decide_for("/productpage", Some("alice")));
        }
    }

    #[test]
    fn opas_istio_example_decides_as_in_its_tutorial() {
        let engine = crate::policy::http::rego::compile(
            "istio.rego",
            &opa_example(),
            "data.istio.authz.allow",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let q = "data.istio.authz.allow";
        for (method, uri, user, expected) in [
            ("GET", "/health", None, true),
            ("GET", "/productpage", Some("alice"), true),
            ("GET", "/api/v1/products", Some("alice"), false),
            ("GET", "/api/v1/products", Some("bob"), true),
            ("POST", "/productpage", Some("bob"), false),
            ("GET", "/productpage", None, false),
            ("GET", "/productpage", Some("mallory"), false),
        ] {
            assert_eq!(
                allowed(&engine, q, &request(method, uri, user)),
                Ok(expected),
                "{method} {uri} as {user:?}"
            );
        }
    }

    /// A policy's answer cannot reframe the request or send it elsewhere: `content-length`,
    /// `transfer-encoding`, `host` and hop-by-hop headers are dropped from it.
    #[test]
    fn a_policy_cannot_set_framing_or_routing_headers() {
        let text = r#"package envoy.authz
allow := {"allowed": true, "headers": {"content-length": "0", "transfer-encoding": "chunked", "host": "elsewhere", "connection": "close", "x-opa-user": "ok"}}
"#;
        let engine = envoy_policy(text);
        let value = eval(&engine, ENVOY_ALLOW, Duration::from_millis(200), get("/"))
            .unwrap_or_else(|e| panic!("{e}"));
        let Decision::Allow(headers) = interpret(&value) else {
            panic!("refused");
        };
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-opa-user"]);
    }

    /// `policies/auth/rego-configmap.yaml`'s module and data, compiled from its ConfigMap,
    /// decide by the caller's SPIFFE ID.
    #[test]
    fn the_config_map_example_decides_by_caller_with_its_data() {
        let checked =
            crate::policy::examples::checked(&["workloads.yaml", "auth/rego-configmap.yaml"]);
        let model = checked.model.mesh_policies[0]
            .http
            .as_ref()
            .and_then(|h| h.rego.clone())
            .unwrap_or_else(|| panic!("no rego"));
        let as_caller = |caller: &str, method: &str, path: &str| {
            let peer = Peer {
                spiffe_id: crate::spiffe::SpiffeId::parse(caller).ok(),
                ..peer()
            };
            let value = eval(
                &model.engine,
                &model.query,
                Duration::from_millis(200),
                input(
                    &request(method, path, None),
                    &peer,
                    &Passed::default(),
                    "http",
                ),
            );
            matches!(value.as_ref().map(interpret), Ok(Decision::Allow(_)))
        };
        let (frontend, admin) = (
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/admin",
        );
        assert!(as_caller(frontend, "GET", "/catalog/1"));
        assert!(!as_caller(frontend, "PUT", "/catalog/1"));
        assert!(as_caller(admin, "PUT", "/catalog/1"));
        assert!(!as_caller(admin, "PUT", "/orders/1"));
        assert!(!as_caller(
            "spiffe://cluster.local/ns/shop/sa/db",
            "GET",
            "/catalog/1"
        ));
    }

    #[test]
    fn an_object_result_says_status_headers_and_body_and_a_runaway_policy_is_stopped() {
        let text = r#"package envoy.authz
default allow := {"allowed": false, "http_status": 401, "headers": {"www-authenticate": "Basic realm=\"opa\""}, "body": "who are you?"}
allow := {"allowed": true, "headers": {"x-opa-user": "ok"}} if input.parsed_query.user[0] == "ok"
"#;
        let engine = envoy_policy(text);
        let value = eval(
            &engine,
            ENVOY_ALLOW,
            Duration::from_millis(200),
            get("/?user=no"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Decision::Deny(denial) = interpret(&value) else {
            panic!("allowed: {value}");
        };
        assert_eq!(denial.status, StatusCode::UNAUTHORIZED);
        assert_eq!(denial.body.as_deref(), Some(&b"who are you?"[..]));
        assert_eq!(denial.headers[0].0, "www-authenticate");
        let value = eval(
            &engine,
            ENVOY_ALLOW,
            Duration::from_millis(200),
            get("/?user=ok"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(interpret(&value), Decision::Allow(h) if h[0].0 == "x-opa-user"));
        // A policy that would run for minutes is stopped at its budget (checked between
        // evaluation steps: 25 million of them here).
        let slow = "package envoy.authz\nallow if { count([1 | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000); x != y]) > 0 }\n";
        let engine = envoy_policy(slow);
        let started = std::time::Instant::now();
        let result = eval(&engine, ENVOY_ALLOW, Duration::from_millis(20), get("/"));
        let Err(error) = result else {
            panic!("a runaway policy decided");
        };
        assert!(
            error.over_budget && error.message.contains("time limit"),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// A policy past [`INLINE_BUDGET`] finishes on the blocking pool within its own budget (so
    /// a slow policy still decides), and one past that is refused as `rego_error`.
    #[tokio::test]
    async fn a_policy_past_the_inline_budget_decides_on_the_pool_within_its_own() {
        // About 1 to 10 ms of evaluation: past the inline budget, well within 1 s.
        let text = "package envoy.authz\nallow if { count([1 | some x in numbers.range(1, 150); some y in numbers.range(1, 150); x != y]) > 0 }\n";
        let compiled = |budget: Duration| RegoModel {
            engine: std::sync::Arc::new(envoy_policy(text)),
            query: ENVOY_ALLOW.into(),
            budget,
            source: "inline".into(),
            pending: None,
        };
        let asked = || get("/");
        let model = compiled(Duration::from_secs(1));
        let inline = evaluate(
            &model.engine,
            &model.query,
            INLINE_BUDGET,
            regorus::Value::from(asked()),
        );
        assert!(
            matches!(&inline, Err(e) if e.over_budget),
            "the inline run stops: {inline:?}"
        );
        assert!(matches!(decide(&model, asked()).await, Decision::Allow(_)));
        let tight = compiled(Duration::from_micros(300));
        assert!(matches!(
            decide(&tight, asked()).await,
            Decision::Deny(d) if d.reason == rampart_common::reason::ProxyReason::Authz(AuthzReason::RegoError)
        ));
    }
}
