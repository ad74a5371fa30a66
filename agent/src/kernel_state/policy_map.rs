//! Turns policy rules into the entries of the kernel's policy trie (`rampart_common::policy`).
//! Pure: rules in, entries out; no I/O. The policy compiler produces [`PolicyRule`]s; the loader
//! writes the resulting [`PolicyMapEntry`]s.
//!
//! What it guarantees about its output, per (endpoint, remote identity, direction):
//! - one entry per (key, prefix): where rules overlap exactly, a deny beats a redirect beats an
//!   allow, an enforced deny beats an audited one, and the lower cookie wins a tie;
//! - no allow or redirect entry lies inside a deny prefix: the longest-prefix match the kernel
//!   does can then never pick a specific allow over a broader deny (deny wins over allow).
//!
//! Deny versus allow across the specific remote identity and `ANY` is resolved by the kernel,
//! which looks up both.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use rampart_common::identity::Identity;
use rampart_common::policy::{
    PREFIX_ANY_PORT, PREFIX_ANY_PROTO, PolicyEntry, PolicyEntryFlags, PolicyKey, Verdict,
};
use rampart_common::reason::Direction;

/// One rule: this endpoint, in this direction, with this remote identity (or any), on this
/// protocol (or any) and destination ports (or all), gets this verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub endpoint_id: u32,
    /// `Identity::ANY` for every remote.
    pub remote: Identity,
    pub direction: Direction,
    /// `None`: every protocol (and every port).
    pub proto: Option<u8>,
    /// `None`: every port of `proto`.
    pub ports: Option<RangeInclusive<u16>>,
    pub verdict: Verdict,
    pub cookie: u32,
    /// A deny that is only counted, not enforced.
    pub audit: bool,
    /// The proxy port of a `REDIRECT`.
    pub proxy_port: u16,
}

impl PolicyRule {
    /// An allow rule with no ports, protocol or audit: adjust fields from here.
    pub fn allow(endpoint_id: u32, remote: Identity, direction: Direction) -> PolicyRule {
        PolicyRule {
            endpoint_id,
            remote,
            direction,
            proto: None,
            ports: None,
            verdict: Verdict::ALLOW,
            cookie: 0,
            audit: false,
            proxy_port: 0,
        }
    }
}

/// One entry of the policy trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyMapEntry {
    pub key: PolicyKey,
    pub prefix_len: u32,
    pub entry: PolicyEntry,
}

/// The trie's "space" a rule lives in, and the 24 bits (proto, port) it matches a prefix of.
type Space = (u32, u32, u8);

/// Builds the trie entries for `rules` (see the module docs for what the output guarantees).
pub fn build(rules: &[PolicyRule]) -> Vec<PolicyMapEntry> {
    // (space) → (bits, prefix) → entry, merged by precedence.
    let mut spaces: BTreeMap<Space, BTreeMap<(u32, u32), PolicyEntry>> = BTreeMap::new();
    for rule in rules {
        let space = (rule.endpoint_id, rule.remote.0, rule.direction.0);
        let entry = PolicyEntry {
            verdict: rule.verdict.0,
            flags: if rule.audit {
                PolicyEntryFlags::AUDIT
            } else {
                0
            },
            proxy_port: if rule.verdict == Verdict::REDIRECT {
                rule.proxy_port
            } else {
                0
            },
            cookie: rule.cookie,
        };
        let slot = spaces.entry(space).or_default();
        for (bits, prefix) in rule_prefixes(rule) {
            slot.entry((bits, prefix))
                .and_modify(|have| {
                    let allow = |e: &PolicyEntry| {
                        e.verdict == Verdict::ALLOW.0 || e.verdict == Verdict::REDIRECT.0
                    };
                    let had_allow = allow(have) || have.flags & PolicyEntryFlags::ALLOW_UNDER != 0;
                    if outranks(&entry, have) {
                        *have = entry;
                    }
                    let audited_deny = have.verdict == Verdict::DENY.0
                        && have.flags & PolicyEntryFlags::AUDIT != 0;
                    if audited_deny && (had_allow || allow(&entry)) {
                        have.flags |= PolicyEntryFlags::ALLOW_UNDER;
                    }
                })
                .or_insert(entry);
        }
    }
    let mut out = Vec::new();
    for ((endpoint_id, remote, direction), entries) in spaces {
        // Entries a broader deny covers are not written: every allow/redirect, and audited denies
        // under an enforced one (the enforced deny must win the longest match).
        let denies: Vec<(u32, u32, bool)> = entries
            .iter()
            .filter(|(_, e)| e.verdict == Verdict::DENY.0)
            .map(|(k, e)| (k.0, k.1, e.flags & PolicyEntryFlags::AUDIT == 0))
            .collect();
        let allows: Vec<(u32, u32)> = entries
            .iter()
            .filter(|(_, e)| e.verdict == Verdict::ALLOW.0 || e.verdict == Verdict::REDIRECT.0)
            .map(|(k, _)| *k)
            .collect();
        for ((bits, prefix), mut entry) in entries {
            let audited_deny =
                entry.verdict == Verdict::DENY.0 && entry.flags & PolicyEntryFlags::AUDIT != 0;
            if audited_deny
                && allows
                    .iter()
                    .any(|&(abits, aprefix)| aprefix <= prefix && covers(abits, aprefix, bits))
            {
                entry.flags |= PolicyEntryFlags::ALLOW_UNDER;
            }
            let shadowed = (entry.verdict != Verdict::DENY.0 || audited_deny)
                && denies.iter().any(|&(dbits, dprefix, enforced)| {
                    dprefix < prefix && covers(dbits, dprefix, bits) && (enforced || !audited_deny)
                });
            if shadowed {
                continue;
            }
            let proto = (bits >> 16) as u8;
            let port = (bits & 0xffff) as u16;
            out.push(PolicyMapEntry {
                key: PolicyKey::new(endpoint_id, remote, direction, proto, port),
                prefix_len: PREFIX_ANY_PROTO + prefix,
                entry,
            });
        }
    }
    out
}

