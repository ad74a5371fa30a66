//! `BPF_PROG_TEST_RUN` table tests of the enforcement programs: crafted packets through the real,
//! verified XDP and TC programs (loaded, not attached), with the maps filled through the loader's
//! `apply`. The kernel runs test packets as received on loopback (ifindex 1): the local endpoint
//! under test sits there. XDP and TC ingress judge the endpoint's egress; TC egress its ingress.

use std::net::Ipv4Addr;

use rampart_agent::datapath::{Changes, Datapath, EventReader, ProgramKind, Stats};
use rampart_agent::kernel_state::policy_map::PolicyRule;
use rampart_agent::kernel_state::{IpcacheRecord, PolicyState};
use rampart_common::endpoint::EndpointFlags;
use rampart_common::identity::Identity;
use rampart_common::policy::Verdict;
use rampart_common::reason::{Direction, DropReason};
use rampart_tests::packet::*;
use rampart_tests::require_root;
// The table's endpoints, rules and state, shared with the `packet` fuzz target.
use rampart_agent::fuzzing::packet::table::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC`: passed on to the next program on the hook (see `ebpf/src/main.rs`).
const TC_PASS: u32 = u32::MAX;
const TC_SHOT: u32 = 2;

struct Fixture {
    dp: Datapath,
    stats: Stats,
    events: EventReader,
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let mut dp = Datapath::load().expect("load the programs (verifier)");
        dp.apply(&state(&rules())).expect("apply");
        let stats = dp.take_stats().expect("stats");
        let events = dp.take_events().expect("events");
        Fixture { dp, stats, events }
    }

    fn drops(&self, reason: DropReason, dir: Direction) -> u64 {
        let rows = self.stats.drops().expect("drops");
        rows.iter()
            .find(|r| r.reason == reason && r.direction == dir)
            .map_or(0, |r| r.counter.packets)
    }

    fn audited(&self, reason: DropReason, dir: Direction) -> u64 {
        let rows = self.stats.audited().expect("audited");
        rows.iter()
            .find(|r| r.reason == reason && r.direction == dir)
            .map_or(0, |r| r.counter.packets)
    }

    fn run(&mut self, kind: ProgramKind, pkt: &[u8]) -> u32 {
        self.dp.test_run(kind, pkt).expect("test run")
    }

    /// Runs `pkt` through `kind` and checks the verdict and, for a drop, that exactly the
    /// counter of `reason` moved.
    fn expect(
        &mut self,
        what: &str,
        kind: ProgramKind,
        pkt: &[u8],
        pass: bool,
        reason: DropReason,
    ) {
        let dir = if kind == ProgramKind::TcEgress {
            Direction::INGRESS
        } else {
            Direction::EGRESS
        };
        let before = self.drops(reason, dir);
        let ret = self.run(kind, pkt);
        let (pass_code, drop_code) = if kind == ProgramKind::Xdp {
            (XDP_PASS, XDP_DROP)
        } else {
            (TC_PASS, TC_SHOT)
        };
        assert_eq!(
            ret,
            if pass { pass_code } else { drop_code },
            "{what}: verdict (return code {ret})"
        );
        if !pass {
            assert_eq!(
                self.drops(reason, dir),
                before + 1,
                "{what}: drop counted as {}",
                reason.name()
            );
        }
    }
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(ETH_P_IP, &ipv4(src, dst, proto, l4))
}

#[test]
fn policy_verdicts_for_new_flows() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let none = DropReason::NONE;
    f.expect(
        "A->B tcp/80 allowed",
        Xdp,
        &v4(A, B, TCP, &tcp(40000, 80, SYN)),
        true,
        none,
    );
    f.expect(
        "A->B tcp/81 no rule",
        Xdp,
        &v4(A, B, TCP, &tcp(40001, 81, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "A->B tcp/1234 in range",
        Xdp,
        &v4(A, B, TCP, &tcp(40002, 1234, SYN)),
        true,
        none,
    );
    f.expect(
        "A->B tcp/1500 denied inside range",
        Xdp,
        &v4(A, B, TCP, &tcp(40003, 1500, SYN)),
        false,
        DropReason::POLICY_DENY_RULE,
    );
    f.expect(
        "A->B tcp/2001 past range",
        Xdp,
        &v4(A, B, TCP, &tcp(40004, 2001, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "A->C tcp/443 any port",
        Xdp,
        &v4(A, C, TCP, &tcp(40005, 443, SYN)),
        true,
        none,
    );
    f.expect(
        "A->C tcp/22 deny beats allow",
        Xdp,
        &v4(A, C, TCP, &tcp(40006, 22, SYN)),
        false,
        DropReason::POLICY_DENY_RULE,
    );
    f.expect(
        "A->B udp/53 any identity",
        Xdp,
        &v4(A, B, UDP, &udp(5000, 53, b"q")),
        true,
        none,
    );
    f.expect(
        "A->B udp/54",
        Xdp,
        &v4(A, B, UDP, &udp(5000, 54, b"q")),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "A->B sctp/80 is not tcp",
        TcIngress,
        &v4(A, B, SCTP, &udp(5000, 80, b"sctp-ish")),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "A->world tcp/80",
        Xdp,
        &v4(A, Ipv4Addr::new(192, 0, 2, 1), TCP, &tcp(40007, 80, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "B->A tcp/8080 ingress allowed",
        TcEgress,
        &v4(B, A, TCP, &tcp(41000, 8080, SYN)),
        true,
        none,
    );
    f.expect(
        "C->A tcp/8080 ingress denied",
        TcEgress,
        &v4(C, A, TCP, &tcp(41001, 8080, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "spoofed source",
        Xdp,
        &v4(STRANGER, B, TCP, &tcp(40008, 80, SYN)),
        false,
        DropReason::SOURCE_SPOOFED,
    );
}

#[test]
fn tracked_flows_and_replies_pass() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let none = DropReason::NONE;
    f.expect(
        "A->B tcp/80 SYN",
        Xdp,
        &v4(A, B, TCP, &tcp(40100, 80, SYN)),
        true,
        none,
    );
    f.expect(
        "B->A SYN-ACK (reply)",
        TcEgress,
        &v4(B, A, TCP, &tcp(80, 40100, SYN | ACK)),
        true,
        none,
    );
    f.expect(
        "A->B ACK (established) via TC",
        TcIngress,
        &v4(A, B, TCP, &tcp(40100, 80, ACK)),
        true,
        none,
    );
    // The same ports from B, not a reply of anything: B's new flow into A is judged by A's
    // ingress policy.
    f.expect(
        "B->A from 80 to an untracked port",
        TcEgress,
        &v4(B, A, TCP, &tcp(80, 40199, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "A->C echo request",
        Xdp,
        &v4(A, C, ICMP, &icmp(8, 0, 77, b"ping")),
        true,
        none,
    );
    f.expect(
        "C->A echo reply",
        TcEgress,
        &v4(C, A, ICMP, &icmp(0, 0, 77, b"ping")),
        true,
        none,
    );
    f.expect(
        "C->A echo reply, other id",
        TcEgress,
        &v4(C, A, ICMP, &icmp(0, 0, 78, b"ping")),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "B->A echo request (ingress, no rule)",
        TcEgress,
        &v4(B, A, ICMP, &icmp(8, 0, 5, b"")),
        false,
        DropReason::POLICY_DENIED,
    );
    // An ICMP error from C about A's tracked TCP flow to C is part of that flow.
    f.expect(
        "A->C tcp/443",
        Xdp,
        &v4(A, C, TCP, &tcp(40101, 443, SYN)),
        true,
        none,
    );
    let quoted = ipv4(A, C, TCP, &tcp(40101, 443, SYN));
    f.expect(
        "C->A unreachable about it",
        TcEgress,
        &v4(C, A, ICMP, &icmp(3, 3, 0, &quoted)),
        true,
        none,
    );
    let unrelated = ipv4(A, C, TCP, &tcp(40102, 444, SYN));
    f.expect(
        "C->A unreachable about nothing",
        TcEgress,
        &v4(C, A, ICMP, &icmp(3, 3, 0, &unrelated)),
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "ARP passes",
        Xdp,
        &eth(
            ETH_P_ARP,
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0,
                2,
            ],
        ),
        true,
        none,
    );
}

#[test]
fn audit_entries_count_and_pass() {
    let mut f = Fixture::new();
    // An audited deny never opens what isolation drops: A's egress is isolated and nothing
    // allows tcp/9000, so the flow is dropped as policy_denied.
    let before = f.drops(DropReason::POLICY_DENIED, Direction::EGRESS);
    let ret = f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40199, 9000, SYN)));
    assert_eq!(ret, XDP_DROP, "an audited deny does not override isolation");
    assert_eq!(
        f.drops(DropReason::POLICY_DENIED, Direction::EGRESS),
        before + 1
    );
    // With an allow beneath it, the audited deny passes the flow and records it as audited.
    let mut allowed = rules();
    allowed.push(PolicyRule {
        cookie: 31,
        proto: Some(TCP),
        ports: Some(8000..=9999),
        ..PolicyRule::allow(EP, Identity(ID_B), Direction::EGRESS)
    });
    f.dp.apply(&state(&allowed))
        .expect("apply allow under the audited deny");
    let before = f.audited(DropReason::POLICY_DENY_RULE, Direction::EGRESS);
    let ret = f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40200, 9000, SYN)));
    assert_eq!(ret, XDP_PASS, "an audited deny over an allow passes");
    assert_eq!(
        f.audited(DropReason::POLICY_DENY_RULE, Direction::EGRESS),
        before + 1
    );
    // Agent-wide audit: a flow with no rule passes and is counted as audited policy_denied.
    let mut audit_state = state(&rules());
    audit_state.audit = true;
    f.dp.apply(&audit_state).expect("apply audit");
    let before = f.audited(DropReason::POLICY_DENIED, Direction::EGRESS);
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40201, 81, SYN))),
        XDP_PASS
    );
    assert_eq!(
        f.audited(DropReason::POLICY_DENIED, Direction::EGRESS),
        before + 1
    );
    // Malformed packets are not policy: audit mode still drops them.
    let mut bad = v4(A, B, TCP, &tcp(40202, 80, SYN));
    bad[14] = 0x44;
    assert_eq!(f.run(ProgramKind::Xdp, &bad), XDP_DROP);
}

#[test]
fn ipv6_with_extension_headers() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let none = DropReason::NONE;
    let v6 = |next: u8, payload: &[u8]| eth(ETH_P_IPV6, &ipv6(A6, B6, next, payload));
    f.expect(
        "A6->B6 tcp/80",
        Xdp,
        &v6(TCP, &tcp(40300, 80, SYN)),
        true,
        none,
    );
    f.expect(
        "A6->B6 tcp/81",
        Xdp,
        &v6(TCP, &tcp(40301, 81, SYN)),
        false,
        DropReason::POLICY_DENIED,
    );
    let mut chained = ipv6_ext(60); // hop-by-hop -> destination options -> tcp
    chained.extend(ipv6_ext(TCP));
    chained.extend(tcp(40302, 80, SYN));
    f.expect(
        "hop-by-hop + dest opts, tcp/80",
        TcIngress,
        &v6(0, &chained),
        true,
        none,
    );
    let mut chained81 = ipv6_ext(60);
    chained81.extend(ipv6_ext(TCP));
    chained81.extend(tcp(40303, 81, SYN));
    f.expect(
        "hop-by-hop + dest opts, tcp/81",
        Xdp,
        &v6(0, &chained81),
        false,
        DropReason::POLICY_DENIED,
    );
    // A later fragment (offset 8 octets) of a datagram whose first fragment was never seen.
    let mut orphan = vec![TCP, 0, 0, 8, 0, 0, 0, 7];
    orphan.extend([0u8; 16]);
    f.expect(
        "orphan later fragment",
        Xdp,
        &v6(44, &orphan),
        false,
        DropReason::UNSUPPORTED_FRAGMENT,
    );
    let mut deep = Vec::new();
    for _ in 0..4 {
        deep.extend(ipv6_ext(60));
    }
    deep.extend(ipv6_ext(TCP));
    deep.extend(tcp(40305, 80, SYN));
    f.expect(
        "five extension headers",
        Xdp,
        &v6(60, &deep),
        false,
        DropReason::UNSUPPORTED_IPV6_EXT,
    );
    f.expect(
        "neighbour solicitation (hop limit 255) passes",
        Xdp,
        &eth(
            ETH_P_IPV6,
            &ipv6_hop(A6, B6, ICMPV6, 255, &icmp(135, 0, 0, &[0; 16])),
        ),
        true,
        none,
    );
    f.expect(
        "B6->A6 echo request (ingress)",
        TcEgress,
        &eth(ETH_P_IPV6, &ipv6(B6, A6, ICMPV6, &icmp(128, 0, 9, b""))),
        false,
        DropReason::POLICY_DENIED,
    );
}

#[test]
fn malformed_packets_fail_closed() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let good = v4(A, B, TCP, &tcp(40400, 80, SYN));
    f.expect(
        "ethernet only",
        Xdp,
        &eth(ETH_P_IP, &[]),
        false,
        DropReason::TRUNCATED_HEADER,
    );
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    f.expect("IHL 4", Xdp, &ihl4, false, DropReason::INVALID_PACKET);
    let mut ihl15 = good.clone();
    ihl15[14] = 0x4f;
    f.expect(
        "IHL 15, total length 40",
        Xdp,
        &ihl15,
        false,
        DropReason::INVALID_PACKET,
    );
    ihl15[16..18].copy_from_slice(&60u16.to_be_bytes());
    f.expect(
        "IHL 15, packet ends inside the options",
        Xdp,
        &ihl15[..14 + 40],
        false,
        DropReason::TRUNCATED_HEADER,
    );
    let mut ihl6 = eth(
        ETH_P_IP,
        &ipv4(
            A,
            B,
            TCP,
            &[&[1, 1, 1, 1][..], &tcp(40401, 80, SYN)].concat(),
        ),
    );
    ihl6[14] = 0x46; // 4 bytes of options before TCP
    f.expect(
        "IP options (IHL 6) parsed",
        Xdp,
        &ihl6,
        true,
        DropReason::NONE,
    );
    let mut version6 = good.clone();
    version6[14] = 0x65;
    f.expect(
        "version 6 in an IPv4 frame",
        Xdp,
        &version6,
        false,
        DropReason::INVALID_PACKET,
    );
    f.expect(
        "truncated TCP",
        Xdp,
        &good[..14 + 20 + 10],
        false,
        DropReason::TRUNCATED_HEADER,
    );
    f.expect(
        "truncated UDP",
        Xdp,
        &eth(ETH_P_IP, &ipv4(A, B, UDP, &[0x13, 0x88])),
        false,
        DropReason::TRUNCATED_HEADER,
    );
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    f.expect(
        "total length past the end",
        Xdp,
        &short_total,
        false,
        DropReason::TRUNCATED_HEADER,
    );
    let mut later_frag = good.clone();
    later_frag[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    f.expect(
        "later fragment with no first",
        TcIngress,
        &later_frag,
        false,
        DropReason::UNSUPPORTED_FRAGMENT,
    );
    f.expect(
        "LLDP",
        Xdp,
        &eth(0x88cc, &[0; 46]),
        false,
        DropReason::UNSUPPORTED_L3,
    );
    f.expect(
        "truncated IPv6",
        Xdp,
        &eth(ETH_P_IPV6, &ipv6(A6, B6, TCP, &tcp(1, 80, SYN))[..30]),
        false,
        DropReason::TRUNCATED_HEADER,
    );
}

#[test]
fn removing_an_allow_stops_established_flows() {
    let mut f = Fixture::new();
    let syn = v4(A, B, TCP, &tcp(40500, 80, SYN));
    let ack = v4(A, B, TCP, &tcp(40500, 80, ACK));
    let reply = v4(B, A, TCP, &tcp(80, 40500, ACK));
    assert_eq!(f.run(ProgramKind::Xdp, &syn), XDP_PASS);
    assert_eq!(f.run(ProgramKind::TcEgress, &reply), TC_PASS);
    // Same policy again (a new revision): the flow is re-evaluated and still allowed.
    f.dp.apply(&state(&rules())).expect("re-apply");
    assert_eq!(
        f.run(ProgramKind::Xdp, &ack),
        XDP_PASS,
        "still allowed after an unrelated update"
    );
    // Without the tcp/80 rule, the established flow's next packet, either way, is dropped.
    let without: Vec<PolicyRule> = rules().into_iter().filter(|r| r.cookie != 10).collect();
    f.dp.apply(&state(&without)).expect("apply without tcp/80");
    assert_eq!(
        f.run(ProgramKind::TcEgress, &reply),
        TC_SHOT,
        "reply of a flow whose allow was removed"
    );
    assert_eq!(
        f.run(ProgramKind::Xdp, &ack),
        XDP_DROP,
        "next packet of a flow whose allow was removed"
    );
}

#[test]
fn interfaces_without_an_endpoint_are_not_policed() {
    require_root();
    let mut dp = Datapath::load().expect("load");
    dp.apply(&PolicyState::default()).expect("apply empty");
    let pkt = v4(STRANGER, B, TCP, &tcp(1, 81, SYN));
    assert_eq!(dp.test_run(ProgramKind::Xdp, &pkt).expect("run"), XDP_PASS);
    assert_eq!(
        dp.test_run(ProgramKind::TcEgress, &pkt).expect("run"),
        TC_PASS
    );
}

#[test]
fn drops_and_new_flows_are_reported_as_events() {
    let mut f = Fixture::new();
    assert!(f.events.drain(1000).is_empty(), "no events before traffic");
    let allowed = v4(A, B, TCP, &tcp(40600, 80, SYN));
    assert_eq!(f.run(ProgramKind::Xdp, &allowed), XDP_PASS);
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40600, 80, ACK))),
        XDP_PASS
    );
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40601, 1500, SYN))),
        XDP_DROP
    );
    assert_eq!(f.run(ProgramKind::Xdp, &eth(0x88cc, &[0; 46])), XDP_DROP);
    let events = f.events.drain(1000);
    assert_eq!(
        events.len(),
        3,
        "one event per new flow and per drop, none for the tracked ACK: {events:?}"
    );
    let (allow, deny, bad) = (&events[0], &events[1], &events[2]);
    assert_eq!(
        (allow.verdict, allow.reason, allow.cookie),
        (Verdict::ALLOW.0, 0, 10)
    );
    assert_eq!(
        (
            allow.src_identity,
            allow.dst_identity,
            allow.sport,
            allow.dport,
            allow.proto
        ),
        (ID_A, ID_B, 40600, 80, TCP)
    );
    assert_eq!(&allow.saddr[12..], &A.octets());
    assert_eq!(
        (deny.verdict, deny.reason, deny.cookie, deny.dport),
        (Verdict::DENY.0, DropReason::POLICY_DENY_RULE.0, 13, 1500)
    );
    assert_eq!(deny.direction, Direction::EGRESS.0);
    assert_eq!(
        (bad.verdict, bad.reason, bad.endpoint_id),
        (Verdict::DENY.0, DropReason::UNSUPPORTED_L3.0, EP)
    );
    assert_eq!(f.events.lost().expect("lost"), Default::default());
    // The same decisions, per rule.
    let rules = f.stats.rules().expect("rules");
    let of = |cookie: u32| {
        rules
            .iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    assert_eq!(
        (of(10).allow, of(10).deny),
        (1, 0),
        "rule 10 allowed one new flow (the ACK is tracked)"
    );
    assert_eq!((of(13).allow, of(13).deny), (0, 1), "rule 13 denied one");
    assert!(
        rules
            .iter()
            .any(|(c, _)| *c == rampart_common::counters::RULE_STATS_OVERFLOW),
        "overflow slot present"
    );
}

#[test]
fn events_over_the_rate_are_counted_as_lost_not_written() {
    let mut f = Fixture::new();
    let limit = rampart_common::event::MAX_EVENTS_PER_SEC_PER_CPU;
    // Test runs execute on the calling CPU; pin this thread so every run shares one budget.
    // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let denied = v4(A, B, TCP, &tcp(40700, 81, SYN));
    let runs = limit + 50;
    for _ in 0..runs {
        assert_eq!(f.run(ProgramKind::Xdp, &denied), XDP_DROP);
    }
    let written = f.events.drain(usize::MAX).len() as u64;
    let lost = f.events.lost().expect("lost");
    assert_eq!(
        written + lost.rate_limited + lost.ring_full,
        runs,
        "every event written or counted lost"
    );
    assert!(
        written <= limit * 2,
        "at most the per-second budget (one window change allowed): {written}"
    );
    assert!(
        lost.rate_limited >= 1,
        "events over the budget are counted: {lost:?}"
    );
}

/// A bpffs pin root of this test process, removed (pins and all) when dropped.
struct Pins(std::path::PathBuf);

impl Pins {
    fn new(tag: &str) -> Pins {
        Pins(
            rampart_tests::agent::test_bpffs()
                .expect("test bpffs")
                .join(format!(
                    "{}-{}-{tag}",
                    rampart_tests::netns::TEST_PREFIX,
                    std::process::id()
                )),
        )
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = rampart_agent::datapath::remove_pins(&self.0);
    }
}

#[test]
fn pinned_state_survives_a_reload() {
    require_root();
    let pins = Pins::new("pinned-reload");
    let root = pins.0.clone();

    let mut first = Datapath::load_pinned(&root).expect("load pinned");
    let revision = first.apply(&state(&rules())).expect("apply");
    assert_eq!(
        first
            .test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40800, 80, SYN)))
            .expect("run"),
        XDP_PASS
    );
    drop(first);

    // A new instance on the same pins: same revision, same policy, same tracked flows, without
    // applying anything.
    let mut second = Datapath::load_pinned(&root).expect("reload pinned");
    assert_eq!(
        second.revision(),
        revision,
        "the policy revision is read back from CONFIG_V1"
    );
    assert_eq!(
        second
            .test_run(ProgramKind::TcEgress, &v4(B, A, TCP, &tcp(80, 40800, ACK)))
            .expect("run"),
        TC_PASS,
        "reply of a flow tracked before the reload"
    );
    assert_eq!(
        second
            .test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40801, 81, SYN)))
            .expect("run"),
        XDP_DROP,
        "policy still in force"
    );
    // The next apply writes the other generation, as if no reload had happened.
    assert_eq!(second.apply(&state(&rules())).expect("apply"), revision + 1);
    assert_eq!(
        second
            .test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40802, 80, SYN)))
            .expect("run"),
        XDP_PASS
    );
}

/// A flow's conntrack entry stamped by another CPU after this packet read the clock (a stamp
/// ahead of the packet's time) is a live flow, not an expired one: the entry was removed and
/// the rest of the flow judged as new, and bulk transfers through two CPUs stalled on
/// `policy_denied` replies.
#[test]
fn a_conntrack_stamp_ahead_of_the_clock_is_a_live_flow() {
    require_root();
    let pins = Pins::new("ct-ahead");
    let root = pins.0.clone();
    let mut dp = Datapath::load_pinned(&root).expect("load pinned");
    dp.apply(&state(&rules())).expect("apply");
    let stats = dp.take_stats().expect("stats");
    assert_eq!(
        dp.test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40900, 80, SYN)))
            .expect("run"),
        XDP_PASS
    );
    // Every tracked flow stamped a minute ahead (longer than a SYN's lifetime, so a wrapping
    // age would be over it).
    let pinned = aya::maps::MapData::from_pin(root.join("maps").join(rampart_common::maps::CT))
        .expect("the pinned conntrack map");
    let mut ct: aya::maps::HashMap<
        _,
        rampart_common::conntrack::CtKey,
        rampart_common::conntrack::CtEntry,
    > = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(pinned)).expect("conntrack map");
    let entries: Vec<_> = ct.iter().filter_map(Result::ok).collect();
    assert!(!entries.is_empty(), "the SYN was tracked");
    for (key, mut entry) in entries {
        entry.last_seen_ns += 60_000_000_000;
        ct.insert(key, entry, 0).expect("update");
    }
    let denied = |stats: &rampart_agent::datapath::Stats| {
        stats
            .drops()
            .expect("drops")
            .iter()
            .filter(|r| r.reason == DropReason::POLICY_DENIED)
            .map(|r| r.counter.packets)
            .sum::<u64>()
    };
    let before = denied(&stats);
    assert_eq!(
        dp.test_run(
            ProgramKind::TcEgress,
            &v4(B, A, TCP, &tcp(80, 40900, SYN | ACK))
        )
        .expect("run"),
        TC_PASS,
        "the reply of a live flow"
    );
    assert_eq!(
        dp.test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40900, 80, ACK)))
            .expect("run"),
        XDP_PASS
    );
    assert_eq!(denied(&stats), before, "judged as a new flow");
}

/// Two IPv4 fragments of one datagram (identification `id`): the first carries `l4` with MF set,
/// the last 16 bytes of payload at offset 3 (24 bytes), without an L4 header.
fn v4_fragments(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, l4: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut first = v4(src, dst, proto, l4);
    first[18..20].copy_from_slice(&id.to_be_bytes());
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    let mut later = v4(src, dst, proto, &[0xab; 16]);
    later[18..20].copy_from_slice(&id.to_be_bytes());
    later[20..22].copy_from_slice(&0x0003u16.to_be_bytes()); // offset 3 (24 bytes), last
    (first, later)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let none = DropReason::NONE;
    let (first, later) = v4_fragments(A, B, UDP, 0x1234, &udp(5000, 53, &[0x55; 24]));
    f.expect("first fragment of an allowed flow", Xdp, &first, true, none);
    f.expect("its later fragment (XDP)", Xdp, &later, true, none);
    f.expect("its later fragment (TC)", TcIngress, &later, true, none);
    let (first, later) = v4_fragments(A, B, UDP, 0x1235, &udp(5000, 54, &[0x55; 24]));
    f.expect(
        "first fragment of a denied flow",
        Xdp,
        &first,
        false,
        DropReason::POLICY_DENIED,
    );
    f.expect(
        "its later fragment",
        Xdp,
        &later,
        false,
        DropReason::UNSUPPORTED_FRAGMENT,
    );
    let (_, other) = v4_fragments(A, B, UDP, 0x9999, &udp(5000, 53, &[0x55; 24]));
    f.expect(
        "a later fragment of another datagram",
        Xdp,
        &other,
        false,
        DropReason::UNSUPPORTED_FRAGMENT,
    );
    // IPv6: fragment header with M set and offset 0, then a later one (offset 3, M clear).
    let v6frag = |offset_m: u16, id: u32, rest: &[u8]| {
        let mut h = vec![UDP, 0];
        h.extend(offset_m.to_be_bytes());
        h.extend(id.to_be_bytes());
        h.extend(rest);
        eth(ETH_P_IPV6, &ipv6(A6, B6, 44, &h))
    };
    f.expect(
        "IPv6 first fragment",
        Xdp,
        &v6frag(0x0001, 77, &udp(5001, 53, &[1; 24])),
        true,
        none,
    );
    f.expect(
        "IPv6 later fragment",
        Xdp,
        &v6frag(3 << 3, 77, &[2; 16]),
        true,
        none,
    );
    f.expect(
        "IPv6 later fragment, other id",
        Xdp,
        &v6frag(3 << 3, 78, &[2; 16]),
        false,
        DropReason::UNSUPPORTED_FRAGMENT,
    );
}

#[test]
fn apply_rejects_a_bad_state_and_keeps_the_last_good_one() {
    let mut f = Fixture::new();
    let revision = f.dp.revision();
    let mut zero_id = state(&rules());
    zero_id.endpoints[0].1.endpoint_id = 0;
    assert!(
        f.dp.apply(&zero_id).is_err(),
        "endpoint id 0 would be unpoliced"
    );
    let mut long_prefix = state(&rules());
    long_prefix
        .ipcache
        .push(IpcacheRecord::remote(B.into(), 33, ID_B));
    assert!(f.dp.apply(&long_prefix).is_err(), "a /33 IPv4 prefix");
    assert_eq!(f.dp.revision(), revision, "nothing was applied");
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40900, 81, SYN))),
        XDP_DROP,
        "the last good policy is in force"
    );
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(40901, 80, SYN))),
        XDP_PASS
    );
}

#[test]
fn review_findings_stay_fixed() {
    let mut f = Fixture::new();
    use ProgramKind::*;
    let none = DropReason::NONE;
    // A pod sending from the address of another pod with the same identity is spoofing.
    f.expect(
        "same identity, other pod's address",
        Xdp,
        &v4(TWIN, B, TCP, &tcp(41100, 80, SYN)),
        false,
        DropReason::SOURCE_SPOOFED,
    );
    // An enforced deny (any identity) beats an audited deny (this identity) for the same port.
    f.expect(
        "enforced deny beats audited deny",
        Xdp,
        &v4(A, B, TCP, &tcp(41101, 7000, SYN)),
        false,
        DropReason::POLICY_DENY_RULE,
    );
    // An ICMP error quoting a tracked flow, but sent elsewhere, is not part of that flow.
    f.expect(
        "A->C tcp/443 (tracked)",
        Xdp,
        &v4(A, C, TCP, &tcp(41102, 443, SYN)),
        true,
        none,
    );
    let quoted = ipv4(A, C, TCP, &tcp(41102, 443, SYN));
    f.expect(
        "error quoting it, sent by A to B",
        Xdp,
        &v4(A, B, ICMP, &icmp(3, 3, 0, &quoted)),
        false,
        DropReason::POLICY_DENIED,
    );
    // One admitted ICMP type does not open the others.
    f.expect(
        "A->C timestamp request (allowed)",
        Xdp,
        &v4(A, C, ICMP, &icmp(13, 0, 5, &[0; 12])),
        true,
        none,
    );
    f.expect(
        "C->A timestamp request (no ingress rule)",
        TcEgress,
        &v4(C, A, ICMP, &icmp(13, 0, 5, &[0; 12])),
        false,
        DropReason::POLICY_DENIED,
    );
    // Neighbour discovery that a router could have forwarded (hop limit < 255) is not plumbing.
    f.expect(
        "neighbour solicitation with hop limit 64",
        Xdp,
        &eth(
            ETH_P_IPV6,
            &ipv6_hop(A6, B6, ICMPV6, 64, &icmp(135, 0, 0, &[0; 16])),
        ),
        false,
        DropReason::POLICY_DENIED,
    );
}

#[test]
fn audit_mode_switch_rejudges_tracked_flows() {
    let mut f = Fixture::new();
    let mut audit = state(&rules());
    audit.audit = true;
    f.dp.apply(&audit).expect("apply in audit mode");
    let syn = v4(A, B, TCP, &tcp(41200, 81, SYN));
    let ack = v4(A, B, TCP, &tcp(41200, 81, ACK));
    assert_eq!(f.run(ProgramKind::Xdp, &syn), XDP_PASS, "audited");
    // Switching to enforce keeps the state; the audited flow is judged again and stops.
    f.dp.set_audit(false).expect("enforce");
    assert_eq!(
        f.run(ProgramKind::Xdp, &ack),
        XDP_DROP,
        "an audited flow stops once enforcing"
    );
    assert_eq!(
        f.run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(41201, 80, SYN))),
        XDP_PASS,
        "policy kept"
    );
}

/// `apply` writes only what differs from what the generation it writes holds: after each apply
/// of a sequence that adds, changes and removes entries, the live generation holds exactly the
/// state, and a removed rule no longer allows. Priming the inactive generation (as the agent
/// does when idle) makes it hold the live state and changes nothing live. A new instance on the
/// same pins knows neither generation's content and still leaves exactly the state.
#[test]
fn each_apply_leaves_exactly_the_state_in_the_live_generation() {
    require_root();
    let pins = Pins::new("drift");
    let full = state(&rules());
    let mut fewer = state(&rules()[..2]);
    // C's address leaves the ipcache and B6 changes identity.
    fewer
        .ipcache
        .retain(|r| r.addr != std::net::IpAddr::from(C));
    fewer.ipcache[4].identity = ID_C;
    let mut changed = state(&rules());
    changed.endpoints[0].1.flags = EndpointFlags::ENFORCE_EGRESS;
    // B becomes an identity no rule names.
    changed.ipcache[2].identity = 399;
    let none = Changes::default();
    let mut dp = Datapath::load_pinned(&pins.0).expect("load pinned");
    let mut port = 41000;
    for (i, s) in [
        &full, &fewer, &changed, &full, &fewer, &fewer, &changed, &full,
    ]
    .into_iter()
    .enumerate()
    {
        dp.apply(s).expect("apply");
        assert_eq!(dp.drift(s).expect("drift"), none, "after an apply");
        if i % 2 == 1 {
            let primed = dp.prime_standby().expect("prime");
            assert_eq!(
                dp.standby_drift(s).expect("standby drift"),
                none,
                "the inactive generation holds the live state once primed"
            );
            assert_eq!(
                dp.drift(s).expect("drift"),
                none,
                "priming changes nothing live"
            );
            assert!(
                !dp.prime_standby().expect("prime again"),
                "a primed generation is not written again"
            );
            // Applied twice in a row (5), a state is in both generations already.
            assert_eq!(primed, i != 5, "apply {i}: whether priming had to write");
        }
        // Rule 12 (TCP 1000-2000 to B) is in `full` only (in `changed` B has another identity).
        port += 1;
        let expected = if std::ptr::eq(s, &full) {
            XDP_PASS
        } else {
            XDP_DROP
        };
        assert_eq!(
            dp.test_run(ProgramKind::Xdp, &v4(A, B, TCP, &tcp(port, 1200, SYN)))
                .expect("run"),
            expected
        );
    }
    drop(dp);
    let mut second = Datapath::load_pinned(&pins.0).expect("reload pinned");
    assert_eq!(second.drift(&full).expect("drift"), none, "read back");
    for s in [&fewer, &full, &changed] {
        second.apply(s).expect("apply");
        assert_eq!(
            second.drift(s).expect("drift"),
            none,
            "on pins of another instance"
        );
    }
}

/// The `packet` fuzz target's committed inputs (its seed corpus, and every input a fuzzer
/// failed on, `fuzz/regressions/packet/`), replayed through the same property.
#[test]
fn the_packet_fuzz_target_s_inputs_hold() {
    require_root();
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus/packet", "regressions/packet"] {
        if let Ok(entries) = std::fs::read_dir(fuzz.join(dir)) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    files.sort();
    assert!(files.len() >= 10, "the packet seeds: {files:?}");
    for file in files {
        let data = std::fs::read(&file).expect("read");
        let result = std::panic::catch_unwind(|| rampart_agent::fuzzing::packet::packet(&data));
        assert!(result.is_ok(), "{} fails", file.display());
    }
}
