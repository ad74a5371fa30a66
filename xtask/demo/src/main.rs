//! `cargo xtask demo`: the whole product on two nodes, driven the way an operator would, with
//! the example policy set of `policies/` and the shop of `policies/workloads.yaml` (frontend, db
//! and DNS on node-1; backend on node-2), one agent per node watching the same directory:
//!
//! 1. The zero-trust baseline: every pod isolated both ways, only DNS allowed.
//! 2. Live update: the shop's allows and an audit-mode policy, in force within a second.
//! 3. An explicit deny wins over an over-broad allow pushed to the agents; `policy explain` and
//!    the flow log name the rule.
//! 4. A file with an error changes nothing.
//! 5. mTLS: backend -> db crosses the tunnel between the nodes; plaintext forging the backend's
//!    address and plaintext to the tunnel port are dropped; the CA service (the only holder of
//!    the trust domain's key) refuses node 1's token the backend's identity.
//! 6. The backend's API through the L7 chain: a JWT refused and accepted, a card number masked
//!    in a response and refused in a request, a SQL injection blocked by the WAF with its rule
//!    ids, a rate limit; `policy explain` names the chain and the flow log every request.
//! 7. What the kernel counted, and `rampart status`.
//!
//! Every step checks what it shows, so the demo fails (exit 1) when the product does not do what
//! it says. Everything it creates is removed at the end, also when it fails.

mod idp;
mod show;
mod world;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rampart_tests::probe::{self, HttpReply};
use rampart_tests::sweep_stale;

use show::{Flow, flow};
use world::{DB_PORT, HTTP_PORT, World, pod_addr, pod_ip};

/// The L3/L4 flows shown after each policy change.
const FLOWS: &[Flow] = &[
    flow("shop/frontend", "shop/backend", "http", HTTP_PORT),
    flow("shop/backend", "shop/db", "tcp", DB_PORT),
    flow("shop/frontend", "shop/db", "tcp", DB_PORT),
    flow("shop/db", "shop/frontend", "tcp", HTTP_PORT),
    flow("shop/frontend", "kube-system/coredns", "udp", 53),
    flow("shop/backend", "shop/frontend", "icmp", 0),
];

/// Pushed in step 3: a too-wide allow someone might write in a hurry (every shop pod may reach
/// the database).
const OVERBROAD: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-shop, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: shop-to-db, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
";

/// Written in step 4: a typo'd port.
const BROKEN: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open-backend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports:
    - {port: 80800}
";

/// The name the frontend calls the backend by (its Service's DNS name).
const BACKEND_HOST: &str = "backend.shop.svc.cluster.local";

/// The tunnel port every agent listens on (`--tunnel-port`'s default).
const TUNNEL_PORT: u16 = 15008;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    rampart_tests::require_root();
    let started = Instant::now();
    let mut args = std::env::args().skip(1);
    let usage = "usage: rampart-demo PATH-TO-RAMPART PATH-TO-POLICIES";
    let bin = PathBuf::from(args.next().context(usage)?);
    let policies = PathBuf::from(args.next().context(usage)?);
    sweep_stale(rampart_tests::netns::DEMO_PREFIX)?;

    println!("\n== Rampart demo ==\n");
    let mut world = World::create(&policies)?;
    println!(
        "Two nodes (network namespaces joined by an underlay: node-1 192.168.200.1, node-2 192.168.200.2)"
    );
    println!("with the pods of policies/workloads.yaml, each its own namespace on a veth pair:");
    for pod in world.topo.pods() {
        println!("  {:<20} {:<12} on {}", pod.name, pod.ip, pod.node);
    }
    println!(
        "The backend serves an HTTP API on 8080 (its answers carry an order with a card number); the"
    );
    println!("other ports are echo servers (tcp/8080, tcp/5432, udp/53).");

    baseline(&mut world, &bin)?;
    live_update(&world)?;
    deny_wins(&world)?;
    bad_input(&world, &bin)?;
    mtls(&world)?;
    http_chain(&world)?;
    counted(&world)?;

    world.stop_agents();
    println!(
        "\nAgents stopped on SIGTERM; their programs stay pinned and enforcing until `rampart cleanup`,"
    );
    println!("which the demo ran.");
    drop(world);
    println!(
        "Cleaned up: every namespace, link, program and file the demo created is gone ({:.1} s).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn heading(text: &str) {
    println!("\n-- {text} --\n");
}

