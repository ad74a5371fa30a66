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

/// A MeshPolicy's `http` section followed by other documents (Secrets).
fn errors_with(http: &str, docs: &str) -> Vec<String> {
    errors(&format!("{http}---\n{docs}"))
}

#[test]
fn basic_auth_refuses_weak_hashes_at_their_lines_and_names_the_secret() {
    let http = "    authentication:\n      providers:\n      - name: staff\n        basicAuth: {secretRef: {namespace: shop, name: staff}}\n";
    let secret = |lines: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: staff, namespace: shop}}\nstringData:\n  htpasswd: |\n{lines}"
        )
    };
    let good = "    alice:$2b$05$abcdefghijklmnopqrstuuA0vov2GDneHB3.8.cv9UF9g.RdvScIW\n";
    assert_eq!(errors_with(http, &secret(good)), Vec::<String>::new());
    let weak = format!("{good}    bob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n    eve:secret\n");
    let errs = errors_with(http, &secret(&weak));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("10:")
            && errs[0].contains("Secret shop/staff, htpasswd: line 2 (user bob): Apache MD5"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("line 3 (user eve): plain text is refused"),
        "{errs:?}"
    );
    assert!(
        !errs.concat().contains("HqJZ"),
        "no hash in an error: {errs:?}"
    );
    let errs = errors_with(
        http,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    assert!(errs[0].contains("no Secret shop/staff"), "{errs:?}");
    let errs = errors_with(
        &http.replace("name: staff}}", "name: staff}, key: users}"),
        &secret(good),
    );
    assert!(errs[0].contains("no text entry \"users\""), "{errs:?}");
}

#[test]
fn ldap_providers_need_tls_a_base_and_filters_with_their_placeholder() {
    let ldap = |fields: &str| {
        format!(
            "    authentication:\n      providers:\n      - name: corp\n        ldap: {{userBase: 'ou=people,dc=example,dc=com'{fields}}}\n"
        )
    };
    assert_eq!(
        errors(&ldap(", url: 'ldaps://ldap.example.com'")),
        Vec::<String>::new()
    );
    assert_eq!(
        errors(&ldap(
            ", url: 'ldap://ldap.example.com:389', startTls: true, groupBase: 'ou=groups,dc=example,dc=com', groupFilter: '(&(objectClass=groupOfNames)(member={dn}))', cacheSeconds: 30, timeout: 2s"
        )),
        Vec::<String>::new()
    );
    let cases = [
        (", url: 'ldap://ldap.example.com'", "10:", "clear text"),
        (
            ", url: 'ldaps://ldap.example.com', startTls: true",
            "10:",
            "startTls is for ldap://",
        ),
        (", url: 'https://ldap.example.com'", "10:", "ldaps://host"),
        (
            ", url: 'ldaps://user@ldap.example.com'",
            "10:",
            "a host and optional port",
        ),
        (
            ", url: 'ldaps://h', userFilter: '(cn=alice)'",
            "10:",
            "must contain {user}",
        ),
        (
            ", url: 'ldaps://h', userFilter: '(uid={user}'",
            "10:",
            "not an LDAP filter",
        ),
        (
            ", url: 'ldaps://h', groupFilter: '(member=x)'",
            "10:",
            "must contain {dn}",
        ),
        (
            ", url: 'ldaps://h', cacheSeconds: 3600",
            "10:",
            "at most 600",
        ),
        (", url: 'ldaps://h', timeout: 1m", "10:", "ldap.timeout"),
        (
            ", url: 'ldaps://h', bindSecretRef: {namespace: x, name: y}",
            "10:",
            "no Secret x/y",
        ),
    ];
    for (fields, at, message) in cases {
        let errs = errors(&ldap(fields));
        assert!(
            errs.iter()
                .any(|e| e.starts_with(at) && e.contains(message)),
            "{fields}: {errs:?}"
        );
    }
    let base =
        errors(&ldap(", url: 'ldaps://h'").replace("ou=people,dc=example,dc=com", "(uid=x)"));
    assert!(base[0].contains("ldap.userBase"), "{base:?}");
    let both = errors(
        "    authentication:\n      providers:\n      - name: p\n        ldap: {url: 'ldaps://h', userBase: 'dc=x'}\n        basicAuth: {secretRef: {namespace: a, name: b}}\n",
    );
    assert!(both[0].contains("exactly one of"), "{both:?}");
}

