//! What the kernel will decide for a flow, computed from the compiled state: the same lookups in
//! the same order as `ebpf/src/enforce.rs` (ipcache longest prefix, policy trie longest prefix,
//! specific identity and `ANY`, deny first, isolation last; the node's own flows into its pods
//! admitted before any of it). Used to explain decisions and to
//! check the compiler against conformance cases without a kernel.

use std::net::IpAddr;

use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::identity::Identity;
use rampart_common::policy::{PolicyEntry, PolicyEntryFlags, PolicyKey, Verdict};
use rampart_common::reason::{Direction, DropReason};

use crate::kernel_state::policy_map::PolicyMapEntry;
use crate::kernel_state::{IpcacheRecord, PolicyState};

/// The decision at one end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndDecision {
    pub direction: Direction,
    pub endpoint_id: u32,
    pub remote_identity: u32,
    pub verdict: Verdict,
    pub reason: DropReason,
    pub cookie: u32,
    /// A deny that is counted, not enforced.
    pub audit: bool,
}

impl EndDecision {
    /// Whether the packet passes this end.
    pub fn passes(&self) -> bool {
        self.verdict != Verdict::DENY || self.audit
    }
}

/// The decisions for a new flow from `src` to `dst`: egress at the source's endpoint and ingress
/// at the destination's, where those are local pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowDecision {
    pub egress: Option<EndDecision>,
    pub ingress: Option<EndDecision>,
}

impl FlowDecision {
    pub fn allowed(&self) -> bool {
        self.egress.is_none_or(|d| d.passes()) && self.ingress.is_none_or(|d| d.passes())
    }
}

pub fn decide(
    state: &PolicyState,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
) -> FlowDecision {
    let src_rec = ipcache_lookup(state, src);
    let dst_rec = ipcache_lookup(state, dst);
    let identity = |r: Option<&IpcacheRecord>| r.map_or(Identity::WORLD.0, |r| r.identity);
    let end = |rec: Option<&IpcacheRecord>, dir: Direction, remote: u32| {
        let ifindex = rec.map(|r| r.endpoint_ifindex).filter(|i| *i != 0)?;
        let ep = state
            .endpoints
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, e)| e)?;
        if dir == Direction::INGRESS && remote == Identity::HOST.0 {
            // The node reaches its own pods whatever the policy (`from_host` in the kernel). A
            // flow names its source address, not the node's stack: this is the node's own
            // connection; a forwarded one masqueraded to the node's address is judged by policy.
            return Some(EndDecision {
                direction: dir,
                endpoint_id: ep.endpoint_id,
                remote_identity: remote,
                verdict: Verdict::ALLOW,
                reason: DropReason::NONE,
                cookie: 0,
                audit: false,
            });
        }
        Some(evaluate(state, ep, dir, remote, proto, dport))
    };
    FlowDecision {
        egress: end(src_rec, Direction::EGRESS, identity(dst_rec)),
        ingress: end(dst_rec, Direction::INGRESS, identity(src_rec)),
    }
}

fn ipcache_lookup(state: &PolicyState, addr: IpAddr) -> Option<&IpcacheRecord> {
    state
        .ipcache
        .iter()
        .filter(|r| prefix_contains(r.addr, r.prefix_len, addr))
        .max_by_key(|r| r.prefix_len)
}

fn prefix_contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The policy trie's longest-prefix match for `key`.
fn trie_lookup(entries: &[PolicyMapEntry], key: &PolicyKey) -> PolicyEntry {
    let bits = |k: &PolicyKey| -> u128 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&k.endpoint_id);
        b[4..8].copy_from_slice(&k.remote_identity);
        b[8] = k.direction;
        b[9] = k.proto;
        b[10..12].copy_from_slice(&k.dport);
        u128::from_be_bytes(b)
    };
    let want = bits(key);
    entries
        .iter()
        .filter(|e| {
            let mask = u128::MAX.checked_shl(128 - e.prefix_len).unwrap_or(0);
            bits(&e.key) & mask == want & mask
        })
        .max_by_key(|e| e.prefix_len)
        .map(|e| e.entry)
        .unwrap_or_default()
}

fn evaluate(
    state: &PolicyState,
    ep: &EndpointInfo,
    dir: Direction,
    remote: u32,
    proto: u8,
    port: u16,
) -> EndDecision {
    let specific = trie_lookup(
        &state.policy,
        &PolicyKey::new(ep.endpoint_id, remote, dir.0, proto, port),
    );
    let any = trie_lookup(
        &state.policy,
        &PolicyKey::new(ep.endpoint_id, Identity::ANY.0, dir.0, proto, port),
    );
    let decision = |verdict: Verdict, reason: DropReason, cookie: u32, audit: bool| EndDecision {
        direction: dir,
        endpoint_id: ep.endpoint_id,
        remote_identity: remote,
        verdict,
        reason,
        cookie,
        audit: audit || state.audit || ep.flags & EndpointFlags::AUDIT != 0,
    };
    let is_deny = |e: &PolicyEntry| e.verdict == Verdict::DENY.0;
    let audited = |e: &PolicyEntry| e.flags & PolicyEntryFlags::AUDIT != 0;
    for e in [&specific, &any] {
        if is_deny(e) && !audited(e) {
            return decision(Verdict::DENY, DropReason::POLICY_DENY_RULE, e.cookie, false);
        }
    }
    let audit_deny = [&specific, &any].into_iter().find(|e| is_deny(e)).copied();
    let allow = [&specific, &any]
        .into_iter()
        .find(|e| e.verdict == Verdict::ALLOW.0 || e.verdict == Verdict::REDIRECT.0)
        .copied();
    if let Some(d) = &audit_deny
        && (allow.is_some() || d.flags & PolicyEntryFlags::ALLOW_UNDER != 0)
    {
        return decision(Verdict::DENY, DropReason::POLICY_DENY_RULE, d.cookie, true);
    }
    if let Some(e) = allow {
        return decision(Verdict(e.verdict), DropReason::NONE, e.cookie, false);
    }
    let (isolated, audit) = if dir == Direction::INGRESS {
        (
            ep.flags & EndpointFlags::ENFORCE_INGRESS != 0,
            ep.flags & EndpointFlags::AUDIT_INGRESS != 0,
        )
    } else {
        (
            ep.flags & EndpointFlags::ENFORCE_EGRESS != 0,
            ep.flags & EndpointFlags::AUDIT_EGRESS != 0,
        )
    };
    if isolated && !(audit && audit_deny.is_some()) {
        decision(Verdict::DENY, DropReason::POLICY_DENIED, 0, audit)
    } else if let Some(d) = &audit_deny {
        decision(Verdict::DENY, DropReason::POLICY_DENY_RULE, d.cookie, true)
    } else {
        decision(Verdict::ALLOW, DropReason::NONE, 0, false)
    }
}
