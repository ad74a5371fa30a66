//! Rule cookies: the number each policy rule's kernel entries carry (flow logs and per-rule
//! counters name the rule by it). A rule keeps its cookie across compilations while its policy
//! keeps its name, direction and index, so a policy added or removed leaves every other rule's
//! entries and counters as they were.
//!
//! Cookies are handed out per policy: a policy whose model is the same (shared) version as in the
//! compilation before gets its cookies back without touching its rules, and a set whose policies
//! are all unchanged gets its whole rule table back. A pod event at 100k rules spent an eighth of
//! its time hashing every rule's key again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rampart_common::counters::RULE_STATS_OVERFLOW;
use serde::Serialize;

use super::model::PolicyModel;
use super::spec::RuleAction;
use super::spec::objects::PolicyMode;

/// The rule a cookie names.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRef {
    /// The policy's display name (one allocation per policy, shared by its rules).
    pub policy: Arc<str>,
    pub direction: &'static str,
    pub index: usize,
    pub action: &'static str,
    pub mode: PolicyMode,
}

/// Every rule of a set, by cookie: sorted 16-byte entries and the policies' names, looked up
/// by binary search. (A `BTreeMap<u32, RuleRef>` took 129 bytes per rule: a 64-byte value and
/// the tree's spare slots, an eighth of the agent's memory at 100k rules.)
#[derive(Debug, Default)]
pub struct RuleTable {
    names: Box<[Arc<str>]>,
    entries: Box<[RuleEntry]>,
}

#[derive(Debug, Clone, Copy)]
struct RuleEntry {
    cookie: u32,
    /// Into `names`.
    policy: u32,
    index: u32,
    direction: rampart_common::reason::Direction,
    action: RuleAction,
    mode: PolicyMode,
}

