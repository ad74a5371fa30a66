//! Suite `policy`: how long a policy set of 1k / 10k / 100k rules takes from text to the kernel,
//! stage by stage (parse → validate → compile → map sync), against the tools it replaces
//! installing the same rules in the same invocation: `iptables-restore` (a linear chain, as
//! kube-proxy-era policy engines do) and `nft -f` (one set lookup), each in a network namespace
//! of its own.
//!
//! The set: one local server pod, remote client pods on another node (one identity each), and
//! NetworkPolicy ingress rules "client *i* may reach port *p*" — `rules` of them, one kernel
//! policy entry each. The ratio of each record is to `iptables-restore` for the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use rampart_agent::datapath::Datapath;
use rampart_agent::policy::compile::{Memory, Node, compile};
use rampart_agent::policy::{check, source};
use rampart_tests::netns::Netns;

use crate::record::{Record, summarize};

/// Namespace prefix of the baselines' namespaces.
const BENCH_PREFIX: &str = "rpb";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 1);
const FIRST_PORT: u16 = 10_000;
/// The (system, metric) pairs reported, in table order: Rampart's stages, then the totals.
const REPORTED: [(&str, &str); 7] = [
    ("rampart", "parse_ms"),
    ("rampart", "validate_ms"),
    ("rampart", "compile_ms"),
    ("rampart", "map_sync_ms"),
    ("rampart", "install_ms"),
    ("iptables", "install_ms"),
    ("nftables", "install_ms"),
];

/// The synthetic set's shape for `rules` rules: how many client pods, and ports per client.
fn shape(rules: usize) -> (usize, usize) {
    let clients = (rules / 100).clamp(1, 1000);
    (clients, rules.div_ceil(clients))
}

fn client_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(0);
    Ipv4Addr::new(
        10,
        247,
        u8::try_from(i / 250).unwrap_or(0),
        u8::try_from(i % 250 + 1).unwrap_or(0),
    )
}

fn client_port(j: usize) -> u16 {
    FIRST_PORT + u16::try_from(j).unwrap_or(0)
}

/// The policy set as one multi-document YAML text, and its rule count.
pub fn synthetic_set(rules: usize) -> (String, usize) {
    synthetic_set_at(rules, SERVER)
}

/// [`synthetic_set`] with the server pod (`bench/server`, `app: server`, on `node-1`) at
/// `server`; no client pods or policies when `rules` is 0.
pub fn synthetic_set_at(rules: usize, server: Ipv4Addr) -> (String, usize) {
    let (clients, per_client) = if rules == 0 { (0, 0) } else { shape(rules) };
    let mut y = String::with_capacity(rules * 96);
    y.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: bench, labels: {{app: server}}}}\nspec: {{nodeName: node-1, containers: [{{name: s, image: s}}]}}\nstatus: {{podIP: {server}}}\n"
    );
    let mut count = 0;
    for i in 0..clients {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: bench, labels: {{app: client-{i}}}}}\nspec: {{nodeName: node-2, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {}}}\n",
            client_ip(i)
        );
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: from-client-{i}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n"
        );
        for j in 0..per_client {
            if count == rules {
                break;
            }
            let _ = writeln!(
                y,
                "  - from: [{{podSelector: {{matchLabels: {{app: client-{i}}}}}}}]\n    ports: [{{port: {}}}]",
                client_port(j)
            );
            count += 1;
        }
    }
    (y, count)
}

/// The (client address, port) pairs the `rules` rules allow, in the synthetic set's order.
pub fn allowed_pairs(rules: usize) -> impl Iterator<Item = (Ipv4Addr, u16)> {
    let (clients, per_client) = shape(rules);
    (0..clients)
        .flat_map(move |i| (0..per_client).map(move |j| (client_ip(i), client_port(j))))
        .take(rules)
}