#[test]
fn rego_policies_compile_when_the_set_is_checked() {
    let rego = |body: &str, extra: &str| {
        let indented: String = body.lines().map(|l| format!("        {l}\n")).collect();
        format!("    rego:{extra}\n      inline: |\n{indented}")
    };
    let good = "package envoy.authz\ndefault allow := false\nallow if input.attributes.request.http.method == \"GET\"\n";
    assert_eq!(errors(&rego(good, "")), Vec::<String>::new());
    let errs = errors(&rego("package envoy.authz\nallow if {\n", ""));
    // Line 3 of the policy, in the file: the block scalar's content starts at 9:9.
    assert_eq!(errs, ["11:9: rego: expecting expression"]);
    let errs = errors(&rego(good, "\n      query: data.envoy.authz.permit"));
    assert!(
        errs.iter().any(|e| e.contains("rego:")),
        "a query that names no rule: {errs:?}"
    );
    let errs = errors(&rego(good, "\n      timeBudget: 5s"));
    assert!(
        errs.iter().any(|e| e.contains("rego.timeBudget")),
        "{errs:?}"
    );
    let errs = errors("    rego: {file: relative.rego}\n");
    assert!(errs.iter().any(|e| e.contains("absolute path")), "{errs:?}");
}

/// A MeshPolicy whose Rego comes from `reference` (`namespace: shop, ...`) and a ConfigMap
/// `shop/authz` with `data` (lines indented by two spaces).
fn rego_from_config_map(reference: &str, data: &str) -> Vec<String> {
    errors(&format!(
        "    rego:\n      configMapRef: {{namespace: shop, {reference}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: authz, namespace: shop}}\ndata:\n{data}"
    ))
}

#[test]
fn rego_policies_from_a_config_map_compile_with_it() {
    let module = "package envoy.authz\ndefault allow := false\nallow if data.users[input.attributes.request.http.headers[\"x-user\"]]\n";
    let block = |key: &str, text: &str| {
        let lines: String = text.lines().map(|l| format!("    {l}\n")).collect();
        format!("  {key}: |\n{lines}")
    };
    let data = "  users.json: '{\"users\": {\"alice\": true}}'\n";
    let good = format!("{}{data}", block("policy.rego", module));
    assert_eq!(
        rego_from_config_map("name: authz", &good),
        Vec::<String>::new()
    );
    assert_eq!(
        rego_from_config_map(
            "name: authz, key: policy.rego",
            &block("policy.rego", module)
        ),
        Vec::<String>::new()
    );
    // A module error is reported inside the ConfigMap: the module's line 4 (its end) is file
    // line 18, indented by four.
    let broken = block(
        "policy.rego",
        "package envoy.authz\ndefault allow := false\nallow if {\n",
    );
    assert_eq!(
        rego_from_config_map("name: authz", &broken),
        ["18:5: rego: expecting expression"]
    );
    let errs = rego_from_config_map(
        "name: authz",
        &format!("{}  users.json: '[1'\n", block("p.rego", module)),
    );
    assert!(
        errs.len() == 1 && errs[0].starts_with("18:15: rego: users.json: not JSON"),
        "{errs:?}"
    );
    let cases = [
        (
            "name: gone",
            good.clone(),
            "no ConfigMap shop/gone in the policy set",
        ),
        (
            "name: authz, key: other.rego",
            good.clone(),
            "has no key other.rego",
        ),
        ("name: authz", data.to_owned(), "has no *.rego entry"),
        (
            "name: authz",
            "  bad/key: x\n".to_owned(),
            "ConfigMap data.bad/key",
        ),
    ];
    for (reference, data, expected) in cases {
        let errs = rego_from_config_map(reference, &data);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{reference} {data}: {errs:?}"
        );
    }
    let both = errors(
        "    rego:\n      inline: 'package x'\n      configMapRef: {namespace: shop, name: authz}\n",
    );
    assert!(both[0].contains("exactly one of"), "{both:?}");
}

#[test]
fn ext_authz_names_one_http_or_grpc_authorizer() {
    let ca = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: authz-ca, namespace: auth}\nstringData:\n  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    MIIBVzCB/qADAgECAhQ=\n    -----END CERTIFICATE-----\n";
    assert_eq!(
        errors(&format!(
            "    extAuthz: {{grpc: 'https://authz.auth:9443', caSecretRef: {{namespace: auth, name: authz-ca}}}}\n{ca}"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("    extAuthz: {http: 'https://authz.example.com/check'}\n"),
        Vec::<String>::new(),
        "the public roots by default"
    );
    for (section, message) in [
        (
            "    extAuthz: {http: 'http://a', caSecretRef: {namespace: auth, name: authz-ca}}\n",
            "only for an https://",
        ),
        (
            "    extAuthz: {http: 'https://a', caSecretRef: {namespace: auth, name: gone}}\n",
            "no Secret auth/gone",
        ),
        (
            "    extAuthz: {http: 'https://a', caSecretRef: {namespace: auth, name: empty}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: empty, namespace: auth}\nstringData: {ca.crt: nothing}\n",
            "no PEM certificate",
        ),
    ] {
        let errs = errors(section);
        assert!(
            errs.iter().any(|e| e.contains(message)),
            "{section}: {errs:?}"
        );
    }
    assert_eq!(
        errors(
            "    extAuthz: {http: 'http://authz.shop:8181/check', timeout: 300ms, headersToSend: [x-user], headersToUpstream: [x-authz-user]}\n"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("    extAuthz: {grpc: 'http://10.0.0.9:9191', failureMode: Allow}\n"),
        Vec::<String>::new()
    );
    for (section, message) in [
        ("    extAuthz: {http: 'ftp://authz'}\n", "http[s]://host"),
        (
            "    extAuthz: {grpc: 'http://authz:9191/prefix'}\n",
            "extAuthz.grpc",
        ),
        (
            "    extAuthz: {http: 'http://a', grpc: 'http://b'}\n",
            "exactly one of http, grpc",
        ),
        (
            "    extAuthz: {http: 'http://a', timeout: 1m}\n",
            "extAuthz.timeout",
        ),
        (
            "    extAuthz: {http: 'http://a', failureMode: Open}\n",
            "Deny or Allow",
        ),
        (
            "    extAuthz: {http: 'http://a', headersToSend: ['bad header']}\n",
            "not a header name",
        ),
    ] {
        let errs = errors(section);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("7:") && e.contains(message)),
            "{section}: {errs:?}"
        );
    }
}

