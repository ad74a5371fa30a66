//! Suite `datapath`: what enforcement costs real pod-to-pod TCP traffic, side by side with the
//! tools Rampart replaces. One node namespace, two pods on veth pairs: `bench/a` (client) and
//! `bench/server` (an echo server on port 8080); a policy allows a → server:8080.
//!
//! Systems, each with the filler rules of the `policy` suite's synthetic set (remote clients and
//! ports that never match the measured flow) plus the one rule that does, at 0, 1k, 10k, 100k:
//! - `none`: no filtering (the baseline every ratio is to);
//! - `rampart`: the agent on the node, policy from a directory (TC on the pods' veths);
//! - `iptables`: the node's FORWARD chain: conntrack ESTABLISHED first, then one ACCEPT per rule
//!   with the measured one last, then DROP to the server (a linear chain, as kube-proxy-era
//!   engines build);
//! - `nftables`: a forward chain with conntrack first, then one set lookup (address . port).
//!
//! Metrics (see `traffic`): round-trip rate and latency on one connection, connection setup (a
//! new flow: the policy lookup happens here, and a linear chain shows its length), and bulk echo
//! throughput. After the per-system records come `rampart-vs-iptables` and `rampart-vs-nftables`
//! rows: Rampart's median over theirs at the same size (unit `ratio`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rampart_tests::{Agent, AgentOptions, EchoServer, Netns, Topology};

use crate::policy::{allowed_pairs, synthetic_set_at};
use crate::record::{Record, summarize};
use crate::traffic::{Load, METRICS, Sample, measure, record};

const BENCH_PREFIX: &str = "rpd";
pub const PORT: u16 = 8080;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// One node with the measured client pod (`CLIENT`) and the server pod (`SERVER`, an echo
/// server on `PORT`), after sweeping what a killed run of the suite `prefix` left. Drop the echo
/// server before the topology.
pub fn measured_node(prefix: &str) -> anyhow::Result<(Topology, EchoServer)> {
    rampart_tests::sweep_stale(prefix)?;
    let topo = Topology::builder(prefix)
        .node("node-1")
        .pod("node-1", "bench/a", CLIENT)
        .pod("node-1", "bench/server", SERVER)
        .build()?;
    let echo = EchoServer::start(&topo.pod("bench/server").ns, &[PORT], &[])?;
    Ok((topo, echo))
}

/// The synthetic set at `SERVER` plus the measured client and the rule that lets it in.
pub fn policy_set(fillers: usize) -> String {
    let (mut y, _) = synthetic_set_at(fillers, SERVER);
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: bench, labels: {{app: measured}}}}\nspec: {{nodeName: node-1, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {CLIENT}}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: measured, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: measured}}}}}}]\n    ports: [{{port: {PORT}}}]\n"
    );
    y
}

