//! Services → the kernel's service map (`SERVICES_{A,B}_V1`, see `rampart_common::service`):
//! every frontend a pod may connect to, with the backends its EndpointSlices name.
//!
//! Frontends: each cluster IP, external IP and load-balancer IP with each Service port, and, for
//! a port with a node port, every node address (this node's own and every Node object's) with
//! the node port, as kube-proxy answers on every node. Backends are the ready endpoints of the
//! Service's slices (as kube-proxy does, the serving and terminating ones when none is ready),
//! of the frontend's address family, at the slice's port of the same name and protocol (the
//! slice has resolved a named `targetPort` per endpoint already). A frontend with no backend is
//! written with none: its new flows drop as `no_service_backend`, where kube-proxy rejects them.
//!
//! From outside (an uplink), only the frontends a client outside can reach on this node (this
//! node's own addresses with a node port, external and load-balancer IPs) of Services with a
//! backend on this node whose port takes ingress through the proxy are written, with those
//! backends alone: the flow is translated to one and redirected to the local proxy like any
//! ingress flow. A node without such a backend leaves the flow to kube-proxy.
//!
//! Pure: no I/O, nothing of the running agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use rampart_common::maps::MAX_SERVICES;
use rampart_common::service::{ServiceKey, ServiceValue};

use crate::policy::model::{EndpointSliceModel, Model, ServicePortModel};

/// One frontend and its backends, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frontend {
    /// `namespace/name` of the Service.
    pub service: String,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// Reached as a node port.
    pub node_port: bool,
    /// A client outside the cluster reaches it on this node (a node port on this node's own
    /// address, an external or load-balancer IP).
    pub outside: bool,
    pub backends: Vec<(IpAddr, u16)>,
}

