//! The filter chain on request heads, with policies written as users write them.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::Request;

use super::*;
use crate::l7::{HttpRoute, L7Stats};
use crate::spiffe::SpiffeId;

const SECRET: [u8; 32] = [7; 32];

fn route(http: &str) -> HttpRoute {
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}}]}}"#,
        URL_SAFE_NO_PAD.encode(SECRET)
    );
    let text = format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: api}}\nspec:\n  ports: [{{port: 8080}}]\n  http:\n{}---\n{SECRET_DOC}",
        http.replace("JWKS", &jwks.replace('"', "\\\""))
    );
    let checked =
        crate::policy::check(crate::policy::source::parse_str(Path::new("t.yaml"), &text))
            .unwrap_or_else(|d| panic!("{d:?}"));
    let model = checked.model.mesh_policies[0]
        .http
        .clone()
        .unwrap_or_else(|| panic!("no http"));
    HttpRoute::new(
        "api".into(),
        model,
        &crate::l7::jwks::JwksRegistry::default(),
        None,
        None,
    )
}

const SECRET_DOC: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: partner-keys, namespace: shop}\nstringData: {acme: key-acme-123, globex: key-globex-456}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: staff, namespace: shop}\nstringData:\n  htpasswd: |\n    # hashes by libxcrypt: bcrypt (wonderland), SHA-512-crypt (hunter2)\n    alice:$2b$05$abcdefghijklmnopqrstuuA0vov2GDneHB3.8.cv9UF9g.RdvScIW\n    carol:$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj.\n";

const BASIC: &str = r#"    authentication:
      providers:
      - name: staff
        basicAuth:
          secretRef: {namespace: shop, name: staff}
          realm: shop staff
          userHeader: x-user
"#;

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

const API_KEYS: &str = r#"      - name: partners
        apiKeys:
          secretRef: {namespace: shop, name: partner-keys}
          clientHeader: x-client
"#;

const AUTHN: &str = r#"    authentication:
      providers:
      - name: idp
        jwt:
          issuer: https://idp
          audiences: [api]
          algorithms: [HS256]
          jwks: {inline: "JWKS"}
          tokenFrom: [{header: authorization, prefix: "Bearer "}, {cookie: token}, {query: access_token}]
          claimsToHeaders: [{claim: sub, header: x-user}]
"#;

fn token(sub: &str, groups: &[&str], exp_offset: i64) -> String {
    let now = now_s() as i64;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k1"}"#);
    let claims = serde_json::json!({"iss": "https://idp", "aud": "api", "sub": sub,
        "groups": groups, "exp": now + exp_offset});
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(&SECRET),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap_or_else(|e| panic!("signing the test token: {e}"));
    format!("{input}.{signature}")
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap_or_default().into_parts().0
}

fn peer() -> Peer {
    Peer {
        spiffe_id: SpiffeId::parse("spiffe://td/ns/web/sa/frontend").ok(),
        source: "10.0.0.1:1000".parse().unwrap_or_else(|e| panic!("{e}")),
        destination: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
        destination_spiffe_id: SpiffeId::parse("spiffe://td/ns/web/sa/api").ok(),
        server_name: None,
    }
}

/// The chain's filters on one head, on a runtime of their own.
fn run_blocking(
    route: &HttpRoute,
    parts: &Parts,
    peer: &Peer,
    stats: &L7Stats,
) -> Result<Passed, Denial> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
        .block_on(run(route, parts, peer, stats))
}

fn outcome(route: &HttpRoute, parts: &Parts) -> Result<Passed, (u16, &'static str, &'static str)> {
    run_blocking(route, parts, &peer(), &L7Stats::default())
        .map_err(|d| (d.status.as_u16(), d.reason.filter(), d.reason.name()))
}

#[test]
fn authentication_needs_a_valid_token_from_any_source() {
    let route = route(AUTHN);
    let bearer = format!("Bearer {}", token("alice", &[], 60));
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[])).err(),
        Some((401, "authn", "missing_credentials"))
    );
    let passed = outcome(&route, &parts("GET", "/", &[("authorization", &bearer)]))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        passed
            .principal
            .map(|p| p.claims.subject().map(str::to_owned)),
        Some(Some("alice".into()))
    );
    assert_eq!(passed.set_upstream.len(), 1);
    let cookie = format!("a=b; token={}", token("bob", &[], 60));
    assert!(outcome(&route, &parts("GET", "/", &[("cookie", &cookie)])).is_ok());
    let query = format!("/x?access_token={}&q=1", token("bob", &[], 60));
    assert!(outcome(&route, &parts("GET", &query, &[])).is_ok());
    let expired = format!("Bearer {}", token("alice", &[], -60));
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[("authorization", &expired)])).err(),
        Some((401, "authn", "expired"))
    );
    assert_eq!(
        outcome(
            &route,
            &parts("GET", "/", &[("authorization", "Bearer x.y.z")])
        )
        .err(),
        Some((401, "authn", "malformed"))
    );
    let twice = parts(
        "GET",
        "/",
        &[("authorization", &bearer), ("authorization", &bearer)],
    );
    assert_eq!(
        outcome(&route, &twice).err(),
        Some((401, "authn", "ambiguous_credentials"))
    );
}