/// The examples in `policies/auth/`, with the workloads they select, check, each with what it
/// shows.
#[test]
fn the_authentication_and_authorization_examples_check() {
    for file in [
        "basic-auth.yaml",
        "ldap.yaml",
        "rego.yaml",
        "rego-configmap.yaml",
        "ext-authz.yaml",
        "oidc.yaml",
    ] {
        let checked =
            crate::policy::examples::checked(&["workloads.yaml", &format!("auth/{file}")]);
        let http = checked.model.mesh_policies[0]
            .http
            .clone()
            .unwrap_or_else(|| panic!("{file}: no http"));
        let provider = http
            .authentication
            .as_ref()
            .and_then(|a| a.providers.first());
        let shown = match (file, provider) {
            ("basic-auth.yaml", Some(ProviderModel::Basic(p))) => p.users.len() == 2,
            ("ldap.yaml", Some(ProviderModel::Ldap(p))) => {
                p.bind.is_some() && p.group_base.is_some()
            }
            ("rego.yaml", None) => http.rego.is_some(),
            ("rego-configmap.yaml", None) => http
                .rego
                .as_ref()
                .is_some_and(|r| r.pending.is_none() && checked.model.config_maps.len() == 1),
            ("ext-authz.yaml", None) => http.ext_authz.is_some(),
            ("oidc.yaml", Some(ProviderModel::Oidc(p))) => {
                p.cookie_secret.len() >= 32 && p.scopes.len() == 4
            }
            _ => false,
        };
        assert!(shown, "{file}: {http:?}");
    }
}

#[test]
fn oidc_providers_need_their_secret_paths_and_a_bounded_session() {
    let oidc = |fields: &str| {
        format!(
            "    authentication:\n      providers:\n      - name: login\n        oidc: {{issuer: 'https://login.example.com', clientId: shop, secretRef: {{namespace: shop, name: login}}{fields}}}\n"
        )
    };
    let secret = |entries: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: login, namespace: shop}}\nstringData: {{{entries}}}\n"
        )
    };
    let good = secret("client-secret: s, cookie-secret: 0123456789abcdef0123456789abcdef");
    assert_eq!(errors_with(&oidc(""), &good), Vec::<String>::new());
    let short = errors_with(&oidc(""), &secret("client-secret: s, cookie-secret: short"));
    assert!(
        short.iter().any(|e| e.contains("at least 32 bytes")),
        "{short:?}"
    );
    let missing = errors_with(
        &oidc(""),
        &secret("cookie-secret: 0123456789abcdef0123456789abcdef"),
    );
    assert!(
        missing.iter().any(|e| e.contains("no client-secret")),
        "{missing:?}"
    );
    for (fields, message) in [
        (", sessionSeconds: 1", "sessionSeconds"),
        (", redirectPath: oauth", "two different absolute paths"),
        (
            ", redirectPath: /x, logoutPath: /x",
            "two different absolute paths",
        ),
        (
            ", redirectUri: 'https://shop.example.com/elsewhere'",
            "redirectUri",
        ),
        (", cookieName: 'a b'", "cookieName"),
        (", algorithms: [none]", "oidc.algorithms"),
    ] {
        let errs = errors_with(&oidc(fields), &good);
        assert!(
            errs.iter().any(|e| e.contains(message)),
            "{fields}: {errs:?}"
        );
    }
    let errs = errors_with(
        &oidc("").replace("https://login.example.com", "login.example.com"),
        &good,
    );
    assert!(errs.iter().any(|e| e.contains("oidc.issuer")), "{errs:?}");
}