fn baseline(world: &mut World, bin: &std::path::Path) -> anyhow::Result<()> {
    heading("1. The zero-trust baseline: default deny both ways, DNS allowed");
    world.install("workloads.yaml")?;
    world.install("00-baseline.yaml")?;
    println!(
        "\nThe trust domain's CA runs as a service of its own on the underlay, the only holder of its key:"
    );
    println!(
        "  rampart ca init; rampart ca node-token --node node-N (one per node); rampart ca serve --pods-dir ..."
    );
    println!("then on each node (ca.crt alone, and the node's token):");
    println!(
        "  rampart run --policy-dir {} --ca-dir ... --ca-url https://192.168.200.250:15012 --node-token-file ...",
        world.policy_dir().display()
    );
    world.start_agents(bin)?;
    println!(
        "(both ready: policy generation {}; each found its pods' veths from the node's routes)\n",
        show::generation(world.agent("node-1"))
    );
    show::flows(world, FLOWS, &[false, false, false, false, true, false])
}

fn live_update(world: &World) -> anyhow::Result<()> {
    heading("2. Live update: the shop's allows, and an audit-mode policy");
    let before = show::generations(world);
    world.install("20-shop-allows.yaml")?;
    world.install("30-audit-plaintext.yaml")?;
    let took = show::wait_generations(world, &before)?;
    println!("in force on both nodes after {took:.0?}:\n");
    show::flows(world, FLOWS, &[true, true, false, false, true, false])?;
    let audited = show::audited(world.agent("node-2"));
    println!(
        "\nfrontend -> backend tcp/8080 passes, and node-2 counted it under the audit policy: rampart_audited_total = {audited}"
    );
    ensure!(audited >= 1.0, "the audited flow was not counted");
    Ok(())
}

fn deny_wins(world: &World) -> anyhow::Result<()> {
    heading("3. Explicit deny wins over any allow");
    let pushed = world.scratch("overbroad.yaml");
    std::fs::write(&pushed, OVERBROAD)?;
    let path = pushed.to_str().context("temp path is not UTF-8")?;
    println!(
        "rampart policy push, on each node (an over-broad allow: every shop pod may reach the database):"
    );
    for agent in world.agents() {
        let before = show::generation(agent);
        println!("  {}", agent.cli(&["policy", "push", path])?.trim());
        ensure!(
            show::generation(agent) > before,
            "the push was not installed"
        );
    }
    println!();
    show::flows(world, FLOWS, &[true, true, true, false, true, false])?;
    println!("\nNow the guardrails (web tier never reaches the data tier; no metadata service):");
    let before = show::generations(world);
    world.install("10-deny-rules.yaml")?;
    show::wait_generations(world, &before)?;
    println!();
    show::flows(world, FLOWS, &[true, true, false, false, true, false])?;
    let node1 = world.agent("node-1");
    println!("\nWhy is frontend -> db dropped? `rampart policy explain` asks node-1's agent:\n");
    let explained = node1.cli(&[
        "policy",
        "explain",
        "--from",
        "shop/frontend",
        "--to",
        "shop/db",
        "--port",
        "5432",
    ])?;
    show::indented(&explained);
    ensure!(
        explained.contains("guardrails"),
        "explain does not name the deny rule"
    );
    println!(
        "\nThe flow log names the same rule (`rampart flows --verdict deny` on node-1, last 3):\n"
    );
    let denies = node1.cli(&["flows", "--verdict", "deny"])?;
    show::last_lines(&denies, 3, |_| true);
    Ok(())
}

