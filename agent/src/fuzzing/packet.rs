//! `packet` (root): frames through the kernel programs with `BPF_PROG_TEST_RUN`, loaded (not
//! attached) with the table tests' state: endpoint A (`10.0.0.1`, `fd00::1`) on the interface
//! the kernel runs test packets on, peers B and C, a world beyond. The programs must return only
//! their verdict codes, and drop every packet the table tests (`tests/tests/datapath_test_run.rs`)
//! say they drop: a new flow to a port no rule allows, a packet from an address not the
//! endpoint's. A raw input is a frame as it is; a described one is a well-formed frame built
//! from the input's choices (IPv4 options, IPv6 extension-header chains, first fragments), for
//! which the verdict is known.

use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};

use self::table::{A, A6, B, B6, STRANGER, STRANGER6, TWIN};
use crate::datapath::{Datapath, ProgramKind};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
/// `TC_ACT_UNSPEC` (-1).
const TC_UNSPEC: u32 = u32::MAX;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The table tests' state (`tests/tests/datapath_test_run.rs` and this target share it):
/// endpoint A on the interface the kernel runs test packets on, its twin of the same identity
/// elsewhere, peers B and C, a stranger nobody owns.
pub mod table {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
    use rampart_common::identity::Identity;
    use rampart_common::policy::Verdict;
    use rampart_common::reason::Direction;

    use super::{TCP, UDP};
    use crate::kernel_state::policy_map::{PolicyRule, build};
    use crate::kernel_state::{IpcacheRecord, PolicyState};

    pub const LOOPBACK_IFINDEX: u32 = 1;
    pub const EP: u32 = 1;
    pub const ID_A: u32 = 300;
    pub const ID_B: u32 = 301;
    pub const ID_C: u32 = 302;
    pub const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    pub const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    pub const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    pub const TWIN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    pub const STRANGER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9);

    /// A's egress: TCP to B on 80 and 1000-2000 but 1500, anything to C, UDP 53 anywhere; TCP
    /// 22 and 7000 denied everywhere (7000 and 9000 to B audited too). A's ingress: TCP 8080
    /// from B.
    pub fn rules() -> Vec<PolicyRule> {
        let egress = |remote: u32| PolicyRule::allow(EP, Identity(remote), Direction::EGRESS);
        let tcp = |r: PolicyRule, lo: u16, hi: u16| PolicyRule {
            proto: Some(TCP),
            ports: Some(lo..=hi),
            ..r
        };
        vec![
            PolicyRule {
                cookie: 10,
                ..tcp(egress(ID_B), 80, 80)
            },
            PolicyRule {
                cookie: 11,
                proto: Some(UDP),
                ports: Some(53..=53),
                ..egress(0)
            },
            PolicyRule {
                cookie: 12,
                ..tcp(egress(ID_B), 1000, 2000)
            },
            PolicyRule {
                cookie: 13,
                verdict: Verdict::DENY,
                ..tcp(egress(ID_B), 1500, 1500)
            },
            PolicyRule {
                cookie: 14,
                ..egress(ID_C)
            },
            PolicyRule {
                cookie: 15,
                verdict: Verdict::DENY,
                ..tcp(egress(0), 22, 22)
            },
            PolicyRule {
                cookie: 30,
                verdict: Verdict::DENY,
                audit: true,
                ..tcp(egress(ID_B), 9000, 9000)
            },
            PolicyRule {
                cookie: 31,
                verdict: Verdict::DENY,
                audit: true,
                ..tcp(egress(ID_B), 7000, 7000)
            },
            PolicyRule {
                cookie: 32,
                verdict: Verdict::DENY,
                ..tcp(egress(0), 7000, 7000)
            },
            PolicyRule {
                cookie: 20,
                proto: Some(TCP),
                ports: Some(8080..=8080),
                ..PolicyRule::allow(EP, Identity(ID_B), Direction::INGRESS)
            },
        ]
    }

    pub fn state(rules: &[PolicyRule]) -> PolicyState {
        PolicyState {
            endpoints: vec![(
                LOOPBACK_IFINDEX,
                EndpointInfo {
                    endpoint_id: EP,
                    identity: ID_A,
                    flags: EndpointFlags::ENFORCE_INGRESS | EndpointFlags::ENFORCE_EGRESS,
                    ipv4: A.octets(),
                    ipv6: A6.octets(),
                },
            )],
            ipcache: vec![
                IpcacheRecord::local(A.into(), ID_A, LOOPBACK_IFINDEX),
                // Another pod with A's labels (same identity) behind another interface.
                IpcacheRecord::local(TWIN.into(), ID_A, 99),
                IpcacheRecord::remote(B.into(), 32, ID_B),
                IpcacheRecord::remote(C.into(), 32, ID_C),
                IpcacheRecord::local(A6.into(), ID_A, LOOPBACK_IFINDEX),
                IpcacheRecord::remote(B6.into(), 128, ID_B),
            ],
            policy: build(rules),
            audit: false,
            ..PolicyState::default()
        }
    }
}

