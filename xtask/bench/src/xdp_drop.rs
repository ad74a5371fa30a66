//! Suite `xdp-drop`: the kernel's cost per packet of Rampart's XDP program, measured with
//! `BPF_PROG_TEST_RUN` and `repeat` (the kernel times the loop), with 0, 1k, 10k and 100k policy
//! entries that do not match the measured flow plus the one that does, against bare programs
//! that only return a verdict (`rp_xdp_drop`, `rp_xdp_pass`), all in one process.
//!
//! Metrics: `ns_per_packet_new_denied` (a new flow with no allow: parse, identities, conntrack
//! misses, both policy lookups, drop counters, the event path), as a ratio to a bare `XDP_DROP`;
//! `ns_per_packet_established` (a packet of a tracked, allowed flow: the common case), as a
//! ratio to a bare `XDP_PASS`.

use std::net::Ipv4Addr;

use rampart_agent::datapath::{Datapath, ProgramKind};
use rampart_agent::kernel_state::policy_map::{PolicyRule, build};
use rampart_agent::kernel_state::{IpcacheRecord, PolicyState};
use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::identity::Identity;
use rampart_common::reason::Direction;
use rampart_tests::packet::{ETH_P_IP, SYN, TCP, eth, ipv4, tcp};

use crate::record::{Record, summarize};

const EP: u32 = 1;
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let (runs, repeat) = if quick { (3, 200_000) } else { (7, 1_000_000) };
    let sizes: &[u64] = &[0, 1_000, 10_000, 100_000];
    let mut dp = Datapath::load()?;
    let established = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40000, 80, SYN)));
    let denied = eth(ETH_P_IP, &ipv4(A, B, TCP, &tcp(40001, 81, SYN)));

    let (mut baseline, mut drop_baseline) = (Vec::new(), Vec::new());
    let mut rampart: Vec<(u64, Vec<f64>, Vec<f64>)> = Vec::new();
    for &size in sizes {
        dp.apply(&state(size))?;
        // Admit the measured flow once: its later packets take the conntrack path.
        anyhow::ensure!(
            dp.test_run(ProgramKind::Xdp, &established)? == XDP_PASS,
            "the measured flow must be allowed"
        );
        let (mut est, mut new) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // Side by side: the baseline runs right before each measurement of Rampart.
            baseline.push(ns(
                &mut dp,
                ProgramKind::XdpPassBaseline,
                &established,
                repeat,
                XDP_PASS,
            )?);
            est.push(ns(
                &mut dp,
                ProgramKind::Xdp,
                &established,
                repeat,
                XDP_PASS,
            )?);
            drop_baseline.push(ns(
                &mut dp,
                ProgramKind::XdpDropBaseline,
                &denied,
                repeat,
                XDP_DROP,
            )?);
            new.push(ns(&mut dp, ProgramKind::Xdp, &denied, repeat, XDP_DROP)?);
        }
        rampart.push((size, est, new));
    }

    let pass = summarize(&mut baseline);
    let drop = summarize(&mut drop_baseline);
    let record = |system: &str,
                  rules: u64,
                  metric: &str,
                  (value, min, max): (f64, f64, f64),
                  base: f64,
                  n| Record {
        suite: "xdp-drop".into(),
        system: system.into(),
        rules,
        metric: metric.into(),
        value,
        unit: "ns".into(),
        ratio_to_baseline: if base > 0.0 { value / base } else { f64::NAN },
        runs: n,
        min,
        max,
    };
    let mut out = vec![
        record(
            "xdp-drop",
            0,
            "ns_per_packet_new_denied",
            drop,
            drop.0,
            drop_baseline.len(),
        ),
        record(
            "xdp-pass",
            0,
            "ns_per_packet_established",
            pass,
            pass.0,
            baseline.len(),
        ),
    ];
    for (size, mut est, mut new) in rampart {
        out.push(record(
            "rampart",
            size + 1,
            "ns_per_packet_new_denied",
            summarize(&mut new),
            drop.0,
            runs,
        ));
        out.push(record(
            "rampart",
            size + 1,
            "ns_per_packet_established",
            summarize(&mut est),
            pass.0,
            runs,
        ));
    }
    Ok(out)
}

/// Mean nanoseconds per run over `repeat` kernel-timed runs, checking the verdict.
fn ns(
    dp: &mut Datapath,
    kind: ProgramKind,
    pkt: &[u8],
    repeat: u32,
    expect: u32,
) -> anyhow::Result<f64> {
    let (ret, per_run) = dp.test_run_repeat(kind, pkt, repeat)?;
    anyhow::ensure!(ret == expect, "{kind:?} returned {ret}, expected {expect}");
    Ok(per_run.as_secs_f64() * 1e9)
}

/// The endpoint under test on loopback (where test runs arrive), `filler` policy entries for
/// other remote identities, and the one rule that allows the measured flow.
fn state(filler: u64) -> PolicyState {
    let mut rules = Vec::with_capacity(usize::try_from(filler).unwrap_or(0) + 1);
    for i in 0..filler {
        let remote = Identity(10_000 + u32::try_from(i).unwrap_or(u32::MAX - 10_000));
        rules.push(PolicyRule {
            proto: Some(TCP),
            ports: Some(80..=80),
            cookie: 2,
            ..PolicyRule::allow(EP, remote, Direction::EGRESS)
        });
    }
    rules.push(PolicyRule {
        proto: Some(TCP),
        ports: Some(80..=80),
        cookie: 1,
        ..PolicyRule::allow(EP, Identity(ID_B), Direction::EGRESS)
    });
    PolicyState {
        endpoints: vec![(
            1,
            EndpointInfo {
                endpoint_id: EP,
                identity: ID_A,
                flags: EndpointFlags::ENFORCE_EGRESS | EndpointFlags::ENFORCE_INGRESS,
                ipv4: A.octets(),
                ipv6: [0; 16],
            },
        )],
        ipcache: vec![
            IpcacheRecord::local(A.into(), ID_A, 1),
            IpcacheRecord::remote(B.into(), 32, ID_B),
        ],
        policy: build(&rules),
        audit: false,
        ..PolicyState::default()
    }
}
