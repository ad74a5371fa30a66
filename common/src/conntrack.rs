//! Connection tracking: `CT_V3`, a hash of [`CtKey`] → [`CtEntry`] with [`crate::maps::MAX_CT`]
//! entries.
//!
//! A flow is tracked per *scope*: the direction of the local endpoint whose policy admitted it.
//! A pod-to-pod flow on one node therefore has two entries: the client's egress and the server's
//! ingress, each created when that side's policy allowed the flow. A packet first looks up its own
//! tuple in its own scope (an established flow), then its reversed tuple in the opposite scope (a
//! reply); only if both miss is policy evaluated.
//!
//! Addresses are 16 bytes: IPv4 as `::ffff:a.b.c.d`. Ports are host byte order; for ICMP echo the
//! identifier is the source port and the destination port is 0; other ICMP has ports 0.
//!
//! Lifetimes (Cilium's defaults): TCP established 6 h, TCP until its handshake completes (the
//! originator's first packet without SYN after a reply: [`CtFlags::ESTABLISHED`]) 60 s, TCP after
//! FIN or RST 10 s, everything else 60 s after the last packet. An expired entry is a miss.
//!
//! Entries remember the policy revision (`CONFIG_V1.revision`) that admitted them. When policy
//! changes, the next packet of an established flow re-evaluates the flow's policy: a flow whose
//! allow was removed stops at its next packet, not only at its next connection.
//!
//! The table never evicts a live flow for a new one (`CT_V2` was an LRU: a flood of new flows,
//! a SYN flood from spoofed sources, pushed established flows out, and a proxied flow or a
//! reply that only its entry admitted broke). When it is full a new flow is dropped and counted
//! as `ct_full`; the agent sweeps expired entries out every few seconds and, while the table
//! is nearly full ([`CT_PRESSURE_PERCENT`]), also TCP entries whose handshake never completed
//! and that have been idle for [`CT_PRESSURE_UNCONFIRMED_NS`] (as Linux's conntrack drops
//! unconfirmed entries early): a flood fills the table, established flows keep their entries,
//! and new flows find room again as soon as the flood stops.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The `Direction` of the local endpoint that admitted the flow.
    pub scope: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// The key of the other direction of the same flow, in the opposite scope.
    pub const fn reply_key(&self) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            scope: 1 - (self.scope & 1),
            _pad: [0; 2],
        }
    }
}

/// A tracked flow's state (`CT_V2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryV2 {
    /// `bpf_ktime_get_ns()` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// Policy revision that admitted (or last re-admitted) the flow.
    pub revision: u32,
    /// Cookie of the rule that admitted it (0: default allow).
    pub cookie: u32,
    /// [`CtFlags`] bits.
    pub flags: u16,
    /// [`crate::policy::Verdict`] code that admitted it (allow, redirect or audit).
    pub verdict: u8,
    pub _pad: u8,
    /// The port the policy was looked up with (the destination port; the ICMP type), kept so the
    /// flow can be re-evaluated from either direction after a policy change.
    pub policy_port: u16,
    pub _pad2: [u8; 2],
    /// `bpf_ktime_get_ns()` when the entry was created (the flow's age).
    pub created_ns: u64,
}

const _: () = assert!(core::mem::size_of::<CtEntryV2>() == 32);

/// The entry of `CT_V3` (and of `CT_V2`, the previous layout's LRU: its entries are carried
/// over unchanged).
pub type CtEntry = CtEntryV2;

/// Bits of [`CtEntry::flags`].
pub struct CtFlags;

impl CtFlags {
    /// A packet in the reply direction has been seen.
    pub const SEEN_REPLY: u16 = 1 << 0;
    /// TCP FIN or RST seen: the flow is closing.
    pub const CLOSING: u16 = 1 << 1;
    /// The local proxy opened this flow to a pod (mTLS-terminated on this node): its forward
    /// packets must carry the proxy's mark, and its replies are marked back to the proxy.
    pub const PROXIED: u16 = 1 << 2;
    /// TCP: the handshake completed (a packet without SYN from the originator after a reply).
    /// Until then a flow lives [`CT_TCP_SYN_NS`]: a SYN from a spoofed source is answered, but
    /// never acknowledged.
    pub const ESTABLISHED: u16 = 1 << 3;
}

/// Lifetimes, in nanoseconds.
pub const CT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
pub const CT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_OTHER_NS: u64 = 60 * 1_000_000_000;

