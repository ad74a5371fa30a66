//! The decision every hook makes: which endpoint the interface belongs to, conntrack, and, for a
//! new flow, the policy lookup. Returns whether to pass or drop; counts every outcome.
//!
//! Order, for a packet on a pod's interface (`dir` is the pod's direction):
//! 1. not a pod interface (no endpoint entry): an uplink. A packet arriving there whose
//!    destination is a pod of this node (the ipcache names the pod's interface) is judged below
//!    as that pod's ingress, before it is routed; everything else passes untouched;
//! 2. unparseable or inconsistent: drop with the parser's reason (fail closed, never audited);
//! 3. ARP / neighbour discovery / MLD: pass;
//! 4. egress with a source address that is not the pod's: drop `source_spoofed`;
//! 5. established (own tuple, own scope) or reply (reversed tuple, opposite scope) or an ICMP
//!    error about a tracked flow: pass; if policy changed since the flow was admitted, the flow's
//!    policy is evaluated again first, and a flow no longer allowed is dropped and forgotten;
//! 6. new flow: policy decides; allowed flows are tracked; a flow that cannot be tracked is dropped
//!    (`ct_full`); denied flows are dropped, or counted and passed in audit mode. A flow from the
//!    node itself (`host`) into one of its pods is admitted without policy ([`from_host`]).
//!
//! Flows to a destination that requires mTLS (`MESH_{A,B}_V2`, see `rampart_common::mesh`): on
//! the pod's egress, an allowed one is redirected to the local proxy (tracked with verdict
//! `redirect`; every packet of it is [`Action::Redirect`]); on the pod's ingress, only the local
//! proxy's packets (marked) are admitted, anything else drops `mtls_required`, and the replies of
//! a proxied flow go back to the proxy ([`Action::ToProxy`]). Where the port also takes ingress
//! (`MeshFlags::INGRESS`), a new flow from outside the cluster arriving on an uplink is
//! redirected to the local proxy like a pod's egress flow, instead of dropping.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::macros::map;
use aya_ebpf::maps::PerCpuArray;
use rampart_common::config::{ConfigFlags, DatapathConfig};
use rampart_common::conntrack::{CtEntry, CtFlags, CtKey, ct_lifetime_ns};
use rampart_common::endpoint::{EndpointFlags, EndpointInfo};
use rampart_common::event::FlowEvent;
use rampart_common::frag::{FRAG_LIFETIME_NS, FragEntry, FragKey};
use rampart_common::identity::Identity;
use rampart_common::kernel_log::Program;
use rampart_common::mesh::{BrakeKey, MARK_FROM_PROXY, MARK_MASK, MeshEntry, MeshFlags};
use rampart_common::policy::{PolicyEntry, PolicyEntryFlags, PolicyKey, Verdict};
use rampart_common::reason::{Direction, DropReason};

use crate::counters;
use crate::events;
use crate::log;
use crate::maps::{self, CONFIG, CT, FRAGS};
use crate::packet::{self, Bounds, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Flow, Parsed, Tuple};

/// Working memory of one decision: the parsed flow and the conntrack keys are too large for the
/// 512-byte BPF stack once everything is inlined, so each CPU gets one slot here.
#[repr(C)]
pub struct Scratch {
    /// Whether the current packet reached a decision about a pod (conntrack or policy).
    judged: bool,
    flow: Flow,
    key: CtKey,
    alt: CtKey,
    event: FlowEvent,
    frag_key: FragKey,
}

#[cfg(not(feature = "previous-layout"))]
#[map(name = "SCRATCH_V2")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[cfg(feature = "previous-layout")]
#[map(name = "SCRATCH_V1")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The flow the last decision on this CPU parsed (for the TC program's redirect step, which runs
/// right after the decision, on the same CPU).
#[inline(always)]
pub fn current_flow() -> Option<&'static Flow> {
    // SAFETY: this CPU's slot; see `decide`.
    SCRATCH.get_ptr(0).map(|p| unsafe { &(*p).flow })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// To the local proxy: TC marks it for local delivery; `Redirect { open: true }` is a
    /// connection's first packet, which TC also hands to the proxy's listener.
    Redirect {
        open: bool,
    },
    /// A reply of a flow the local proxy opened: marked for local delivery to the proxy's socket.
    ToProxy,
}

struct Decision {
    verdict: Verdict,
    cookie: u32,
    reason: DropReason,
    audit: bool,
}