/// The entries last built per space (endpoint, remote identity, direction), with the rules they
/// were built from. A space's entries depend on its rules alone (every trie key starts with
/// the space, and `build` merges within a space only), so a space whose rules did not change
/// gets its entries back: a pod event at 100k rules changes the rules of the identities it
/// touches, and every other space is as it was.
#[derive(Debug, Default)]
pub struct BuildMemo {
    spaces: HashMap<Space, (Vec<PolicyRule>, Vec<PolicyMapEntry>)>,
    /// Rules and entries of the last call (the next one's lists are sized from them).
    rules: usize,
    entries: usize,
    /// Spaces built (not reused) so far.
    #[cfg(test)]
    built: usize,
}

impl BuildMemo {
    /// How many rules the last call had.
    pub fn rules_last_built(&self) -> usize {
        self.rules
    }

    /// [`build`], building only the spaces whose rules changed since the last call (the memo
    /// then holds this call's spaces only).
    pub fn build(&mut self, rules: Vec<PolicyRule>) -> Vec<PolicyMapEntry> {
        // Rules come in runs of one space (a policy's rules for one peer, port after port):
        // a run is gathered before its space is looked up.
        self.rules = rules.len();
        let mut by_space: HashMap<Space, Vec<PolicyRule>> = HashMap::new();
        // A run becomes its space's list, or is appended to it (a space seen before).
        let mut gather = |space: Space, list: Vec<PolicyRule>| match by_space.entry(space) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(list);
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => slot.get_mut().extend(list),
        };
        let mut run: Option<(Space, Vec<PolicyRule>)> = None;
        for rule in rules {
            let space = (rule.endpoint_id, rule.remote.0, rule.direction.0);
            match &mut run {
                Some((current, list)) if *current == space => list.push(rule),
                _ => {
                    if let Some((current, list)) = run.replace((space, vec![rule])) {
                        gather(current, list);
                    }
                }
            }
        }
        if let Some((current, list)) = run {
            gather(current, list);
        }
        // `build` orders its output by space: so does this.
        let mut spaces: Vec<(Space, Vec<PolicyRule>)> = by_space.into_iter().collect();
        spaces.sort_unstable_by_key(|(space, _)| *space);
        let mut next = HashMap::with_capacity(spaces.len());
        let mut out = Vec::with_capacity(self.entries);
        for (space, rules) in spaces {
            let entries = match self.spaces.remove(&space) {
                Some((built_from, entries)) if built_from == rules => entries,
                _ => {
                    #[cfg(test)]
                    {
                        self.built += 1;
                    }
                    build(&rules)
                }
            };
            out.extend_from_slice(&entries);
            next.insert(space, (rules, entries));
        }
        self.spaces = next;
        self.entries = out.len();
        out
    }
}

/// Whether `new` should replace `have` for the same key and prefix.
fn outranks(new: &PolicyEntry, have: &PolicyEntry) -> bool {
    let rank = |e: &PolicyEntry| match Verdict(e.verdict) {
        Verdict::DENY if e.flags & PolicyEntryFlags::AUDIT == 0 => 4,
        Verdict::DENY => 3,
        Verdict::REDIRECT => 2,
        Verdict::ALLOW => 1,
        _ => 0,
    };
    (rank(new), std::cmp::Reverse(new.cookie)) > (rank(have), std::cmp::Reverse(have.cookie))
}

