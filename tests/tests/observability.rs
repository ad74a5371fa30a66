//! What operators see, against the real agent on a real kernel: `rampart flows` names the
//! workloads and the policy rule behind allows and denies (also as a live stream and in the
//! `--flow-log` file); `rampart policy explain` gives the answer the kernel gives to real probes,
//! from the running agent and offline; `promtool check metrics` accepts the metrics; the Grafana
//! dashboard queries only metrics the agent serves; a real Prometheus server scrapes the agent
//! and sees the drop counter rise after a denied probe.

use std::io::BufRead as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, probe, require_root};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_millis(700);

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, d)
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Lets every shop pod send to the database, so that the guardrail's deny rule at the
/// database's ingress (not the sender's egress default) is what stops the frontend.
const SHOP_TO_DB: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: shop-to-db, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
";

/// A copy of the example policies (top level only), plus [`SHOP_TO_DB`], in a fresh directory.
fn policy_copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-obs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    for entry in std::fs::read_dir(policies_dir()).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::write(dir.join("25-shop-to-db.yaml"), SHOP_TO_DB).expect("write");
    dir
}

struct Shop {
    topo: Topology,
    _servers: Vec<EchoServer>,
}

impl Shop {
    fn start() -> Shop {
        let topo = Topology::builder(TEST_PREFIX)
            .node("node-1")
            .pod("node-1", "shop/frontend", ip(10))
            .pod("node-1", "shop/backend", ip(11))
            .pod("node-1", "shop/db", ip(12))
            .pod("node-1", "kube-system/coredns", ip(53))
            .build()
            .expect("topology");
        let servers = topo
            .pods()
            .iter()
            .map(|pod| EchoServer::start(&pod.ns, &[8080, 5432], &[53]).expect("echo"))
            .collect();
        Shop {
            topo,
            _servers: servers,
        }
    }

    fn tcp(&self, from: &str, to: u8, port: u16) -> bool {
        probe::tcp(
            &self.topo.pod(from).ns,
            SocketAddr::new(IpAddr::V4(ip(to)), port),
            TIMEOUT,
        )
        .reached()
    }

    fn node_ns(&self) -> String {
        self.topo.node("node-1").ns.name().to_owned()
    }
}

fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    rampart_tests::eventually(what, timeout, f)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn is_flow(r: &Value, src: &str, dst: &str, port: u64, verdict: &str) -> bool {
    r["src"]["pod"] == src
        && r["dst"]["pod"] == dst
        && r["dst"]["port"] == port
        && r["verdict"] == verdict
}

