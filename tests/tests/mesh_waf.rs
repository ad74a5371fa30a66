//! The WAF in the proxy, on a real kernel: two nodes, pod a calling pod b's port 8080 through the
//! mTLS tunnel, where a MeshPolicy's `http.waf` runs the OWASP Core Rule Set (4.28.0 from
//! `../shared`) at its defaults, and port 8081 in Detect mode.
//!
//! - a SQL injection gets 403 and never reaches the pod; a benign request with a body passes;
//! - the access log names the matched rules and the anomaly score; the counters by policy and
//!   rule group; Detect mode lets the same attack through and counts it as detected;
//! - a policy whose extra rules do not load is rejected as a whole and the last good set stays
//!   in force (the attack is still blocked);
//! - DLP on port 8082: a card number in the pod's response is masked on its way back (an order id
//!   that fails Luhn is not), counted, and masked in the access log's path too.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use rampart_tests::http_server::HttpServer;
use rampart_tests::mesh::MeshAgents;
use rampart_tests::mesh::shop::{self, ip, world};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::{KeptAlive, http_post, http_request};
use rampart_tests::{Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(10);
const ATTACK: &str = "/orders?id=1%27%20OR%20%271%27=%271";

/// A MeshPolicy on pod b's `port` whose `http` section is `http` (one line, e.g. `waf: {}`).
fn mesh_policy(name: &str, port: u16, http: &str) -> String {
    shop::b_policy(name, port, &format!("    {http}\n"))
}

fn two_nodes() -> Topology {
    shop::two_nodes().expect("topology")
}

#[test]
fn the_core_rule_set_blocks_attacks_before_the_pod_and_says_why() {
    require_root();
    // `RAMPART_TEST_CRS_DIR`: a Core Rule Set where the agent finds it (`cargo xtask image
    // --prove` runs this test with the agents in containers, on the image's own CRS).
    let crs = match std::env::var_os("RAMPART_TEST_CRS_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            rampart_tests::waf_cases::shared_dir(&workspace)
                .expect("shared/")
                .join(rampart_tests::waf_cases::DEFAULT_CRS)
        }
    };
    let topo = two_nodes();
    let orders = HttpServer::start(&topo.pod("shop/b").ns, 8080).expect("origin 8080");
    let reports = HttpServer::start(&topo.pod("shop/b").ns, 8081).expect("origin 8081");
    // Echoes the request's headers in its body: a header carries the "leak" back.
    let ledger = HttpServer::start(&topo.pod("shop/b").ns, 8083).expect("origin 8083");
    let crs_arg = crs.display().to_string();
    let audit = std::env::temp_dir().join(format!(
        "{TEST_PREFIX}-waf-audit-{}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &world(
            &[
                mesh_policy(
                    "orders-waf",
                    8080,
                    &format!("waf: {{auditLog: {{path: {}}}}}", audit.display()),
                ),
                mesh_policy("reports-waf", 8081, "waf: {mode: Detect}"),
                mesh_policy("ledger-waf", 8083, "waf: {responseBody: {inspect: true}}"),
            ]
            .concat(),
        ),
        None,
        &["--crs-dir", &crs_arg],
    )
    .expect("agents");
    let node2 = mesh.node("node-2");
    let a = topo.pod("shop/a").ns.path();
    let get = |port: u16, path: &str| {
        http_request(
            &a,
            SocketAddr::new(IpAddr::V4(ip(2)), port),
            "GET",
            path,
            &[("user-agent", "Mozilla/5.0"), ("accept", "text/html")],
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nnode-2 log:\n{}", node2.log()))
    };

    let reply = get(8080, "/orders?id=42");
    assert_eq!(reply.status, 200, "{reply:?}\nnode-2 log:\n{}", node2.log());
    let reply = get(8080, ATTACK);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(orders.requests(), 1, "the attack reached the pod");
    assert_eq!(
        node2.sample(
            "rampart_waf_blocked_total",
            "policy=\"orders-waf\",rule_group=\"sqli\""
        ),
        1.0,
        "{}",
        node2.metrics().unwrap_or_default()
    );
    assert_eq!(node2.sample("rampart_waf_evaluated_total", ""), 2.0);
    assert_eq!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"waf\",reason=\"sqli\""
        ),
        1.0
    );

    // The engine's audit log: a JSON record per request a rule flagged (the benign one for
    // its numeric Host, a warning), the blocked one with its rules and the 403 it got.
    let records = std::fs::read_to_string(&audit).unwrap_or_default();
    let _ = std::fs::remove_file(&audit);
    let records: Vec<serde_json::Value> = records
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let blocked = records
        .iter()
        .find(|r| r["transaction"]["response"]["http_code"] == 403)
        .unwrap_or_else(|| panic!("no record of the blocked request: {records:?}"));
    assert!(
        blocked["transaction"]["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["details"]["ruleId"] == "942100")),
        "{blocked}"
    );

    // Detect mode: the same attack passes, and is counted as detected.
    assert_eq!(get(8081, ATTACK).status, 200);
    assert_eq!(reports.requests(), 1);
    assert_eq!(
        node2.sample(
            "rampart_waf_detected_total",
            "policy=\"reports-waf\",rule_group=\"sqli\""
        ),
        1.0
    );

    // Response rules: a SQL error in the pod's response never reaches the client.
    let leak = http_request(
        &a,
        SocketAddr::new(IpAddr::V4(ip(2)), 8083),
        "GET",
        "/ledger/7",
        &[
            ("user-agent", "Mozilla/5.0"),
            ("accept", "text/html"),
            (
                "x-debug",
                "You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version",
            ),
        ],
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("GET /ledger/7: {e:#}\nnode-2 log:\n{}", node2.log()));
    assert_eq!(leak.status, 403, "{leak:?}");
    assert!(!leak.body.contains("SQL syntax"), "{leak:?}");
    assert_eq!(ledger.requests(), 1, "the request itself passed");
    assert_eq!(
        node2.sample(
            "rampart_waf_blocked_total",
            "policy=\"ledger-waf\",rule_group=\"data-leakage-sql\""
        ),
        1.0,
        "{}",
        node2.metrics().unwrap_or_default()
    );
    let flows = node2.cli(&["flows", "--json"]).expect("rampart flows");
    let leaked = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["http"]["denied_by"] == "waf:data-leakage-sql")
        .unwrap_or_else(|| panic!("no record of the blocked response:\n{flows}"));
    assert_eq!(leaked["http"]["waf_response_body"], "inspected", "{leaked}");
    assert!(
        leaked["http"]["waf_outbound_anomaly_score"]
            .as_u64()
            .is_some_and(|s| s >= 4),
        "{leaked}"
    );
    assert!(
        leaked["http"]["waf_rule_ids"]
            .as_array()
            .is_some_and(|ids| ids
                .iter()
                .any(|id| id.as_u64().is_some_and(|id| id / 1000 == 951))),
        "{leaked}"
    );

    // The access log names the rules and the score.
    let flows = node2.cli(&["flows", "--json"]).expect("rampart flows");
    let blocked = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["http"]["denied_by"] == "waf:sqli")
        .unwrap_or_else(|| panic!("no record of the blocked request:\n{flows}"));
    assert_eq!(blocked["http"]["status"], 403, "{blocked}");
    assert_eq!(blocked["http"]["policy"], "orders-waf", "{blocked}");
    assert_eq!(blocked["http"]["waf_body"], "inspected", "{blocked}");
    let rules = blocked["http"]["waf_rule_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rules
            .iter()
            .any(|id| id.as_u64().is_some_and(|id| id / 1000 == 942)),
        "{blocked}"
    );
    assert!(
        blocked["http"]["waf_anomaly_score"]
            .as_u64()
            .is_some_and(|s| s >= 5),
        "{blocked}"
    );

    // Rules that do not load: the whole set is refused, the last good one stays.
    let errors = node2.sample("rampart_policy_errors_total", "");
    std::fs::write(
        mesh.work_dir().join("policy/bad-waf.yaml"),
        mesh_policy(
            "broken-waf",
            8082,
            "waf: {extraRules: [{inline: 'SecRule ARGS \"@rx x\" \"id:20001,phase:2,nosuchaction\"'}]}",
        ),
    )
    .expect("write");
    rampart_tests::eventually(
        "the bad rules to be refused",
        Duration::from_secs(20),
        || (node2.sample("rampart_policy_errors_total", "") > errors).then_some(()),
    );
    assert!(node2.log().contains("broken-waf"), "{}", node2.log());
    assert_eq!(
        get(8080, ATTACK).status,
        403,
        "the last good set is in force"
    );
    assert_eq!(orders.requests(), 1);
}

