use super::*;

fn errors(http: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: m}}\nspec:\n  ports: [{{port: 80}}]\n  http:\n{http}"
    );
    match crate::policy::check(crate::policy::source::parse_str(
        std::path::Path::new("t.yaml"),
        &text,
    )) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.origin.pos.line, d.origin.pos.col, d.message))
            .collect(),
    }
}

const JWKS: &str =
    r#"'{"keys":[{"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}'"#;

#[test]
fn bad_http_sections_are_errors_at_their_position() {
    let jwt = |extra: &str| {
        format!(
            "    authentication:\n      providers:\n      - name: p\n        jwt: {{algorithms: [HS256], jwks: {{inline: {JWKS}}}{extra}}}\n"
        )
    };
    assert_eq!(errors(&jwt("")), Vec::<String>::new());
    let cases = [
        ("    authentication:\n      providers:\n      - name: p\n        jwt: {algorithms: [none], jwks: {inline: JWKS}}\n".replace("JWKS", JWKS), "none"),
        (jwt(", tokenFrom: [{header: a, query: b}]"), "exactly one of header"),
        (jwt(", bogus: 1"), "bogus"),
        ("    rules:\n    - {action: Maybe}\n".into(), "Allow or Deny"),
        ("    rules:\n    - {action: Allow, paths: [{regex: '('}]}\n".into(), "regex"),
        ("    rules:\n    - {action: Allow, methods: [get]}\n".into(), "upper-case"),
        ("    rateLimits:\n      buckets:\n      - {name: b, maxTokens: 1, fillInterval: 10ms}\n".into(), "50 ms"),
        ("    rateLimits:\n      buckets:\n      - {name: b, maxTokens: 1, fillInterval: soon}\n".into(), "fillInterval"),
        ("    rateLimits:\n      buckets:\n      - {name: b, key: 'cookie:x', maxTokens: 1, fillInterval: 1s}\n".into(), "key"),
        ("    {}\n".into(), "at least one of"),
        ("    authentication:\n      providers:\n      - {name: k, apiKeys: {secretRef: {namespace: x, name: gone}}}\n".into(), "no Secret x/gone"),
        ("    authentication:\n      require: OneOf\n      providers:\n      - {name: k, apiKeys: {secretRef: {namespace: x, name: gone}}}\n".into(), "AnyOf or AllOf"),
    ];
    for (http, expected) in cases {
        let found = errors(&http);
        assert!(
            found.len() == 1 && found[0].contains(expected),
            "{http}\nexpected one error mentioning {expected:?}, got {found:?}"
        );
    }
}

/// The example in `policies/mesh/`, with the workloads it selects, is a valid set whose
/// backend route carries the http rules.
#[test]
fn the_example_l7_policy_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dir = std::env::temp_dir().join(format!("rampart-l7-example-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for file in ["workloads.yaml", "mesh/backend-api-l7.yaml"] {
        let to = dir.join(file.replace('/', "-"));
        std::fs::copy(root.join(file), &to).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let checked = crate::policy::check(crate::policy::source::read_dir(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let checked = checked.unwrap_or_else(|d| panic!("{d:?}"));
    let http = checked.model.mesh_policies[0]
        .http
        .clone()
        .unwrap_or_else(|| panic!("no http"));
    assert_eq!(http.rules.len(), 3);
    assert_eq!(http.rate_limits.len(), 2);
    let authn = http
        .authentication
        .as_ref()
        .unwrap_or_else(|| panic!("no authn"));
    match &authn.providers[0] {
        ProviderModel::Jwt(JwtProviderModel {
            jwks: JwksModel::Inline(keys),
            ..
        }) => assert_eq!(keys.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rule_paths_must_be_in_the_form_requests_are_matched_in() {
    for bad in [
        "/a/../b",
        "/a/./b",
        "//a",
        "/a/%2e%2e/b",
        "a/b",
        "/a;x",
        "/a\\\\b",
    ] {
        let err = section_for_tests(&format!(
            "    rules: [{{action: Deny, paths: [{{prefix: '{bad}'}}]}}]\n"
        ))
        .expect_err(bad);
        assert!(err.iter().any(|e| e.contains("paths:")), "{bad}: {err:?}");
    }
    assert!(
        section_for_tests("    rules: [{action: Deny, paths: [{exact: /internal/x.json}]}]\n")
            .is_ok()
    );
}

#[test]
fn rule_hosts_are_compared_as_requests_are() {
    assert_eq!(
        rule_host("Admin.Example.").as_deref(),
        Some("admin.example")
    );
    assert_eq!(
        rule_host("*.Shop.example").as_deref(),
        Some("*.shop.example")
    );
    assert_eq!(rule_host("10.0.0.1").as_deref(), Some("10.0.0.1"));
    assert_eq!(rule_host("[::1]").as_deref(), Some("[::1]"));
    for bad in [
        "admin.example:8080",
        "",
        "a b",
        "*.",
        "[zz]",
        "u@admin.example",
    ] {
        assert_eq!(rule_host(bad), None, "{bad}");
    }
    let err = section_for_tests("    rules: [{action: Deny, hosts: [\"admin.example:8080\"]}]\n")
        .expect_err("a port");
    assert!(err.iter().any(|e| e.contains("without a port")), "{err:?}");
}

#[test]
fn durations_and_globs() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1.5s"), None);
    assert_eq!(parse_duration("s"), None);
    let re = Regex::new(&glob_to_regex("/api/*/items/**")).unwrap_or_else(|e| panic!("{e}"));
    assert!(re.is_match("/api/v1/items/a/b"));
    assert!(!re.is_match("/api/v1/x/items/a"));
    assert!(!re.is_match("/api/v1/items"));
}