/// `mark` is the packet's `skb->mark` (0 at XDP, which has none); `local_origin`: the node's own
/// stack sent the packet (it arrived on no interface; false at XDP).
#[inline(always)]
pub fn decide(
    program: Program,
    b: &Bounds,
    ifindex: u32,
    dir: Direction,
    mark: u32,
    local_origin: bool,
) -> Action {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        counters::dropped(DropReason::MAP_LOOKUP_FAILED, dir, b.len() as u64);
        log::map_lookup_failed(program);
        return Action::Drop;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU for one hook type,
    // and XDP and TC runs of one CPU do not interleave.
    let s = unsafe { &mut *scratch };
    s.judged = false;
    s.flow.frag = FRAG_NONE;
    let Some(cfg) = CONFIG.get(0).copied() else {
        // The one-entry array always has index 0; if it did not, nothing can be decided.
        counters::dropped(DropReason::MAP_LOOKUP_FAILED, dir, b.len() as u64);
        log::map_lookup_failed(program);
        return Action::Drop;
    };
    // The live generation is the revision's parity: one field, so a packet can never pair one
    // generation with another revision.
    let generation = cfg.revision & 1;
    let ep = maps::endpoint(generation, ifindex);
    // Not a pod's interface: an uplink. Only what arrives on it is looked at, and only traffic to
    // a pod of this node is judged (by that pod's ingress policy, as early as possible); the
    // node's own traffic passes untouched.
    let uplink = ep.endpoint_id == 0;
    if uplink && dir != Direction::EGRESS {
        return Action::Pass;
    }
    let action = judge(
        program,
        b,
        ifindex,
        dir,
        mark,
        local_origin,
        s,
        &cfg,
        generation,
        ep,
        uplink,
    );
    // A first fragment that a decision about a pod let through: its datagram's later fragments
    // follow it. (Node traffic on an uplink and link plumbing pass without a decision.)
    if action != Action::Drop && s.judged && s.flow.frag == FRAG_FIRST {
        remember_first_fragment(s);
    }
    action
}

