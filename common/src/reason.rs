//! Drop reasons: an **append-only** numbered table shared by the kernel programs, the agent's
//! metrics (`rampart_drops_total{reason}`), the flow log and, later, the proxy's deny reasons.
//! A code, once published, never changes meaning; new reasons get the next free number.

/// Why a packet was dropped (or, in audit mode, would have been). `0` is never a drop.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropReason(pub u8);

impl DropReason {
    /// Not a drop (used in events for forwarded packets).
    pub const NONE: DropReason = DropReason(0);
    /// The local endpoint is isolated in this direction and no rule allows the flow.
    pub const POLICY_DENIED: DropReason = DropReason(1);
    /// An explicit deny rule matched the flow.
    pub const POLICY_DENY_RULE: DropReason = DropReason(2);
    /// Header fields are inconsistent (bad IP version, IHL below 5, length fields).
    pub const INVALID_PACKET: DropReason = DropReason(3);
    /// The packet ends inside a header the decision needs.
    pub const TRUNCATED_HEADER: DropReason = DropReason(4);
    /// A later IP fragment whose first fragment was not seen, was dropped, or is too old (see
    /// `frag.rs`): it cannot be tied to a flow.
    pub const UNSUPPORTED_FRAGMENT: DropReason = DropReason(5);
    /// A new flow was allowed but its conntrack entry could not be created.
    pub const CT_FULL: DropReason = DropReason(6);
    /// A map lookup that cannot fail did (a program/map mismatch).
    pub const MAP_LOOKUP_FAILED: DropReason = DropReason(7);
    /// The source address of a packet from a pod does not belong to that pod.
    pub const SOURCE_SPOOFED: DropReason = DropReason(8);
    /// A frame from a pod that is neither IPv4, IPv6 nor ARP.
    pub const UNSUPPORTED_L3: DropReason = DropReason(9);
    /// More IPv6 extension headers than the program walks, or a header it cannot skip.
    pub const UNSUPPORTED_IPV6_EXT: DropReason = DropReason(10);
    /// Policy requires mTLS for this destination port, and the packet did not come through the
    /// local proxy (plaintext that bypasses the tunnel).
    pub const MTLS_REQUIRED: DropReason = DropReason(11);
    /// The flow must go to the local proxy, and its listener is not there.
    pub const PROXY_UNAVAILABLE: DropReason = DropReason(12);
    /// A source identity opened new connections to a destination port faster than its
    /// MeshPolicy's flood brake allows.
    pub const FLOOD_BRAKE: DropReason = DropReason(13);

    /// Reasons are counted in slots `0..SLOTS`; codes at or above it share the last slot.
    pub const SLOTS: u32 = 16;

    /// Every defined reason, in code order.
    pub const ALL: [DropReason; 14] = [
        DropReason::NONE,
        DropReason::POLICY_DENIED,
        DropReason::POLICY_DENY_RULE,
        DropReason::INVALID_PACKET,
        DropReason::TRUNCATED_HEADER,
        DropReason::UNSUPPORTED_FRAGMENT,
        DropReason::CT_FULL,
        DropReason::MAP_LOOKUP_FAILED,
        DropReason::SOURCE_SPOOFED,
        DropReason::UNSUPPORTED_L3,
        DropReason::UNSUPPORTED_IPV6_EXT,
        DropReason::MTLS_REQUIRED,
        DropReason::PROXY_UNAVAILABLE,
        DropReason::FLOOD_BRAKE,
    ];

    /// The snake_case name used in metric labels and flow logs.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "none",
            1 => "policy_denied",
            2 => "policy_deny_rule",
            3 => "invalid_packet",
            4 => "truncated_header",
            5 => "unsupported_fragment",
            6 => "ct_full",
            7 => "map_lookup_failed",
            8 => "source_spoofed",
            9 => "unsupported_l3",
            10 => "unsupported_ipv6_ext",
            11 => "mtls_required",
            12 => "proxy_unavailable",
            13 => "flood_brake",
            _ => "unknown",
        }
    }
}

/// Traffic direction, always from the local endpoint's point of view.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Direction(pub u8);

impl Direction {
    /// Into the local endpoint (its ingress policy applies).
    pub const INGRESS: Direction = Direction(0);
    /// Out of the local endpoint (its egress policy applies).
    pub const EGRESS: Direction = Direction(1);
    pub const ALL: [Direction; 2] = [Direction::INGRESS, Direction::EGRESS];

    pub const fn name(self) -> &'static str {
        if self.0 == 0 { "ingress" } else { "egress" }
    }

    pub const fn opposite(self) -> Direction {
        Direction(1 - (self.0 & 1))
    }
}

/// Index of (reason, direction) in `DROP_STATS_V1` / `AUDIT_STATS_V1`.
pub const fn drop_slot(reason: DropReason, dir: Direction) -> u32 {
    let r = if (reason.0 as u32) < DropReason::SLOTS {
        reason.0 as u32
    } else {
        DropReason::SLOTS - 1
    };
    r * 2 + (dir.0 as u32 & 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_named() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.0 as usize, i, "the table is append-only and dense");
            assert_ne!(r.name(), "unknown");
        }
        assert!((DropReason::ALL.len() as u32) < DropReason::SLOTS);
    }

    #[test]
    fn slots_are_distinct() {
        let mut seen = [false; (DropReason::SLOTS * 2) as usize];
        for r in DropReason::ALL {
            for d in Direction::ALL {
                let s = drop_slot(r, d) as usize;
                assert!(!seen[s]);
                seen[s] = true;
            }
        }
        assert_eq!(
            drop_slot(DropReason(200), Direction::EGRESS),
            DropReason::SLOTS * 2 - 1
        );
    }
}
