//! Restarts under traffic: two nodes, pod a (node 1) calling pod b (node 2) on every layer while
//! the agents are restarted.
//!
//! - b:7000 plain TCP (L3/L4 policy only), b:7100 mTLS-tunnelled, b:8080 HTTP through the L7
//!   chain (JWT, WAF) in the tunnel, b:9000 denied by the NetworkPolicy;
//! - traffic: long-lived flows and a stream of new connections on 7000 and 7100, flows on b:7200
//!   where only the server sends (its packets reach a by their conntrack entry alone), kept-alive HTTP
//!   requests with a token (200), without one (401) and with an injection (403), connections to
//!   9000 (never answered);
//! - pod a takes no connections (an ingress NetworkPolicy with no rule): every reply it gets is
//!   admitted by its flow's conntrack entry, so a lost entry breaks a flow;
//! - an upgrade: both agents start from the previous layout's build (`CT_V2`) and hand over to
//!   this one (`CT_V3`), which carries conntrack over;
//! - a hot restart of node 2's agent (the destination: the tunnel's and the L7 chain's end), then
//!   of node 1's (the source: the transparent listener), each taking over the listening sockets
//!   and the pushed files;
//! - through both: no connection reset, no request failed, nothing denied got through; the IdP
//!   and the CA service are down meanwhile, so tokens pass and tunnels open only because each new
//!   agent took the old one's JWKS and certificates;
//! - a SIGKILL of node 1's agent: the kernel keeps enforcing (plain flows unbroken, nothing
//!   denied gets through), new mTLS flows drop as `proxy_unavailable` until the next agent
//!   adopts the pinned state; the gap is reported.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rampart_tests::http_server::HttpServer;
use rampart_tests::idp::IdpServer;
use rampart_tests::mesh::MeshAgents;
use rampart_tests::mesh::shop::{self, ip};
use rampart_tests::server::EchoServer;
use rampart_tests::traffic::{self, Tally, Traffic};
use rampart_tests::{Agent, require_root};

const SECRET: [u8; 32] = [0x3c; 32];
const ISSUER: &str = "https://idp.rampart.test";
/// The agents' drain: longer than any connection of the test's clients lives.
const DRAIN_SECONDS: &str = "20";
const ATTACK: &str = "/orders?id=1%27%20OR%20%271%27=%271";

/// The IdP's keys, served on node 2's loopback (where its agent fetches them).
const JWKS_URL: &str = "http://127.0.0.1:18080/keys";

fn jwks() -> String {
    format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}}]}}"#,
        URL_SAFE_NO_PAD.encode(SECRET)
    )
}

fn policies() -> String {
    shop::world(&format!(
        r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-ingress, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]
    ports: [{{port: 7000}}, {{port: 7100}}, {{port: 7200}}, {{port: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-isolated, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
  policyTypes: [Ingress]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: b-tunnel}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 7100}}]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: b-api}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8080}}]
  http:
    authentication:
      providers:
      - name: idp
        jwt: {{issuer: '{ISSUER}', algorithms: [HS256], jwks: {{url: '{JWKS_URL}'}}}}
    waf: {{}}
"#
    ))
}

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({"iss": ISSUER, "sub": "alice", "exp": now + 3600, "iat": now});
    rampart_tests::idp::hs256_token("k1", &claims, &SECRET).expect("sign")
}

fn b(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(2)), port)
}

/// Every kind of traffic from pod a.
fn start_traffic(a: &str, b_path: &str, token: &str) -> Traffic {
    let mut t = Traffic::new(Duration::from_secs(240));
    let lifetime = Duration::from_secs(2);
    t.long_flows("plain long flows", a, b(7000), 3, lifetime);
    t.long_flows("mtls long flows", a, b(7100), 3, lifetime);
    t.pushing_server(b_path, 7200).expect("pushing server");
    t.pushed_flows("server-pushed flows", a, b(7200), 3, lifetime);
    t.new_connections("plain new connections", a, b(7000));
    t.new_connections("mtls new connections", a, b(7100));
    let bearer = format!("Bearer {token}");
    t.http(
        "http with token (200)",
        a,
        b(8080),
        "/orders",
        &[("authorization", &bearer)],
        200,
        40,
    );
    t.http(
        "http without token (401)",
        a,
        b(8080),
        "/orders",
        &[],
        401,
        40,
    );
    t.http(
        "http injection (403)",
        a,
        b(8080),
        ATTACK,
        &[
            ("authorization", &bearer),
            ("user-agent", "Mozilla/5.0"),
            ("accept", "text/html"),
        ],
        403,
        40,
    );
    t.denied_connections("denied port (never answered)", a, b(9000));
    t
}