/// Whether the prefix `(dbits, dprefix)` of the 24-bit (proto, port) space contains `bits`.
fn covers(dbits: u32, dprefix: u32, bits: u32) -> bool {
    if dprefix == 0 {
        return true;
    }
    let shift = 24 - dprefix;
    (dbits >> shift) == (bits >> shift)
}

/// Protocols with ports, for a rule that names ports but no protocol.
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// The (bits, prefix length within the 24-bit proto+port space) entries of one rule. A rule with
/// ports but no protocol means those ports of TCP, UDP and SCTP (never "every protocol").
fn rule_prefixes(rule: &PolicyRule) -> Vec<(u32, u32)> {
    let Some(proto) = rule.proto else {
        if rule.ports.is_some() {
            return PORT_PROTOCOLS
                .iter()
                .flat_map(|&p| {
                    rule_prefixes(&PolicyRule {
                        proto: Some(p),
                        ..rule.clone()
                    })
                })
                .collect();
        }
        return vec![(0, 0)];
    };
    let base = u32::from(proto) << 16;
    let Some(ports) = &rule.ports else {
        return vec![(base, PREFIX_ANY_PORT - PREFIX_ANY_PROTO)];
    };
    port_range_prefixes(*ports.start(), *ports.end())
        .into_iter()
        .map(|(port, len)| {
            (
                base | u32::from(port),
                PREFIX_ANY_PORT - PREFIX_ANY_PROTO + len,
            )
        })
        .collect()
}

