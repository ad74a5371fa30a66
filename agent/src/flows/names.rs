//! What the numbers in kernel events stand for under one policy generation: identities →
//! namespace, labels and service account; pod addresses → pod names; CIDR identities → prefixes;
//! rule cookies → policy rules; mTLS-only (identity, port) → the MeshPolicies asking for it.
//! Built by the controller from each compiled set, read by the flow hub for every record.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use rampart_common::identity::Identity;

use super::record::{FlowPeer, PolicyRef};
use crate::policy::compile::{Compiled, RuleTable};

#[derive(Debug, Clone)]
struct IdentityName {
    namespace: String,
    labels: BTreeMap<String, String>,
    service_account: String,
    spiffe_id: std::sync::Arc<str>,
}

#[derive(Debug, Clone, Default)]
pub struct FlowNames {
    identities: HashMap<u32, IdentityName>,
    /// Pod addresses (shared with the generation).
    pods: crate::policy::compile::Workloads,
    cidrs: HashMap<u32, String>,
    /// The same prefixes, to find an address's identity when only the address is known.
    prefixes: Vec<(ipnet::IpNet, u32)>,
    rules: std::sync::Arc<RuleTable>,
    mesh: HashMap<(u32, u16), Vec<String>>,
}

impl FlowNames {
    pub fn from_compiled(compiled: &Compiled) -> FlowNames {
        FlowNames {
            identities: compiled
                .identities
                .iter()
                .map(|i| {
                    (
                        i.id,
                        IdentityName {
                            namespace: i.namespace.clone(),
                            labels: i.labels.clone(),
                            service_account: i.service_account.clone(),
                            spiffe_id: i.spiffe_id.clone(),
                        },
                    )
                })
                .collect(),
            pods: compiled.workloads.clone(),
            cidrs: compiled
                .cidr_identities
                .iter()
                .map(|(net, id)| (*id, net.to_string()))
                .collect(),
            prefixes: compiled.cidr_identities.clone(),
            rules: std::sync::Arc::clone(&compiled.rules),
            mesh: compiled
                .mesh
                .iter()
                .map(|r| ((r.identity, r.port), r.policies.clone()))
                .collect(),
        }
    }

    /// One end of a flow. `identity` is the kernel's; 0 means "look it up by address".
    pub fn peer(&self, ip: Option<IpAddr>, port: u16, identity: u32) -> FlowPeer {
        let pod = ip.and_then(|ip| self.pods.get(ip));
        let identity = match (identity, pod, ip) {
            (0, Some(w), _) => w.identity,
            // Not a pod: the longest ipBlock prefix holding it, else `world` (as the ipcache).
            (0, None, Some(ip)) => self
                .prefixes
                .iter()
                .filter(|(net, _)| net.contains(&ip))
                .max_by_key(|(net, _)| net.prefix_len())
                .map_or(Identity::WORLD.0, |(_, id)| *id),
            (id, _, _) => id,
        };
        let mut peer = FlowPeer {
            ip,
            port,
            identity,
            pod: pod.map(|w| w.pod.to_string()),
            ..FlowPeer::default()
        };
        if let Some(name) = self.identities.get(&identity) {
            peer.namespace = Some(name.namespace.clone());
            peer.labels = name.labels.clone();
            peer.service_account = Some(name.service_account.clone());
            peer.spiffe_id = Some(name.spiffe_id.to_string()).filter(|id| !id.is_empty());
        } else if peer.pod.is_none() {
            peer.cidr = match Identity(identity) {
                Identity::HOST => Some("host".into()),
                Identity::WORLD => Some("world".into()),
                Identity::REMOTE_NODE => Some("remote-node".into()),
                Identity::UNKNOWN_POD => Some("unknown-pod".into()),
                _ => self.cidrs.get(&identity).cloned(),
            };
        }
        peer
    }

    /// The rule cookie `cookie` names, if any.
    pub fn policy(&self, cookie: u32) -> Option<PolicyRef> {
        let rule = self.rules.get(&cookie)?;
        Some(PolicyRef {
            name: rule.policy.to_string(),
            direction: rule.direction.to_owned(),
            rule: rule.index,
            action: rule.action.to_owned(),
            mode: match rule.mode {
                crate::policy::spec::objects::PolicyMode::Enforce => "enforce".into(),
                crate::policy::spec::objects::PolicyMode::Audit => "audit".into(),
            },
        })
    }

    /// The MeshPolicies that make (destination identity, port) mTLS-only.
    pub fn mesh_policies(&self, identity: u32, port: u16) -> Vec<String> {
        self.mesh
            .get(&(identity, port))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{IdentityInfo, WorkloadAddr};

    fn names() -> FlowNames {
        let compiled = Compiled {
            identities: vec![IdentityInfo {
                id: 300,
                namespace: "prod".into(),
                labels: BTreeMap::from([("app".into(), "web".into())]),
                service_account: "web".into(),
                spiffe_id: "spiffe://cluster.local/ns/prod/sa/web".into(),
                pods: vec!["prod/web-1".into()],
            }],
            workloads: crate::policy::compile::Workloads::new(vec![WorkloadAddr {
                addr: "10.0.0.5".parse().expect("ip"),
                identity: 300,
                spiffe_id: "spiffe://cluster.local/ns/prod/sa/web".into(),
                pod: "prod/web-1".into(),
                node: None,
                host_ip: None,
                local: true,
            }]),
            cidr_identities: vec![("192.0.2.0/24".parse().expect("net"), 0x0100_0001)],
            ..Compiled::default()
        };
        FlowNames::from_compiled(&compiled)
    }

    #[test]
    fn names_pods_cidrs_and_reserved_identities() {
        let n = names();
        let web = n.peer(Some("10.0.0.5".parse().expect("ip")), 80, 300);
        assert_eq!(web.pod.as_deref(), Some("prod/web-1"));
        assert_eq!(web.namespace.as_deref(), Some("prod"));
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
        // An address alone finds the pod and its identity (proxy records).
        assert_eq!(
            n.peer(Some("10.0.0.5".parse().expect("ip")), 80, 0)
                .identity,
            300
        );
        let ext = n.peer(Some("192.0.2.7".parse().expect("ip")), 443, 0x0100_0001);
        assert_eq!(ext.cidr.as_deref(), Some("192.0.2.0/24"));
        assert_eq!(
            n.peer(Some("8.8.8.8".parse().expect("ip")), 53, 2)
                .cidr
                .as_deref(),
            Some("world")
        );
        // An address alone outside the pods: its ipBlock's prefix, else world.
        let by_addr = |ip: &str| n.peer(Some(ip.parse().expect("ip")), 443, 0);
        assert_eq!(by_addr("192.0.2.9").cidr.as_deref(), Some("192.0.2.0/24"));
        assert_eq!(by_addr("198.51.100.1").cidr.as_deref(), Some("world"));
        assert_eq!(by_addr("198.51.100.1").identity, 2);
        assert_eq!(
            web.spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/prod/sa/web")
        );
    }

    #[test]
    fn unknown_cookies_name_no_rule() {
        let n = names();
        assert!(n.policy(0).is_none());
        assert!(n.policy(1).is_none());
        assert!(n.policy(u32::MAX).is_none());
    }
}