fn tally<'a>(tallies: &'a [(String, Tally)], name: &str) -> &'a Tally {
    &tallies
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no traffic named {name}"))
        .1
}

/// The agents' policy directory (the CA service reads its Pods too), removed on drop.
struct PolicyDir(std::path::PathBuf);

impl PolicyDir {
    fn new() -> PolicyDir {
        let dir = std::env::temp_dir().join(format!("rampart-hot-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("policy dir");
        std::fs::write(dir.join("world.yaml"), policies()).expect("policy");
        PolicyDir(dir)
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The previous layout's build: `$RAMPART_PREVIOUS_BIN`, else `rampart-previous` beside the
/// agent (`cargo xtask test` builds it with the `previous-layout` feature).
fn previous_bin(current: &Path) -> std::path::PathBuf {
    let bin = std::env::var_os("RAMPART_PREVIOUS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| current.with_file_name("rampart-previous"));
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build -p rampart-agent --features previous-layout` \
         and copy target/debug/rampart there (`cargo xtask test` does), or set RAMPART_PREVIOUS_BIN",
        bin.display()
    );
    bin
}

/// Waits until node 2's agent has fetched the IdP's keys (a token is accepted).
fn wait_for_keys(mesh: &MeshAgents) {
    let node2 = mesh.node("node-2");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sum_metric(node2, "rampart_jwks_fetches_total", "result=\"ok\"") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the IdP's keys were not fetched:\n{}",
            node2.metrics().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logs(mesh: &MeshAgents) -> String {
    mesh.agents()
        .map(Agent::log)
        .collect::<Vec<_>>()
        .join("\n----\n")
}

fn sum_metric(agent: &Agent, name: &str, label: &str) -> f64 {
    agent
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn restarts_under_traffic_drop_nothing_and_open_nothing() {
    require_root();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crs = rampart_tests::waf_cases::shared_dir(&workspace)
        .expect("shared/")
        .join(rampart_tests::waf_cases::DEFAULT_CRS);
    let topo = shop::two_nodes().expect("topology");
    let pod_b = &topo.pod("shop/b").ns;
    let _echo = EchoServer::start(pod_b, &[7000, 7100, 9000], &[]).expect("echo");
    let _origin = HttpServer::start(pod_b, 8080).expect("origin");
    let idp = IdpServer::start(&topo.node("node-2").ns, 18080, ISSUER, &jwks()).expect("idp");
    let crs_arg = crs.display().to_string();
    let current = rampart_tests::agent::rampart_bin().expect("the agent");
    let previous = previous_bin(&current);
    let policy_dir = PolicyDir::new();
    let mut mesh = MeshAgents::start_in_dir_with_ca_service(
        &topo,
        &["node-1", "node-2"],
        &policy_dir.0,
        Some(&previous),
        3600,
        &["--crs-dir", &crs_arg, "--drain-seconds", DRAIN_SECONDS],
    )
    .expect("agents");
    // A pushed file lives in the agent's memory only: it must carry over.
    let pushed = mesh.work_dir().join("pushed-ns.yaml");
    std::fs::write(
        &pushed,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: pushed}\n",
    )
    .expect("write");
    mesh.node("node-2")
        .cli(&["policy", "push", pushed.to_str().expect("utf-8")])
        .expect("push");
    let a = topo.pod("shop/a").ns.path();
    let b_path = pod_b.path();
    let token = token();

    // The IdP goes down: the agents keep the keys they fetched, and each new agent must take
    // them over (a new agent that fetched its own would refuse every token: 401).
    wait_for_keys(&mesh);
    idp.set_up(false);

    // 1. The upgrade from the previous layout, then hot restarts of this build: each node in
    // turn, the destination's first.
    let running = start_traffic(&a, &b_path, &token);
    std::thread::sleep(Duration::from_secs(2));
    // So is the CA service, once the workloads have their certificates: each new agent serves
    // with the old one's.
    mesh.ca_server().expect("the CA service").stop();
    let mut takeovers = Vec::new();
    for (node, upgrade) in [
        ("node-2", true),
        ("node-1", true),
        ("node-2", false),
        ("node-1", false),
    ] {
        let at = running.elapsed();
        let handed = mesh
            .hand_over(&topo, node, upgrade.then_some(current.as_path()))
            .unwrap_or_else(|e| panic!("hot restart of {node}: {e:#}"));
        assert!(
            mesh.node(node)
                .log()
                .contains("serving with the previous agent's"),
            "{node}: the certificates were not carried over:\n{}",
            mesh.node(node).log()
        );
        let agent = mesh.node(node);
        let took = sum_metric(agent, "rampart_handover_takeover_seconds", "");
        assert!(took > 0.0, "{node}: no takeover time in the metrics");
        if upgrade {
            let carried = sum_metric(agent, "rampart_conntrack_carried_total", "") as u64;
            assert!(
                carried > 0,
                "{node}: no conntrack entry carried into the new layout:\n{}",
                agent.log()
            );
            let old_map = mesh.node(node).bpffs_root().join("maps/CT_V2");
            assert!(!old_map.exists(), "{} is still pinned", old_map.display());
            takeovers.push((node, "upgrade", at, handed.takeover, carried));
        } else {
            takeovers.push((node, "restart", at, handed.takeover, 0));
        }
        assert!(
            handed.old_status.success(),
            "the old agent of {node} exited with {}; log:\n{}",
            handed.old_status,
            handed.old_log
        );
        assert!(
            handed.old_log.contains("handed over"),
            "the old agent of {node} did not hand over:\n{}",
            handed.old_log
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let tallies = running.stop();
    let table = traffic::report(&tallies);
    println!(
        "upgrade and hot restarts (node, kind, started at, takeover, conntrack entries carried): {takeovers:?}\n{table}"
    );
    for (name, t) in &tallies {
        assert_eq!(
            t.failed,
            0,
            "{name} failed during the hot restarts:\n{table}\n{}",
            logs(&mesh)
        );
        assert!(t.ok > 0, "{name} never succeeded:\n{table}");
    }
    let status = mesh
        .node("node-2")
        .cli(&["status", "--json"])
        .expect("status");
    assert!(
        status.contains("\"pushed_files\":1") || status.contains("\"pushed_files\": 1"),
        "the pushed file did not carry over: {status}"
    );

    // 2. SIGKILL of the source's agent: the kernel keeps enforcing; new mTLS flows drop as
    // proxy_unavailable (counted in the pinned maps) until the next agent adopts them. (That
    // agent has no predecessor: it asks the CA service, which is back.)
    mesh.ca_server()
        .expect("the CA service")
        .resume()
        .expect("the CA again");
    let running = start_traffic(&a, &b_path, &token);
    std::thread::sleep(Duration::from_secs(1));
    mesh.kill_and_restart(&topo, "node-1", || {
        std::thread::sleep(Duration::from_secs(2))
    })
    .expect("restart after SIGKILL");
    std::thread::sleep(Duration::from_secs(2));
    let tallies = running.stop();
    let table = traffic::report(&tallies);
    println!("SIGKILL of node-1's agent and a new agent:\n{table}");
    for name in [
        "plain long flows",
        "server-pushed flows",
        "plain new connections",
        "http without token (401)",
        "http injection (403)",
        "denied port (never answered)",
    ] {
        let t = tally(&tallies, name);
        // The plain flows never touch the proxy, and nothing denied may pass. (An HTTP request
        // denied while no proxy listens is not answered at all: that is a failed request, but
        // no violation, so only the answered ones are checked below.)
        if name.starts_with("plain") || name.starts_with("denied") {
            assert_eq!(
                t.failed,
                0,
                "{name} while the agent was dead:\n{table}\n{}",
                logs(&mesh)
            );
        }
    }
    for name in ["http without token (401)", "http injection (403)"] {
        let t = tally(&tallies, name);
        assert!(
            t.examples.iter().all(|e| !e.starts_with("status 200")),
            "{name}: a denied request got through:\n{table}"
        );
    }
    let unavailable = sum_metric(
        mesh.node("node-1"),
        "rampart_drops_total{",
        "reason=\"proxy_unavailable\"",
    );
    assert!(
        unavailable > 0.0,
        "no proxy_unavailable drop was counted:\n{table}"
    );
    let gap = tally(&tallies, "mtls new connections").longest_gap;
    println!(
        "SIGKILL: new mTLS connections' longest gap {gap:?}, proxy_unavailable drops {unavailable}"
    );
}