/// Everything after the endpoint is known: parse, conntrack, policy (see the module docs).
#[allow(
    clippy::too_many_arguments,
    reason = "inlined into both hooks; a struct of them would be built on the 512-byte BPF stack for every packet"
)]
#[inline(always)]
fn judge(
    program: Program,
    b: &Bounds,
    ifindex: u32,
    dir: Direction,
    mark: u32,
    local_origin: bool,
    s: &mut Scratch,
    cfg: &DatapathConfig,
    generation: u32,
    mut ep: EndpointInfo,
    uplink: bool,
) -> Action {
    let bytes = b.len() as u64;
    let mut dir = dir;
    match packet::parse(b, &mut s.flow) {
        Ok(Parsed::Ip) => {}
        Ok(Parsed::Control) => return Action::Pass,
        // Malformed traffic on an uplink is not a pod's business here; if it is routed to a pod,
        // the pod's own interface drops it.
        Err(_) if uplink => return Action::Pass,
        Err(reason) => {
            counters::dropped(reason, dir, bytes);
            log::malformed(program, reason, bytes, ifindex);
            // Nothing of the flow is known: the event names the endpoint and the reason only.
            // (`emit` stamps the time.)
            s.event = FlowEvent {
                direction: dir.0,
                verdict: Verdict::DENY.0,
                reason: reason.0,
                ifindex,
                endpoint_id: ep.endpoint_id,
                len: bytes as u32,
                ..FlowEvent::default()
            };
            // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
            events::emit(&mut s.event, unsafe { bpf_ktime_get_coarse_ns() });
            return Action::Drop;
        }
    };
    if s.flow.frag == FRAG_LATER && !later_fragment_ports(s) {
        // No first fragment admitted for this datagram: it cannot be tied to a flow. On an
        // uplink it is left to the pod's interface, which sees the same datagram.
        if uplink {
            return Action::Pass;
        }
        counters::dropped(DropReason::UNSUPPORTED_FRAGMENT, dir, bytes);
        return Action::Drop;
    }
    if uplink {
        let dst = maps::ipcache(generation, &s.flow.tuple.daddr, s.flow.v4 != 0);
        if dst.endpoint_ifindex == 0 {
            return Action::Pass;
        }
        ep = maps::endpoint(generation, dst.endpoint_ifindex);
        if ep.endpoint_id == 0 {
            return Action::Pass;
        }
        dir = Direction::INGRESS;
    }
    s.judged = true;
    // Conntrack's clock: the coarse monotonic clock (the last tick's time, a few milliseconds
    // behind at most) is a memory read, where the precise one reads the TSC (a sixth of an
    // established packet's cost in the XDP profile). Lifetimes are seconds; the flood brake and
    // event times read the precise clock themselves.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let audit_all = cfg.flags & ConfigFlags::AUDIT != 0 || ep.flags & EndpointFlags::AUDIT != 0;

    // The remote identity is looked up only when a decision needs it (a new flow, a flow to
    // re-judge, an event): packets of tracked flows skip that LPM lookup.
    let ctx = Ctx {
        ep: &ep,
        ifindex,
        dir,
        generation,
        revision: cfg.revision,
        now,
        bytes,
        audit_all,
        from_proxy: mark & MARK_MASK == MARK_FROM_PROXY,
        proxy_port: cfg.proxy_port,
        uplink,
        local_origin,
    };
    if dir == Direction::EGRESS {
        // The source must be this pod's own address, as its endpoint entry records it (not just an
        // address of its identity: another pod with the same labels has the same identity). An
        // address the endpoint does not have (all zero) never matches.
        if !own_address(&ep, &s.flow) {
            counters::dropped(DropReason::SOURCE_SPOOFED, dir, bytes);
            record(s, &ctx, None, Verdict::DENY, DropReason::SOURCE_SPOOFED, 0);
            return Action::Drop;
        }
    }
    set_ct_key(&mut s.key, &s.flow.tuple, dir);
    let flow = &s.flow;
    if let Some(t) = track_one(&s.key, false, flow, &ctx) {
        if t.action == Action::Drop {
            record(s, &ctx, None, Verdict::DENY, t.reason, t.cookie);
        }
        return t.action;
    }
    s.alt = s.key.reply_key();
    if let Some(t) = track_one(&s.alt, true, flow, &ctx) {
        if t.action == Action::Drop {
            record(s, &ctx, None, Verdict::DENY, t.reason, t.cookie);
        }
        return t.action;
    }
    // An ICMP error counts as part of a tracked flow only when it travels to that flow's
    // endpoint: to the quoted packet's sender, and (leaving a pod) from its destination.
    let related_ok = flow.has_related != 0
        && flow.tuple.daddr == flow.related.saddr
        && (dir != Direction::EGRESS || flow.tuple.saddr == flow.related.daddr);
    if related_ok {
        // An ICMP error about a flow this endpoint sent, or about a reply it sent.
        set_ct_key(&mut s.alt, &flow.related, dir.opposite());
        if CT.get_ptr_mut(&s.alt).is_some() {
            counters::forwarded(dir, bytes);
            return Action::Pass;
        }
        let sent_reply = s.alt.reply_key();
        s.alt = CtKey {
            scope: dir.0,
            ..sent_reply
        };
        if CT.get_ptr_mut(&s.alt).is_some() {
            counters::forwarded(dir, bytes);
            return Action::Pass;
        }
    }

    let remote = remote_identity(&ctx, flow);
    let host = from_host(&ctx, dir, remote);
    let d = if host {
        Decision {
            verdict: Verdict::ALLOW,
            cookie: 0,
            reason: DropReason::NONE,
            audit: false,
        }
    } else {
        evaluate(
            generation,
            &ep,
            dir,
            remote,
            flow.tuple.proto,
            flow.policy_port,
        )
    };
    let mut verdict = if d.verdict == Verdict::DENY {
        if !(audit_all || d.audit) {
            counters::dropped(d.reason, dir, bytes);
            counters::decided(d.cookie, Verdict::DENY);
            record(s, &ctx, Some(remote), Verdict::DENY, d.reason, d.cookie);
            return Action::Drop;
        }
        counters::audited(d.reason, dir, bytes);
        Verdict::AUDIT
    } else {
        d.verdict
    };
    let mut ct_flags = if flow.closing() { CtFlags::CLOSING } else { 0 };
    let opening = flow.opening();
    // mTLS: where policy requires it, the flow leaves through the local proxy, or arrives from
    // it (never from elsewhere: plaintext that bypasses the tunnel drops here).
    let mesh_identity = if dir == Direction::EGRESS {
        remote
    } else {
        ep.identity
    };
    let entry = if host {
        MeshEntry::default()
    } else {
        maps::mesh_entry(
            generation,
            mesh_identity,
            flow.tuple.proto,
            flow.policy_port,
        )
    };
    // The flood brake: new connections per (source identity, destination identity, port), on
    // the first hook that sees the flow (the source pod's egress, the uplink or the destination
    // pod's ingress), before the proxy or the pod. Fails closed like a policy deny.
    if entry.brake_period_ns != 0 {
        let (source, destination) = if dir == Direction::EGRESS {
            (ep.identity, remote)
        } else {
            (remote, ep.identity)
        };
        let key = BrakeKey {
            source_identity: source,
            destination_identity: destination,
            port: flow.policy_port,
            proto: flow.tuple.proto,
            _pad: 0,
        };
        // The brake's periods may be shorter than a clock tick: the precise clock.
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let precise = unsafe { bpf_ktime_get_ns() };
        if !maps::brake_admits(&key, precise, entry.brake_period_ns, entry.brake_tau_ns) {
            if audit_all {
                counters::audited(DropReason::FLOOD_BRAKE, dir, bytes);
            } else {
                counters::dropped(DropReason::FLOOD_BRAKE, dir, bytes);
                counters::decided(d.cookie, Verdict::DENY);
                record(
                    s,
                    &ctx,
                    Some(remote),
                    Verdict::DENY,
                    DropReason::FLOOD_BRAKE,
                    d.cookie,
                );
                return Action::Drop;
            }
        }
    }
    // On egress the answer matters only when there is a proxy to redirect to; on ingress it
    // always does (plaintext that bypasses the tunnel drops whether or not this node proxies).
    let mesh = if dir == Direction::EGRESS && ctx.proxy_port == 0 {
        0
    } else {
        entry.flags
    };
    if mesh & MeshFlags::REQUIRE_MTLS != 0 {
        if dir == Direction::EGRESS {
            // Without a proxy the flow goes out as it is, and its destination drops it.
            if ctx.proxy_port != 0 && verdict != Verdict::AUDIT {
                verdict = Verdict::REDIRECT;
            }
        } else if ctx.from_proxy {
            ct_flags |= CtFlags::PROXIED;
        } else if mesh & MeshFlags::INGRESS != 0
            && ctx.uplink
            && ctx.proxy_port != 0
            && verdict != Verdict::AUDIT
            && outside_cluster(remote)
        {
            // Ingress: from outside the cluster, through the local proxy's L7 chain (the
            // uplink's TC ingress hands the SYN to the proxy's listener). As on egress, a flow
            // only audit lets through is not redirected (it is judged as plaintext below).
            verdict = Verdict::REDIRECT;
        } else if audit_all {
            counters::audited(DropReason::MTLS_REQUIRED, dir, bytes);
            verdict = Verdict::AUDIT;
        } else {
            counters::dropped(DropReason::MTLS_REQUIRED, dir, bytes);
            counters::decided(d.cookie, Verdict::DENY);
            record(
                s,
                &ctx,
                Some(remote),
                Verdict::DENY,
                DropReason::MTLS_REQUIRED,
                d.cookie,
            );
            return Action::Drop;
        }
    }
    counters::decided(d.cookie, verdict);
    let entry = CtEntry {
        last_seen_ns: now,
        revision: cfg.revision,
        cookie: d.cookie,
        flags: ct_flags,
        verdict: verdict.0,
        _pad: 0,
        policy_port: flow.policy_port,
        _pad2: [0; 2],
        created_ns: now,
    };
    if let Err(errno) = CT.insert(&s.key, &entry, 0) {
        counters::dropped(DropReason::CT_FULL, dir, bytes);
        log::conntrack_insert_failed(program, errno);
        record(
            s,
            &ctx,
            Some(remote),
            Verdict::DENY,
            DropReason::CT_FULL,
            d.cookie,
        );
        return Action::Drop;
    }
    if verdict != Verdict::AUDIT {
        counters::forwarded(dir, bytes);
    }
    record(
        s,
        &ctx,
        Some(remote),
        verdict,
        if verdict == Verdict::AUDIT {
            d.reason
        } else {
            DropReason::NONE
        },
        d.cookie,
    );
    if verdict == Verdict::REDIRECT {
        Action::Redirect { open: opening }
    } else {
        Action::Pass
    }
}

