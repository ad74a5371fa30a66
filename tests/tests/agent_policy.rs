//! The agent driven by policy files and pushes, on a real kernel: `rampart run --policy-dir`
//! finds the pods' interfaces from the node's routes and enforces the example set in
//! `policies/`; a file with errors changes nothing (traffic, generation) and is counted;
//! `rampart policy check` prints `file:line:col` errors; `rampart policy push` is all or nothing
//! and returns once the objects are in force.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, probe, require_root};

const TIMEOUT: Duration = Duration::from_millis(700);

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn generation(agent: &Agent) -> f64 {
    let m = agent.metrics().expect("metrics");
    sample(&m, "rampart_policy_generation", "").unwrap_or(-1.0)
}

fn errors(agent: &Agent) -> f64 {
    let m = agent.metrics().expect("metrics");
    sample(&m, "rampart_policy_errors_total", "").unwrap_or(-1.0)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    rampart_tests::eventually(what, Duration::from_secs(10), || f().then_some(()));
}

#[test]
fn policy_files_enforce_reject_bad_input_and_push() {
    require_root();
    let ip = |d: u8| Ipv4Addr::new(10, 244, 1, d);
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .pod("node-1", "shop/frontend", ip(10))
        .pod("node-1", "shop/backend", ip(11))
        .pod("node-1", "shop/db", ip(12))
        .pod("node-1", "kube-system/coredns", ip(53))
        .build()
        .expect("topology");
    let mut servers = Vec::new();
    for pod in topo.pods() {
        servers.push(EchoServer::start(&pod.ns, &[8080, 5432], &[53]).expect("echo"));
    }
    let dir = std::env::temp_dir().join(format!("rampart-agent-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    for entry in std::fs::read_dir(policies_dir()).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let mut opts = AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    let agent = Agent::start(&topo.node("node-1").ns, &opts).expect("agent");
    let tcp = |from: &str, to: u8, port: u16| {
        probe::tcp(
            &topo.pod(from).ns,
            SocketAddr::new(IpAddr::V4(ip(to)), port),
            TIMEOUT,
        )
        .reached()
    };

    // The example set is in force on the pods the agent found from the routes.
    assert_eq!(generation(&agent), 1.0);
    assert!(
        tcp("shop/frontend", 11, 8080),
        "frontend -> backend:8080 is allowed"
    );
    assert!(
        tcp("shop/backend", 12, 5432),
        "backend -> db:5432 is allowed"
    );
    assert!(
        !tcp("shop/frontend", 12, 5432),
        "frontend -> db is denied by the guardrail"
    );
    assert!(
        !tcp("shop/db", 10, 8080),
        "db -> frontend is denied by default"
    );
    let m = agent.metrics().expect("metrics");
    assert_eq!(sample(&m, "rampart_endpoints", ""), Some(4.0), "{m}");
    // Pods' veths take TC only: XDP on a veth would turn off TSO on the pod's end (a regression
    // once cut pod-to-pod TCP throughput about 5x).
    let node_ns = topo.node("node-1").ns.name().to_owned();
    for iface in topo.pod_interfaces("node-1") {
        let link = rampart_tests::cmd::ip(&["-n", &node_ns, "-d", "link", "show", &iface])
            .expect("ip link");
        assert!(!link.contains("prog/xdp"), "XDP on a pod's veth:\n{link}");
    }
    let status = agent.cli(&["status"]).expect("status");
    for iface in topo.pod_interfaces("node-1") {
        for hook in ["tc_ingress", "tc_egress"] {
            assert!(
                status
                    .lines()
                    .any(|l| l.contains(&iface) && l.contains(hook)),
                "{hook} on {iface}:\n{status}"
            );
        }
    }
    let pod_ns = topo.pod("shop/db").ns.name().to_owned();
    let features = rampart_tests::cmd::in_ns(&pod_ns, "ethtool", &["-k", "eth0"]).expect("ethtool");
    assert!(
        features.contains("tcp-segmentation-offload: on"),
        "the pod keeps TSO:\n{features}"
    );

    // A file with an error: nothing changes, the error is counted and logged with its position.
    std::fs::write(
        dir.join("zz-broken.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 70000}\n",
    )
    .expect("write");
    wait_until("the error to be counted", || errors(&agent) >= 1.0);
    assert_eq!(generation(&agent), 1.0, "a rejected set is not installed");
    assert!(
        !tcp("shop/db", 10, 8080),
        "the last good policy stays in force"
    );
    assert!(tcp("shop/frontend", 11, 8080));
    let log = agent.log();
    assert!(
        log.contains("zz-broken.yaml:8:"),
        "the log names file and line:\n{log}"
    );

    // `policy check` prints every error as file:line:col and exits 1; a good set exits 0.
    let bin = rampart_tests::agent::rampart_bin().expect("bin");
    let out = std::process::Command::new(&bin)
        .args(["policy", "check"])
        .arg(&dir)
        .output()
        .expect("policy check");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("zz-broken.yaml:8:14: port 70000: must be 1-65535"),
        "{text}"
    );
    let out = std::process::Command::new(&bin)
        .args(["policy", "check"])
        .arg(policies_dir())
        .output()
        .expect("policy check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(dir.join("zz-broken.yaml")).expect("remove");
    wait_until("the fixed set to be installed", || {
        generation(&agent) >= 2.0
    });

    // Push: a bad push is rejected whole; a good one returns once in force.
    let push_dir = dir.with_extension("push");
    std::fs::create_dir_all(&push_dir).expect("push dir");
    let bad = push_dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
    )
    .expect("write");
    let before = generation(&agent);
    let out = agent.cli(&["policy", "push", bad.to_str().expect("utf8")]);
    assert!(out.is_err(), "a bad push fails: {out:?}");
    assert_eq!(generation(&agent), before);
    let open = push_dir.join("open-db.yaml");
    std::fs::write(
        &open,
        "apiVersion: rampart.dev/v1alpha1\nkind: ClusterPolicy\nmetadata: {name: db-to-frontend}\nspec:\n  appliesTo: {podSelector: {matchLabels: {app: frontend}}}\n  ingress:\n  - action: Allow\n    from: [{podSelector: {matchLabels: {app: db}}}]\n---\napiVersion: rampart.dev/v1alpha1\nkind: ClusterPolicy\nmetadata: {name: db-egress-to-frontend}\nspec:\n  appliesTo: {podSelector: {matchLabels: {app: db}}}\n  egress:\n  - action: Allow\n    to: [{podSelector: {matchLabels: {app: frontend}}}]\n",
    )
    .expect("write");
    let out = agent
        .cli(&["policy", "push", open.to_str().expect("utf8")])
        .expect("a good push succeeds");
    assert!(out.contains("in force"), "{out}");
    assert!(generation(&agent) > before);
    assert!(
        tcp("shop/db", 10, 8080),
        "the pushed allow is in force when push returns"
    );

    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&push_dir);
}