/// The programs, loaded once per process.
fn datapath() -> &'static Mutex<Datapath> {
    static DATAPATH: OnceLock<Mutex<Datapath>> = OnceLock::new();
    DATAPATH.get_or_init(|| {
        let mut dp =
            Datapath::load().unwrap_or_else(|e| panic!("loading the programs (root, bpffs): {e}"));
        dp.apply(&table::state(&table::rules()))
            .unwrap_or_else(|e| panic!("applying the fuzz state: {e}"));
        Mutex::new(dp)
    })
}

/// Runs `frame` through `kind`; its return code (`None`: the kernel refused the input, as it
/// does frames shorter than an Ethernet header).
fn run(kind: ProgramKind, frame: &[u8]) -> Option<u32> {
    let mut dp = datapath().lock().unwrap_or_else(PoisonError::into_inner);
    dp.test_run(kind, frame).ok()
}

fn codes(kind: ProgramKind) -> &'static [u32] {
    match kind {
        ProgramKind::Xdp => &[XDP_PASS, XDP_DROP],
        _ => &[TC_OK, TC_SHOT, TC_UNSPEC],
    }
}

fn dropped(kind: ProgramKind, code: u32) -> bool {
    match kind {
        ProgramKind::Xdp => code == XDP_DROP,
        _ => code == TC_SHOT,
    }
}

/// Input: a byte of choices (bit 0: a described frame), then the frame or its description.
pub fn packet(data: &[u8]) {
    let (choices, rest) = super::split_first(data);
    if choices & 1 == 0 {
        if rest.len() > 1514 {
            return;
        }
        for kind in [
            ProgramKind::Xdp,
            ProgramKind::TcIngress,
            ProgramKind::TcEgress,
        ] {
            if let Some(code) = run(kind, rest) {
                assert!(codes(kind).contains(&code), "{kind:?} returned {code}");
            }
        }
        return;
    }
    let described = Described::read(rest);
    let frame = described.frame();
    for kind in described.programs() {
        let Some(code) = run(kind, &frame) else {
            panic!("the kernel refused a well-formed frame: {described:?}");
        };
        assert!(codes(kind).contains(&code), "{kind:?} returned {code}");
        if described.must_drop() {
            assert!(
                dropped(kind, code),
                "{kind:?} let through (code {code}) what the table tests drop: {described:?}\nframe: {frame:02x?}"
            );
        }
    }
}

/// Where a described packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// From A to B: A's egress (XDP and TC ingress judge it).
    AToB,
    /// From B to A: A's ingress (TC egress).
    BToA,
    /// From an address not A's on A's interface (another pod's, or nobody's).
    Spoofed,
}

/// A well-formed frame, from the fuzzer's choices.
#[derive(Debug)]
struct Described {
    v6: bool,
    path: Path,
    /// For [`Path::Spoofed`] over IPv4: A's twin's address rather than a stranger's.
    twin: bool,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// IPv4: words of NOP options (0-10).
    options: usize,
    /// IPv4: the "more fragments" bit of a first fragment.
    more_fragments: bool,
    /// IPv6: the extension headers before L4: (type, length in 8-byte units beyond the first).
    extensions: Vec<(u8, u8)>,
    payload: usize,
}

const EXTENSIONS: [u8; 4] = [0, 60, 43, 44];

impl Described {
    fn read(bytes: &[u8]) -> Described {
        let mut at = 0;
        let mut next = || {
            let b = bytes.get(at).copied().unwrap_or(0);
            at += 1;
            b
        };
        let flags = next();
        let path = match flags >> 1 & 3 {
            0 | 3 => Path::AToB,
            1 => Path::BToA,
            _ => Path::Spoofed,
        };
        let proto = if flags >> 3 & 1 == 0 { TCP } else { UDP };
        let sport = u16::from_be_bytes([next(), next()]);
        let dport = u16::from_be_bytes([next(), next()]);
        let tcp_flags = next();
        let shape = next();
        let count = usize::from(shape & 7).min(5);
        let extensions = (0..count)
            .map(|_| {
                let e = next();
                (EXTENSIONS[usize::from(e & 3)], e >> 2 & 1)
            })
            .collect();
        Described {
            v6: flags & 1 == 1,
            path,
            twin: flags >> 4 & 1 == 1,
            proto,
            sport,
            dport,
            tcp_flags,
            options: usize::from(shape >> 3) % 11,
            more_fragments: shape >> 7 == 1,
            extensions,
            payload: usize::from(next() % 64),
        }
    }

