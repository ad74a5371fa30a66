//! The engine against the real Core Rule Set (v4.28.0 from `../shared`, and Debian's 3.3 when
//! installed).

use std::path::PathBuf;

use crate::{
    AuditLog, CrsLayout, Engine, Evaluation, ExtraRules, Profile, Request, Response, WafError,
};

/// `../shared/crs-4.28.0` beside the project (or `RAMPART_CRS_DIR`).
pub fn shared_crs() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAMPART_CRS_DIR") {
        return dir.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        root.join("../shared/crs-4.28.0"),
        "/work/shared/crs-4.28.0".into(),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap_or_else(|| panic!("no CRS 4.28.0 beside the project (../shared); set RAMPART_CRS_DIR"))
}

fn engine(profile: &Profile) -> Engine {
    let layout = CrsLayout::discover(&shared_crs()).unwrap_or_else(|e| panic!("{e}"));
    Engine::load(&layout, profile).unwrap_or_else(|e| panic!("{e}"))
}

fn request<'a>(
    method: &'a str,
    uri: &'a str,
    headers: &'a [(&'a [u8], &'a [u8])],
    body: &'a [u8],
) -> Request<'a> {
    Request {
        client: "203.0.113.7:40000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        server: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
        method,
        uri,
        http_version: "1.1",
        headers,
        body,
    }
}

const BROWSER: &[(&[u8], &[u8])] = &[
    (b"Host", b"localhost"),
    (b"User-Agent", b"Mozilla/5.0"),
    (b"Accept", b"text/html"),
];

