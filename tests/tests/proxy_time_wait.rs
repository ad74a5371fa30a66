//! A client that reuses its port while the proxy still holds the previous connection of the same
//! four-tuple in TIME_WAIT, on a real kernel: pod a (node 1) opens 1,500 short connections to
//! pod b's L7 port (node 2), each answered and closed by the server side first (HTTP/1.0), so
//! node 1's proxy closes its transparent socket first and keeps the tuple in TIME_WAIT; a's
//! ports (250 of them, bound by the test) come round again within the minute. Every connection
//! must be served: a SYN that the kernel handed to the listener beside a TIME_WAIT of its tuple
//! used to be dropped (the client timed out), found by the soak.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rampart_tests::http_server::HttpServer;
use rampart_tests::mesh::{MeshAgents, shop};
use rampart_tests::{netns, require_root};

const CONNECTIONS: usize = 1500;
/// a's source ports, each used CONNECTIONS / PORTS times. The kernel's own choice walks its
/// ephemeral range with random steps and came round within the run only some of the time (a CI
/// run saw 1,500 connections on 1,500 distinct ports); the test binds them itself.
const FIRST_PORT: u16 = 41_000;
const PORTS: usize = 250;

fn client_port(i: usize) -> u16 {
    FIRST_PORT + u16::try_from(i % PORTS).unwrap_or(0)
}

/// A connection to `to` from a's `port` (free again at once: the server side closes first, so
/// the TIME_WAIT of the tuple is node 1's proxy's, not a's).
fn connect_from(port: u16, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

#[test]
fn a_reused_client_port_is_served_while_the_proxy_holds_its_tuple_in_time_wait() {
    require_root();
    let topo = shop::two_nodes().expect("topology");
    let _origin = HttpServer::start(&topo.pod("shop/b").ns, 8082).expect("origin");
    let policy = shop::world(&shop::b_policy(
        "b-api",
        8082,
        "    rules:\n    - {action: Allow, paths: [{prefix: /}]}\n",
    ));
    let mesh = MeshAgents::start(&topo, &["node-1", "node-2"], &policy, None, &[]).expect("agents");
    let a = topo.pod("shop/a").ns.path();
    let b = SocketAddr::new(IpAddr::V4(shop::ip(2)), 8082);
    rampart_tests::eventually("a to reach b", Duration::from_secs(20), || {
        rampart_tests::probe::http_request(&a, b, "GET", "/", &[], Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 200)
    });
    let outcomes = netns::run_in(&a, move || {
        (0..CONNECTIONS)
            .map(|i| {
                let started = Instant::now();
                let mut s = connect_from(client_port(i), b)
                    .map_err(|e| format!("#{i}: connect: {e} after {:?}", started.elapsed()))?;
                let port = s.local_addr().map_err(|e| format!("#{i}: {e}"))?.port();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")
                    .map_err(|e| format!("#{i}: send: {e}"))?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply)
                    .map_err(|e| format!("#{i}: read: {e}"))?;
                if !(reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200")) {
                    return Err(format!("#{i}: {:?}", String::from_utf8_lossy(&reply)));
                }
                std::thread::sleep(Duration::from_millis(5));
                Ok((port, started.elapsed()))
            })
            .collect::<Vec<Result<(u16, Duration), String>>>()
    })
    .expect("connections from a");
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let slow = outcomes
        .iter()
        .filter(|o| {
            o.as_ref()
                .is_ok_and(|(_, t)| *t > Duration::from_millis(900))
        })
        .count();
    // Ports a's connections used again (all within the TIME_WAIT minute).
    let mut seen = std::collections::HashSet::new();
    let reused = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .filter(|(port, _)| !seen.insert(*port))
        .count();
    let time_wait = rampart_tests::cmd::in_ns(
        topo.node("node-1").ns.name(),
        "ss",
        &[
            "-Htan",
            "state",
            "time-wait",
            "src",
            &shop::ip(2).to_string(),
        ],
    )
    .unwrap_or_default()
    .lines()
    .count();
    eprintln!(
        "{CONNECTIONS} connections: {} failed, {reused} on a port used before, {slow} took a SYN retransmission; node 1 holds {time_wait} of b's tuples in TIME_WAIT",
        failed.len()
    );
    assert!(
        time_wait > 100 && reused + failed.len() > 0,
        "no tuple was reused while in TIME_WAIT ({time_wait} held, {reused} ports reused): the test proves nothing"
    );
    assert!(
        failed.is_empty(),
        "{} failed, the first: {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    drop(mesh);
}
