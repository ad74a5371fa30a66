//! The soak (`cargo xtask soak [--minutes N]`): two nodes under mixed traffic through every
//! layer for a while, with policy churn, certificate rotation and agent restarts, checked the
//! whole time.
//!
//! - Traffic from pod a (node 1) to pod b (node 2): long-lived and new L4 connections, plain
//!   and through the mTLS tunnel; HTTP with a JWT (200), without one (401), with an injection
//!   the WAF blocks (403); a response carrying a card number that DLP must mask; and what
//!   policy denies: pod c to b, and a to a port no rule opens (never answered).
//! - Churn: every few seconds the policy directory gains or loses a file of pods and a
//!   NetworkPolicy selecting them (the agents recompute identities, ipcache and policy).
//! - Certificates live 10 s (`--cert-ttl`): every workload and node certificate is renewed
//!   every 5 s, under the tunnels.
//! - Restarts: the agents are hot-restarted in turn.
//! - Checked: no flow or request that policy denies gets through, none it allows is lost (a
//!   failure of either kind fails the soak); each agent's resident memory and open files stay
//!   flat after the warm-up; conntrack holds no more than the live flows need; every other
//!   kernel map ends with the entries it started with.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::http_server::HttpServer;
use crate::mesh::shop::{self, ip};
use crate::mesh::{MeshAgents, pod_object};
use crate::server::EchoServer;
use crate::traffic::{self, Tally, Traffic};
use crate::{Agent, Topology};

const SECRET: [u8; 32] = [0x5e; 32];
const ISSUER: &str = "https://idp.rampart.test";
const ATTACK: &str = "/orders?id=1%27%20OR%20%271%27=%271";
const CARD: &str = "4111 1111 1111 1111";
/// How often the churn file changes, resources are sampled.
const CHURN_EVERY: Duration = Duration::from_secs(4);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// The agent's binary.
    pub bin: PathBuf,
    /// The Core Rule Set the WAF loads.
    pub crs: PathBuf,
}

fn policies() -> String {
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}}]}}"#,
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, SECRET)
    );
    let c = pod_object("shop", "c", 1, ip_c());
    shop::world(&format!(
        r#"{c}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-ingress, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]
    ports: [{{port: 7000}}, {{port: 7100}}, {{port: 8080}}, {{port: 8082}}]
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
        jwt: {{issuer: '{ISSUER}', algorithms: [HS256], jwks: {{inline: '{jwks}'}}}}
    waf: {{}}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: b-records}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8082}}]
  http:
    dlp:
      detectors: [{{type: cardNumber, action: Mask, keepLast: 4}}]
"#
    ))
}

fn ip_c() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 244, 1, 11)
}

/// The churn file's content in phase `on`: pods that come and go, and a policy selecting them.
fn churn(on: bool, round: u64) -> String {
    if !on {
        return String::new();
    }
    let mut out = String::new();
    for i in 0..8u8 {
        let name = format!("churn-{i}");
        let pod = pod_object(
            "shop",
            &name,
            2,
            std::net::Ipv4Addr::new(10, 244, 2, 100 + i),
        );
        out.push_str(&pod.replace("app: churn-", "app: churn, n: c"));
    }
    out.push_str(&format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: churn-{}, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: churn}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n    ports: [{{port: {}}}]\n",
        round % 3,
        9000 + round % 50
    ));
    out
}

fn token() -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Valid for the whole soak.
    let claims = serde_json::json!({"iss": ISSUER, "sub": "soak", "exp": now + 86_400, "iat": now});
    crate::idp::hs256_token("k1", &claims, &SECRET)
}

fn b(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(2)), port)
}

/// One sample of an agent.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Duration,
    rss: u64,
    fds: usize,
    conntrack: f64,
}

fn sample(agent: &Agent, at: Duration) -> Option<Sample> {
    let (rss, fds) = agent.resources()?;
    let conntrack = agent.sample("rampart_conntrack_entries", "");
    Some(Sample {
        at,
        rss,
        fds,
        conntrack,
    })
}

/// Entries of each kernel map (`rampart_map_entries{map}`), but the ones the kernel fills
/// with flows.
fn map_entries(agent: &Agent) -> Vec<(String, f64)> {
    let text = agent.metrics().unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("rampart_map_entries{map=\""))
        .filter_map(|rest| {
            let (map, value) = rest.split_once("\"} ")?;
            Some((map.to_owned(), value.trim().parse().ok()?))
        })
        .filter(|(map, _)| !matches!(map.as_str(), "conntrack" | "fragments" | "rule_stats"))
        .collect()
}