/// Kills a child process on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flows_explain_and_metrics_name_what_decided() {
    require_root();
    let shop = Shop::start();
    let dir = policy_copy("flows");
    let flow_log = dir.with_extension("jsonl");
    let _ = std::fs::remove_file(&flow_log);
    // With the mTLS proxy running, so that its metrics are served too.
    let ca_dir = dir.with_extension("ca");
    rampart_tests::agent::ca_init(&ca_dir).expect("ca init");
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    opts.extra_args = vec![
        "--flow-log".into(),
        flow_log.display().to_string(),
        "--node-name".into(),
        "node-1".into(),
        "--ca-dir".into(),
        ca_dir.display().to_string(),
    ];
    let agent = Agent::start(&shop.topo.node("node-1").ns, &opts).expect("agent");

    // Three flows with three different deciders.
    assert!(!shop.tcp("shop/frontend", 12, 5432), "guardrail deny rule");
    assert!(!shop.tcp("shop/db", 10, 8080), "default deny");
    assert!(
        shop.tcp("shop/backend", 12, 5432),
        "allowed by NetworkPolicy"
    );

    // `rampart flows --json`: the recent records, each naming pods and the deciding rule.
    let records = wait_for(
        "the three flows in the log",
        Duration::from_secs(10),
        || {
            let text = agent.cli(&["flows", "--json"]).ok()?;
            let records = json_lines(&text);
            let all = [
                ("shop/frontend", "shop/db", 5432, "deny"),
                ("shop/db", "shop/frontend", 8080, "deny"),
                ("shop/backend", "shop/db", 5432, "allow"),
            ]
            .iter()
            .all(|(s, d, p, v)| records.iter().any(|r| is_flow(r, s, d, *p, v)));
            all.then_some(records)
        },
    );
    let guardrail = records
        .iter()
        .find(|r| is_flow(r, "shop/frontend", "shop/db", 5432, "deny"))
        .expect("guardrail record");
    assert_eq!(guardrail["drop_reason"], "policy_deny_rule", "{guardrail}");
    assert_eq!(guardrail["decided_by"], "rule", "{guardrail}");
    assert_eq!(
        guardrail["policy"]["name"], "ClusterPolicy guardrails",
        "{guardrail}"
    );
    assert_eq!(guardrail["policy"]["action"], "deny", "{guardrail}");
    assert_eq!(guardrail["node"], "node-1");
    assert_eq!(guardrail["observer"], "kernel");
    assert_eq!(guardrail["src"]["labels"]["app"], "frontend", "{guardrail}");
    let default_deny = records
        .iter()
        .find(|r| is_flow(r, "shop/db", "shop/frontend", 8080, "deny"))
        .expect("default deny record");
    assert_eq!(default_deny["decided_by"], "default_deny", "{default_deny}");
    assert_eq!(
        default_deny["drop_reason"], "policy_denied",
        "{default_deny}"
    );
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| is_flow(r, "shop/backend", "shop/db", 5432, "allow"))
        .collect();
    assert!(
        allowed.iter().any(|r| r["decided_by"] == "rule"
            && r["policy"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("NetworkPolicy shop/"))),
        "an allow names its NetworkPolicy: {allowed:?}"
    );

    // The text form and the verdict filter.
    let text = agent.cli(&["flows", "--verdict", "deny"]).expect("flows");
    assert!(
        text.lines()
            .any(|l| l.contains("DENY") && l.contains("ClusterPolicy guardrails")),
        "{text}"
    );
    assert!(
        !text.contains("ALLOW"),
        "--verdict deny shows only denies:\n{text}"
    );

    // `--follow` streams a new deny as it happens.
    let mut child = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &shop.node_ns()])
            .arg(agent.bin())
            .args(["flows", "--follow", "--json", "--verdict", "deny"])
            .arg("--admin-socket")
            .arg(agent.admin_socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rampart flows --follow"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The stream starts with the recent denies, then follows: the new one (a port nothing
    // allows) arrives either way, among the recent ones or live.
    assert!(
        !shop.tcp("shop/db", 11, 9999),
        "db -> backend:9999 is denied"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = seen
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the new deny streamed within 10 s");
        let r: Value = serde_json::from_str(&line).expect("json line");
        assert_eq!(r["verdict"], "deny", "{r}");
        if is_flow(&r, "shop/db", "shop/backend", 9999, "deny") {
            break;
        }
    }
    drop(child);

    // The --flow-log file has the same records.
    let logged = std::fs::read_to_string(&flow_log).expect("flow log file");
    assert!(
        json_lines(&logged)
            .iter()
            .any(|r| is_flow(r, "shop/frontend", "shop/db", 5432, "deny")),
        "{logged}"
    );

    // `policy explain` answers what the probes saw, from the agent and offline.
    let cases = [
        ("shop/frontend", "shop/db", 12, 5432),
        ("shop/db", "shop/frontend", 10, 8080),
        ("shop/backend", "shop/db", 12, 5432),
        ("shop/frontend", "shop/backend", 11, 8080),
        ("shop/frontend", "kube-system/coredns", 53, 8080),
        ("shop/backend", "shop/frontend", 10, 8080),
    ];
    for (from, to, to_ip, port) in cases {
        let port_arg = port.to_string();
        let args = [
            "policy", "explain", "--from", from, "--to", to, "--port", &port_arg, "--json",
        ];
        let live: Value =
            serde_json::from_str(&agent.cli(&args).expect("explain")).expect("explain json");
        let dir_arg = dir.display().to_string();
        let mut offline_args = args.to_vec();
        offline_args.push(&dir_arg);
        let offline: Value = serde_json::from_str(&agent.cli(&offline_args).expect("offline"))
            .expect("offline json");
        let reached = shop.tcp(from, to_ip, port);
        let verdict = live["verdict"].as_str().expect("verdict");
        assert_eq!(
            reached,
            verdict != "deny",
            "{from} -> {to}:{port}: probe {reached}, explain {live}"
        );
        assert_eq!(offline["verdict"], live["verdict"], "{from} -> {to}:{port}");
    }

    // Metrics: promtool accepts them; per-policy verdicts and map fill are there.
    let metrics = agent.metrics().expect("metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    std::io::Write::write_all(
        &mut promtool.stdin.take().expect("stdin"),
        metrics.as_bytes(),
    )
    .expect("write metrics");
    let out = promtool.wait_with_output().expect("promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
    assert!(
        sample(
            &metrics,
            "rampart_policy_verdicts_total",
            "policy=\"ClusterPolicy guardrails\",verdict=\"deny\""
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "rampart_map_fill_ratio", "map=\"conntrack\"").is_some_and(|v| v > 0.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "rampart_conntrack_entries", "").is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "rampart_flow_records_total",
            "observer=\"kernel\""
        )
        .is_some_and(|v| v >= 3.0),
        "{metrics}"
    );

    // `rampart status`: attachments, endpoints, map fill, the proxy, the flow log, the policy.
    let status: Value =
        serde_json::from_str(&agent.cli(&["status", "--json"]).expect("status")).expect("json");
    assert_eq!(status["node"], "node-1");
    assert_eq!(status["mode"], "enforce");
    let maps = status["maps"].as_array().expect("maps");
    assert!(
        maps.iter()
            .any(|m| m["map"] == "conntrack" && m["entries"].as_u64() > Some(0)),
        "{status}"
    );
    assert!(
        status["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .any(|e| e["pod"] == "shop/db" && e["isolated_ingress"] == true),
        "{status}"
    );
    assert_eq!(status["mesh"]["tunnel_port"], 15008, "{status}");
    assert_eq!(status["flow_log"]["file"], flow_log.display().to_string());
    assert!(
        status["policy"]["sources"]
            .as_array()
            .is_some_and(|s| s.len() >= 5)
    );
    let text = agent.cli(&["status"]).expect("status");
    for want in [
        "maps:",
        "conntrack",
        "endpoints:",
        "shop/db",
        "mTLS proxy:",
        "flow log:",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }

    // Every metric the dashboard queries is one the agent serves.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/rampart.json"),
        )
        .expect("deploy/grafana/rampart.json"),
    )
    .expect("the dashboard is JSON");
    let served: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                queried += 1;
                assert!(
                    served.contains(name.as_str()),
                    "panel {:?} queries {name}, which the agent does not serve",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 8, "the dashboard queries {queried} metrics");

    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ca_dir);
    let _ = std::fs::remove_file(&flow_log);
    for n in 1..=5 {
        let _ = std::fs::remove_file(format!("{}.{n}", flow_log.display()));
    }
}

