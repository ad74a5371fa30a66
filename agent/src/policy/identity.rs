//! Numeric identities: one per distinct (namespace, namespace labels, pod labels, service
//! account) set, stable while the set exists; one per CIDR prefix a policy names.
//!
//! The kernel decides by the identity of an address, so every address of one identity must be
//! indistinguishable to policy. When an ipBlock covers some addresses of an identity but not
//! others (or egress rules name ports that its pods number differently), those addresses get an
//! identity of their own, keyed by the identity's set plus a discriminator: the ipBlocks that
//! contain the address and, if needed, the pod's named ports.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use rampart_common::identity::Identity;

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

/// Hands out identities and remembers them across compilations.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    workloads: BTreeMap<(IdentityKey, Discriminator), u32>,
    cidrs: BTreeMap<IpNet, u32>,
    next_workload: u32,
    next_cidr: u32,
    used_workloads: BTreeMap<(IdentityKey, Discriminator), u32>,
    used_cidrs: BTreeMap<IpNet, u32>,
    /// Numbers held by either table (remembered or used now).
    taken: HashSet<u32>,
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// The identity of a workload set (and discriminator).
    pub fn workload(&mut self, key: &IdentityKey, disc: &Discriminator) -> u32 {
        let k = (key.clone(), disc.clone());
        if let Some(&id) = self.used_workloads.get(&k) {
            return id;
        }
        let id = match self.workloads.get(&k) {
            Some(&id) => id,
            None => {
                let id = next_free(
                    &mut self.next_workload,
                    Identity::FIRST_WORKLOAD.0,
                    LAST_WORKLOAD,
                    &mut self.taken,
                );
                self.workloads.insert(k.clone(), id);
                id
            }
        };
        self.used_workloads.insert(k, id);
        id
    }

    /// The identity of a CIDR prefix.
    pub fn cidr(&mut self, net: IpNet) -> u32 {
        if let Some(&id) = self.used_cidrs.get(&net) {
            return id;
        }
        let id = match self.cidrs.get(&net) {
            Some(&id) => id,
            None => {
                let id = next_free(
                    &mut self.next_cidr,
                    Identity::FIRST_CIDR.0,
                    u32::MAX,
                    &mut self.taken,
                );
                self.cidrs.insert(net, id);
                id
            }
        };
        self.used_cidrs.insert(net, id);
        id
    }

    /// Ends a compilation: identities it did not use are released (their sets no longer exist).
    pub fn finish(&mut self) {
        self.workloads = std::mem::take(&mut self.used_workloads);
        self.cidrs = std::mem::take(&mut self.used_cidrs);
        self.taken = self
            .workloads
            .values()
            .chain(self.cidrs.values())
            .copied()
            .collect();
    }

    /// Forgets what the current compilation used (it was rejected); the previous state stays.
    pub fn abandon(&mut self) {
        self.used_workloads.clear();
        self.used_cidrs.clear();
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