/// Starts every kind of traffic.
fn start_traffic(topo: &Topology, duration: Duration, token: &str) -> Traffic {
    let a = topo.pod("shop/a").ns.path();
    let c = topo.pod("shop/c").ns.path();
    let mut t = Traffic::new(duration + Duration::from_secs(120));
    let lifetime = Duration::from_secs(3);
    t.long_flows("plain long flows", &a, b(7000), 2, lifetime);
    t.long_flows("mtls long flows", &a, b(7100), 2, lifetime);
    t.new_connections("plain new connections", &a, b(7000));
    t.new_connections("mtls new connections", &a, b(7100));
    let bearer = format!("Bearer {token}");
    t.http(
        "http with token (200)",
        &a,
        b(8080),
        "/orders",
        &[("authorization", &bearer)],
        200,
        20,
    );
    t.http(
        "http without token (401)",
        &a,
        b(8080),
        "/orders",
        &[],
        401,
        20,
    );
    t.http(
        "http injection (403)",
        &a,
        b(8080),
        ATTACK,
        &[("authorization", &bearer), ("user-agent", "Mozilla/5.0")],
        403,
        20,
    );
    t.repeat(
        "dlp masks the card (200)",
        &a,
        Duration::from_millis(50),
        || {
            let reply = crate::probe::http_request_here(b(8082), "GET", "/records", &[])
                .map_err(|e| format!("{e:#}"))?;
            if reply.status != 200 {
                return Err(format!("status {}", reply.status));
            }
            let digits: String = reply.body.chars().filter(char::is_ascii_digit).collect();
            if digits.contains(&CARD.replace(' ', "")) {
                return Err("the card number reached the client".into());
            }
            if !reply.body.contains("1111") {
                return Err(format!("the masked record is missing: {:?}", reply.body));
            }
            Ok(())
        },
    );
    t.denied_connections("c to b (denied)", &c, b(7000));
    t.denied_connections("a to a closed port (denied)", &a, b(9999));
    t
}