/// The frontends of every Service in `model`, this node's own addresses being `host`.
pub fn frontends(model: &Model, host: &BTreeSet<IpAddr>) -> Vec<Frontend> {
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSliceModel>> = BTreeMap::new();
    for slice in &model.endpoint_slices {
        slices
            .entry((&slice.namespace, &slice.service))
            .or_default()
            .push(slice);
    }
    let node_addresses: BTreeSet<IpAddr> = host
        .iter()
        .copied()
        .chain(model.nodes.values().flatten().copied())
        .collect();
    let mut out = Vec::new();
    for service in &model.services {
        let slices = slices
            .get(&(service.namespace.as_str(), service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        for port in &service.ports {
            let backends = backends(slices, port);
            let name = format!("{}/{}", service.namespace, service.name);
            let mut add = |addr: IpAddr, number: u16, node_port: bool, outside: bool| {
                out.push(Frontend {
                    service: name.clone(),
                    addr,
                    port: number,
                    proto: port.proto,
                    node_port,
                    outside,
                    backends: backends
                        .iter()
                        .filter(|(b, _)| b.is_ipv4() == addr.is_ipv4())
                        .copied()
                        .collect(),
                });
            };
            for &addr in &service.cluster_ips {
                add(addr, port.port, false, false);
            }
            for &addr in service
                .external_ips
                .iter()
                .chain(&service.load_balancer_ips)
            {
                add(addr, port.port, false, true);
            }
            if let Some(node_port) = port.node_port {
                for &addr in &node_addresses {
                    add(addr, node_port, true, host.contains(&addr));
                }
            }
        }
    }
    out
}

/// The backends of one Service port: ready endpoints, else serving and terminating ones.
fn backends(slices: &[&EndpointSliceModel], port: &ServicePortModel) -> Vec<(IpAddr, u16)> {
    let pick = |terminating: bool| -> BTreeSet<(IpAddr, u16)> {
        let mut out = BTreeSet::new();
        for slice in slices {
            let Some(&(_, _, number)) = slice
                .ports
                .iter()
                .find(|(name, proto, _)| *name == port.name && *proto == port.proto)
            else {
                continue;
            };
            for e in &slice.endpoints {
                let usable = if terminating {
                    e.serving && e.terminating
                } else {
                    e.ready
                };
                if usable {
                    out.extend(e.addresses.iter().map(|a| (*a, number)));
                }
            }
        }
        out
    };
    let ready = pick(false);
    if ready.is_empty() {
        pick(true).into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

/// The kernel's entries for `frontends`: a header per frontend (slot 0, its backend count) and a
/// slot per backend, in the scope of pods; and in the scope of outside, the outside frontends
/// with the backends `takes_ingress` accepts (a local pod's port with an `ingress` section), if
/// any. Frontends beyond the map's size are left out, each with a warning (their flows go
/// untranslated, and are judged as sent to the Service address).
pub fn entries(
    frontends: &[Frontend],
    takes_ingress: impl Fn(IpAddr, u16) -> bool,
    warnings: &mut Vec<String>,
) -> Vec<(ServiceKey, ServiceValue)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for f in frontends {
        if !seen.insert((f.addr, f.port, f.proto)) {
            warnings.push(format!(
                "Service {}: {}:{} is also another Service's frontend; the first one listed keeps it",
                f.service, f.addr, f.port
            ));
            continue;
        }
        let ingress: Vec<(IpAddr, u16)> = if f.outside {
            f.backends
                .iter()
                .copied()
                .filter(|(addr, port)| takes_ingress(*addr, *port))
                .collect()
        } else {
            Vec::new()
        };
        let scopes = [
            (ServiceKey::FROM_PODS, &f.backends),
            (ServiceKey::FROM_OUTSIDE, &ingress),
        ];
        for (scope, backends) in scopes {
            if scope == ServiceKey::FROM_OUTSIDE && backends.is_empty() {
                continue;
            }
            let count = backends.len().min(usize::from(u16::MAX));
            if out.len() + count + 1 > MAX_SERVICES as usize {
                warnings.push(format!(
                    "Service {}: {}:{} not translated: the service map holds {MAX_SERVICES} slots",
                    f.service, f.addr, f.port
                ));
                continue;
            }
            let key = |slot: u16| ServiceKey {
                addr: mapped(f.addr),
                port: f.port,
                slot,
                proto: f.proto,
                scope,
                _pad: [0; 2],
            };
            out.push((
                key(0),
                ServiceValue {
                    count: count as u16,
                    ..ServiceValue::default()
                },
            ));
            for (i, (addr, port)) in backends.iter().take(count).enumerate() {
                out.push((
                    key(i as u16 + 1),
                    ServiceValue {
                        addr: mapped(*addr),
                        port: *port,
                        ..ServiceValue::default()
                    },
                ));
            }
        }
    }
    out
}

/// The kernel's 16-byte form of an address (IPv4 as `::ffff:a.b.c.d`).
fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::model::{EndpointModel, PROTO_TCP, PROTO_UDP, PortTarget, ServiceModel};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn endpoint(addr: &str, ready: bool, terminating: bool) -> EndpointModel {
        EndpointModel {
            addresses: vec![ip(addr)],
            ready,
            serving: ready || terminating,
            terminating,
            node: None,
            pod: None,
        }
    }

    fn model() -> Model {
        let service = ServiceModel {
            namespace: "shop".into(),
            name: "web".into(),
            kind: "NodePort".into(),
            cluster_ips: vec![ip("10.96.0.20")],
            external_ips: vec![],
            load_balancer_ips: vec![ip("192.0.2.7")],
            ports: vec![
                ServicePortModel {
                    name: Some("http".into()),
                    proto: PROTO_TCP,
                    port: 80,
                    node_port: Some(30080),
                    target: PortTarget::Named("web".into()),
                },
                ServicePortModel {
                    name: Some("dns".into()),
                    proto: PROTO_UDP,
                    port: 53,
                    node_port: None,
                    target: PortTarget::Number(5353),
                },
            ],
            external_local: false,
        };
        let slice = EndpointSliceModel {
            namespace: "shop".into(),
            name: "web-abc".into(),
            service: "web".into(),
            endpoints: vec![
                endpoint("10.1.0.5", true, false),
                endpoint("10.2.0.6", true, false),
                endpoint("10.2.0.7", false, true),
            ],
            ports: vec![
                (Some("http".into()), PROTO_TCP, 8080),
                (Some("dns".into()), PROTO_UDP, 5353),
            ],
        };
        let mut model = Model {
            services: vec![Arc::new(service)],
            endpoint_slices: vec![Arc::new(slice)],
            ..Model::default()
        };
        model.nodes.insert("n2".into(), vec![ip("172.18.0.2")]);
        model
    }

    #[test]
    fn every_address_and_node_port_is_a_frontend_of_the_ready_backends() {
        let host = BTreeSet::from([ip("172.18.0.1")]);
        let f = frontends(&model(), &host);
        let http: Vec<(IpAddr, u16, bool)> = f
            .iter()
            .filter(|f| f.proto == PROTO_TCP)
            .map(|f| (f.addr, f.port, f.node_port))
            .collect();
        assert_eq!(
            http,
            vec![
                (ip("10.96.0.20"), 80, false),
                (ip("192.0.2.7"), 80, false),
                (ip("172.18.0.1"), 30080, true),
                (ip("172.18.0.2"), 30080, true),
            ]
        );
        let backends = vec![(ip("10.1.0.5"), 8080), (ip("10.2.0.6"), 8080)];
        assert!(
            f.iter()
                .filter(|f| f.proto == PROTO_TCP)
                .all(|f| f.backends == backends)
        );
        let dns = f.iter().find(|f| f.proto == PROTO_UDP).expect("dns");
        assert_eq!((dns.port, dns.backends.len()), (53, 2));
        assert_eq!(dns.backends[0].1, 5353, "the slice's port of the same name");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mut m = model();
        let slice = Arc::make_mut(&mut m.endpoint_slices[0]);
        for e in &mut slice.endpoints {
            e.ready = false;
        }
        let f = frontends(&m, &BTreeSet::new());
        assert_eq!(f[0].backends, vec![(ip("10.2.0.7"), 8080)]);
    }

    #[test]
    fn a_frontend_without_backends_has_a_header_of_none() {
        let mut m = model();
        m.endpoint_slices.clear();
        let mut warnings = Vec::new();
        let e = entries(&frontends(&m, &BTreeSet::new()), |_, _| true, &mut warnings);
        assert!(e.iter().all(|(k, v)| k.slot == 0 && v.count == 0));
        assert_eq!(
            e.len(),
            5,
            "cluster IP, load balancer and node n2 (30080) on 80; cluster IP and load balancer on 53"
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn entries_are_a_header_and_a_slot_per_backend_of_the_same_family() {
        let mut m = model();
        Arc::make_mut(&mut m.endpoint_slices[0]).endpoints[0]
            .addresses
            .push(ip("fd00::5"));
        let mut warnings = Vec::new();
        let e = entries(
            &frontends(&m, &BTreeSet::new()),
            |_, _| false,
            &mut warnings,
        );
        let cluster = mapped(ip("10.96.0.20"));
        let of_http: Vec<&(ServiceKey, ServiceValue)> = e
            .iter()
            .filter(|(k, _)| k.addr == cluster && k.port == 80)
            .collect();
        assert_eq!(of_http.len(), 3);
        assert_eq!((of_http[0].0.slot, of_http[0].1.count), (0, 2));
        assert_eq!(of_http[1].1.addr, mapped(ip("10.1.0.5")));
        assert_eq!(of_http[2].1.port, 8080);
        assert!(e.iter().all(|(k, _)| k.scope == ServiceKey::FROM_PODS));
    }

    /// Two Services claiming one address and port (the API server refuses that for cluster
    /// IPs, not for external IPs): the first listed keeps it, the other is a warning, and the
    /// kernel gets one header for it.
    #[test]
    fn a_frontend_two_services_claim_goes_to_the_first_with_a_warning() {
        let mut m = model();
        let mut other = (*m.services[0]).clone();
        other.name = "web-copy".into();
        m.services.push(Arc::new(other));
        let mut warnings = Vec::new();
        let e = entries(
            &frontends(&m, &BTreeSet::new()),
            |_, _| false,
            &mut warnings,
        );
        let cluster = mapped(ip("10.96.0.20"));
        let headers = e
            .iter()
            .filter(|(k, _)| k.addr == cluster && k.port == 80 && k.slot == 0)
            .count();
        assert_eq!(headers, 1);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("shop/web-copy") && w.contains("10.96.0.20:80")),
            "{warnings:?}"
        );
    }

    #[test]
    fn from_outside_only_this_nodes_reachable_frontends_with_ingress_backends() {
        let host = BTreeSet::from([ip("172.18.0.1")]);
        let mut warnings = Vec::new();
        let local_ingress = |addr: IpAddr, port: u16| addr == ip("10.1.0.5") && port == 8080;
        let e = entries(&frontends(&model(), &host), local_ingress, &mut warnings);
        let outside: Vec<(IpAddr, u16, u16, u16)> = e
            .iter()
            .filter(|(k, _)| k.scope == ServiceKey::FROM_OUTSIDE)
            .map(|(k, v)| {
                let addr = std::net::Ipv6Addr::from(k.addr).to_canonical();
                (
                    addr,
                    k.port,
                    k.slot,
                    if k.slot == 0 { v.count } else { v.port },
                )
            })
            .collect();
        assert_eq!(
            outside,
            vec![
                (ip("192.0.2.7"), 80, 0, 1),
                (ip("192.0.2.7"), 80, 1, 8080),
                (ip("172.18.0.1"), 30080, 0, 1),
                (ip("172.18.0.1"), 30080, 1, 8080),
            ],
            "the load balancer and this node's node port, to the local ingress backend; not \
             the cluster IP, not node n2's node port, not the UDP port"
        );
    }
}
