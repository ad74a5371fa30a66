//! The policy map: `POLICY_A_V1` / `POLICY_B_V1`, an LPM trie of [`PolicyKey`] → [`PolicyEntry`].
//!
//! ## Key layout and wildcards
//! The key is 12 bytes compared bit by bit from the first, so fields are in match order and in
//! network byte order:
//!
//! | bytes | field | match |
//! | --- | --- | --- |
//! | 0..4 | local endpoint id | always exact |
//! | 4..8 | remote identity (0 = any) | always exact |
//! | 8 | direction | always exact |
//! | 9 | L4 protocol (IANA number) | exact, or wildcard when the prefix stops before it |
//! | 10..12 | destination port | a prefix of its 16 bits: a port range is a set of prefixes |
//!
//! Prefix lengths: [`PREFIX_ANY_PROTO`] (72 bits: any protocol, any port),
//! [`PREFIX_ANY_PORT`] (80: this protocol, any port), `PREFIX_ANY_PORT + n` (the first `n` bits of
//! the port), [`PREFIX_FULL`] (96: one port).
//!
//! ## Lookup and precedence (done by the programs for a new flow)
//! 1. longest match for (endpoint, remote identity, direction, proto, port);
//! 2. longest match for (endpoint, `ANY`, direction, proto, port);
//! 3. a `DENY` from either wins; else an allow/redirect from 1, else from 2;
//! 4. no match: denied (`policy_denied`) if the endpoint is isolated in that direction, else allowed.
//!
//! Within one (endpoint, remote, direction) the writer keeps the trie deny-consistent: an allow
//! entry that a shorter deny prefix covers is not written (the agent's policy-map builder does it),
//! so the longest match never lets a more specific allow override a broader deny.

/// The key data; the trie key is `aya`'s `Key { prefix_len: u32, data: PolicyKey }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint_id: [u8; 4],
    pub remote_identity: [u8; 4],
    pub direction: u8,
    pub proto: u8,
    pub dport: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Prefix covering endpoint, remote identity and direction: any protocol and port.
pub const PREFIX_ANY_PROTO: u32 = 72;
/// Prefix also covering the protocol: any port of it.
pub const PREFIX_ANY_PORT: u32 = 80;
/// Every bit: one port.
pub const PREFIX_FULL: u32 = 96;

impl PolicyKey {
    pub const fn new(
        endpoint_id: u32,
        remote_identity: u32,
        direction: u8,
        proto: u8,
        dport: u16,
    ) -> PolicyKey {
        PolicyKey {
            endpoint_id: endpoint_id.to_be_bytes(),
            remote_identity: remote_identity.to_be_bytes(),
            direction,
            proto,
            dport: dport.to_be_bytes(),
        }
    }
}

/// What a matching rule decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    /// [`Verdict`] code.
    pub verdict: u8,
    /// [`PolicyEntryFlags`] bits.
    pub flags: u8,
    /// Proxy listener port for `REDIRECT` (host byte order), else 0.
    pub proxy_port: u16,
    /// Which policy and rule decided: shown in metrics, events and `policy explain`.
    pub cookie: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 8);

/// Verdict codes of [`PolicyEntry::verdict`] and of events.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Verdict(pub u8);

impl Verdict {
    pub const NONE: Verdict = Verdict(0);
    pub const ALLOW: Verdict = Verdict(1);
    pub const DENY: Verdict = Verdict(2);
    pub const REDIRECT: Verdict = Verdict(3);
    /// Only in events and counters: a deny that audit mode let through.
    pub const AUDIT: Verdict = Verdict(4);

    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "allow",
            2 => "deny",
            3 => "redirect",
            4 => "audit",
            _ => "none",
        }
    }
}

/// Bits of [`PolicyEntry::flags`].
pub struct PolicyEntryFlags;

impl PolicyEntryFlags {
    /// A `DENY` from this entry is counted and audited, not enforced.
    pub const AUDIT: u8 = 1 << 0;
    /// On an audited `DENY`: an allow of the same space covers this key too (the trie keeps one
    /// entry per prefix, so the allow is not seen beside it). Without it, an audited deny does
    /// not let through what isolation drops.
    pub const ALLOW_UNDER: u8 = 1 << 1;
}

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays only, no padding (asserted).
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for PolicyEntry {}