/// Runs the soak; prints its tables; fails on any violation.
pub fn run(opts: &SoakOptions) -> anyhow::Result<()> {
    crate::require_root();
    let topo = Topology::builder(crate::netns::TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", ip(1))
        .pod("node-1", "shop/c", ip_c())
        .pod("node-2", "shop/b", ip(2))
        .build()?;
    let b_ns = &topo.pod("shop/b").ns;
    let _echo = EchoServer::start(b_ns, &[7000, 7100], &[])?;
    let _api = HttpServer::start(b_ns, 8080)?;
    let _records = HttpServer::start_with_body(b_ns, 8082, "record: card 4111 1111 1111 1111\n")?;
    let crs = opts.crs.display().to_string();
    let mut mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &policies(),
        Some(&opts.bin),
        &[
            "--cert-ttl",
            "10",
            "--crs-dir",
            &crs,
            "--drain-seconds",
            "10",
        ],
    )?;
    let policy_dir = mesh.work_dir().join("policy");
    let token = token()?;
    wait_until_served(&topo, &token)?;
    let baseline_maps: Vec<Vec<(String, f64)>> = mesh.agents().map(map_entries).collect();

    let started = Instant::now();
    let traffic = start_traffic(&topo, opts.duration, &token);
    let warm_up = (opts.duration / 5).max(Duration::from_secs(30));
    let restart_every = (opts.duration / 4).max(Duration::from_secs(60));
    let (mut next_churn, mut next_sample, mut next_restart) = (
        started + CHURN_EVERY,
        started,
        started + restart_every.min(opts.duration / 2),
    );
    let (mut round, mut restarts) = (0u64, Vec::new());
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 2];
    let nodes = ["node-1", "node-2"];
    while started.elapsed() < opts.duration {
        let now = Instant::now();
        if now >= next_churn {
            round += 1;
            std::fs::write(policy_dir.join("churn.yaml"), churn(round % 2 == 1, round))
                .context("writing the churn file")?;
            next_churn = now + CHURN_EVERY;
        }
        if now >= next_sample {
            for (i, node) in nodes.iter().enumerate() {
                if let Some(s) = sample(mesh.node(node), started.elapsed()) {
                    samples[i].push(s);
                }
            }
            next_sample = now + SAMPLE_EVERY;
        }
        if now >= next_restart {
            let node = nodes[(restarts.len() + 1) % 2];
            let at = started.elapsed();
            let handed = mesh
                .hand_over(&topo, node, Some(&opts.bin))
                .with_context(|| format!("hot restart of {node} at {at:?}"))?;
            restarts.push((node, at, handed.takeover));
            next_restart = Instant::now() + restart_every;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Churn off, as at the start; then the maps must hold what they held then.
    std::fs::write(policy_dir.join("churn.yaml"), "").context("writing the churn file")?;
    std::thread::sleep(Duration::from_secs(5));
    let tallies = traffic.stop();
    let final_maps: Vec<Vec<(String, f64)>> = mesh.agents().map(map_entries).collect();

    println!(
        "soak: {:?} on two nodes, {round} churn rounds",
        started.elapsed()
    );
    println!("{}", traffic::report(&tallies));
    let mut violations = Vec::new();
    for (name, tally) in &tallies {
        check_tally(name, tally, &mut violations);
    }
    println!("restarts (node, at, takeover): {restarts:?}");
    println!(
        "agent     RSS warm-up max -> after   open files warm-up max -> after   conntrack warm-up max -> after"
    );
    for (i, node) in nodes.iter().enumerate() {
        check_resources(node, &samples[i], warm_up, &mut violations);
    }
    for (i, node) in nodes.iter().enumerate() {
        let (start, end) = (&baseline_maps[i], &final_maps[i]);
        if start != end {
            violations.push(format!(
                "{node}: kernel maps {start:?} at the start, {end:?} at the end"
            ));
        }
    }
    println!("kernel maps at the start and the end: {baseline_maps:?} / {final_maps:?}");
    if !violations.is_empty() {
        bail!(
            "the soak found {} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    println!("soak: no violation");
    Ok(())
}

fn check_tally(name: &str, tally: &Tally, violations: &mut Vec<String>) {
    if tally.failed > 0 {
        violations.push(format!(
            "{name}: {} failed: {:?}",
            tally.failed, tally.examples
        ));
    }
    if tally.ok == 0 {
        violations.push(format!("{name}: never succeeded"));
    }
}

/// RSS and open files after the warm-up within a bound of their warm-up peak; conntrack no
/// more than the live flows need.
fn check_resources(
    node: &str,
    samples: &[Sample],
    warm_up: Duration,
    violations: &mut Vec<String>,
) {
    let (warm, after): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.at < warm_up);
    let peak = |set: &[&Sample]| {
        set.iter().fold(Sample::default(), |m, s| Sample {
            at: m.at.max(s.at),
            rss: m.rss.max(s.rss),
            fds: m.fds.max(s.fds),
            conntrack: m.conntrack.max(s.conntrack),
        })
    };
    let (w, a) = (peak(&warm), peak(&after));
    println!(
        "{node:<9} {:>7} MiB -> {:>4} MiB   {:>14} -> {:<5}   {:>21} -> {}",
        w.rss >> 20,
        a.rss >> 20,
        w.fds,
        a.fds,
        w.conntrack,
        a.conntrack
    );
    if after.is_empty() {
        return;
    }
    if a.rss > w.rss + w.rss / 4 + (16 << 20) {
        violations.push(format!(
            "{node}: RSS grew from a warm-up peak of {} MiB to {} MiB",
            w.rss >> 20,
            a.rss >> 20
        ));
    }
    if a.fds > w.fds + 64 {
        violations.push(format!(
            "{node}: open files grew from a warm-up peak of {} to {}",
            w.fds, a.fds
        ));
    }
    if a.conntrack > w.conntrack * 2.0 + 500.0 {
        violations.push(format!(
            "{node}: conntrack grew from a warm-up peak of {} to {}",
            w.conntrack, a.conntrack
        ));
    }
}

/// Waits until the whole path serves: a's token request to b passes the chain.
fn wait_until_served(topo: &Topology, token: &str) -> anyhow::Result<()> {
    let a = topo.pod("shop/a").ns.path();
    let bearer = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = crate::probe::http_request(
            &a,
            b(8080),
            "GET",
            "/orders",
            &[("authorization", &bearer)],
            Duration::from_secs(3),
        );
        if reply.as_ref().is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("a never reached b:8080 through the chain: {reply:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The CRS the soak's WAF loads by default: the shared CRS 4 beside the project, else Debian's.
pub fn default_crs(root: &Path) -> PathBuf {
    crate::waf_cases::shared_dir(root)
        .map(|shared| shared.join(crate::waf_cases::DEFAULT_CRS))
        .unwrap_or_else(|_| PathBuf::from("/usr/share/modsecurity-crs"))
}
