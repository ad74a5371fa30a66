//! A Kubernetes NetworkPolicy, and the peers, CIDRs and ports policies share.

use crate::policy::spec::compact::Spanned;
use ipnet::IpNet;
use rampart_common::reason::Direction;

use super::validate::Validator;
use super::*;
use crate::policy::selector::Selector;
use crate::policy::spec::RuleAction;
use crate::policy::spec::objects::{self, IntOrString, NpPeer, PortEntry};

impl Validator<'_> {
    pub(super) fn network_policy(
        &mut self,
        np: &objects::NetworkPolicy,
        namespace: String,
        name: String,
    ) -> Option<PolicyModel> {
        let mode = self.mode_annotation()?;
        let spec = &np.spec.value;
        let Some(pod_selector) = &spec.pod_selector else {
            self.error(
                &np.spec,
                "spec.podSelector is required (use {} for every pod)",
            );
            return None;
        };
        let pods = self.selector(pod_selector, "spec.podSelector")?;
        let mut ok = true;
        // policyTypes defaulting: Ingress always, Egress when there is an egress section.
        let (mut ingress, mut egress) = (false, false);
        match &spec.policy_types {
            None => {
                ingress = true;
                egress = spec.egress.is_some();
            }
            Some(types) => {
                for t in types {
                    match t.value.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => {
                            self.error(
                                t,
                                format!("policyTypes: {other:?} is not Ingress or Egress"),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let mut rules = Vec::new();
        if ingress {
            for (index, rule) in spec.ingress.iter().flatten().enumerate() {
                let peers = self
                    .np_peers(rule.from.as_deref(), &namespace, &mut ok)
                    .map(Into::into);
                let ports = self.ports(rule.ports.as_deref(), &mut ok);
                rules.push(RuleModel {
                    direction: Direction::INGRESS,
                    action: RuleAction::Allow,
                    index,
                    peers,
                    ports,
                });
            }
        }
        if egress {
            for (index, rule) in spec.egress.iter().flatten().enumerate() {
                let peers = self
                    .np_peers(rule.to.as_deref(), &namespace, &mut ok)
                    .map(Into::into);
                let ports = self.ports(rule.ports.as_deref(), &mut ok);
                rules.push(RuleModel {
                    direction: Direction::EGRESS,
                    action: RuleAction::Allow,
                    index,
                    peers,
                    ports,
                });
            }
        }
        share_peer_lists(&mut rules);
        // Kept while the policy is in force: no spare capacity (a quarter more, grown by
        // doubling).
        rules.shrink_to_fit();
        ok.then(|| PolicyModel {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace.clone()),
            name,
            mode,
            applies_to: WorkloadMatch {
                namespaces: NamespaceMatch::Named(namespace),
                pods,
                service_accounts: None,
            },
            isolate_ingress: ingress,
            isolate_egress: egress,
            rules,
            origin: self.so.whole(),
        })
    }

    /// Peers of a NetworkPolicy rule; `None` (absent or empty list) is every peer.
    pub(super) fn np_peers(
        &mut self,
        raw: Option<&[Spanned<NpPeer>]>,
        namespace: &str,
        ok: &mut bool,
    ) -> Option<Vec<PeerModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        let mut peers = Vec::new();
        for peer in raw {
            let p = &peer.value;
            let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
            match (&p.ip_block, selectors) {
                (Some(_), true) => {
                    self.error(
                        peer,
                        "a peer with ipBlock may not also have podSelector or namespaceSelector",
                    );
                    *ok = false;
                }
                (Some(block), false) => match self.ip_block(block) {
                    Some(b) => peers.push(PeerModel::Cidr(b)),
                    None => *ok = false,
                },
                (None, false) => {
                    self.error(
                        peer,
                        "a peer needs one of podSelector, namespaceSelector or ipBlock",
                    );
                    *ok = false;
                }
                (None, true) => {
                    let pods = match &p.pod_selector {
                        Some(s) => self.selector(s, "podSelector"),
                        None => Some(Selector::everything()),
                    };
                    let namespaces = match &p.namespace_selector {
                        Some(s) => self
                            .selector(s, "namespaceSelector")
                            .map(NamespaceMatch::Selector),
                        None => Some(NamespaceMatch::Named(namespace.to_owned())),
                    };
                    match (pods, namespaces) {
                        (Some(pods), Some(namespaces)) => {
                            peers.push(PeerModel::Workloads(WorkloadMatch {
                                namespaces,
                                pods,
                                service_accounts: None,
                            }))
                        }
                        _ => *ok = false,
                    }
                }
            }
        }
        Some(peers)
    }

    pub(super) fn ip_block(&mut self, block: &objects::IpBlock) -> Option<CidrBlock> {
        let net = self.cidr(&block.cidr, "ipBlock.cidr")?;
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            let ex = self.cidr(e, "ipBlock.except")?;
            if !(net.contains(&ex) && ex.prefix_len() > net.prefix_len()) {
                self.error(
                    e,
                    format!(
                        "ipBlock.except {}: must be a strict subset of cidr {net}",
                        e.value
                    ),
                );
                return None;
            }
            except.push(ex);
        }
        except.sort();
        except.dedup();
        Some(CidrBlock { net, except })
    }

    pub(super) fn cidr(&mut self, raw: &Spanned<String>, what: &str) -> Option<IpNet> {
        match raw.value.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(
                    raw,
                    format!("{what} {:?}: not a CIDR (address/prefix-length)", raw.value),
                );
                None
            }
        }
    }

    /// Ports of a rule; `None` (absent or empty list) is every protocol and port.
    pub(super) fn ports(
        &mut self,
        raw: Option<&[Spanned<PortEntry>]>,
        ok: &mut bool,
    ) -> Option<Vec<PortModel>> {
        let raw = raw.filter(|r| !r.is_empty())?;
        // Sized to the entries: the model of each rule is kept while it is in force.
        let mut ports = Vec::with_capacity(raw.len());
        for entry in raw {
            match self.port(entry) {
                Some(p) => ports.push(p),
                None => *ok = false,
            }
        }
        Some(ports)
    }

    pub(super) fn port(&mut self, entry: &Spanned<PortEntry>) -> Option<PortModel> {
        let e = &entry.value;
        let proto = self.protocol(e.protocol.as_ref())?;
        let port = match &e.port {
            None => {
                if let Some(end) = &e.end_port {
                    self.error(end, "endPort needs a numeric port");
                    return None;
                }
                PortMatch::All
            }
            Some(p) => match &p.value {
                IntOrString::Int(n) => {
                    let start = self.port_number(p, "port", *n)?;
                    match &e.end_port {
                        None => PortMatch::Range(start, start),
                        Some(end) => {
                            let stop = self.port_number(end, "endPort", end.value)?;
                            if stop < start {
                                self.error(
                                    end,
                                    format!("endPort {stop} is less than port {start}"),
                                );
                                return None;
                            }
                            PortMatch::Range(start, stop)
                        }
                    }
                }
                IntOrString::String(name) => {
                    if let Err(e) = validate_port_name(name) {
                        self.error(p, e);
                        return None;
                    }
                    if let Some(end) = &e.end_port {
                        self.error(end, "endPort may not be used with a named port");
                        return None;
                    }
                    PortMatch::Named(name.clone())
                }
            },
        };
        Some(PortModel { proto, port })
    }

    /// A rule's or container port's protocol; absent means TCP.
    pub(super) fn protocol(&mut self, raw: Option<&Spanned<String>>) -> Option<u8> {
        let Some(raw) = raw else {
            return Some(PROTO_TCP);
        };
        let proto = protocol(&raw.value);
        if proto.is_none() {
            self.error(
                raw,
                format!("protocol {:?}: must be TCP, UDP or SCTP", raw.value),
            );
        }
        proto
    }

    /// A port number (`what` names the field): 1-65535.
    pub(super) fn port_number<T>(
        &mut self,
        at: &Spanned<T>,
        what: &str,
        value: i64,
    ) -> Option<u16> {
        let port = u16::try_from(value).ok().filter(|v| *v != 0);
        if port.is_none() {
            self.error(at, format!("{what} {value}: must be 1-65535"));
        }
        port
    }
}
