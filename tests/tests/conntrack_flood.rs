//! A SYN flood from many spoofed sources against the kernel's conntrack, on a real kernel: a
//! client outside the cluster sends SYNs to pod b (node 2) from addresses of 198.18.0.0/15 until
//! node 2's table is full. By design the table then refuses new flows instead of evicting live
//! ones:
//!
//! - a connection pod a (node 1) opened before the flood, idle throughout it, still works;
//! - a new connection fails while the table is full, and node 2's metrics say why
//!   (`rampart_drops_total{reason="ct_full"}`, `rampart_conntrack_entries` at the table's size);
//! - once the flood stops, the agent's sweep removes the half-open flows (the spoofed sources
//!   never complete a handshake: `rampart_conntrack_swept_total{reason="unconfirmed"}`) and new
//!   connections are served again within seconds.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rampart_common::maps::MAX_CT;
use rampart_tests::mesh::{MeshAgents, shop};
use rampart_tests::netns::{self, TEST_PREFIX};
use rampart_tests::probe::echo_exchange;
use rampart_tests::{EchoServer, Topology, require_root};

const PORT: u16 = 5432;
/// The established flow's port: an echo that never closes an idle connection (the shared
/// echo server closes one after 5 s of silence).
const QUIET_PORT: u16 = 5433;
/// The most SYNs the test sends (a bound on the flood): twice the table.
const MAX_SYNS: u32 = 2 * MAX_CT;

fn b() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(shop::ip(2)), PORT)
}

/// The Internet checksum of `data`, folded.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 SYN from `src:sport` to `dst:dport` with valid checksums (so the pod answers it).
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut tcp = rampart_tests::packet::tcp(sport, dport, 0x02);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let initial = pseudo
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum();
    let sum = checksum(&tcp, initial);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = rampart_tests::packet::ipv4(src, dst, 6, &tcp);
    let sum = checksum(&ip[..20], 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// Sends SYNs `from..to` of the flood from the namespace at `ns_path` (a raw IP socket: the
/// sources are forged): source `198.18.0.0 + i % 2^17`, port `1024 + i / 2^17`.
fn flood(ns_path: &str, from: u32, to: u32) -> anyhow::Result<u32> {
    netns::run_in(ns_path, move || -> anyhow::Result<u32> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )?;
        let dst = match b() {
            SocketAddr::V4(v4) => *v4.ip(),
            SocketAddr::V6(_) => anyhow::bail!("b is IPv4"),
        };
        let to_addr: socket2::SockAddr = SocketAddr::new(IpAddr::V4(dst), 0).into();
        let mut sent = 0;
        for i in from..to {
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i & 0x1_ffff));
            let sport = 1024 + u16::try_from(i >> 17).unwrap_or(0);
            let packet = syn(src, sport, dst, PORT);
            // A full socket buffer is a lost SYN, as on a real link.
            if socket.send_to(&packet, &to_addr).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    })?
}

#[test]
fn a_syn_flood_fills_conntrack_established_flows_keep_working_and_new_ones_drop_as_ct_full() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .outside()
        .pod("node-1", "shop/a", shop::ip(1))
        .pod("node-2", "shop/b", shop::ip(2))
        .build()
        .expect("topology");
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[PORT], &[]).expect("echo");
    let _quiet = rampart_tests::listener::Listener::start(
        &topo.pod("shop/b").ns,
        QUIET_PORT,
        "patient echo",
        |mut stream| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        },
    )
    .expect("patient echo");
    let mesh = MeshAgents::start(&topo, &["node-1", "node-2"], &shop::world(""), None, &[])
        .expect("agents");
    let node2 = mesh.node("node-2");
    let a_ns = &topo.pod("shop/a").ns;
    let a = a_ns.path();

    // The connection that must survive: opened now, idle during the flood.
    let mut established =
        rampart_tests::eventually("a to reach b", Duration::from_secs(20), || {
            let quiet = SocketAddr::new(IpAddr::V4(shop::ip(2)), QUIET_PORT);
            let stream = netns::run_in(&a, move || {
                TcpStream::connect_timeout(&quiet, Duration::from_secs(2))
            })
            .ok()?
            .ok()?;
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut back = [0u8; 1];
            (stream.write_all(b"e").is_ok() && stream.read_exact(&mut back).is_ok())
                .then_some(stream)
        });

    // The flood, in rounds, until node 2 drops SYNs as ct_full (bounded: twice the table).
    let outside = topo.outside().path();
    let ct_full = r#"reason="ct_full",direction="ingress""#;
    let started = Instant::now();
    let (mut sent, mut next) = (0u32, 0u32);
    while next < MAX_SYNS && node2.sample("rampart_drops_total", ct_full) == 0.0 {
        let round = (next + 65_536).min(MAX_SYNS);
        sent += flood(&outside, next, round).expect("flood");
        next = round;
    }
    let took = started.elapsed();
    let entries = node2.sample("rampart_conntrack_entries", "");
    eprintln!(
        "flood: {sent} SYNs in {took:?}; node 2's conntrack holds {entries} of {MAX_CT} entries"
    );
    assert!(
        node2.sample("rampart_drops_total", ct_full) > 0.0,
        "{sent} spoofed SYNs did not fill conntrack ({entries} entries)\n{}",
        node2.log()
    );
    assert!(
        entries >= f64::from(MAX_CT) * 0.95,
        "the table is full: {entries}"
    );

    // While it is full: a new flow is refused and counted; the idle established one works.
    let before = node2.sample("rampart_drops_total", ct_full);
    assert!(
        !echo_exchange(a_ns, b(), b"n", Duration::from_secs(1)),
        "a new flow was admitted into a full table"
    );
    assert!(node2.sample("rampart_drops_total", ct_full) > before);
    let mut back = [0u8; 1];
    let _ = established.set_read_timeout(Some(Duration::from_secs(3)));
    established
        .write_all(b"s")
        .and_then(|()| established.read_exact(&mut back))
        .expect("the established flow works through the flood");
    assert_eq!(&back, b"s");

    // After the flood: the sweep removes the half-open flows and new flows are served.
    let recovered = Instant::now();
    rampart_tests::eventually("new flows after the flood", Duration::from_secs(30), || {
        echo_exchange(a_ns, b(), b"n", Duration::from_secs(1)).then_some(())
    });
    let unconfirmed = node2.sample("rampart_conntrack_swept_total", r#"reason="unconfirmed""#);
    eprintln!(
        "new flows served again {:?} after the flood; {unconfirmed} unconfirmed entries swept",
        recovered.elapsed()
    );
    assert!(unconfirmed > 0.0);
    established
        .write_all(b"t")
        .and_then(|()| established.read_exact(&mut back))
        .expect("the established flow still works");
}