fn eval(engine: &Engine, r: &Request<'_>) -> Evaluation {
    engine.evaluate(r).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn crs_blocks_attacks_and_passes_benign_requests() {
    let engine = engine(&Profile::default());
    let benign = eval(
        &engine,
        &request("GET", "/orders?id=42&sort=asc", BROWSER, b""),
    );
    assert!(!benign.disruptive, "{benign:?}");
    assert!(benign.matched.is_empty(), "{benign:?}");

    // In the query string of a GET: CRS decides in the body phase, which must run.
    let sqli = eval(
        &engine,
        &request("GET", "/orders?id=1%27%20OR%20%271%27=%271", BROWSER, b""),
    );
    assert!(sqli.disruptive, "{sqli:?}");
    assert_eq!(sqli.status, 403);
    assert!(
        sqli.rule_ids().iter().any(|id| id / 1000 == 942),
        "{sqli:?}"
    );
    assert!(sqli.anomaly_score.is_some_and(|s| s >= 5), "{sqli:?}");
    assert!(
        sqli.matched.iter().any(|m| m.id == 949110 && m.disruptive),
        "{sqli:?}"
    );
    assert_eq!(sqli.group(), "sqli");
    // A numeric Host (a warning, 920350) does not name the request; the injection does.
    let numeric_host: &[(&[u8], &[u8])] = &[
        (b"Host", b"10.0.0.2:8080"),
        (b"User-Agent", b"Mozilla/5.0"),
        (b"Accept", b"text/html"),
    ];
    let both = eval(
        &engine,
        &request(
            "GET",
            "/orders?id=1%27%20OR%20%271%27=%271",
            numeric_host,
            b"",
        ),
    );
    assert!(both.rule_ids().contains(&920350), "{both:?}");
    assert_eq!(both.group(), "sqli");

    // In a form body.
    let mut headers = BROWSER.to_vec();
    headers.push((b"Content-Type", b"application/x-www-form-urlencoded"));
    headers.push((b"Content-Length", b"15"));
    let body = eval(
        &engine,
        &request("POST", "/post", &headers, b"var=1234 OR 1=1"),
    );
    assert!(
        body.disruptive && body.rule_ids().contains(&942100),
        "{body:?}"
    );
}

#[test]
fn exclusions_threshold_and_extra_rules_change_the_verdict() {
    let attack = request(
        "GET",
        "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        BROWSER,
        b"",
    );
    let default = eval(&engine(&Profile::default()), &attack);
    assert!(
        default.disruptive && default.group() == "xss",
        "{default:?}"
    );
    let lenient = Profile {
        inbound_threshold: 1000,
        ..Profile::default()
    };
    let scored = eval(&engine(&lenient), &attack);
    assert!(
        !scored.disruptive && !scored.rule_ids().is_empty(),
        "{scored:?}"
    );
    let no_xss = Profile {
        exclude_tags: vec!["attack-xss".into()],
        ..Profile::default()
    };
    assert!(!eval(&engine(&no_xss), &attack).disruptive);
    let own = Profile {
        extra: vec![ExtraRules::Inline(
            "SecRule REQUEST_URI \"@beginsWith /forbidden\" \"id:20001,phase:1,deny,status:403,log,msg:'forbidden area'\"".into(),
        )],
        ..Profile::default()
    };
    let denied = eval(&engine(&own), &request("GET", "/forbidden/x", BROWSER, b""));
    assert!(
        denied.disruptive && denied.rule_ids() == [20001],
        "{denied:?}"
    );
}

#[test]
fn bad_rules_are_errors_naming_their_source() {
    let layout = CrsLayout::discover(&shared_crs()).unwrap_or_else(|e| panic!("{e}"));
    let bad = Profile {
        extra: vec![ExtraRules::Inline(
            "SecRule ARGS \"@rx (\" \"id:1,phase:2,deny\"\nSecNonsense On".into(),
        )],
        ..Profile::default()
    };
    match Engine::load(&layout, &bad) {
        Err(WafError::Rules { origin, problem }) => {
            assert_eq!(origin, "the extra rules");
            assert!(!problem.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // An unknown action is refused. (libmodsecurity 3.0.9 accepts an unknown operator or a
    // regex that does not compile without a word; such a rule never matches.)
    let unknown_action = Profile {
        extra: vec![ExtraRules::Inline(
            "SecRule ARGS \"@rx x\" \"id:20001,phase:2,nosuchaction\"".into(),
        )],
        ..Profile::default()
    };
    let err = Engine::load(&layout, &unknown_action).expect_err("unknown action");
    assert!(err.to_string().contains("nosuchaction"), "{err}");
    let missing = Profile {
        extra: vec![ExtraRules::File("/nonexistent/rules.conf".into())],
        ..Profile::default()
    };
    let err = Engine::load(&layout, &missing).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/rules.conf"), "{err}");
}

#[test]
fn one_engine_evaluates_on_many_threads_at_once() {
    let engine = std::sync::Arc::new(engine(&Profile::default()));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let engine = std::sync::Arc::clone(&engine);
            std::thread::spawn(move || {
                for n in 0..50 {
                    let attack = (i + n) % 2 == 0;
                    let uri = if attack {
                        "/q?id=1%27%20OR%20%271%27=%271"
                    } else {
                        "/q?id=42"
                    };
                    let e = eval(&engine, &request("GET", uri, BROWSER, b""));
                    assert_eq!(e.disruptive, attack, "{uri}: {e:?}");
                }
            })
        })
        .collect();
    for w in workers {
        assert!(w.join().is_ok(), "a worker failed");
    }
}

#[test]
fn requests_the_engine_cannot_take_are_errors() {
    let engine = engine(&Profile::default());
    let err = engine
        .evaluate(&request("GET", "/a\0b", BROWSER, b""))
        .expect_err("NUL");
    assert!(matches!(err, WafError::Input(_)), "{err}");
}

#[test]
fn debians_crs_3_loads() {
    // `cargo xtask setup` installs Debian's modsecurity-crs: a machine without it is a setup
    // failure, not a pass.
    let dir = std::path::Path::new(crate::DEBIAN_CRS_DIR);
    let layout = CrsLayout::discover(dir).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::load(&layout, &Profile::default()).unwrap_or_else(|e| panic!("{e}"));
    let sqli = eval(
        &engine,
        &request("GET", "/orders?id=1%27%20OR%20%271%27=%271", BROWSER, b""),
    );
    assert!(sqli.disruptive, "{sqli:?}");
}

/// The public WAF cases (`../shared/conformance/waf_requests.jsonl`) straight through the engine,
/// as the floor under the proxy's conformance run: every `block` case interrupted, every `pass`
/// case not (default profile, CRS 4.28.0).
#[test]
fn the_public_cases_through_the_engine() {
    let file = shared_crs().join("../conformance/waf_requests.jsonl");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let engine = engine(&Profile::default());
    let mut wrong = Vec::new();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
        let headers: Vec<(&[u8], &[u8])> = case["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_str().unwrap_or_default().as_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        let r = Request {
            method: case["method"].as_str().unwrap_or("GET"),
            uri: case["uri"].as_str().unwrap_or("/"),
            headers: &headers,
            body: case["body"].as_str().unwrap_or_default().as_bytes(),
            ..request("GET", "/", &[], b"")
        };
        let e = engine.evaluate(&r).unwrap_or_else(|e| panic!("{e}"));
        count += 1;
        if e.disruptive != (case["expected"] == "block") {
            wrong.push(format!(
                "{} ({}): {:?} score {:?}",
                case["id"],
                case["expected"],
                e.rule_ids(),
                e.anomaly_score
            ));
        }
    }
    assert!(count >= 75, "{count} cases");
    assert!(
        wrong.is_empty(),
        "{} of {count} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

const SQL_ERROR: &[u8] = b"<html><body>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near '1'' at line 1</body></html>";

fn respond(engine: &std::sync::Arc<Engine>, body: &[u8]) -> Option<Evaluation> {
    let (on_request, open) = engine
        .exchange(&request("GET", "/orders?id=42", BROWSER, b""))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!on_request.disruptive, "{on_request:?}");
    let headers: &[(&[u8], &[u8])] = &[(b"Content-Type", b"text/html; charset=utf-8")];
    open.map(|exchange| {
        exchange
            .respond(&Response {
                status: 200,
                http_version: "1.1",
                headers,
                body,
            })
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

#[test]
fn response_rules_block_a_leaked_sql_error_when_responses_are_inspected() {
    let inspecting = std::sync::Arc::new(engine(&Profile {
        response_body_limit: Some(512 * 1024),
        ..Profile::default()
    }));
    let leaked = respond(&inspecting, SQL_ERROR).expect("the request passed, the exchange is open");
    assert!(leaked.disruptive, "{leaked:?}");
    assert_eq!(leaked.status, 403);
    assert!(leaked.rule_ids().contains(&951230), "{leaked:?}");
    assert_eq!(leaked.group(), "data-leakage-sql");
    assert!(leaked.anomaly_score.is_some_and(|s| s >= 4), "{leaked:?}");
    let benign = respond(&inspecting, b"<html><body>order 42 shipped</body></html>").expect("open");
    assert!(
        !benign.disruptive && benign.rule_ids().is_empty(),
        "{benign:?}"
    );

    // Without response inspection the response rules never see a body.
    let blind = std::sync::Arc::new(engine(&Profile::default()));
    let passed = respond(&blind, SQL_ERROR).expect("open");
    assert!(!passed.disruptive, "{passed:?}");

    // A blocked request leaves no exchange open.
    let (blocked, open) = inspecting
        .exchange(&request(
            "GET",
            "/orders?id=1%27%20OR%20%271%27=%271",
            BROWSER,
            b"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(blocked.disruptive && open.is_none());
}

#[test]
fn the_audit_log_records_blocked_requests_as_json() {
    let dir = std::env::temp_dir().join(format!("rampart-waf-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("audit.log");
    let audit = AuditLog {
        path: path.clone(),
        json: true,
        parts: "AHZ".into(),
        all: false,
    };
    let engine = engine(&Profile {
        audit: Some(audit.clone()),
        ..Profile::default()
    });
    assert!(
        eval(&engine, &request("GET", "/orders?id=42", BROWSER, b""))
            .matched
            .is_empty()
    );
    let sqli = eval(
        &engine,
        &request("GET", "/orders?id=1%27%20OR%20%271%27=%271", BROWSER, b""),
    );
    assert!(sqli.disruptive);
    drop(engine);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 1, "only the relevant transaction: {text}");
    let tx = &records[0]["transaction"];
    assert_eq!(
        tx["response"]["http_code"], 403,
        "the status the proxy answers"
    );
    assert!(
        tx["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["details"]["ruleId"] == "942100")),
        "{tx}"
    );
    // With responses inspected (the transaction kept open): a blocked request is recorded, and
    // so is one whose exchange ends without its response being judged.
    let second = dir.join("exchanges.log");
    let inspecting = std::sync::Arc::new(self::engine(&Profile {
        audit: Some(AuditLog {
            path: second.clone(),
            all: true,
            ..audit.clone()
        }),
        response_body_limit: Some(4096),
        ..Profile::default()
    }));
    let (blocked, open) = inspecting
        .exchange(&request(
            "GET",
            "/orders?id=1%27%20OR%20%271%27=%271",
            BROWSER,
            b"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(blocked.disruptive && open.is_none());
    let (_, open) = inspecting
        .exchange(&request("GET", "/orders?id=42", BROWSER, b""))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(open.expect("an open exchange"));
    drop(inspecting);
    let text = std::fs::read_to_string(&second).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("\"http_code\":403"), "{text}");

    // A log that cannot be opened is a load error, never a silent loss.
    let unwritable = Profile {
        audit: Some(AuditLog {
            path: dir.join("missing/audit.log"),
            ..audit
        }),
        ..Profile::default()
    };
    let layout = CrsLayout::discover(&shared_crs()).unwrap_or_else(|e| panic!("{e}"));
    let err = Engine::load(&layout, &unwritable).expect_err("no such directory");
    assert!(err.to_string().contains("audit log"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