#[test]
fn explicit_deny_wins_and_rules_default_deny() {
    let rules = r#"    rules:
    - action: Deny
      paths: [{prefix: /admin}]
    - action: Allow
      methods: [GET]
      paths: [{glob: "/orders/*"}]
      claims: [{name: groups, contains: readers}]
    - action: Allow
      methods: [POST]
      principals: [spiffe://td/ns/web/sa/frontend]
      headers: [{name: x-tenant, exact: acme}]
"#;
    let route = route(&format!("{AUTHN}{rules}"));
    let reader = format!("Bearer {}", token("alice", &["readers"], 60));
    let other = format!("Bearer {}", token("bob", &["writers"], 60));
    let auth = |t: &str| ("authorization", t.to_owned());
    let get = |path: &str, t: &str| {
        let (k, v) = auth(t);
        outcome(&route, &parts("GET", path, &[(k, &v)])).map(|_| ())
    };
    assert_eq!(get("/orders/1", &reader), Ok(()));
    assert_eq!(
        get("/orders/1", &other),
        Err((403, "authz", "no_rule_matched"))
    );
    assert_eq!(
        get("/orders/1/items", &reader),
        Err((403, "authz", "no_rule_matched"))
    );
    assert_eq!(get("/admin/x", &reader), Err((403, "authz", "deny_rule")));
    let post = |tenant: &str| {
        outcome(
            &route,
            &parts(
                "POST",
                "/anything",
                &[("authorization", &other), ("x-tenant", tenant)],
            ),
        )
        .map(|_| ())
    };
    assert_eq!(post("acme"), Ok(()));
    assert_eq!(post("evil"), Err((403, "authz", "no_rule_matched")));
}

#[test]
fn rate_limits_per_subject_answer_429_with_headers() {
    let limits = r#"    rateLimits:
      buckets:
      - {name: per-user, key: jwtSubject, maxTokens: 2, tokensPerFill: 1, fillInterval: 1m}
"#;
    let route = Arc::new(route(&format!("{AUTHN}{limits}")));
    let alice = format!("Bearer {}", token("alice", &[], 60));
    let bob = format!("Bearer {}", token("bob", &[], 60));
    let call = |t: &str| {
        run_blocking(
            &route,
            &parts("GET", "/", &[("authorization", t)]),
            &peer(),
            &L7Stats::default(),
        )
    };
    assert!(call(&alice).is_ok());
    assert!(call(&alice).is_ok());
    let denial = call(&alice)
        .err()
        .unwrap_or_else(|| panic!("third request passed"));
    assert_eq!(
        (
            denial.status.as_u16(),
            denial.reason.filter(),
            denial.reason.name()
        ),
        (429, "ratelimit", "over_limit")
    );
    let header = |name: &str| {
        denial
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_str().unwrap_or("").to_owned())
    };
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    let retry: u64 = header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    assert!(call(&bob).is_ok(), "another subject has its own bucket");
}

#[test]
fn unchanged_rate_limits_keep_their_buckets_across_policy_sets() {
    let limit = |max: u32| {
        format!(
            "    rateLimits:\n      buckets:\n      - {{name: all, maxTokens: {max}, tokensPerFill: 1, fillInterval: 1m}}\n"
        )
    };
    let passes = |route: &HttpRoute| {
        run_blocking(route, &parts("GET", "/", &[]), &peer(), &L7Stats::default()).is_ok()
    };
    let first = route(&limit(1));
    assert!(passes(&first));
    assert!(!passes(&first));
    // The same limit in the next policy set (another object changed): still empty.
    let rebuilt = |text: &str, previous: &HttpRoute| {
        let fresh = route(text);
        HttpRoute::new(
            fresh.policy.clone(),
            Arc::clone(&fresh.model),
            &crate::l7::jwks::JwksRegistry::default(),
            Some(previous),
            None,
        )
    };
    let second = rebuilt(&limit(1), &first);
    assert!(
        !passes(&second),
        "an unchanged limit refilled on a policy change"
    );
    // A changed limit starts full.
    let third = rebuilt(&limit(2), &second);
    assert!(passes(&third));
}