/// A flow from this node to one of its pods (the kubelet's probes): admitted whatever the policy
/// and whether or not its port requires mTLS, as Kubernetes requires. Only what the node's own
/// stack sends, on the pod's own interface: a forwarded packet carrying a node address is not
/// the node's (kube-proxy masquerades a NodePort client to the node's address, and so can any
/// SNAT rule: such a packet is judged by policy as `host`), an uplink never trusts one, and a
/// pod cannot send with the node's address (its egress drops `source_spoofed`).
#[inline(always)]
fn from_host(c: &Ctx, scope: Direction, remote: u32) -> bool {
    scope == Direction::INGRESS && !c.uplink && c.local_origin && remote == Identity::HOST.0
}

/// `world` or an ipBlock's identity: an address no pod of the cluster has.
#[inline(always)]
fn outside_cluster(identity: u32) -> bool {
    identity == Identity::WORLD.0 || identity >= Identity::FIRST_CIDR.0
}

#[inline(always)]
fn own_address(ep: &EndpointInfo, flow: &Flow) -> bool {
    let a = &flow.tuple.saddr;
    if flow.v4 != 0 {
        ep.ipv4 != [0; 4] && a[12..16] == ep.ipv4
    } else {
        ep.ipv6 != [0; 16] && *a == ep.ipv6
    }
}