/// The smallest set of (port, prefix length) blocks covering `lo..=hi` exactly (at most 30).
/// An empty range (`lo > hi`) covers nothing.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_builds_what_build_does_and_rebuilds_only_changed_spaces() {
        let rule = |endpoint_id: u32, remote: u32, port: u16, cookie: u32| PolicyRule {
            proto: Some(6),
            ports: Some(port..=port),
            cookie,
            ..PolicyRule::allow(endpoint_id, Identity(remote), Direction::INGRESS)
        };
        let first = vec![
            rule(2, 300, 80, 1),
            rule(1, 301, 443, 2),
            rule(2, 302, 22, 3),
            rule(2, 300, 81, 5),
        ];
        let mut memo = BuildMemo::default();
        assert_eq!(memo.build(first.clone()), build(&first));
        assert_eq!(memo.built, 3);
        // Endpoint 1's space changes, endpoint 2's do not, endpoint 3's is new.
        let second = vec![
            rule(2, 300, 80, 1),
            rule(1, 301, 8443, 2),
            rule(2, 302, 22, 3),
            rule(3, 303, 53, 4),
            rule(2, 300, 81, 5),
        ];
        assert_eq!(memo.build(second.clone()), build(&second));
        assert_eq!(
            memo.built, 5,
            "(1, 301) and (3, 303) built, the others reused"
        );
        assert_eq!(memo.spaces.len(), 4);
        // One identity's rules change on an endpoint: that space alone is built again.
        let mut third = second.clone();
        third[4].ports = Some(82..=82);
        assert_eq!(memo.build(third.clone()), build(&third));
        assert_eq!(memo.built, 6, "(2, 300) built, (2, 302) reused");
        // A removed space leaves the memo.
        let fourth = vec![rule(3, 303, 53, 4)];
        assert_eq!(memo.build(fourth.clone()), build(&fourth));
        assert_eq!(memo.built, 6, "(3, 303) reused");
        assert_eq!(
            memo.spaces.keys().copied().collect::<Vec<_>>(),
            [(3, 303, Direction::INGRESS.0)]
        );
        assert_eq!(memo.build(Vec::new()), Vec::new());
    }

    fn covered_ports(prefixes: &[(u16, u32)]) -> Vec<u32> {
        let mut ports: Vec<u32> = prefixes
            .iter()
            .flat_map(|&(p, len)| {
                let size = 1u32 << (16 - len);
                u32::from(p)..u32::from(p) + size
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn port_ranges_are_covered_exactly() {
        for (lo, hi) in [
            (0, 65535),
            (80, 80),
            (53, 80),
            (53, 84),
            (1, 65535),
            (1024, 2047),
            (65535, 65535),
            (0, 0),
        ] {
            let prefixes = port_range_prefixes(lo, hi);
            assert_eq!(
                covered_ports(&prefixes),
                (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>(),
                "{lo}-{hi}"
            );
            assert!(
                prefixes.len() <= 30,
                "{lo}-{hi}: {} prefixes",
                prefixes.len()
            );
        }
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert!(port_range_prefixes(90, 80).is_empty());
    }

    fn tcp(rule: PolicyRule, lo: u16, hi: u16) -> PolicyRule {
        PolicyRule {
            proto: Some(6),
            ports: Some(lo..=hi),
            ..rule
        }
    }

    #[test]
    fn a_broader_deny_removes_the_allows_it_covers() {
        let allow80 = tcp(
            PolicyRule {
                cookie: 1,
                ..PolicyRule::allow(7, Identity(300), Direction::INGRESS)
            },
            80,
            80,
        );
        let deny_tcp = PolicyRule {
            proto: Some(6),
            verdict: Verdict::DENY,
            cookie: 2,
            ..PolicyRule::allow(7, Identity(300), Direction::INGRESS)
        };
        let allow_udp = PolicyRule {
            proto: Some(17),
            cookie: 3,
            ..PolicyRule::allow(7, Identity(300), Direction::INGRESS)
        };
        let out = build(&[allow80, deny_tcp, allow_udp]);
        let verdicts: Vec<(u8, u32, u8)> = out
            .iter()
            .map(|e| (e.key.proto, e.prefix_len, e.entry.verdict))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (6, PREFIX_ANY_PORT, Verdict::DENY.0),
                (17, PREFIX_ANY_PORT, Verdict::ALLOW.0)
            ]
        );
    }

    #[test]
    fn a_narrower_deny_stays_beside_a_broader_allow() {
        let base = PolicyRule::allow(7, Identity::ANY, Direction::EGRESS);
        let allow_all = PolicyRule {
            cookie: 1,
            ..base.clone()
        };
        let deny53 = PolicyRule {
            verdict: Verdict::DENY,
            cookie: 2,
            ..tcp(base, 53, 53)
        };
        let out = build(&[allow_all, deny53]);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .any(|e| e.prefix_len == PREFIX_ANY_PROTO && e.entry.verdict == Verdict::ALLOW.0)
        );
        assert!(
            out.iter()
                .any(|e| e.prefix_len == 96 && e.entry.verdict == Verdict::DENY.0)
        );
    }

    #[test]
    fn exact_overlaps_merge_by_precedence() {
        let base = tcp(
            PolicyRule::allow(7, Identity(300), Direction::INGRESS),
            443,
            443,
        );
        let a = PolicyRule {
            cookie: 9,
            ..base.clone()
        };
        let b = PolicyRule {
            cookie: 4,
            ..base.clone()
        };
        let audit_deny = PolicyRule {
            verdict: Verdict::DENY,
            audit: true,
            cookie: 5,
            ..base.clone()
        };
        let out = build(&[a.clone(), b.clone()]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].entry.cookie, 4, "lower cookie wins a tie");
        let out = build(&[a, audit_deny, b]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].entry.verdict, out[0].entry.flags),
            (
                Verdict::DENY.0,
                PolicyEntryFlags::AUDIT | PolicyEntryFlags::ALLOW_UNDER
            ),
            "an audited deny over an allow remembers the allow"
        );
    }

    #[test]
    fn an_enforced_deny_hides_the_audited_denies_it_covers() {
        let base = PolicyRule::allow(7, Identity(300), Direction::INGRESS);
        let enforced = PolicyRule {
            proto: Some(6),
            verdict: Verdict::DENY,
            cookie: 1,
            ..base.clone()
        };
        let audited = PolicyRule {
            verdict: Verdict::DENY,
            audit: true,
            cookie: 2,
            ..tcp(base, 80, 80)
        };
        let out = build(&[enforced, audited]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            (out[0].entry.flags, out[0].prefix_len),
            (0, PREFIX_ANY_PORT)
        );
    }

    #[test]
    fn ports_without_a_protocol_mean_tcp_udp_and_sctp() {
        let rule = PolicyRule {
            ports: Some(80..=80),
            ..PolicyRule::allow(7, Identity(300), Direction::INGRESS)
        };
        let out = build(&[rule]);
        let protos: Vec<u8> = out.iter().map(|e| e.key.proto).collect();
        assert_eq!(protos, vec![6, 17, 132]);
        assert!(
            out.iter().all(|e| e.prefix_len == 96),
            "one port each, never any protocol: {out:?}"
        );
    }

    #[test]
    fn spaces_do_not_shadow_each_other() {
        let deny_any = PolicyRule {
            verdict: Verdict::DENY,
            ..PolicyRule::allow(7, Identity::ANY, Direction::INGRESS)
        };
        let allow_one = tcp(
            PolicyRule::allow(7, Identity(300), Direction::INGRESS),
            80,
            80,
        );
        let allow_egress = PolicyRule::allow(7, Identity(300), Direction::EGRESS);
        let out = build(&[deny_any, allow_one, allow_egress]);
        assert_eq!(
            out.len(),
            3,
            "the kernel resolves deny-over-allow across remote identities"
        );
    }
}
