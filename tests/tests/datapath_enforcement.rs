//! The datapath on a real kernel with real traffic: three pods on one node, the programs attached
//! to the pods' node-side veths (XDP + TC, tcx), identities and policy installed through the
//! loader's `apply`, and TCP, UDP and ICMP probes over IPv4 and IPv6 between the pods.
//!
//! Policy: pod a may send TCP 80, UDP 53 and ICMP to b; b accepts TCP 80, UDP 53 and ICMP from a
//! only; a accepts TCP 8080 from c only; c is not isolated.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rampart_agent::config::XdpAttachMode;
use rampart_agent::datapath::{Datapath, Stats};
use rampart_agent::kernel_state::policy_map::{PolicyRule, build};
use rampart_agent::kernel_state::{IpcacheRecord, PolicyState};
use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::identity::Identity;
use rampart_common::reason::{Direction, DropReason};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::packet::{ICMP, ICMPV6, TCP, UDP};
use rampart_tests::{EchoServer, Outcome, Topology, probe, require_root};

const ID: [u32; 3] = [1000, 1001, 1002];
const TIMEOUT: Duration = Duration::from_millis(700);

fn rules() -> Vec<PolicyRule> {
    let (a, b) = (1, 2);
    let out = |ep, remote: u32| PolicyRule::allow(ep, Identity(remote), Direction::EGRESS);
    let inn = |ep, remote: u32| PolicyRule::allow(ep, Identity(remote), Direction::INGRESS);
    let mut rules = Vec::new();
    for (proto, ports) in [
        (TCP, Some(80..=80)),
        (UDP, Some(53..=53)),
        (ICMP, None),
        (ICMPV6, None),
    ] {
        rules.push(PolicyRule {
            proto: Some(proto),
            ports: ports.clone(),
            cookie: 1,
            ..out(a, ID[1])
        });
        rules.push(PolicyRule {
            proto: Some(proto),
            ports,
            cookie: 2,
            ..inn(b, ID[0])
        });
    }
    rules.push(PolicyRule {
        proto: Some(TCP),
        ports: Some(8080..=8080),
        cookie: 3,
        ..inn(a, ID[2])
    });
    rules
}

fn drops(stats: &Stats, dir: Direction) -> u64 {
    let rows = stats.drops().expect("drops");
    rows.iter()
        .filter(|r| r.reason == DropReason::POLICY_DENIED && r.direction == dir)
        .map(|r| r.counter.packets)
        .sum()
}