/// The same rules for `iptables-restore`: one ACCEPT per (client address, port) in one chain.
fn iptables_rules(rules: usize) -> String {
    let mut s = String::with_capacity(rules * 80);
    s.push_str("*filter\n:RAMPART-BENCH - [0:0]\n");
    for (client, port) in allowed_pairs(rules) {
        let _ = writeln!(
            s,
            "-A RAMPART-BENCH -s {client}/32 -d {SERVER}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    }
    s.push_str("-A RAMPART-BENCH -d 10.246.0.1/32 -j DROP\nCOMMIT\n");
    s
}

/// The same rules for `nft -f`: one concatenated set (address . port), one lookup.
fn nft_rules(rules: usize) -> String {
    let mut s = String::with_capacity(rules * 24);
    s.push_str("table inet rampart_bench {\n  set allowed {\n    type ipv4_addr . inet_service\n    elements = {\n");
    for (client, port) in allowed_pairs(rules) {
        let _ = writeln!(s, "      {client} . {port},");
    }
    s.push_str(
        "    }\n  }\n  chain input {\n    type filter hook input priority 0; policy accept;\n",
    );
    let _ = writeln!(
        s,
        "    ip daddr {SERVER} ip saddr . tcp dport @allowed accept\n    ip daddr {SERVER} drop\n  }}\n}}"
    );
    s
}

/// Milliseconds taken by `program args` fed `input` on stdin, inside `ns`.
fn timed_stdin(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (is it installed? `cargo xtask setup`)"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(ms)
}

/// Stage times in milliseconds of one run of Rampart's pipeline.
struct Stages {
    parse: f64,
    validate: f64,
    compile: f64,
    sync: f64,
}

fn rampart_once(dp: &mut Datapath, text: &str, rules: usize) -> anyhow::Result<Stages> {
    let local: BTreeMap<IpAddr, u32> = [(IpAddr::V4(SERVER), 1)].into();
    let t0 = Instant::now();
    let read = source::parse_str(Path::new("bench.yaml"), text);
    let t1 = Instant::now();
    let checked = check(read).map_err(|d| {
        anyhow::anyhow!(
            "the synthetic set does not validate: {}",
            d.first().map(ToString::to_string).unwrap_or_default()
        )
    })?;
    let t2 = Instant::now();
    let mut memory = Memory::new();
    let node = Node {
        local: &local,
        host: &BTreeSet::new(),
        trust_domain: "cluster.local",
        audit: false,
    };
    let compiled = compile(&checked.model, node, &mut memory);
    let t3 = Instant::now();
    anyhow::ensure!(
        compiled.rule_count == rules,
        "compiled {} rules, expected {rules}",
        compiled.rule_count
    );
    dp.apply(&compiled.state)?;
    let t4 = Instant::now();
    memory.finish();
    Ok(Stages {
        parse: ms(t1 - t0),
        validate: ms(t2 - t1),
        compile: ms(t3 - t2),
        sync: ms(t4 - t3),
    })
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let runs = if quick { 3 } else { 5 };
    let sizes: &[usize] = &[1_000, 10_000, 100_000];
    rampart_tests::sweep_stale(BENCH_PREFIX)?;
    let mut dp = Datapath::load()?;
    let mut out = Vec::new();
    for &rules in sizes {
        let (text, count) = synthetic_set(rules);
        anyhow::ensure!(count == rules, "generated {count} rules, expected {rules}");
        let ipt = iptables_rules(rules);
        let nft = nft_rules(rules);
        let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            // Fresh namespaces each run: every install starts from empty tables.
            let ns = Netns::create(BENCH_PREFIX, "ipt")?;
            let t = timed_stdin(&ns, "iptables-restore", &["-w"], &ipt)?;
            samples
                .entry(("iptables", "install_ms"))
                .or_default()
                .push(t);
            drop(ns);
            let ns = Netns::create(BENCH_PREFIX, "nft")?;
            let t = timed_stdin(&ns, "nft", &["-f", "-"], &nft)?;
            samples
                .entry(("nftables", "install_ms"))
                .or_default()
                .push(t);
            drop(ns);
            dp.apply(&Default::default())?;
            let s = rampart_once(&mut dp, &text, rules)?;
            let total = s.parse + s.validate + s.compile + s.sync;
            for (metric, v) in [
                ("parse_ms", s.parse),
                ("validate_ms", s.validate),
                ("compile_ms", s.compile),
                ("map_sync_ms", s.sync),
                ("install_ms", total),
            ] {
                samples.entry(("rampart", metric)).or_default().push(v);
            }
        }
        let base = summarize(
            samples
                .get_mut(&("iptables", "install_ms"))
                .context("baseline samples")?,
        )
        .0;
        for key in REPORTED {
            let (system, metric) = key;
            let values = samples.get_mut(&key).context("missing samples")?;
            let (value, min, max) = summarize(values);
            out.push(Record {
                suite: "policy".into(),
                system: system.into(),
                rules: rules as u64,
                metric: metric.into(),
                value,
                unit: "ms".into(),
                ratio_to_baseline: value / base,
                runs,
                min,
                max,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_sets_validate_and_have_the_asked_rule_count() {
        for rules in [1, 150, 1_000] {
            let (text, count) = synthetic_set(rules);
            assert_eq!(count, rules);
            let checked = check(source::parse_str(Path::new("s.yaml"), &text)).expect("valid");
            let local: BTreeMap<IpAddr, u32> = [(IpAddr::V4(SERVER), 1)].into();
            let node = Node {
                local: &local,
                host: &BTreeSet::new(),
                trust_domain: "cluster.local",
                audit: false,
            };
            let compiled = compile(&checked.model, node, &mut Memory::new());
            assert_eq!(compiled.rule_count, rules);
            assert_eq!(iptables_rules(rules).matches("-j ACCEPT").count(), rules);
            assert_eq!(nft_rules(rules).matches(",\n").count(), rules);
        }
    }
}