#[test]
fn a_source_address_key_gives_each_client_address_its_bucket() {
    let route = route(
        "    rateLimits:\n      buckets:\n      - {name: per-address, key: sourceAddress, maxTokens: 1, tokensPerFill: 1, fillInterval: 1m}\n",
    );
    let from = |source: &str| {
        let peer = Peer {
            source: source.parse().unwrap_or_else(|e| panic!("{e}")),
            ..peer()
        };
        run_blocking(&route, &parts("GET", "/", &[]), &peer, &L7Stats::default()).is_ok()
    };
    assert!(from("203.0.113.7:1000"));
    assert!(!from("203.0.113.7:2000"), "the same address, another port");
    assert!(
        !from("[::ffff:203.0.113.7]:3000"),
        "the same address, mapped"
    );
    assert!(from("203.0.113.8:1000"));
}

#[test]
fn shadow_mode_counts_but_passes() {
    let limits = r#"    rateLimits:
      shadow: true
      buckets:
      - {name: all, maxTokens: 1, tokensPerFill: 1, fillInterval: 1m}
"#;
    let route = route(limits);
    let stats = L7Stats::default();
    for _ in 0..3 {
        assert!(run_blocking(&route, &parts("GET", "/", &[]), &peer(), &stats).is_ok());
    }
    assert_eq!(stats.shadow_limited_total(), 2);
}

#[test]
fn credentials_are_stripped() {
    let mut p = parts(
        "GET",
        "/x?access_token=abc&q=1",
        &[
            ("authorization", "Bearer abc"),
            ("cookie", "a=1; token=abc"),
        ],
    );
    strip_credentials(
        &mut p,
        &[
            TokenSource::Header {
                name: header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            TokenSource::Cookie("token".into()),
            TokenSource::Query("access_token".into()),
        ],
    );
    assert!(p.headers.get(header::AUTHORIZATION).is_none());
    assert_eq!(
        p.headers.get(header::COOKIE).and_then(|v| v.to_str().ok()),
        Some("a=1")
    );
    assert_eq!(p.uri.to_string(), "/x?q=1");
}

#[test]
fn api_keys_from_a_secret_name_the_client() {
    let http = format!(
        "    authentication:\n      providers:\n{API_KEYS}    rules:\n    - {{action: Allow, apiKeyClients: [acme]}}\n"
    );
    let route = route(&http);
    let passed = outcome(&route, &parts("GET", "/", &[("x-api-key", "key-acme-123")]))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(passed.api_key_client.as_deref(), Some("acme"));
    assert_eq!(passed.set_upstream[0].0, "x-client");
    assert_eq!(passed.strip.len(), 1, "the key is stripped before the pod");
    assert_eq!(
        outcome(
            &route,
            &parts("GET", "/", &[("x-api-key", "key-globex-456")])
        )
        .err(),
        Some((403, "authz", "no_rule_matched"))
    );
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[("x-api-key", "nope")])).err(),
        Some((401, "authn", "invalid_api_key"))
    );
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[])).err(),
        Some((401, "authn", "missing_credentials"))
    );
}

#[test]
fn all_of_needs_every_provider() {
    let all_of = AUTHN.replacen(
        "    authentication:\n",
        "    authentication:\n      require: AllOf\n",
        1,
    );
    let route = route(&format!("{all_of}{API_KEYS}"));
    let bearer = format!("Bearer {}", token("alice", &[], 60));
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[("authorization", &bearer)])).err(),
        Some((401, "authn", "missing_credentials"))
    );
    let both = [
        ("authorization", bearer.as_str()),
        ("x-api-key", "key-acme-123"),
    ];
    let passed = outcome(&route, &parts("GET", "/", &both)).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(passed.principal.is_some() && passed.api_key_client.is_some());
}

#[test]
fn a_remote_jwks_not_fetched_yet_refuses_tokens() {
    let http = "    authentication:\n      providers:\n      - name: idp\n        jwt: {issuer: 'https://idp', algorithms: [HS256], jwks: {url: 'http://127.0.0.1:9/keys'}}\n";
    let route = route(http);
    let bearer = format!("Bearer {}", token("alice", &[], 60));
    assert_eq!(
        outcome(&route, &parts("GET", "/", &[("authorization", &bearer)])).err(),
        Some((401, "authn", "jwks_unavailable"))
    );
}