#[test]
fn policy_is_enforced_on_real_ipv4_and_ipv6_traffic() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("n1")
        .pod("n1", "a", "10.244.1.10".parse().expect("ip"))
        .pod("n1", "b", "10.244.1.11".parse().expect("ip"))
        .pod("n1", "c", "10.244.1.12".parse().expect("ip"))
        .build()
        .expect("topology");
    let node = topo.node("n1");
    let pods = [topo.pod("a"), topo.pod("b"), topo.pod("c")];
    let _servers = [
        EchoServer::start(&pods[1].ns, &[80, 81], &[53, 54]).expect("servers on b"),
        EchoServer::start(&pods[0].ns, &[8080], &[]).expect("server on a"),
        EchoServer::start(&pods[2].ns, &[7000], &[]).expect("server on c"),
    ];

    let mut state = PolicyState::default();
    for (i, pod) in pods.iter().enumerate() {
        let ifindex = node.ns.ifindex(&pod.host_if).expect("ifindex");
        let flags = match i {
            0 => EndpointFlags::ENFORCE_INGRESS | EndpointFlags::ENFORCE_EGRESS,
            1 => EndpointFlags::ENFORCE_INGRESS,
            _ => 0,
        };
        let endpoint_id = u32::try_from(i + 1).expect("id");
        state.endpoints.push((
            ifindex,
            EndpointInfo {
                endpoint_id,
                identity: ID[i],
                flags,
                ipv4: pod.ip.octets(),
                ipv6: pod.ip6.octets(),
            },
        ));
        state
            .ipcache
            .push(IpcacheRecord::local(pod.ip.into(), ID[i], ifindex));
        state
            .ipcache
            .push(IpcacheRecord::local(pod.ip6.into(), ID[i], ifindex));
    }
    state.policy = build(&rules());

    // Endpoints and policy go in before the programs are attached: no moment without policy.
    let mut dp = Datapath::load().expect("load");
    dp.apply(&state).expect("apply");
    let stats = dp.take_stats().expect("stats");
    let interfaces: Vec<String> = pods.iter().map(|p| p.host_if.clone()).collect();
    // Attaching resolves interface names in the calling thread's namespace.
    let dp = node
        .ns
        .run(move || -> anyhow::Result<Datapath> {
            let mut dp = dp;
            for iface in &interfaces {
                dp.attach(iface, Some(XdpAttachMode::Auto))?;
            }
            Ok(dp)
        })
        .expect("thread")
        .expect("attach");

    let (a, b, c) = (pods[0], pods[1], pods[2]);
    let mut failures = Vec::new();
    let mut check = |what: String, got: Outcome, want: Outcome| {
        if got != want {
            failures.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    };
    for (family, a_ip, b_ip) in [
        ("v4", IpAddr::from(a.ip), IpAddr::from(b.ip)),
        ("v6", a.ip6.into(), b.ip6.into()),
    ] {
        let reached = Outcome::Reached;
        let dropped = Outcome::TimedOut;
        check(
            format!("{family} a->b tcp/80"),
            probe::tcp(&a.ns, SocketAddr::new(b_ip, 80), TIMEOUT),
            reached.clone(),
        );
        check(
            format!("{family} a->b tcp/81"),
            probe::tcp(&a.ns, SocketAddr::new(b_ip, 81), TIMEOUT),
            dropped.clone(),
        );
        check(
            format!("{family} a->b udp/53"),
            probe::udp(&a.ns, SocketAddr::new(b_ip, 53), TIMEOUT),
            reached.clone(),
        );
        check(
            format!("{family} a->b udp/54"),
            probe::udp(&a.ns, SocketAddr::new(b_ip, 54), TIMEOUT),
            dropped.clone(),
        );
        // Bulk TCP: large (GSO/GRO) segments both ways through XDP and TC.
        check(
            format!("{family} a->b tcp/80, 8 MiB"),
            probe::tcp_bulk(
                &a.ns,
                SocketAddr::new(b_ip, 80),
                8 << 20,
                Duration::from_secs(10),
            ),
            reached.clone(),
        );
        // 4000 bytes over MTU 1500: IP fragments both ways, each following its first fragment.
        check(
            format!("{family} a->b udp/53, fragmented"),
            probe::udp_sized(&a.ns, SocketAddr::new(b_ip, 53), 4000, TIMEOUT),
            reached.clone(),
        );
        check(
            format!("{family} a->b udp/54, fragmented"),
            probe::udp_sized(&a.ns, SocketAddr::new(b_ip, 54), 4000, TIMEOUT),
            dropped.clone(),
        );
        check(
            format!("{family} a->b ping"),
            probe::ping(&a.ns, b_ip, TIMEOUT),
            reached.clone(),
        );
        check(
            format!("{family} b->a ping"),
            probe::ping(&b.ns, a_ip, TIMEOUT),
            dropped.clone(),
        );
        check(
            format!("{family} c->b tcp/80"),
            probe::tcp(&c.ns, SocketAddr::new(b_ip, 80), TIMEOUT),
            dropped.clone(),
        );
        check(
            format!("{family} c->a tcp/8080"),
            probe::tcp(&c.ns, SocketAddr::new(a_ip, 8080), TIMEOUT),
            reached.clone(),
        );
        check(
            format!("{family} b->a tcp/8080"),
            probe::tcp(&b.ns, SocketAddr::new(a_ip, 8080), TIMEOUT),
            dropped,
        );
    }
    // The node's own bulk TCP to c (not isolated) reaches c's TC egress as large GSO skbs whose
    // payload is mostly in pages: length checks must use the skb's length, not its linear part.
    check(
        "node->c tcp/7000, 8 MiB".into(),
        probe::tcp_bulk(
            &node.ns,
            SocketAddr::new(c.ip.into(), 7000),
            8 << 20,
            Duration::from_secs(10),
        ),
        Outcome::Reached,
    );
    assert!(
        failures.is_empty(),
        "{} probes wrong:\n{}\ndrops: {:?}\nforwarded: {:?}",
        failures.len(),
        failures.join("\n"),
        stats.drops(),
        stats.forwarded()
    );

    // a's egress drops (tcp/81, udp/54 twice each family) and b's/a's ingress drops.
    assert!(
        drops(&stats, Direction::EGRESS) >= 4,
        "egress policy drops counted"
    );
    assert!(
        drops(&stats, Direction::INGRESS) >= 6,
        "ingress policy drops counted"
    );
    let forwarded = stats.forwarded().expect("forwarded");
    assert!(
        forwarded.iter().all(|(_, c)| c.packets > 0),
        "forwarded counted both ways: {forwarded:?}"
    );
    drop(dp);
}