fn iptables_rules(fillers: usize) -> String {
    let mut s = String::with_capacity(fillers * 80 + 512);
    s.push_str("*filter\n:FORWARD ACCEPT [0:0]\n");
    s.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for (client, port) in allowed_pairs(fillers) {
        let _ = writeln!(
            s,
            "-A FORWARD -s {client}/32 -d {SERVER}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    }
    let _ = writeln!(
        s,
        "-A FORWARD -s {CLIENT}/32 -d {SERVER}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT\n-A FORWARD -d {SERVER}/32 -j DROP\nCOMMIT"
    );
    s
}

fn nft_rules(fillers: usize) -> String {
    let mut s = String::with_capacity(fillers * 24 + 512);
    s.push_str("table inet rampart_bench {\n  set allowed {\n    type ipv4_addr . inet_service\n    elements = {\n");
    for (client, port) in allowed_pairs(fillers) {
        let _ = writeln!(s, "      {client} . {port},");
    }
    let _ = writeln!(s, "      {CLIENT} . {PORT},");
    let _ = write!(
        s,
        "    }}\n  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ct state established,related accept\n    ip daddr {SERVER} ip saddr . tcp dport @allowed accept\n    ip daddr {SERVER} drop\n  }}\n}}\n"
    );
    s
}

/// Runs `program args` with `input` on stdin inside `ns`.
fn feed(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Measures `runs` times, checking first that the measured flow gets through.
fn sample(node_a: &Netns, load: &Load, runs: usize) -> anyhow::Result<Vec<Sample>> {
    let dst = SocketAddr::new(IpAddr::V4(SERVER), PORT);
    (0..runs).map(|_| measure(node_a, dst, load)).collect()
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let (runs, load) = (Load::runs(quick), Load::new(quick));
    let sizes: &[usize] = &[0, 1_000, 10_000, 100_000];
    let (topo, _echo) = measured_node(BENCH_PREFIX)?;
    let a = &topo.pod("bench/a").ns;
    let node = &topo.node("node-1").ns;
    let work = std::env::temp_dir().join(format!("rampart-bench-datapath-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // (system, fillers) → samples; `none` first, measured before and after the others.
    let mut rows: Vec<(String, usize, Vec<Sample>)> = Vec::new();
    let mut none = sample(a, &load, runs)?;
    for &fillers in sizes {
        let dir = work.join(format!("policy-{fillers}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.yaml"), policy_set(fillers))?;
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(dir.clone());
        let agent = Agent::start(node, &opts)?;
        rows.push(("rampart".into(), fillers, sample(a, &load, runs)?));
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);

        feed(node, "iptables-restore", &["-w"], &iptables_rules(fillers))?;
        rows.push(("iptables".into(), fillers, sample(a, &load, runs)?));
        feed(
            node,
            "iptables-restore",
            &["-w"],
            "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
        )?;

        feed(node, "nft", &["-f", "-"], &nft_rules(fillers))?;
        rows.push(("nftables".into(), fillers, sample(a, &load, runs)?));
        feed(
            node,
            "nft",
            &["delete", "table", "inet", "rampart_bench"],
            "",
        )?;
    }
    none.extend(sample(a, &load, runs)?);
    let _ = std::fs::remove_dir_all(&work);

    let mut out = Vec::new();
    for (metric, unit, pick) in METRICS {
        let base = summarize(&mut none.iter().map(pick).collect::<Vec<_>>()).0;
        out.push(record(
            "datapath", "none", 0, metric, unit, &none, pick, base,
        ));
        for (system, fillers, list) in &rows {
            out.push(record(
                "datapath",
                system,
                *fillers as u64 + 1,
                metric,
                unit,
                list,
                pick,
                base,
            ));
        }
        for &fillers in sizes {
            let median = |system: &str| {
                rows.iter()
                    .find(|(s, f, _)| s == system && *f == fillers)
                    .map(|(_, _, l)| summarize(&mut l.iter().map(pick).collect::<Vec<_>>()).0)
            };
            let Some(ours) = median("rampart") else {
                continue;
            };
            for peer in ["iptables", "nftables"] {
                if let Some(theirs) = median(peer).filter(|v| *v > 0.0) {
                    out.push(Record {
                        suite: "datapath".into(),
                        system: format!("rampart-vs-{peer}"),
                        rules: fillers as u64 + 1,
                        metric: metric.into(),
                        value: ours / theirs,
                        unit: "ratio".into(),
                        ratio_to_baseline: ours / theirs,
                        runs,
                        min: ours / theirs,
                        max: ours / theirs,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_hold_the_fillers_and_the_measured_rule_last() {
        let ipt = iptables_rules(150);
        assert_eq!(ipt.matches("-j ACCEPT").count(), 152, "ct + 150 + measured");
        let accepts: Vec<&str> = ipt.lines().filter(|l| l.ends_with("ACCEPT")).collect();
        assert!(
            accepts
                .last()
                .is_some_and(|l| l.contains(&CLIENT.to_string()))
        );
        assert_eq!(nft_rules(150).matches(",\n").count(), 151);
        assert!(policy_set(0).contains("name: measured"));
    }
}
