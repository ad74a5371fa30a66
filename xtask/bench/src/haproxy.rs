//! The peer of the `proxy` suite: HAProxy from Debian doing the same node-to-node hop as
//! Rampart's tunnel — on node 1 it takes the pod's plaintext connection and opens TLS 1.3 with a
//! client certificate to HAProxy on node 2, which requires and verifies one (same CA, same
//! P-256 SPIFFE certificates as Rampart's) and connects to the destination pod. Unlike Rampart
//! it is not transparent: the pod connects to node 1's HAProxy port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rampart_agent::mesh::ca::{Ca, WorkloadCert};
use rampart_tests::Netns;

/// Where node 1's HAProxy takes the pod's connections for route `i`: the node's address on
/// every pod link.
pub fn front(i: usize) -> SocketAddr {
    SocketAddr::new(
        std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
        16001 + i as u16,
    )
}

/// Node 2's TLS port for route `i`.
fn tls_port(i: usize) -> u16 {
    17001 + i as u16
}

/// A running HAProxy; killed on drop.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificate chain and key as one PEM file (HAProxy's `crt`).
fn pem_bundle(cert: &WorkloadCert) -> String {
    let mut blocks: Vec<pem::Pem> = cert
        .chain
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    blocks.push(pem::Pem::new(
        "PRIVATE KEY",
        cert.private_key().secret_der().to_vec(),
    ));
    pem::encode_many(&blocks)
}

fn start(ns: &Netns, config: &Path) -> anyhow::Result<Haproxy> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "haproxy", "-db", "-f"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (is it installed? `cargo xtask setup`)")?;
    Ok(Haproxy { child })
}

/// Waits until `addr` accepts connections from inside `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = ns.run(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "haproxy is not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts both HAProxies: for each destination `i`, node 1 (`front(i)`) → TLS → node 2 at
/// `node2_addr` → `destinations[i]`.
pub fn start_pair(
    work: &Path,
    ca_dir: &Path,
    node1: &Netns,
    node2: &Netns,
    node2_addr: Ipv4Addr,
    destinations: &[SocketAddr],
) -> anyhow::Result<[Haproxy; 2]> {
    let ca = Ca::load(ca_dir)?;
    let now = SystemTime::now();
    let ttl = Duration::from_secs(3600);
    let dir = work.join("haproxy");
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem())?;
    for node in ["node-1", "node-2"] {
        let cert = ca.issue(
            &rampart_agent::spiffe::SpiffeId::node(ca.trust_domain(), node)?,
            ttl,
            now,
        )?;
        std::fs::write(dir.join(format!("{node}.pem")), pem_bundle(&cert))?;
    }
    let common = "global\n  maxconn 1000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n";
    let d = dir.display();
    let (mut client, mut server) = (common.to_owned(), common.to_owned());
    for (i, destination) in destinations.iter().enumerate() {
        let (front, tls) = (front(i), tls_port(i));
        client.push_str(&format!(
            "frontend pods{i}\n  bind {front}\n  default_backend tunnel{i}\nbackend tunnel{i}\n  server node2 {node2_addr}:{tls} ssl crt {d}/node-1.pem ca-file {d}/ca.crt verify required\n"
        ));
        server.push_str(&format!(
            "frontend tunnel{i}\n  bind {node2_addr}:{tls} ssl crt {d}/node-2.pem ca-file {d}/ca.crt verify required\n  default_backend pod{i}\nbackend pod{i}\n  server b {destination}\n"
        ));
    }
    std::fs::write(dir.join("node-1.cfg"), client)?;
    std::fs::write(dir.join("node-2.cfg"), server)?;
    let second = start(node2, &dir.join("node-2.cfg"))?;
    let first = start(node1, &dir.join("node-1.cfg"))?;
    for i in 0..destinations.len() {
        wait_listening(node2, SocketAddr::new(node2_addr.into(), tls_port(i)))?;
        wait_listening(node1, front(i))?;
    }
    Ok([first, second])
}