/// Traffic from another node to a pod of this node is judged at the node's uplink, by XDP,
/// before it is routed: a denied flow never reaches the pod's interface.
#[test]
fn the_uplink_drops_denied_traffic_to_local_pods_at_xdp() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("n1")
        .node("n2")
        .pod("n1", "a", "10.244.1.10".parse().expect("ip"))
        .pod("n2", "b", "10.244.2.10".parse().expect("ip"))
        .build()
        .expect("topology");
    let (a, b) = (topo.pod("a"), topo.pod("b"));
    let n2 = topo.node("n2");
    let _server = EchoServer::start(&b.ns, &[80, 81], &[]).expect("servers on b");

    let b_if = n2.ns.ifindex(&b.host_if).expect("ifindex of b's veth");
    let uplink = n2.ns.ifindex("uplink").expect("ifindex of the uplink");
    let state = PolicyState {
        endpoints: vec![(
            b_if,
            EndpointInfo {
                endpoint_id: 1,
                identity: ID[1],
                flags: EndpointFlags::ENFORCE_INGRESS,
                ipv4: b.ip.octets(),
                ipv6: b.ip6.octets(),
            },
        )],
        ipcache: vec![
            IpcacheRecord::local(b.ip.into(), ID[1], b_if),
            IpcacheRecord::local(b.ip6.into(), ID[1], b_if),
            IpcacheRecord::remote(a.ip.into(), 32, ID[0]),
            IpcacheRecord::remote(a.ip6.into(), 128, ID[0]),
        ],
        policy: build(&[PolicyRule {
            proto: Some(TCP),
            ports: Some(80..=80),
            cookie: 7,
            ..PolicyRule::allow(1, Identity(ID[0]), Direction::INGRESS)
        }]),
        audit: false,
        ..PolicyState::default()
    };
    let mut dp = Datapath::load().expect("load");
    dp.apply(&state).expect("apply");
    let mut events = dp.take_events().expect("events");
    let interfaces = vec![b.host_if.clone(), "uplink".to_owned()];
    let dp = n2
        .ns
        .run(move || -> anyhow::Result<Datapath> {
            let mut dp = dp;
            for iface in &interfaces {
                dp.attach(iface, Some(XdpAttachMode::Auto))?;
            }
            Ok(dp)
        })
        .expect("thread")
        .expect("attach");

    for (family, b_ip) in [("v4", IpAddr::from(b.ip)), ("v6", b.ip6.into())] {
        assert_eq!(
            probe::tcp(&a.ns, SocketAddr::new(b_ip, 80), TIMEOUT),
            Outcome::Reached,
            "{family} a->b tcp/80 across nodes"
        );
        assert_eq!(
            probe::tcp(&a.ns, SocketAddr::new(b_ip, 81), TIMEOUT),
            Outcome::TimedOut,
            "{family} a->b tcp/81 across nodes"
        );
    }
    let seen = events.drain(1000);
    let denied: Vec<_> = seen.iter().filter(|e| e.dport == 81).collect();
    let allowed: Vec<_> = seen.iter().filter(|e| e.dport == 80).collect();
    assert!(
        !denied.is_empty() && !allowed.is_empty(),
        "events for both flows: {seen:?}"
    );
    for e in denied.iter().chain(&allowed) {
        assert_eq!(
            e.ifindex, uplink,
            "decided at the uplink, before routing: {e:?}"
        );
        assert_eq!(e.direction, Direction::INGRESS.0);
        assert_eq!((e.src_identity, e.dst_identity), (ID[0], ID[1]));
    }
    assert!(
        denied
            .iter()
            .all(|e| e.reason == DropReason::POLICY_DENIED.0)
    );
    assert!(allowed.iter().all(|e| e.cookie == 7));
    drop(dp);
}
