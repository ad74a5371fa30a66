//! Suite `restart`: replacing the agent of a node that proxies mTLS flows, while a pod opens new
//! tunnelled connections through it one after another. The baseline is a plain restart (SIGTERM:
//! the agent drains and exits, then a new one starts on the pinned state); the measured system is
//! a hot restart (the new agent takes the old one's sockets over `--handover-socket`). Rows: the
//! longest gap between two successful new connections across the restart, and the time from the
//! restart's start until the new agent serves.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rampart_tests::mesh::MeshAgents;
use rampart_tests::mesh::shop::{self, ip};
use rampart_tests::server::EchoServer;
use rampart_tests::traffic::Traffic;

use crate::record::Record;

const PORT: u16 = 7100;

fn policy() -> String {
    shop::world(&format!(
        "---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-tunnel}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {PORT}}}]\n"
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Cold,
    Hot,
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let runs = if quick { 3 } else { 7 };
    let topo = shop::two_nodes()?;
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[PORT], &[])?;
    let mut mesh = MeshAgents::start(&topo, &["node-1", "node-2"], &policy(), None, &[])?;
    let a = topo.pod("shop/a").ns.path();
    let dst = SocketAddr::new(IpAddr::V4(ip(2)), PORT);
    let mut records = Vec::new();
    let (mut base_gap, mut base_serving) = (None, None);
    for (how, system) in [
        (How::Cold, "restart (SIGTERM, new agent)"),
        (How::Hot, "hot restart (handover)"),
    ] {
        let (mut gaps, mut serving) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let mut traffic = Traffic::new(Duration::from_secs(60));
            traffic.new_connections("new", &a, dst);
            std::thread::sleep(Duration::from_millis(500));
            let took = match how {
                // The source node's agent: its transparent listener takes the pod's flows.
                How::Cold => mesh.stop_and_restart(&topo, "node-1")?,
                How::Hot => mesh.hand_over(&topo, "node-1", None)?.takeover,
            };
            std::thread::sleep(Duration::from_millis(500));
            let tallies = traffic.stop();
            let t = &tallies[0].1;
            anyhow::ensure!(t.ok > 0, "no connection succeeded: {:?}", t.examples);
            gaps.push(t.longest_gap.as_secs_f64() * 1000.0);
            serving.push(took.as_secs_f64() * 1000.0);
        }
        records.push(Record::of_samples(
            "restart",
            system.into(),
            0,
            "longest gap between new mTLS connections",
            "ms",
            &mut gaps,
            &mut base_gap,
        ));
        records.push(Record::of_samples(
            "restart",
            system.into(),
            0,
            "until the new agent serves",
            "ms",
            &mut serving,
            &mut base_serving,
        ));
    }
    Ok(records)
}