fn bad_input(world: &World, bin: &std::path::Path) -> anyhow::Result<()> {
    heading("4. Bad input changes nothing");
    let before = show::generations(world);
    std::fs::write(world.policy_dir().join("zz-typo.yaml"), BROKEN)?;
    println!(
        "  + zz-typo.yaml (port 80800)\n\nrampart policy check {}:",
        world.policy_dir().display()
    );
    let check = std::process::Command::new(bin)
        .args(["policy", "check"])
        .arg(world.policy_dir())
        .output()
        .context("running rampart policy check")?;
    show::indented(&String::from_utf8_lossy(&check.stdout));
    println!("  (exit status {})", check.status.code().unwrap_or(-1));
    ensure!(!check.status.success(), "policy check accepted a bad file");
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.agents().any(|a| show::errors(a) < 1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = show::generations(world);
    println!(
        "\nBoth agents rejected the set: rampart_policy_errors_total = {}, generations still {after:?} (were {before:?}).",
        show::errors(world.agent("node-1"))
    );
    ensure!(after == before, "a bad file changed the policy in force");
    std::fs::remove_file(world.policy_dir().join("zz-typo.yaml"))?;
    println!();
    show::flows(world, FLOWS, &[true, true, false, false, true, false])
}

fn mtls(world: &World) -> anyhow::Result<()> {
    heading("5. mTLS: the database takes only the backend, through the tunnel");
    let before = show::generations(world);
    world.install("mesh/db-requires-mtls.yaml")?;
    show::wait_generations(world, &before)?;
    let db = pod_addr("shop/db", DB_PORT);
    let reached = probe::tcp(&world.topo.pod("shop/backend").ns, db, show::TIMEOUT);
    println!(
        "\n  shop/backend (node-2) -> shop/db (node-1) tcp/5432   {}",
        show::verdict_word(&reached)
    );
    ensure!(reached.reached(), "backend -> db failed through the tunnel");
    let (node1, node2) = (world.agent("node-1"), world.agent("node-2"));
    let outbound = node2.sample("rampart_proxy_flows_total", "direction=\"outbound\"");
    let inbound = node1.sample("rampart_proxy_flows_total", "direction=\"inbound\"");
    println!(
        "\nnode-2's kernel redirected it to node-2's proxy, which tunnelled it to node-1 over mutual TLS 1.3"
    );
    println!(
        "with the backend's SPIFFE certificate (proxy flows: node-2 outbound {outbound}, node-1 inbound {inbound});"
    );
    println!("node-2's flow log:\n");
    show::wait_for("the redirect in node-2's flow log", || {
        node2
            .cli(&["flows", "--verdict", "redirect"])
            .is_ok_and(|f| f.contains(":5432"))
    })?;
    let redirects = node2.cli(&["flows", "--verdict", "redirect"])?;
    show::last_lines(&redirects, 1, |l| l.contains(":5432"));
    ensure!(
        outbound >= 1.0 && inbound >= 1.0,
        "the flow did not cross the tunnel"
    );

    println!(
        "\nBypass attempts from node-2's host (a compromised host-network process), both refused:"
    );
    let node2_ns = &world.topo.node("node-2").ns;
    let spoofed = probe::tcp_spoofed(
        node2_ns,
        IpAddr::V4(pod_ip("shop/backend")),
        db,
        show::TIMEOUT,
    );
    println!(
        "  plaintext to db:5432 forging the backend's address   {}",
        show::verdict_word(&spoofed)
    );
    ensure!(!spoofed.reached(), "plaintext bypassed the tunnel");
    let tunnel = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1)), TUNNEL_PORT);
    let status = probe::http_request(&node2_ns.path(), tunnel, "GET", "/", &[], show::TIMEOUT)
        .map_or_else(
            |_| "REFUSED (no TLS, no answer)".to_owned(),
            |r| format!("answered {}", r.status),
        );
    println!("  plaintext to node-1's tunnel port {TUNNEL_PORT}               {status}");
    show::wait_for("node-1 to count both", || {
        node1.sample(
            "rampart_drops_total",
            "reason=\"mtls_required\",direction=\"ingress\"",
        ) >= 1.0
            && node1.sample(
                "rampart_proxy_denied_total",
                "filter=\"mtls\",reason=\"plaintext\"",
            ) >= 1.0
    })?;
    println!("\nnode-1 counted them: rampart_drops_total{{reason=\"mtls_required\"}} and");
    println!("rampart_proxy_denied_total{{filter=\"mtls\",reason=\"plaintext\"}}; its flow log:\n");
    let denies = node1.cli(&["flows", "--verdict", "deny"])?;
    show::last_lines(&denies, 1, |l| l.contains("mtls_required"));

    println!(
        "\nNo node can mint another node's identities: node-1's token asks the CA for the backend's (on node-2):\n"
    );
    let mesh = world.mesh().context("no agents")?;
    let refused = show::ca_request(
        world,
        mesh,
        "node-1",
        "spiffe://cluster.local/ns/shop/sa/backend",
    );
    match &refused {
        Ok(out) => anyhow::bail!("the CA issued the backend's identity to node 1: {out}"),
        Err(e) => {
            let said = e
                .rsplit_once("rampart: error: ")
                .map_or(e.as_str(), |(_, s)| s);
            println!("  rampart ca request: {}", said.trim());
            anyhow::ensure!(said.contains("403"), "the CA did not refuse: {e}");
        }
    }
    Ok(())
}