#[test]
fn card_numbers_in_responses_are_masked_on_the_way_back() {
    require_root();
    let topo = two_nodes();
    // The origin's body reports the request's headers: a card number sent in a header comes
    // back in the response body.
    let _origin = HttpServer::start(&topo.pod("shop/b").ns, 8082).expect("origin 8082");
    let payments = HttpServer::start(&topo.pod("shop/b").ns, 8083).expect("origin 8083");
    let policy_with = |payments_http: &str| {
        world(&format!(
            "{}{}",
            mesh_policy(
                "statements-dlp",
                8082,
                "dlp: {detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}",
            ),
            mesh_policy("no-cards-out", 8083, payments_http)
        ))
    };
    let policy = policy_with("dlp: {requests: {detectors: [{type: cardNumber, action: Block}]}}");
    let mesh = MeshAgents::start(&topo, &["node-1", "node-2"], &policy, None, &[]).expect("agents");
    let node2 = mesh.node("node-2");
    let a = topo.pod("shop/a").ns.path();
    let reply = http_request(
        &a,
        SocketAddr::new(IpAddr::V4(ip(2)), 8082),
        "GET",
        "/cards/4111111111111111/statement",
        &[
            ("x-card", "4111 1111 1111 1111"),
            ("x-order", "1234567812345678"),
        ],
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("GET: {e:#}\nnode-2 log:\n{}", node2.log()));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains("x-card: **** **** **** 1111"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-order: 1234567812345678"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("4111 1111"), "{}", reply.body);
    assert_eq!(
        node2.sample(
            "rampart_dlp_matches_total",
            "direction=\"response\",detector=\"card_number\",action=\"mask\""
        ),
        2.0,
        "the header's card and the path's, echoed in the body\n{}",
        node2.metrics().unwrap_or_default()
    );
    let flows = node2.cli(&["flows", "--json"]).expect("rampart flows");
    let record = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["http"]["policy"] == "statements-dlp")
        .unwrap_or_else(|| panic!("no access-log record:\n{flows}"));
    assert_eq!(
        record["http"]["path"], "/cards/************1111/statement",
        "{record}"
    );
    assert!(
        !flows.contains("4111111111111111"),
        "a card number in the flow log"
    );

    // Requests: a card number leaving pod a in a body is refused before pod b sees it; a
    // number that fails the Luhn check goes through.
    let to_payments = SocketAddr::new(IpAddr::V4(ip(2)), 8083);
    let json = [("content-type", "application/json")];
    let refused = http_post(
        &a,
        to_payments,
        "/charge",
        &json,
        br#"{"card": "5555 5555 5555 4444", "amount": 3}"#,
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("POST: {e:#}\nnode-2 log:\n{}", node2.log()));
    assert_eq!(
        (refused.status, payments.requests()),
        (403, 0),
        "{refused:?}"
    );
    let passed = http_post(
        &a,
        to_payments,
        "/charge",
        &json,
        br#"{"order": "5555555555554445", "amount": 3}"#,
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("POST: {e:#}\nnode-2 log:\n{}", node2.log()));
    assert_eq!((passed.status, payments.requests()), (200, 1), "{passed:?}");
    assert_eq!(
        node2.sample(
            "rampart_dlp_matches_total",
            "direction=\"request\",detector=\"card_number\",action=\"block\""
        ),
        1.0
    );
    assert_eq!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"dlp\",reason=\"blocked\""
        ),
        1.0
    );

    // A kept-alive connection follows a policy change: its next request is judged by the rules
    // in force, and the connection stays up.
    let mut kept = KeptAlive::open(&a, to_payments, TIMEOUT).expect("connect");
    let card = "/charge?card=4111111111111111";
    let status = |kept: &mut KeptAlive| {
        kept.get(card)
            .expect("GET")
            .map(|r| r.status)
            .unwrap_or_else(|| panic!("the connection closed\nnode-2 log:\n{}", node2.log()))
    };
    assert_eq!(status(&mut kept), 403);
    std::fs::write(
        mesh.work_dir().join("policy/world.yaml"),
        policy_with("dlp: {detectors: [{type: email, action: Mask}]}"),
    )
    .expect("write");
    rampart_tests::eventually(
        "the kept-alive connection to follow the new rules",
        Duration::from_secs(20),
        || (status(&mut kept) == 200).then_some(()),
    );
    assert_eq!(payments.requests(), 2);
}