/// The `rampart_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("rampart_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_agent_and_sees_drops_rise() {
    require_root();
    let shop = Shop::start();
    let dir = policy_copy("prom");
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(&shop.topo.node("node-1").ns, &opts).expect("agent");

    // A Prometheus server in the node's namespace, scraping the agent every second.
    let work = dir.with_extension("prometheus");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("prometheus dir");
    let config = work.join("prometheus.yml");
    std::fs::write(
        &config,
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n- job_name: rampart\n  static_configs: [{targets: ['127.0.0.1:9490']}]\n",
    )
    .expect("config");
    let prom_addr = SocketAddr::from(([127, 0, 0, 1], 9491));
    let log = std::fs::File::create(work.join("prometheus.log")).expect("log");
    let _prometheus = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &shop.node_ns(), "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package)"),
    );
    let ns_path = shop.topo.node("node-1").ns.path();
    let query = |q: &str| -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (code, body) =
            probe::http_get(&ns_path, prom_addr, &path, Duration::from_secs(5)).ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let prom_log = || std::fs::read_to_string(work.join("prometheus.log")).unwrap_or_default();
    let up = wait_for(
        "Prometheus to scrape the agent",
        Duration::from_secs(60),
        || query("up{job=\"rampart\"}").filter(|v| *v == 1.0),
    );
    assert_eq!(up, 1.0, "{}", prom_log());
    let drops = "sum(rampart_drops_total{reason=\"policy_deny_rule\"})";
    let before = wait_for("a first drop sample", Duration::from_secs(30), || {
        query(drops)
    });
    for _ in 0..3 {
        assert!(!shop.tcp("shop/frontend", 12, 5432), "guardrail deny");
    }
    let after = wait_for(
        "the drop counter to rise in Prometheus",
        Duration::from_secs(30),
        || query(drops).filter(|v| *v > before),
    );
    assert!(after > before);

    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&work);
}
