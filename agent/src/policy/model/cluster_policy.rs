//! A ClusterPolicy (`rampart.dev/v1alpha1`): cluster-wide rules with actions and modes.

use crate::policy::spec::compact::Spanned;
use rampart_common::reason::Direction;

use super::validate::Validator;
use super::*;
use crate::policy::selector::Selector;
use crate::policy::spec::objects::{self, ClusterPeer, Entity, LabelSelector, PolicyType};

impl Validator<'_> {
    pub(super) fn cluster_policy(
        &mut self,
        cp: &objects::ClusterPolicy,
        name: String,
    ) -> Option<PolicyModel> {
        let spec = &cp.spec;
        let mut ok = true;
        let applies_to = match &spec.applies_to {
            None => Some(WorkloadMatch::everything()),
            Some(sel) => self.workloads(
                sel.namespace_selector.as_ref(),
                sel.pod_selector.as_ref(),
                sel.service_accounts.as_deref(),
                "appliesTo",
            ),
        };
        let types = spec.default_deny.clone().unwrap_or_default();
        let mut rules = Vec::new();
        for (index, rule) in spec.ingress.iter().flatten().enumerate() {
            let peers = self
                .cluster_peers(rule.from.as_deref(), &mut ok)
                .map(Into::into);
            let ports = self.ports(rule.ports.as_deref(), &mut ok);
            rules.push(RuleModel {
                direction: Direction::INGRESS,
                action: rule.action,
                index,
                peers,
                ports,
            });
        }
        for (index, rule) in spec.egress.iter().flatten().enumerate() {
            let peers = self
                .cluster_peers(rule.to.as_deref(), &mut ok)
                .map(Into::into);
            let ports = self.ports(rule.ports.as_deref(), &mut ok);
            rules.push(RuleModel {
                direction: Direction::EGRESS,
                action: rule.action,
                index,
                peers,
                ports,
            });
        }
        let applies_to = applies_to?;
        share_peer_lists(&mut rules);
        rules.shrink_to_fit();
        ok.then(|| PolicyModel {
            kind: PolicyKind::ClusterPolicy,
            namespace: None,
            name,
            mode: spec.mode,
            applies_to,
            isolate_ingress: types.contains(&PolicyType::Ingress),
            isolate_egress: types.contains(&PolicyType::Egress),
            rules,
            origin: self.so.whole(),
        })
    }

    pub(super) fn workloads(
        &mut self,
        namespaces: Option<&Spanned<LabelSelector>>,
        pods: Option<&Spanned<LabelSelector>>,
        service_accounts: Option<&[Spanned<String>]>,
        what: &str,
    ) -> Option<WorkloadMatch> {
        let namespaces = match namespaces {
            Some(s) => {
                NamespaceMatch::Selector(self.selector(s, &format!("{what}.namespaceSelector"))?)
            }
            None => NamespaceMatch::Selector(Selector::everything()),
        };
        let pods = match pods {
            Some(s) => self.selector(s, &format!("{what}.podSelector"))?,
            None => Selector::everything(),
        };
        let service_accounts = match service_accounts {
            None => None,
            Some(list) => {
                let mut refs = Vec::new();
                for sa in list {
                    let (ns, name) = match sa.value.split_once('/') {
                        Some((ns, name)) => (Some(ns), name),
                        None => (None, sa.value.as_str()),
                    };
                    let valid = ns.is_none_or(crate::dns_name::is_dns_label)
                        && crate::dns_name::is_dns_subdomain(name);
                    if !valid {
                        self.error(
                            sa,
                            format!(
                                "{what}.serviceAccounts: {:?} is not `name` or `namespace/name`",
                                sa.value
                            ),
                        );
                        return None;
                    }
                    refs.push(ServiceAccountRef {
                        namespace: ns.map(str::to_owned),
                        name: name.to_owned(),
                    });
                }
                refs.sort();
                Some(refs)
            }
        };
        Some(WorkloadMatch {
            namespaces,
            pods,
            service_accounts,
        })
    }

    pub(super) fn cluster_peers(
        &mut self,
        raw: Option<&[Spanned<ClusterPeer>]>,
        ok: &mut bool,
    ) -> Option<Vec<PeerModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        let mut peers = Vec::new();
        for peer in raw {
            let p = &peer.value;
            let workloads = p.namespace_selector.is_some()
                || p.pod_selector.is_some()
                || p.service_accounts.is_some();
            let kinds = usize::from(workloads)
                + usize::from(p.ip_block.is_some())
                + usize::from(p.entities.is_some());
            if kinds != 1 {
                self.error(
                    peer,
                    "a peer needs exactly one of: workload selectors (namespaceSelector, podSelector, serviceAccounts), ipBlock, entities",
                );
                *ok = false;
                continue;
            }
            let model = if let Some(block) = &p.ip_block {
                self.ip_block(block).map(PeerModel::Cidr)
            } else if let Some(entities) = &p.entities {
                Some(PeerModel::Entities(
                    entities
                        .iter()
                        .map(|e| match e {
                            Entity::World => EntityKind::World,
                            Entity::Cluster => EntityKind::Cluster,
                            Entity::Host => EntityKind::Host,
                            Entity::RemoteNode => EntityKind::RemoteNode,
                            Entity::All => EntityKind::All,
                        })
                        .collect(),
                ))
            } else {
                self.workloads(
                    p.namespace_selector.as_ref(),
                    p.pod_selector.as_ref(),
                    p.service_accounts.as_deref(),
                    "peer",
                )
                .map(PeerModel::Workloads)
            };
            match model {
                Some(m) => peers.push(m),
                None => *ok = false,
            }
        }
        Some(peers)
    }
}
