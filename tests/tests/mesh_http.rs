//! L7 access control in the proxy, on a real kernel: two nodes, one agent each, pod a (node 1)
//! calling pod b's HTTP port 8080 (node 2) through the mTLS tunnel, where a MeshPolicy's `http`
//! section asks for a JWT, authorization rules and a per-subject rate limit. Node 2's proxy runs
//! the filter chain on every request:
//!
//! - no token: 401 with `www-authenticate`; an expired or forged one: 401; none reach the pod;
//! - a valid token of a reader: 200 from the pod, which sees `x-user` set from the token's `sub`
//!   (a client-sent `x-user` is replaced) and never sees the token;
//! - a path a Deny rule names, or a subject without the group: 403, not at the pod;
//! - past the subject's bucket: 429 with `retry-after`; another subject still passes;
//! - API keys from a Secret: the pod gets the client's name, not the key; a per-client limit;
//! - each refusal is counted by filter and reason.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rampart_tests::http_server::HttpServer;
use rampart_tests::idp::IdpServer;
use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::{HttpReply, http_request};
use rampart_tests::{Agent, Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(5);
const SECRET: [u8; 32] = [0x5a; 32];
const ISSUER: &str = "https://idp.rampart.test";

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn policy() -> String {
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}}]}}"#,
        URL_SAFE_NO_PAD.encode(SECRET)
    );
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
{}{}---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: orders-api}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8080}}]
  http:
    authentication:
      providers:
      - name: idp
        jwt:
          issuer: {ISSUER}
          audiences: [api://orders]
          algorithms: [HS256]
          jwks: {{inline: '{jwks}'}}
          claimsToHeaders: [{{claim: sub, header: x-user}}]
    rules:
    - action: Deny
      paths: [{{prefix: /admin}}]
    - action: Allow
      methods: [GET]
      paths: [{{prefix: /orders}}]
      claims: [{{name: groups, contains: readers}}]
    rateLimits:
      buckets:
      - {{name: per-user, key: jwtSubject, maxTokens: 3, tokensPerFill: 3, fillInterval: 1m}}
---
apiVersion: v1
kind: Secret
metadata: {{name: partner-keys, namespace: shop}}
stringData: {{acme: key-acme-7c1d, globex: key-globex-91fe}}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: partners-api}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8081}}]
  http:
    authentication:
      providers:
      - name: partners
        apiKeys:
          secretRef: {{namespace: shop, name: partner-keys}}
          clientHeader: x-client
    rateLimits:
      buckets:
      - {{name: per-client, key: apiKeyClient, maxTokens: 1, tokensPerFill: 1, fillInterval: 1m}}
"#,
        pod("a", 1, 10),
        pod("b", 2, 10)
    )
}

fn token(sub: &str, groups: &[&str], exp_offset: i64, secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({"iss": ISSUER, "aud": "api://orders", "sub": sub,
        "groups": groups, "exp": now + exp_offset, "iat": now});
    rampart_tests::idp::hs256_token("k1", &claims, secret).expect("sign")
}

fn metric(agent: &Agent, labels: &str) -> f64 {
    agent
        .metrics()
        .ok()
        .and_then(|m| sample(&m, "rampart_proxy_denied_total", labels))
        .unwrap_or(0.0)
}

/// Two nodes, pod a (node 1) and pod b (node 2) with origins on 8080 (JWT rules) and 8081 (API
/// keys), agents on both with the orders policy. (Fields drop in this order: the agents before
/// the origins, the topology last.)
struct Orders {
    mesh: MeshAgents,
    origin: HttpServer,
    partners_origin: HttpServer,
    topo: Topology,
}

impl Orders {
    fn start() -> Orders {
        require_root();
        let topo = Topology::builder(TEST_PREFIX)
            .node("node-1")
            .node("node-2")
            .pod("node-1", "shop/a", ip(1, 10))
            .pod("node-2", "shop/b", ip(2, 10))
            .build()
            .expect("topology");
        let origin = HttpServer::start(&topo.pod("shop/b").ns, 8080).expect("origin");
        let partners_origin = HttpServer::start(&topo.pod("shop/b").ns, 8081).expect("origin 8081");
        let mesh =
            MeshAgents::start(&topo, &["node-1", "node-2"], &policy(), None, &[]).expect("agents");
        Orders {
            mesh,
            origin,
            partners_origin,
            topo,
        }
    }