    fn programs(&self) -> Vec<ProgramKind> {
        match self.path {
            Path::AToB | Path::Spoofed => vec![ProgramKind::Xdp, ProgramKind::TcIngress],
            Path::BToA => vec![ProgramKind::TcEgress],
        }
    }

    fn addresses(&self) -> (IpAddr, IpAddr) {
        match (self.v6, self.path) {
            (false, Path::AToB) => (A.into(), B.into()),
            (false, Path::BToA) => (B.into(), A.into()),
            (false, Path::Spoofed) => (if self.twin { TWIN } else { STRANGER }.into(), B.into()),
            (true, Path::AToB) => (A6.into(), B6.into()),
            (true, Path::BToA) => (B6.into(), A6.into()),
            (true, Path::Spoofed) => (STRANGER6.into(), B6.into()),
        }
    }

    /// Whether the table tests say this packet is dropped whatever flows came before: a
    /// packet from an address not A's; a new flow from A to B to a port no rule allows (not
    /// from A's port 8080, whose packets may be replies of allowed ingress flows); from B to A,
    /// a flow to a port but 8080 that is no reply of an allowed egress flow.
    fn must_drop(&self) -> bool {
        let egress_tcp = |p: u16| p == 80 || ((1000..=2000).contains(&p) && p != 1500);
        match (self.path, self.proto) {
            (Path::Spoofed, _) => true,
            (Path::AToB, TCP) => self.sport != 8080 && !egress_tcp(self.dport),
            (Path::AToB, _) => self.dport != 53,
            (Path::BToA, TCP) => !egress_tcp(self.sport) && self.dport != 8080,
            (Path::BToA, _) => self.sport != 53,
        }
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == TCP {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, self.tcp_flags, 0xff, 0xff]);
            l4.extend_from_slice(&[0, 0, 0, 0]);
        } else {
            let len = u16::try_from(8 + self.payload).unwrap_or(u16::MAX);
            l4.extend_from_slice(&len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.resize(l4.len() + self.payload, 0x61);
        l4
    }

    fn frame(&self) -> Vec<u8> {
        let (src, dst) = self.addresses();
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let l4 = self.l4();
                let header = 20 + 4 * self.options;
                let total = u16::try_from(header + l4.len()).unwrap_or(u16::MAX);
                let ihl = u8::try_from(5 + self.options).unwrap_or(15);
                frame.extend_from_slice(&[0x40 | ihl, 0]);
                frame.extend_from_slice(&total.to_be_bytes());
                // A first fragment (offset 0), or a whole datagram with DF.
                let fragment = if self.more_fragments { 0x20 } else { 0x40 };
                frame.extend_from_slice(&[0, 1, fragment, 0, 64, self.proto, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.resize(frame.len() + 4 * self.options, 1);
                frame.extend_from_slice(&l4);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86DDu16.to_be_bytes());
                let mut payload = Vec::new();
                let types: Vec<u8> = self.extensions.iter().map(|(t, _)| *t).collect();
                for (i, (kind, extra)) in self.extensions.iter().enumerate() {
                    let next = types.get(i + 1).copied().unwrap_or(self.proto);
                    if *kind == 44 {
                        // A first fragment: offset 0, "more" as chosen.
                        let more = u8::from(self.more_fragments);
                        payload.extend_from_slice(&[next, 0, 0, more, 0, 0, 0, 7]);
                    } else {
                        payload.extend_from_slice(&[next, *extra, 1, 4, 0, 0, 0, 0]);
                        // Routing headers: type 4 with no segments left would need more; a PadN
                        // option fills the rest of every header.
                        payload.resize(payload.len() + 8 * usize::from(*extra), 0);
                        if *kind == 43 {
                            let start = payload.len() - 8 * (usize::from(*extra) + 1);
                            // Routing type 0, segments left 0.
                            payload[start + 2] = 0;
                            payload[start + 3] = 0;
                        }
                    }
                }
                let first = types.first().copied().unwrap_or(self.proto);
                payload.extend_from_slice(&self.l4());
                let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&[first, 64]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&payload);
            }
            _ => {}
        }
        frame
    }
}