#[test]
fn basic_credentials_from_an_htpasswd_secret_name_the_user() {
    let route = route(&format!(
        "{BASIC}    rules:\n    - action: Allow\n      paths: [{{prefix: /staff}}]\n      claims: [{{name: sub, equals: alice}}]\n    - action: Allow\n      paths: [{{prefix: /public}}]\n"
    ));
    for (user, password) in [("alice", "wonderland"), ("carol", "hunter2")] {
        let authorization = basic(user, password);
        let request = parts("GET", "/public", &[("authorization", &authorization)]);
        let passed = outcome(&route, &request).unwrap_or_else(|e| panic!("{user}: {e:?}"));
        assert_eq!(
            passed.principal.as_ref().and_then(|p| p.claims.subject()),
            Some(user)
        );
        assert_eq!(passed.set_upstream[0].1, user);
        // The credential does not travel on.
        let mut forwarded = request.clone();
        strip_credentials(&mut forwarded, &passed.strip);
        assert!(forwarded.headers.get("authorization").is_none());
    }
    // The user's name is a claim the rules read.
    let carol = basic("carol", "hunter2");
    assert_eq!(
        outcome(
            &route,
            &parts("GET", "/staff", &[("authorization", &carol)])
        )
        .err(),
        Some((403, "authz", "no_rule_matched"))
    );
    let alice = basic("alice", "wonderland");
    assert!(
        outcome(
            &route,
            &parts("GET", "/staff", &[("authorization", &alice)])
        )
        .is_ok()
    );
    for (authorization, reason) in [
        (basic("alice", "Wonderland"), "invalid_credentials"),
        (basic("mallory", "wonderland"), "invalid_credentials"),
        (basic("alice", ""), "invalid_credentials"),
        ("Basic %%%".to_owned(), "malformed"),
        ("Bearer abc".to_owned(), "missing_credentials"),
    ] {
        assert_eq!(
            outcome(
                &route,
                &parts("GET", "/public", &[("authorization", &authorization)])
            )
            .err(),
            Some((401, "authn", reason)),
            "{authorization}"
        );
    }
}

#[test]
fn a_basic_refusal_challenges_for_basic_and_a_mixed_route_for_both() {
    let basic_route = route(BASIC);
    let denial = run_blocking(
        &basic_route,
        &parts("GET", "/", &[]),
        &peer(),
        &L7Stats::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("no credential passed"));
    let challenges: Vec<&str> = denial
        .headers
        .iter()
        .filter(|(name, _)| name == header::WWW_AUTHENTICATE)
        .filter_map(|(_, v)| v.to_str().ok())
        .collect();
    assert_eq!(challenges, [r#"Basic realm="shop staff", charset="UTF-8""#]);
    let mixed = route(&format!(
        "{AUTHN}{}",
        BASIC.lines().skip(2).collect::<Vec<_>>().join("\n") + "\n"
    ));
    let denial = run_blocking(
        &mixed,
        &parts("GET", "/", &[]),
        &peer(),
        &L7Stats::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("no credential passed"));
    assert_eq!(denial.headers.len(), 2, "{:?}", denial.headers);
    let alice = basic("alice", "wonderland");
    assert!(outcome(&mixed, &parts("GET", "/", &[("authorization", &alice)])).is_ok());
    let bearer = format!("Bearer {}", token("bob", &[], 60));
    assert!(outcome(&mixed, &parts("GET", "/", &[("authorization", &bearer)])).is_ok());
}

#[test]
fn a_directory_that_does_not_answer_refuses_with_503() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let http = "    authentication:\n      providers:\n      - name: corp\n        ldap: {url: 'ldaps://127.0.0.1:1', userBase: 'ou=people,dc=example,dc=com', timeout: 2s}\n";
    let route = route(http);
    let alice = basic("alice", "wonderland");
    let denial = run_blocking(
        &route,
        &parts("GET", "/", &[("authorization", &alice)]),
        &peer(),
        &L7Stats::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("passed without a directory"));
    assert_eq!(
        (denial.status.as_u16(), denial.reason.name()),
        (503, "directory_unavailable")
    );
    // An empty password never reaches the directory (it would be an unauthenticated bind).
    assert_eq!(
        outcome(
            &route,
            &parts("GET", "/", &[("authorization", &basic("alice", ""))])
        )
        .err(),
        Some((401, "authn", "invalid_credentials"))
    );
}