fn http_chain(world: &World) -> anyhow::Result<()> {
    heading("6. The backend's API through the L7 chain (policies/mesh/backend-api-l7.yaml)");
    let before = show::generations(world);
    world.install("mesh/backend-api-l7.yaml")?;
    show::wait_generations(world, &before)?;
    let node2 = world.agent("node-2");
    println!("\n`rampart policy explain --from shop/frontend --to shop/backend --port 8080`:\n");
    let explained = node2.cli(&[
        "policy",
        "explain",
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ])?;
    show::indented(&explained);
    ensure!(
        explained.contains("backend-api-l7's chain"),
        "explain does not name the HTTP chain"
    );

    println!("\nThe frontend calls the backend (node-2's proxy runs the chain on each request):\n");
    let alice = idp::token("alice", &["order-readers", "order-admins"])?;
    let bearer = format!("Bearer {alice}");
    let forged = format!("Bearer {}", idp::tampered(&alice, "admin")?);
    let frontend = world.pod_ns("shop/frontend");
    let backend = pod_addr("shop/backend", HTTP_PORT);
    let get = |path: &str, auth: Option<&str>| -> anyhow::Result<HttpReply> {
        let mut headers = vec![("host", BACKEND_HOST)];
        headers.extend(auth.map(|a| ("authorization", a)));
        probe::http_request(&frontend, backend, "GET", path, &headers, show::TIMEOUT)
            .with_context(|| format!("GET {path}"))
    };

    let reply = get("/api/v1/orders/1", None)?;
    show::request(
        "GET /api/v1/orders/1, no token",
        &reply,
        &["www-authenticate"],
    );
    ensure!(reply.status == 401, "no token: {}", reply.status);
    let reply = get("/api/v1/orders/1", Some(&forged))?;
    show::request(
        "GET /api/v1/orders/1, token edited to sub=admin",
        &reply,
        &["www-authenticate"],
    );
    ensure!(reply.status == 401, "a tampered token: {}", reply.status);

    let reply = get("/api/v1/orders/1", Some(&bearer))?;
    show::request(
        "GET /api/v1/orders/1, alice's token (RS256, the IdP's key)",
        &reply,
        &[],
    );
    ensure!(reply.status == 200, "a valid token: {}", reply.status);
    println!("      the pod saw:");
    for line in reply.body.lines() {
        if line.starts_with("x-user") || line.starts_with("peer") || line.starts_with("order") {
            println!("        {line}");
        }
    }
    ensure!(
        reply.body.contains("x-user: alice") && !reply.body.contains(&alice),
        "the pod must get the subject, never the token"
    );
    ensure!(
        reply.body.contains("**** **** **** 1111") && !reply.body.contains("4111 1111 1111 1111"),
        "the card number left unmasked: {}",
        reply.body
    );
    println!(
        "      (x-user from the token, which the pod never sees; the card number masked by DLP on the way out)"
    );

    let order = br#"{"item": "tent", "card": "4111 1111 1111 1111"}"#;
    let reply = probe::http_post(
        &frontend,
        backend,
        "/api/v1/orders",
        &[
            ("host", BACKEND_HOST),
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        order,
        show::TIMEOUT,
    )?;
    show::request(
        "POST /api/v1/orders with a card number in the body",
        &reply,
        &[],
    );
    ensure!(reply.status == 403, "a card in a request: {}", reply.status);

    let reply = get(
        "/api/v1/orders?id=1%27%20OR%20%271%27%3D%271",
        Some(&bearer),
    )?;
    show::request(
        "GET /api/v1/orders?id=1' OR '1'='1 (SQL injection)",
        &reply,
        &[],
    );
    ensure!(reply.status == 403, "SQL injection: {}", reply.status);

    let (mut passed, mut limited) = (0, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..60 {
        let reply = get("/api/v1/orders/1", Some(&bearer))?;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
        passed += 1;
        if Instant::now() > deadline {
            break;
        }
    }
    let limited = limited.context("no request was rate limited")?;
    show::request(
        &format!("a burst from alice: {passed} more pass, then"),
        &limited,
        &["retry-after", "x-ratelimit-limit"],
    );

    println!(
        "\nnode-2's flow log names each refusal (`rampart flows --verdict deny`, proxy records):\n"
    );
    show::wait_for("the WAF refusal in the flow log", || {
        node2
            .cli(&["flows", "--verdict", "deny"])
            .is_ok_and(|f| f.contains("waf_rules="))
    })?;
    let denies = node2.cli(&["flows", "--verdict", "deny"])?;
    show::last_lines(&denies, 5, |l| l.contains("[proxy]"));
    Ok(())
}

fn counted(world: &World) -> anyhow::Result<()> {
    heading("7. What the agents counted");
    for agent_node in world::NODES {
        let metrics = world.agent(agent_node).metrics()?;
        println!("{agent_node}: drops by reason and direction, and the proxy's refusals:");
        for line in metrics.lines().filter(|l| {
            (l.starts_with("rampart_drops_total{") || l.starts_with("rampart_proxy_denied_total{"))
                && !l.ends_with(" 0")
        }) {
            println!("  {line}");
        }
        println!();
    }
    println!("`rampart status` on node-2:\n");
    show::indented(&world.agent("node-2").cli(&["status"])?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flows table names pods the workloads file has.
    #[test]
    fn every_flow_names_known_pods() {
        for f in FLOWS {
            assert_ne!(pod_ip(f.from), Ipv4Addr::new(10, 244, 1, 0), "{}", f.from);
            assert_ne!(pod_ip(f.to), Ipv4Addr::new(10, 244, 1, 0), "{}", f.to);
        }
    }
}