impl RuleTable {
    /// The rule `cookie` names.
    pub fn get(&self, cookie: &u32) -> Option<RuleRef> {
        let at = self
            .entries
            .binary_search_by_key(cookie, |e| e.cookie)
            .ok()?;
        self.entries.get(at).map(|e| self.rule(e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the table holds (its entries and its names' pointers).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        size_of_val::<[RuleEntry]>(&self.entries) + size_of_val::<[Arc<str>]>(&self.names)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every rule, by cookie in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, RuleRef)> + '_ {
        self.entries.iter().map(|e| (e.cookie, self.rule(e)))
    }

    fn rule(&self, e: &RuleEntry) -> RuleRef {
        RuleRef {
            policy: self
                .names
                .get(e.policy as usize)
                .map_or_else(|| Arc::from(""), Arc::clone),
            direction: e.direction.name(),
            index: e.index as usize,
            action: match e.action {
                RuleAction::Allow => "allow",
                RuleAction::Deny => "deny",
            },
            mode: e.mode,
        }
    }
}

/// Cookie 0 is "no rule"; `RULE_STATS_OVERFLOW` is the kernel's overflow counter.
const FIRST: u32 = 1;
const LAST: u32 = RULE_STATS_OVERFLOW - 1;

/// One policy's cookies.
#[derive(Debug)]
struct PolicyCookies {
    /// The version they were handed out for.
    policy: Arc<PolicyModel>,
    /// In the order of the policy's rules.
    cookies: Arc<[u32]>,
    /// (direction, index) → cookie.
    by_rule: HashMap<(&'static str, usize), u32>,
}

/// The rule table of a whole set, and the policy versions it was made from.
#[derive(Debug)]
struct SetTable {
    policies: Vec<Arc<PolicyModel>>,
    table: Arc<RuleTable>,
}

/// Hands out cookies and remembers them: those of the compilation in force (`remembered`) and
/// those the current compilation uses (`used`, in force once [`Cookies::finish`] is called).
#[derive(Debug, Default, Clone)]
pub struct Cookies {
    remembered: HashMap<Arc<str>, Arc<PolicyCookies>>,
    used: HashMap<Arc<str>, Arc<PolicyCookies>>,
    /// Numbers either map holds.
    taken: HashSet<u32>,
    next: u32,
    remembered_set: Option<Arc<SetTable>>,
    used_set: Option<Arc<SetTable>>,
    /// `taken` may hold numbers neither map does (see [`Cookies::of_policy`]).
    recount: bool,
}

impl Cookies {
    /// The cookies of `policy`'s rules, in their order.
    pub fn of_policy(&mut self, name: &Arc<str>, policy: &Arc<PolicyModel>) -> Arc<[u32]> {
        let previous = self
            .used
            .get(name)
            .or_else(|| self.remembered.get(name))
            .cloned();
        if let Some(p) = &previous
            && Arc::ptr_eq(&p.policy, policy)
        {
            self.used.insert(Arc::clone(name), Arc::clone(p));
            return Arc::clone(&p.cookies);
        }
        if self.used.contains_key(name) {
            // Two policies of one name in a set (their like rules share cookies): the entry of
            // the first is replaced, so what is taken is counted again once the set is in force.
            self.recount = true;
        }
        // Another version: each rule keeps the cookie its (direction, index) had.
        let mut by_rule = HashMap::with_capacity(policy.rules.len());
        let mut cookies = Vec::with_capacity(policy.rules.len());
        for rule in &policy.rules {
            let key = (rule.direction.name(), rule.index);
            let cookie = match previous.as_ref().and_then(|p| p.by_rule.get(&key)) {
                Some(&cookie) => cookie,
                None => self.next_free(),
            };
            by_rule.insert(key, cookie);
            cookies.push(cookie);
        }
        let entry = Arc::new(PolicyCookies {
            policy: Arc::clone(policy),
            cookies: cookies.into(),
            by_rule,
        });
        let cookies = Arc::clone(&entry.cookies);
        self.used.insert(Arc::clone(name), entry);
        cookies
    }

    /// The rule table of a set whose policies' cookies are `cookies` (from [`Cookies::of_policy`],
    /// in the same order): the one made before if every policy is the same version.
    pub fn table(
        &mut self,
        policies: &[Arc<PolicyModel>],
        names: &[Arc<str>],
        cookies: &[Arc<[u32]>],
    ) -> Arc<RuleTable> {
        let made_from = |set: &SetTable| {
            set.policies.len() == policies.len()
                && set
                    .policies
                    .iter()
                    .zip(policies)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        };
        let before = [&self.used_set, &self.remembered_set]
            .into_iter()
            .flatten()
            .find(|set| made_from(set))
            .cloned();
        if let Some(set) = before {
            let table = Arc::clone(&set.table);
            self.used_set = Some(set);
            return table;
        }
        let mut entries = Vec::with_capacity(cookies.iter().map(|c| c.len()).sum());
        for (at, (policy, cookies)) in policies.iter().zip(cookies).enumerate() {
            for (rule, &cookie) in policy.rules.iter().zip(cookies.iter()) {
                entries.push(RuleEntry {
                    cookie,
                    policy: u32::try_from(at).unwrap_or(u32::MAX),
                    index: u32::try_from(rule.index).unwrap_or(u32::MAX),
                    direction: rule.direction,
                    action: rule.action,
                    mode: policy.mode,
                });
            }
        }
        // Cookies are unique within a set (`taken`); should one repeat, the later rule names it,
        // as an insert into a map would have.
        entries.reverse();
        entries.sort_by_key(|e| e.cookie);
        entries.dedup_by_key(|e| e.cookie);
        let table = RuleTable {
            names: names.to_vec().into_boxed_slice(),
            entries: entries.into_boxed_slice(),
        };
        let table = Arc::new(table);
        self.used_set = Some(Arc::new(SetTable {
            policies: policies.to_vec(),
            table: Arc::clone(&table),
        }));
        table
    }

    /// The current compilation is in force: what it did not use is released.
    pub fn finish(&mut self) {
        let used = std::mem::take(&mut self.used);
        for (name, old) in &self.remembered {
            let kept = used.get(name);
            if kept.is_some_and(|k| Arc::ptr_eq(k, old)) {
                continue;
            }
            // A rule keeps its cookie exactly when its (direction, index) is still there.
            for (key, cookie) in &old.by_rule {
                if kept.and_then(|k| k.by_rule.get(key)) != Some(cookie) {
                    self.taken.remove(cookie);
                }
            }
        }
        self.remembered = used;
        if std::mem::take(&mut self.recount) {
            self.count_taken();
        }
        self.remembered_set = self.used_set.take();
    }

    /// The current compilation was rejected: the one in force stays.
    pub fn abandon(&mut self) {
        self.used.clear();
        self.used_set = None;
        self.recount = false;
        self.count_taken();
    }

    /// `taken` made again from what is remembered.
    fn count_taken(&mut self) {
        self.taken = self
            .remembered
            .values()
            .flat_map(|p| p.by_rule.values().copied())
            .collect();
    }

    /// The next number after the last one handed out that no rule holds (the counter moves on,
    /// wrapping around, so a released cookie is not reused at once).
    fn next_free(&mut self) -> u32 {
        if self.next < FIRST || self.next > LAST {
            self.next = FIRST;
        }
        loop {
            let cookie = self.next;
            self.next = if cookie == LAST { FIRST } else { cookie + 1 };
            // Rules are far fewer than the range, so a free number is always found quickly.
            if self.taken.insert(cookie) {
                return cookie;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::model::{Validated, validate};
    use crate::policy::source::parse_str;

    /// The policies of `text`, validated.
    fn policies(text: &str) -> Vec<Arc<PolicyModel>> {
        let read = parse_str(Path::new("p.yaml"), text);
        let mut diags = Vec::new();
        let model = validate::build(&read.objects, Validated::default(), &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        model.policies
    }

    fn policy(name: &str, ports: &[u16]) -> String {
        let mut text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress:\n"
        );
        for port in ports {
            text.push_str(&format!("  - ports: [{{port: {port}}}]\n"));
        }
        text
    }

    fn assign(c: &mut Cookies, set: &[Arc<PolicyModel>]) -> (Vec<Arc<[u32]>>, Arc<RuleTable>) {
        let names: Vec<Arc<str>> = set.iter().map(|p| p.display_name().into()).collect();
        let cookies: Vec<Arc<[u32]>> = set
            .iter()
            .zip(&names)
            .map(|(p, n)| c.of_policy(n, p))
            .collect();
        let table = c.table(set, &names, &cookies);
        (cookies, table)
    }

    #[test]
    fn the_same_versions_get_their_cookies_and_table_back_without_new_numbers() {
        let mut c = Cookies::default();
        let set = policies(&format!(
            "{}---\n{}",
            policy("a", &[80, 81]),
            policy("b", &[90])
        ));
        let (first, table) = assign(&mut c, &set);
        c.finish();
        assert_eq!(table.len(), 3);
        let (again, table_again) = assign(&mut c, &set);
        c.finish();
        assert!(Arc::ptr_eq(&table, &table_again), "the table is shared");
        for (a, b) in first.iter().zip(&again) {
            assert!(Arc::ptr_eq(a, b), "each policy's cookies are shared");
        }
        assert_eq!(c.taken.len(), 3);
    }

    #[test]
    fn a_new_version_keeps_its_rules_cookies_and_releases_those_of_removed_rules() {
        let mut c = Cookies::default();
        let v1 = policies(&format!(
            "{}---\n{}",
            policy("a", &[80, 81]),
            policy("b", &[90])
        ));
        let (first, _) = assign(&mut c, &v1);
        c.finish();
        // `a` loses its second rule and gains nothing; `b` gains a rule.
        let v2 = policies(&format!(
            "{}---\n{}",
            policy("a", &[80]),
            policy("b", &[90, 91])
        ));
        let (second, table) = assign(&mut c, &v2);
        assert_eq!(
            second[0][..],
            first[0][..1],
            "a's first rule kept its cookie"
        );
        assert_eq!(second[1][0], first[1][0], "b's first rule kept its cookie");
        assert!(
            !first[0].contains(&second[1][1]),
            "the new rule has a new cookie"
        );
        assert_eq!(table.len(), 3);
        // Each rule is found by its cookie, named as its policy wrote it; 16 bytes a rule.
        let b_second = table.get(&second[1][1]).expect("b's new rule");
        assert_eq!(
            (
                &*b_second.policy,
                b_second.direction,
                b_second.index,
                b_second.action
            ),
            ("NetworkPolicy shop/b", "ingress", 1, "allow")
        );
        assert!(table.get(&0).is_none());
        let cookies: Vec<u32> = table.iter().map(|(c, _)| c).collect();
        assert!(cookies.is_sorted());
        assert_eq!(table.heap_bytes(), 3 * 16 + 2 * size_of::<Arc<str>>());
        c.finish();
        assert_eq!(
            c.taken,
            table.iter().map(|(c, _)| c).collect::<HashSet<u32>>(),
            "exactly the rules in force hold numbers"
        );
    }

    #[test]
    fn an_abandoned_compilation_leaves_the_cookies_in_force() {
        let mut c = Cookies::default();
        let v1 = policies(&policy("a", &[80]));
        let (first, table) = assign(&mut c, &v1);
        c.finish();
        let v2 = policies(&format!(
            "{}---\n{}",
            policy("a", &[80]),
            policy("b", &[90])
        ));
        assign(&mut c, &v2);
        c.abandon();
        assert_eq!(
            c.taken,
            table.iter().map(|(c, _)| c).collect::<HashSet<u32>>()
        );
        let (again, table_again) = assign(&mut c, &v1);
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        assert!(Arc::ptr_eq(&table, &table_again));
    }
}