#[inline(always)]
fn set_frag_key(s: &mut Scratch) {
    let f = &s.flow;
    s.frag_key = FragKey {
        saddr: f.tuple.saddr,
        daddr: f.tuple.daddr,
        id: f.frag_id,
        proto: f.frag_proto,
        _pad: [0; 3],
    };
}

/// Records the ports of a first fragment that passed, for the datagram's later fragments.
#[inline(always)]
fn remember_first_fragment(s: &mut Scratch) {
    set_frag_key(s);
    let entry = FragEntry {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        first_seen_ns: unsafe { bpf_ktime_get_ns() },
        sport: s.flow.tuple.sport,
        dport: s.flow.tuple.dport,
        policy_port: s.flow.policy_port,
        _pad: 0,
    };
    // If the LRU cannot take it, the later fragments are dropped as unsupported_fragment.
    let _ = FRAGS.insert(&s.frag_key, &entry, 0);
}

/// Gives a later fragment the ports of its datagram's first fragment; false if there is none.
#[inline(always)]
fn later_fragment_ports(s: &mut Scratch) -> bool {
    set_frag_key(s);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(entry) = FRAGS.get_ptr_mut(&s.frag_key) else {
        return false;
    };
    // SAFETY: a pointer to an LRU hash value, valid for this program run.
    let e = unsafe { &*entry };
    // The first fragment may have been recorded by another CPU after `now` was read.
    if now.saturating_sub(e.first_seen_ns) > FRAG_LIFETIME_NS {
        return false;
    }
    s.flow.tuple.sport = e.sport;
    s.flow.tuple.dport = e.dport;
    s.flow.policy_port = e.policy_port;
    true
}

/// The identity of the other side of the packet (its source on ingress, its destination on
/// egress); addresses the ipcache does not know are `world`.
#[inline(always)]
fn remote_identity(c: &Ctx, flow: &Flow) -> u32 {
    let addr = if c.dir == Direction::INGRESS {
        &flow.tuple.saddr
    } else {
        &flow.tuple.daddr
    };
    match maps::identity_of(c.generation, addr, flow.v4 != 0) {
        0 => Identity::WORLD.0,
        id => id,
    }
}

/// Fills the scratch event from the parsed flow and emits it.
#[inline(always)]
fn record(
    s: &mut Scratch,
    c: &Ctx,
    remote: Option<u32>,
    verdict: Verdict,
    reason: DropReason,
    cookie: u32,
) {
    let remote = match remote {
        Some(id) => id,
        None => remote_identity(c, &s.flow),
    };
    let (src_identity, dst_identity) = if c.dir == Direction::EGRESS {
        (c.ep.identity, remote)
    } else {
        (remote, c.ep.identity)
    };
    let t = &s.flow.tuple;
    // (`emit` stamps the time.)
    s.event = FlowEvent {
        time_ns: 0,
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        direction: c.dir.0,
        verdict: verdict.0,
        reason: reason.0,
        src_identity,
        dst_identity,
        cookie,
        ifindex: c.ifindex,
        endpoint_id: c.ep.endpoint_id,
        len: c.bytes as u32,
    };
    events::emit(&mut s.event, c.now);
}

