//! Connection tracking: `CT_V1`, an LRU hash of [`CtKey`] → [`CtEntry`].
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
//! Lifetimes (Cilium's defaults): TCP established 6 h, TCP before the reply 60 s, TCP after FIN
//! or RST 10 s, everything else 60 s after the last packet. An expired entry is a miss.
//!
//! Entries remember the policy revision (`CONFIG_V1.revision`) that admitted them. When policy
//! changes, the next packet of an established flow re-evaluates the flow's policy: a flow whose
//! allow was removed stops at its next packet, not only at its next connection.
//!
//! When the LRU is full the kernel evicts the least recently used entry; an evicted flow's next
//! packet is evaluated as a new flow (its forward direction is re-admitted if policy still allows
//! it; a reply whose entry was evicted is judged by the replying side's policy).

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

/// The flow state of the previous layout (`CT_V1`, without `created_ns`): an upgraded agent
/// carries its entries into `CT_V2` (see the agent's `datapath::migrate`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryV1 {
    pub last_seen_ns: u64,
    pub revision: u32,
    pub cookie: u32,
    pub flags: u16,
    pub verdict: u8,
    pub _pad: u8,
    pub policy_port: u16,
    pub _pad2: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<CtEntryV1>() == 24);

impl CtEntryV2 {
    /// A `CT_V1` entry in this layout; its age starts at its last packet (the oldest time
    /// known).
    pub const fn from_v1(v1: &CtEntryV1) -> CtEntryV2 {
        CtEntryV2 {
            last_seen_ns: v1.last_seen_ns,
            revision: v1.revision,
            cookie: v1.cookie,
            flags: v1.flags,
            verdict: v1.verdict,
            _pad: 0,
            policy_port: v1.policy_port,
            _pad2: [0; 2],
            created_ns: v1.last_seen_ns,
        }
    }
}

/// The layout the programs use: `CT_V2`, or `CT_V1` in the build of the previous layout
/// (feature `previous-layout`, for the upgrade test).
#[cfg(not(feature = "previous-layout"))]
pub type CtEntry = CtEntryV2;
#[cfg(feature = "previous-layout")]
pub type CtEntry = CtEntryV1;

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
}

/// Lifetimes, in nanoseconds.
pub const CT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
pub const CT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_OTHER_NS: u64 = 60 * 1_000_000_000;

/// How long an entry lives after its last packet.
pub const fn ct_lifetime_ns(proto: u8, flags: u16) -> u64 {
    if proto != 6 {
        CT_OTHER_NS
    } else if flags & CtFlags::CLOSING != 0 {
        CT_TCP_CLOSING_NS
    } else if flags & CtFlags::SEEN_REPLY != 0 {
        CT_TCP_ESTABLISHED_NS
    } else {
        CT_TCP_SYN_NS
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for CtEntryV2 {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for CtEntryV1 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_layout_entry_keeps_every_field_and_ages_from_its_last_packet() {
        let v1 = CtEntryV1 {
            last_seen_ns: 7,
            revision: 3,
            cookie: 9,
            flags: CtFlags::SEEN_REPLY | CtFlags::PROXIED,
            verdict: 2,
            _pad: 0,
            policy_port: 443,
            _pad2: [0; 2],
        };
        let v2 = CtEntryV2::from_v1(&v1);
        assert_eq!(
            (
                v2.last_seen_ns,
                v2.revision,
                v2.cookie,
                v2.flags,
                v2.verdict,
                v2.policy_port
            ),
            (7, 3, 9, v1.flags, 2, 443)
        );
        assert_eq!(v2.created_ns, 7);
    }

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
        assert_eq!(
            ct_lifetime_ns(6, CtFlags::SEEN_REPLY),
            CT_TCP_ESTABLISHED_NS
        );
        assert_eq!(
            ct_lifetime_ns(6, CtFlags::SEEN_REPLY | CtFlags::CLOSING),
            CT_TCP_CLOSING_NS
        );
        assert_eq!(ct_lifetime_ns(17, 0), CT_OTHER_NS);
    }
}
