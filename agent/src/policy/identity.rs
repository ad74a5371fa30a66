//! Numeric identities: one per distinct (namespace, namespace labels, pod labels, service
//! account) set, stable while the set exists; one per CIDR prefix a policy names.
//!
//! The kernel decides by the identity of an address, so every address of one identity must be
//! indistinguishable to policy. When an ipBlock covers some addresses of an identity but not
//! others (or egress rules name ports that its pods number differently), those addresses get an
//! identity of their own, keyed by the identity's set plus a discriminator: the ipBlocks that
//! contain the address and, if needed, the pod's named ports.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use rampart_common::identity::Identity;

use super::cookie::Cookies;
use super::model::{CidrBlock, NamedPort};
use super::selector::Labels;

/// What makes a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub namespace_labels: Labels,
    pub labels: Labels,
    pub service_account: String,
}

impl IdentityKey {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Splits an identity when policy can tell its addresses apart (see the module docs). Empty:
/// the identity itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Discriminator {
    pub blocks: Vec<CidrBlock>,
    pub ports: Option<Vec<NamedPort>>,
}

const LAST_WORKLOAD: u32 = Identity::FIRST_CIDR.0 - 1;

/// Hands out identities and rule cookies, and remembers them across compilations: a pod event
/// leaves every other number as it was (the kernel's entries keep their values, and a cookie's
/// counters keep counting the same rule).
#[derive(Debug, Clone)]
pub struct Allocator {
    workloads: Table<(IdentityKey, Discriminator)>,
    cidrs: Table<IpNet>,
    /// Numbers held by either table (remembered or used now).
    taken: HashSet<u32>,
    pub cookies: Cookies,
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator {
            workloads: Table::new(Identity::FIRST_WORKLOAD.0, LAST_WORKLOAD),
            cidrs: Table::new(Identity::FIRST_CIDR.0, u32::MAX),
            taken: HashSet::new(),
            cookies: Cookies::default(),
        }
    }
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// The identity of a workload set (and discriminator).
    pub fn workload(&mut self, key: &IdentityKey, disc: &Discriminator) -> u32 {
        self.workloads
            .assign((key.clone(), disc.clone()), &mut self.taken)
    }

    /// The identity of a CIDR prefix.
    pub fn cidr(&mut self, net: IpNet) -> u32 {
        self.cidrs.assign(net, &mut self.taken)
    }

    /// Ends a compilation: identities it did not use are released (their sets no longer exist).
    pub fn finish(&mut self) {
        self.workloads.finish();
        self.cidrs.finish();
        self.cookies.finish();
        self.taken = self
            .workloads
            .remembered
            .values()
            .chain(self.cidrs.remembered.values())
            .copied()
            .collect();
    }

    /// Forgets what the current compilation used (it was rejected); the previous state stays.
    pub fn abandon(&mut self) {
        self.workloads.used.clear();
        self.cidrs.used.clear();
        self.cookies.abandon();
    }
}

/// The numbers of one kind of identity: those remembered from the compilation in force, and
/// those the current compilation uses.
#[derive(Debug, Clone)]
struct Table<K> {
    remembered: HashMap<K, u32>,
    used: HashMap<K, u32>,
    next: u32,
    first: u32,
    last: u32,
}

impl<K: Eq + std::hash::Hash + Clone> Table<K> {
    fn new(first: u32, last: u32) -> Table<K> {
        Table {
            remembered: HashMap::new(),
            used: HashMap::new(),
            next: first,
            first,
            last,
        }
    }

    /// The number of `key`: the one it had, or a free one.
    fn assign(&mut self, key: K, taken: &mut HashSet<u32>) -> u32 {
        if let Some(&id) = self.used.get(&key) {
            return id;
        }
        let id = match self.remembered.get(&key) {
            Some(&id) => id,
            None => {
                let id = next_free(&mut self.next, self.first, self.last, taken);
                self.remembered.insert(key.clone(), id);
                id
            }
        };
        self.used.insert(key, id);
        id
    }

    fn finish(&mut self) {
        self.remembered = std::mem::take(&mut self.used);
    }
}

/// The next number in `first..=last` after `*next` that `taken` does not hold (it is then
/// taken); the counter moves on, wrapping around, so a released number is not reused at once.
fn next_free(next: &mut u32, first: u32, last: u32, taken: &mut HashSet<u32>) -> u32 {
    if *next < first || *next > last {
        *next = first;
    }
    loop {
        let id = *next;
        *next = if id == last { first } else { id + 1 };
        // Sets are far fewer than the range, so a free number is always found quickly.
        if taken.insert(id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str) -> IdentityKey {
        IdentityKey {
            namespace: "x".into(),
            namespace_labels: Labels::new(),
            labels: Labels::from([("app".to_owned(), app.to_owned())]),
            service_account: "default".into(),
        }
    }

    #[test]
    fn identities_are_stable_while_their_set_exists() {
        let mut a = Allocator::new();
        let d = Discriminator::default();
        let web = a.workload(&key("web"), &d);
        let db = a.workload(&key("db"), &d);
        assert_ne!(web, db);
        assert!(web >= Identity::FIRST_WORKLOAD.0);
        assert_eq!(a.workload(&key("web"), &d), web);
        a.finish();
        // Next compilation: db is gone, web stays, a new set gets a new number.
        assert_eq!(a.workload(&key("web"), &d), web);
        let api = a.workload(&key("api"), &d);
        assert_ne!(api, db);
        assert_ne!(api, web);
        a.finish();
        let cidr = a.cidr("10.0.0.0/8".parse().expect("net"));
        assert!(cidr >= Identity::FIRST_CIDR.0);
    }

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            key("web").spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/x/sa/default"
        );
    }
}