#[inline(always)]
fn set_ct_key(k: &mut CtKey, t: &Tuple, scope: Direction) {
    k.saddr = t.saddr;
    k.daddr = t.daddr;
    k.sport = t.sport;
    k.dport = t.dport;
    k.proto = t.proto;
    k.scope = scope.0;
    k._pad = [0; 2];
}

/// The outcome of a conntrack hit: the action, and for a drop (policy removed since the flow was
/// admitted) the reason and rule.
struct Tracked {
    action: Action,
    reason: DropReason,
    cookie: u32,
}

/// What a conntrack check needs besides the key.
struct Ctx<'a> {
    ep: &'a EndpointInfo,
    ifindex: u32,
    dir: Direction,
    generation: u32,
    revision: u32,
    now: u64,
    bytes: u64,
    audit_all: bool,
    /// The packet carries the local proxy's mark.
    from_proxy: bool,
    /// `DatapathConfig::proxy_port` (0: no proxy).
    proxy_port: u16,
    /// The packet arrived on an uplink (judged as the destination pod's ingress).
    uplink: bool,
    /// The node's own stack sent the packet (`ingress_ifindex == 0`): not forwarded.
    local_origin: bool,
}

/// Conntrack for one key: `Some(action)` if `k` is a live flow (the packet's own direction, or
/// with `reply` the flow it answers), `None` otherwise.
#[inline(always)]
fn track_one(k: &CtKey, reply: bool, flow: &Flow, c: &Ctx) -> Option<Tracked> {
    let entry = CT.get_ptr_mut(k)?;
    // SAFETY: a pointer to a hash value, valid for this program run; concurrent updates from
    // other CPUs only race on timestamps and flag bits, which is harmless.
    let e = unsafe { &mut *entry };
    // Another CPU may have stamped the entry after this packet read the clock: a stamp ahead
    // of `now` is age 0 (a wrapping difference would call the live flow expired and drop it).
    if c.now.saturating_sub(e.last_seen_ns) > ct_lifetime_ns(k.proto, e.flags) {
        let _ = CT.remove(k);
        return None;
    }
    if e.revision != c.revision && from_host(c, Direction(k.scope), remote_identity(c, flow)) {
        e.revision = c.revision;
    }
    if e.revision != c.revision {
        // Policy changed since this flow was admitted: judge it again, in the scope it was
        // admitted in (the same endpoint; the remote side is the same peer either way).
        // A plaintext flow to a port that now requires mTLS ends here.
        let scope = Direction(k.scope);
        if scope == Direction::INGRESS
            && e.flags & CtFlags::PROXIED == 0
            && !c.audit_all
            && maps::mesh_flags(c.generation, c.ep.identity, k.proto, e.policy_port)
                & MeshFlags::REQUIRE_MTLS
                != 0
        {
            let _ = CT.remove(k);
            counters::dropped(DropReason::MTLS_REQUIRED, c.dir, c.bytes);
            return Some(Tracked {
                action: Action::Drop,
                reason: DropReason::MTLS_REQUIRED,
                cookie: e.cookie,
            });
        }
        let d = evaluate(
            c.generation,
            c.ep,
            Direction(k.scope),
            remote_identity(c, flow),
            k.proto,
            e.policy_port,
        );
        if d.verdict == Verdict::DENY && !(c.audit_all || d.audit) {
            let _ = CT.remove(k);
            counters::dropped(d.reason, c.dir, c.bytes);
            counters::decided(d.cookie, Verdict::DENY);
            return Some(Tracked {
                action: Action::Drop,
                reason: d.reason,
                cookie: d.cookie,
            });
        }
        counters::decided(
            d.cookie,
            if d.verdict == Verdict::DENY {
                Verdict::AUDIT
            } else {
                d.verdict
            },
        );
        e.revision = c.revision;
        e.cookie = d.cookie;
        // A redirected flow stays redirected: its packets cannot leave the proxy mid-stream.
        if e.verdict != Verdict::REDIRECT.0 {
            e.verdict = if d.verdict == Verdict::DENY {
                Verdict::AUDIT.0
            } else {
                d.verdict.0
            };
        }
    }
    // A flow the local proxy opened to the pod: only the proxy may send its forward packets.
    if !reply && e.flags & CtFlags::PROXIED != 0 && !c.from_proxy {
        counters::dropped(DropReason::MTLS_REQUIRED, c.dir, c.bytes);
        return Some(Tracked {
            action: Action::Drop,
            reason: DropReason::MTLS_REQUIRED,
            cookie: e.cookie,
        });
    }
    e.last_seen_ns = c.now;
    if reply {
        e.flags |= CtFlags::SEEN_REPLY;
    } else if e.flags & CtFlags::SEEN_REPLY != 0 && flow.confirms() {
        e.flags |= CtFlags::ESTABLISHED;
    }
    if flow.closing() {
        e.flags |= CtFlags::CLOSING;
    }
    counters::forwarded(c.dir, c.bytes);
    let action = if reply && e.flags & CtFlags::PROXIED != 0 {
        Action::ToProxy
    } else if !reply && e.verdict == Verdict::REDIRECT.0 {
        Action::Redirect {
            open: flow.opening(),
        }
    } else {
        Action::Pass
    };
    Some(Tracked {
        action,
        reason: DropReason::NONE,
        cookie: e.cookie,
    })
}

