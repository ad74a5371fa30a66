//! Suite `proxy`: what Rampart's mTLS hop costs a pod-to-pod TCP flow between two nodes, against
//! the same flow without Rampart, in one run and one topology (two node namespaces on an
//! underlay bridge, pod a on node 1, pod b on node 2 running an echo server).
//!
//! Systems: `none` (no agent: the baseline), then `rampart-l4` (agents running, the port
//! governed by kernel policy only) and `rampart-mtls` (a MeshPolicy on the port: redirect, TLS
//! 1.3 tunnel between the agents, transparent delivery). Metrics: request/response latency of
//! 64-byte messages on one connection (p50, p99), connection setup (connect + first
//! request/response, p50), and echo throughput of a bulk transfer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rampart_tests::{Agent, AgentOptions, EchoServer, Topology};

use crate::record::Record;
use crate::traffic::{Load, Sample, measure, records};

const BENCH_PREFIX: &str = "rpx";
const MESH_PORT: u16 = 5432;
const L4_PORT: u16 = 8080;

fn ip(node: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, d)
}

fn policy() -> String {
    let pod = |name: &str, node: u8| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}, nodeName: node-{node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {}, hostIP: 192.168.200.{node}}}\n",
            ip(node, 10)
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-mtls}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {MESH_PORT}}}]\n  allowedPrincipals: {{serviceAccounts: [bench/a]}}\n",
        pod("a", 1),
        pod("b", 2)
    )
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let (runs, load) = (Load::runs(quick), Load::new(quick));
    rampart_tests::sweep_stale(BENCH_PREFIX)?;
    let topo = Topology::builder(BENCH_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "bench/a", ip(1, 10))
        .pod("node-2", "bench/b", ip(2, 10))
        .build()?;
    let _echo = EchoServer::start(&topo.pod("bench/b").ns, &[MESH_PORT, L4_PORT], &[])?;
    let a = &topo.pod("bench/a").ns;
    let dst = |port| SocketAddr::new(IpAddr::V4(ip(2, 10)), port);

    let mut samples: Vec<(String, Vec<Sample>)> = Vec::new();
    let mut none = Vec::new();
    for _ in 0..runs {
        none.push(measure(a, dst(MESH_PORT), &load)?);
    }
    samples.push(("none".into(), none));

    let work = std::env::temp_dir().join(format!("rampart-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (ca_dir, policy_dir) = (work.join("ca"), work.join("policy"));
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::write(policy_dir.join("bench.yaml"), policy())?;
    rampart_tests::agent::ca_init(&ca_dir)?;
    let start = |node: &str| {
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(policy_dir.clone());
        opts.extra_args = vec![
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--node-name".into(),
            node.into(),
        ];
        Agent::start(&topo.node(node).ns, &opts)
    };
    let agents = [start("node-1")?, start("node-2")?];
    let (mut l4, mut mtls) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Side by side: the two Rampart variants alternate within each run.
        l4.push(measure(a, dst(L4_PORT), &load)?);
        mtls.push(measure(a, dst(MESH_PORT), &load)?);
    }
    samples.push(("rampart-l4".into(), l4));
    samples.push(("rampart-mtls".into(), mtls));
    drop(agents);
    let _ = std::fs::remove_dir_all(&work);

    Ok(records("proxy", &samples, 0))
}