    fn node2(&self) -> &Agent {
        self.mesh.node("node-2")
    }

    /// `GET path` from pod a to pod b's port `port`.
    fn get(&self, port: u16, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        let a = self.topo.pod("shop/a").ns.path();
        let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), port);
        http_request(&a, b, "GET", path, headers, TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nnode-2 log:\n{}", self.node2().log()))
    }

    /// `GET path` on the JWT-protected port.
    fn orders(&self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        self.get(8080, path, headers)
    }
}

fn bearer(token: String) -> String {
    format!("Bearer {token}")
}

#[test]
fn requests_without_a_valid_token_get_401_and_never_reach_the_pod() {
    let o = Orders::start();
    let reply = o.orders("/orders/1", &[]);
    assert_eq!(
        reply.status,
        401,
        "{reply:?}\nnode-2 log:\n{}",
        o.node2().log()
    );
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="rampart""#)
    );
    let expired = bearer(token("alice", &["readers"], -120, &SECRET));
    assert_eq!(
        o.orders("/orders/1", &[("authorization", &expired)]).status,
        401
    );
    let forged = bearer(token("alice", &["readers"], 600, &[1; 32]));
    let reply = o.orders("/orders/1", &[("authorization", &forged)]);
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|v| v.contains("invalid_token"))
    );
    assert_eq!(o.origin.requests(), 0, "a refused request reached the pod");
    for (labels, at_least) in [
        (r#"filter="authn",reason="missing_credentials""#, 1.0),
        (r#"filter="authn",reason="expired""#, 1.0),
        (r#"filter="authn",reason="signature""#, 1.0),
    ] {
        assert!(metric(o.node2(), labels) >= at_least, "{labels}");
    }
}

#[test]
fn a_reader_passes_with_the_identity_the_proxy_sets_and_without_the_token() {
    let o = Orders::start();
    let alice = bearer(token("alice", &["readers"], 600, &SECRET));
    let reply = o.orders(
        "/orders/1",
        &[("authorization", &alice), ("x-user", "mallory")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-user: alice"), "{}", reply.body);
    assert!(!reply.body.contains("mallory"), "{}", reply.body);
    assert!(
        !reply.body.to_ascii_lowercase().contains("authorization"),
        "{}",
        reply.body
    );
    assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(o.origin.requests(), 1);
}

#[test]
fn a_deny_rule_or_a_missing_group_gets_403_before_the_pod() {
    let o = Orders::start();
    let alice = bearer(token("alice", &["readers"], 600, &SECRET));
    assert_eq!(
        o.orders("/admin/users", &[("authorization", &alice)])
            .status,
        403
    );
    let writer = bearer(token("bob", &["writers"], 600, &SECRET));
    assert_eq!(
        o.orders("/orders/1", &[("authorization", &writer)]).status,
        403
    );
    assert_eq!(
        o.origin.requests(),
        0,
        "a forbidden request reached the pod"
    );
    assert!(metric(o.node2(), r#"filter="authz",reason="deny_rule""#) >= 1.0);
    assert!(metric(o.node2(), r#"filter="authz",reason="no_rule_matched""#) >= 1.0);
}

#[test]
fn each_subject_has_its_own_rate_limit() {
    let o = Orders::start();
    // alice has 3 tokens a minute.
    let alice = bearer(token("alice", &["readers"], 600, &SECRET));
    for n in 1..=3 {
        let path = format!("/orders/{n}");
        assert_eq!(o.orders(&path, &[("authorization", &alice)]).status, 200);
    }
    let limited = o.orders("/orders/4", &[("authorization", &alice)]);
    assert_eq!(limited.status, 429, "{limited:?}");
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    let carol = bearer(token("carol", &["readers"], 600, &SECRET));
    assert_eq!(
        o.orders("/orders/1", &[("authorization", &carol)]).status,
        200
    );
    assert_eq!(o.origin.requests(), 4);
    assert!(metric(o.node2(), r#"filter="ratelimit",reason="over_limit""#) >= 1.0);
}

#[test]
fn api_keys_from_a_secret_name_the_client_and_are_limited_per_client() {
    let o = Orders::start();
    // The pod learns the client's name, never the key; one request per client per minute.
    let call = |headers: &[(&str, &str)]| o.get(8081, "/", headers);
    assert_eq!(call(&[]).status, 401);
    assert_eq!(call(&[("x-api-key", "key-wrong")]).status, 401);
    let reply = call(&[("x-api-key", "key-acme-7c1d")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-client: acme"), "{}", reply.body);
    assert!(!reply.body.contains("key-acme"), "{}", reply.body);
    assert_eq!(call(&[("x-api-key", "key-acme-7c1d")]).status, 429);
    assert_eq!(call(&[("x-api-key", "key-globex-91fe")]).status, 200);
    assert_eq!(o.partners_origin.requests(), 2);
    assert!(metric(o.node2(), r#"filter="authn",reason="invalid_api_key""#) >= 1.0);
}

#[test]
fn the_access_log_names_the_deciding_filter_and_principal_and_never_a_credential() {
    let o = Orders::start();
    let alice = bearer(token("alice", &["readers"], 600, &SECRET));
    assert_eq!(o.orders("/orders/1", &[]).status, 401);
    assert_eq!(
        o.orders("/orders/1", &[("authorization", &alice)]).status,
        200
    );
    assert_eq!(o.get(8081, "/", &[("x-api-key", "key-wrong")]).status, 401);
    assert_eq!(
        o.get(8081, "/", &[("x-api-key", "key-acme-7c1d")]).status,
        200
    );
    // One flow record per request, in `rampart flows`.
    let flows = o.node2().cli(&["flows", "--json"]).expect("rampart flows");
    let records: Vec<serde_json::Value> = flows
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["http"].is_object())
        .collect();
    assert!(records.len() >= 4, "{flows}");
    let missing = records
        .iter()
        .find(|r| r["http"]["denied_by"] == "authn:missing_credentials")
        .unwrap_or_else(|| panic!("no missing-credentials record:\n{flows}"));
    assert_eq!(missing["verdict"], "deny", "{missing}");
    assert_eq!(missing["http"]["status"], 401, "{missing}");
    assert_eq!(missing["src"]["pod"], "shop/a", "{missing}");
    assert_eq!(missing["dst"]["pod"], "shop/b", "{missing}");
    assert_eq!(missing["http"]["policy"], "orders-api", "{missing}");
    let allowed = records
        .iter()
        .find(|r| r["verdict"] == "allow" && r["http"]["principal"] == "alice")
        .unwrap_or_else(|| panic!("no allowed record of alice:\n{flows}"));
    assert_eq!(allowed["http"]["status"], 200, "{allowed}");
    assert_eq!(allowed["http"]["authn_method"], "jwt", "{allowed}");
    assert_eq!(
        allowed["http"]["rate_limit_bucket"], "per-user",
        "{allowed}"
    );
    assert_eq!(allowed["http"]["path"], "/orders/1", "{allowed}");
    assert!(
        records
            .iter()
            .any(|r| r["http"]["api_key_client"] == "acme"),
        "{flows}"
    );
    for secret in [&alice[7..], "key-acme-7c1d", "key-wrong"] {
        assert!(!flows.contains(secret), "a credential reached the flow log");
    }
}

/// A JWKS document of symmetric keys `(kid, secret)`. (The stand-in IdP publishes secrets only
/// because this test signs its own tokens; real IdPs publish public keys, handled the same way.)
fn jwks_of(keys: &[(&str, [u8; 32])]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(kid, secret)| {
            format!(
                r#"{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(secret)
            )
        })
        .collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

fn token_with_kid(kid: &str, issuer: &str, secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({"iss": issuer, "sub": "svc", "exp": now + 600});
    let token = rampart_tests::idp::hs256_token(kid, &claims, secret).expect("sign");
    format!("Bearer {token}")
}

/// Keys from an IdP found by OIDC discovery: fetched by the agent, a rotated-in `kid` picked up
/// on first sight, and the last good set kept while the IdP is down.
#[test]
fn jwks_by_oidc_discovery_follow_rotation_and_outlive_the_idp() {
    require_root();
    let idp_ip = ip(2, 20);
    let issuer = format!("http://{idp_ip}");
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", ip(1, 10))
        .pod("node-2", "shop/b", ip(2, 10))
        .pod("node-2", "auth/idp", idp_ip)
        .build()
        .expect("topology");
    let (k1, k2, k3) = ([0x11u8; 32], [0x22u8; 32], [0x33u8; 32]);
    let idp = IdpServer::start(
        &topo.pod("auth/idp").ns,
        80,
        &issuer,
        &jwks_of(&[("k1", k1)]),
    )
    .expect("idp");
    let _origin = HttpServer::start(&topo.pod("shop/b").ns, 8080).expect("origin");
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    let policy = format!(
        "{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: api}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: 8080}}]\n  http:\n    authentication:\n      providers:\n      - name: idp\n        jwt: {{issuer: '{issuer}', algorithms: [HS256], jwks: {{discovery: true}}}}\n",
        pod("a", 1, 10),
        pod("b", 2, 10)
    );
    let mesh = MeshAgents::start(&topo, &["node-1", "node-2"], &policy, None, &[]).expect("agents");
    let node2 = mesh.node("node-2");
    let a = topo.pod("shop/a").ns.path();
    let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), 8080);
    let status = |bearer: &str| -> u16 {
        http_request(&a, b, "GET", "/", &[("authorization", bearer)], TIMEOUT)
            .map(|r| r.status)
            .unwrap_or_else(|e| panic!("GET: {e:#}\nnode-2 log:\n{}", node2.log()))
    };
    let fetches = |result: &str| {
        node2
            .metrics()
            .ok()
            .and_then(|m| {
                sample(
                    &m,
                    "rampart_jwks_fetches_total",
                    &format!(r#"source="discovery:{issuer}",result="{result}""#),
                )
            })
            .unwrap_or(0.0)
    };

    // The first fetch happens in the background once the policy is in force.
    rampart_tests::eventually("the first JWKS fetch", Duration::from_secs(10), || {
        (fetches("ok") >= 1.0).then_some(())
    });
    assert_eq!(status(&token_with_kid("k1", &issuer, &k1)), 200);
    assert_eq!(
        status(&token_with_kid("k1", &issuer, &k2)),
        401,
        "wrong key"
    );

    // Rotation: k2 appears; its first token triggers a re-fetch and passes.
    idp.set_jwks(&jwks_of(&[("k1", k1), ("k2", k2)]));
    assert_eq!(
        status(&token_with_kid("k2", &issuer, &k2)),
        200,
        "{}",
        node2.log()
    );

    // The IdP goes down; keys already fetched keep working. Once the unknown-kid interval has
    // passed, a token with an unknown kid makes the agent try again, which fails and is counted.
    idp.set_up(false);
    // Each unknown-kid token is refused; one of them, once the agent's re-fetch interval has
    // passed since the rotation, makes it try the IdP again, which fails and is counted.
    rampart_tests::eventually(
        "a failed JWKS re-fetch after an unknown kid",
        Duration::from_secs(30),
        || {
            assert_eq!(status(&token_with_kid("k3", &issuer, &k3)), 401);
            (fetches("error") >= 1.0).then_some(())
        },
    );
    assert_eq!(status(&token_with_kid("k2", &issuer, &k2)), 200);
    assert_eq!(status(&token_with_kid("k1", &issuer, &k1)), 200);
    assert!(idp.requests() >= 4, "discovery and JWKS, twice");
}