/// The table is under pressure from this fill on (percent of its entries).
pub const CT_PRESSURE_PERCENT: u64 = 88;
/// Under pressure, a TCP entry whose handshake never completed lives this long after its last
/// packet.
pub const CT_PRESSURE_UNCONFIRMED_NS: u64 = 20 * 1_000_000_000;

/// How long an entry lives after its last packet.
pub const fn ct_lifetime_ns(proto: u8, flags: u16) -> u64 {
    if proto != 6 {
        CT_OTHER_NS
    } else if flags & CtFlags::CLOSING != 0 {
        CT_TCP_CLOSING_NS
    } else if flags & CtFlags::ESTABLISHED != 0 {
        CT_TCP_ESTABLISHED_NS
    } else {
        CT_TCP_SYN_NS
    }
}

/// Why the sweep removes an entry at `now_ns`, if it does: expired, or (with `pressure`) an
/// unconfirmed TCP flow idle past [`CT_PRESSURE_UNCONFIRMED_NS`].
pub const fn ct_sweep(key: &CtKey, entry: &CtEntry, now_ns: u64, pressure: bool) -> Option<Swept> {
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    if idle > ct_lifetime_ns(key.proto, entry.flags) {
        Some(Swept::Expired)
    } else if pressure
        && key.proto == 6
        && entry.flags & (CtFlags::ESTABLISHED | CtFlags::CLOSING) == 0
        && idle > CT_PRESSURE_UNCONFIRMED_NS
    {
        Some(Swept::Unconfirmed)
    } else {
        None
    }
}

/// Why the sweep removed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    Expired,
    Unconfirmed,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for CtEntryV2 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_key_flips_tuple_and_scope() {
        let k = CtKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport: 1000,
            dport: 80,
            proto: 6,
            scope: 1,
            _pad: [0; 2],
        };
        let r = k.reply_key();
        assert_eq!(
            (r.saddr, r.daddr, r.sport, r.dport, r.scope),
            ([2; 16], [1; 16], 80, 1000, 0)
        );
        assert_eq!(r.reply_key(), k);
    }

    #[test]
    fn tcp_lifetime_follows_state() {
        assert_eq!(ct_lifetime_ns(6, 0), CT_TCP_SYN_NS);
        // A reply alone (a SYN-ACK to a spoofed source) is not an established flow.
        assert_eq!(ct_lifetime_ns(6, CtFlags::SEEN_REPLY), CT_TCP_SYN_NS);
        let established = CtFlags::SEEN_REPLY | CtFlags::ESTABLISHED;
        assert_eq!(ct_lifetime_ns(6, established), CT_TCP_ESTABLISHED_NS);
        assert_eq!(
            ct_lifetime_ns(6, established | CtFlags::CLOSING),
            CT_TCP_CLOSING_NS
        );
        assert_eq!(ct_lifetime_ns(17, 0), CT_OTHER_NS);
    }

    #[test]
    fn the_sweep_removes_expired_entries_and_under_pressure_unconfirmed_ones() {
        let key = |proto| CtKey {
            proto,
            ..CtKey::default()
        };
        let entry = |flags, last_seen_ns| CtEntry {
            flags,
            last_seen_ns,
            ..CtEntry::default()
        };
        let s = 1_000_000_000u64;
        let now = 100_000 * s;
        let syn_only = entry(CtFlags::SEEN_REPLY, now - 30 * s);
        assert_eq!(ct_sweep(&key(6), &syn_only, now, false), None);
        assert_eq!(
            ct_sweep(&key(6), &syn_only, now, true),
            Some(Swept::Unconfirmed)
        );
        let established = entry(CtFlags::SEEN_REPLY | CtFlags::ESTABLISHED, now - 3600 * s);
        assert_eq!(ct_sweep(&key(6), &established, now, true), None);
        assert_eq!(
            ct_sweep(&key(6), &entry(0, now - 61 * s), now, false),
            Some(Swept::Expired)
        );
        // UDP is never "unconfirmed": it ages out by its own lifetime only.
        assert_eq!(ct_sweep(&key(17), &entry(0, now - 10 * s), now, true), None);
        // A stamp ahead of the sweep's clock is age 0.
        assert_eq!(ct_sweep(&key(6), &entry(0, now + s), now, true), None);
    }
}