/// The policy lookup for a flow of `ep` in direction `dir` with `remote`: see
/// `rampart_common::policy` for the precedence rules.
#[inline(always)]
fn deny_rule(e: &PolicyEntry) -> Decision {
    Decision {
        verdict: Verdict::DENY,
        cookie: e.cookie,
        reason: DropReason::POLICY_DENY_RULE,
        audit: e.flags & PolicyEntryFlags::AUDIT != 0,
    }
}

/// The specific identity's entry if it is `wanted`, else ANY's if it is.
#[inline(always)]
fn first_of(
    specific: &PolicyEntry,
    any: &PolicyEntry,
    wanted: impl Fn(&PolicyEntry) -> bool,
) -> Option<PolicyEntry> {
    if wanted(specific) {
        Some(*specific)
    } else if wanted(any) {
        Some(*any)
    } else {
        None
    }
}

#[inline(always)]
fn evaluate(
    generation: u32,
    ep: &EndpointInfo,
    dir: Direction,
    remote: u32,
    proto: u8,
    port: u16,
) -> Decision {
    let specific = maps::policy_lookup(
        generation,
        &PolicyKey::new(ep.endpoint_id, remote, dir.0, proto, port),
    );
    let any = maps::policy_lookup(
        generation,
        &PolicyKey::new(ep.endpoint_id, Identity::ANY.0, dir.0, proto, port),
    );
    // An enforced deny from either lookup wins; then an allow/redirect (the specific identity's
    // first), which an audited deny turns into an audit record; with no allow, isolation
    // decides, and an audited deny is recorded only where the flow would pass anyway.
    let enforced =
        |e: &PolicyEntry| e.verdict == Verdict::DENY.0 && e.flags & PolicyEntryFlags::AUDIT == 0;
    if enforced(&specific) {
        return deny_rule(&specific);
    }
    if enforced(&any) {
        return deny_rule(&any);
    }
    let audit_deny = first_of(&specific, &any, |e| e.verdict == Verdict::DENY.0);
    let allow = first_of(&specific, &any, |e| {
        e.verdict == Verdict::ALLOW.0 || e.verdict == Verdict::REDIRECT.0
    });
    if let Some(d) = &audit_deny
        && (allow.is_some() || d.flags & PolicyEntryFlags::ALLOW_UNDER != 0)
    {
        return deny_rule(d);
    }
    if let Some(e) = allow {
        return Decision {
            verdict: Verdict(e.verdict),
            cookie: e.cookie,
            reason: DropReason::NONE,
            audit: false,
        };
    }
    let (isolated, audited) = if dir == Direction::INGRESS {
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
    if isolated && !(audited && audit_deny.is_some()) {
        Decision {
            verdict: Verdict::DENY,
            cookie: 0,
            reason: DropReason::POLICY_DENIED,
            audit: audited,
        }
    } else if let Some(d) = &audit_deny {
        // Would pass (not isolated, or isolation only audited): the audited deny is recorded.
        deny_rule(d)
    } else {
        Decision {
            verdict: Verdict::ALLOW,
            cookie: 0,
            reason: DropReason::NONE,
            audit: false,
        }
    }
}
