//! What the proxy knows of the policy set in force: every pod address (identity, SPIFFE ID, node)
//! and the mTLS destinations (destination identity and port → allowed principals). Rebuilt by the
//! controller with each policy set; read by every proxied connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::tunnel::{Authorize, FlowRequest};
use crate::policy::compile::{Compiled, MeshDestination, WorkloadAddr, Workloads};
use crate::policy::model::PrincipalsModel;
use crate::spiffe::SpiffeId;
use crate::view::View;
use rampart_common::reason::MtlsReason;

#[derive(Debug, Default)]
pub struct MeshTable {
    workloads: Workloads,
    destinations: HashMap<(u32, u16), MeshDestination>,
    /// Routes with L7 rules, and their live state.
    http: HashMap<(u32, u16), std::sync::Arc<crate::l7::HttpRoute>>,
    /// Routes that take traffic from outside the cluster.
    ingress: HashMap<(u32, u16), std::sync::Arc<super::ingress::IngressRoute>>,
}

impl MeshTable {
    /// The table of `compiled`; JWKS sources its L7 rules name come from `jwks` (started there
    /// if new; those no rule names any more are stopped); rate limits unchanged from
    /// `previous` keep their buckets.
    pub fn from_compiled(
        compiled: &Compiled,
        jwks: &crate::l7::jwks::JwksRegistry,
        previous: Option<&MeshTable>,
        wafs: Option<&crate::l7::waf::WafEngines>,
    ) -> MeshTable {
        let mut table = MeshTable {
            workloads: compiled.workloads.clone(),
            destinations: compiled
                .mesh
                .iter()
                .map(|r| ((r.identity, r.port), r.clone()))
                .collect(),
            http: compiled
                .mesh
                .iter()
                .filter_map(|r| {
                    let model = r.http.as_ref()?;
                    let policy = r.http_policy.clone().unwrap_or_default();
                    let before = previous.and_then(|t| t.http.get(&(r.identity, r.port)));
                    let route = crate::l7::HttpRoute::new(
                        policy,
                        std::sync::Arc::clone(model),
                        jwks,
                        before.map(|b| &**b),
                        wafs,
                    );
                    Some(((r.identity, r.port), std::sync::Arc::new(route)))
                })
                .collect(),
            ingress: HashMap::new(),
        };
        for r in &compiled.mesh {
            let Some(model) = &r.ingress else {
                continue;
            };
            let http = table.http.get(&(r.identity, r.port)).cloned();
            let tls = match &model.tls {
                None => None,
                Some(certificates) => {
                    match super::sni::server_config(certificates, http.is_some()) {
                        Ok(config) => Some(config),
                        Err(e) => {
                            // A checked policy set has its certificates; fail closed anyway.
                            tracing::warn!(policy = ?r.ingress_policy, "ingress: no TLS configuration: {e}");
                            continue;
                        }
                    }
                }
            };
            let route = super::ingress::IngressRoute {
                policy: r.ingress_policy.clone().unwrap_or_default(),
                tls,
                http,
            };
            table
                .ingress
                .insert((r.identity, r.port), std::sync::Arc::new(route));
        }
        let in_use = table
            .http
            .values()
            .flat_map(|route| route.remote_sources())
            .map(|remote| remote.location.clone())
            .collect();
        jwks.retain(&in_use);
        table
    }

    pub fn workload(&self, addr: IpAddr) -> Option<&WorkloadAddr> {
        self.workloads.get(canonical(addr))
    }

    /// Whether a pod behind this node's interfaces has the workload identity `spiffe_id`.
    pub fn runs_locally(&self, spiffe_id: &str) -> bool {
        self.workloads
            .iter()
            .any(|w| w.local && *w.spiffe_id == *spiffe_id)
    }

    pub fn destination(&self, identity: u32, port: u16) -> Option<&MeshDestination> {
        self.destinations.get(&(identity, port))
    }

    pub fn destinations(&self) -> usize {
        self.destinations.len()
    }

    /// The ingress of `destination` if it is a local workload's port that takes traffic from
    /// outside the cluster.
    pub fn ingress(
        &self,
        destination: std::net::SocketAddr,
    ) -> Option<std::sync::Arc<super::ingress::IngressRoute>> {
        let dst = self.workload(destination.ip()).filter(|w| w.local)?;
        self.ingress
            .get(&(dst.identity, destination.port()))
            .cloned()
    }

    /// The inbound decision for one tunnelled flow: the destination is a local workload whose
    /// port takes mTLS, the peer is the workload at the source address it claims, and a policy
    /// of the route allows that principal.
    pub fn check(&self, flow: &FlowRequest) -> Result<(), MtlsReason> {
        self.authorize(flow).map(|_| ())
    }

    /// [`MeshTable::check`], and the L7 rules of the destination's port if it has any.
    pub fn authorize(
        &self,
        flow: &FlowRequest,
    ) -> Result<Option<std::sync::Arc<crate::l7::HttpRoute>>, MtlsReason> {
        let dst = self
            .workload(flow.destination.ip())
            .filter(|w| w.local)
            .ok_or(MtlsReason::NoRoute)?;
        let route = self
            .destination(dst.identity, flow.destination.port())
            .ok_or(MtlsReason::NoRoute)?;
        let src = self
            .workload(flow.source.ip())
            .ok_or(MtlsReason::SourceMismatch)?;
        if *src.spiffe_id != *flow.peer.as_str() {
            return Err(MtlsReason::SourceMismatch);
        }
        if !principal_allowed(route, &flow.peer) {
            return Err(MtlsReason::PrincipalNotAllowed);
        }
        Ok(self
            .http
            .get(&(dst.identity, flow.destination.port()))
            .cloned())
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `peer` is one of `route`'s allowed principals (`None`: anyone of the trust domain,
/// which the TLS handshake already checked).
pub fn principal_allowed(route: &MeshDestination, peer: &SpiffeId) -> bool {
    let Some(lists) = &route.principals else {
        return true;
    };
    let sa = peer.namespace_and_service_account();
    lists.iter().any(|p: &PrincipalsModel| {
        p.spiffe_ids.iter().any(|id| id == peer.as_str())
            || sa.is_some_and(|(ns, name)| {
                p.namespaces.iter().any(|n| n == ns)
                    || p.service_accounts
                        .iter()
                        .any(|(sns, sname)| sns == ns && sname == name)
            })
    })
}

/// The tables the proxy reads: the one of the generation in force and, while the controller
/// installs a new generation, that one too. The controller stages a table before the kernel
/// flips to its generation and publishes the generation once the flip succeeded, so a flow the
/// kernel redirects by the new state always finds its destination here: a lookup the table in
/// force cannot answer is asked of the staged one (for that moment, what either allows is
/// allowed).
#[derive(Clone, Debug)]
pub struct TableView {
    pub current: View<Arc<MeshTable>>,
    pub staged: View<Option<Arc<MeshTable>>>,
}

impl TableView {
    /// The table in force if `knows` holds for it, else the staged one if it holds there,
    /// else the table in force.
    pub fn knowing(&self, knows: impl Fn(&MeshTable) -> bool) -> Arc<MeshTable> {
        let current = self.current.get();
        if knows(&current) {
            return current;
        }
        match self.staged.get() {
            Some(staged) if knows(&staged) => staged,
            _ => current,
        }
    }

    /// `find` in the table in force, then in the staged one.
    pub fn find<T>(&self, find: impl Fn(&MeshTable) -> Option<T>) -> Option<T> {
        find(&self.current.get()).or_else(|| self.staged.get().and_then(|t| find(&t)))
    }
}

/// What the controller needs to build the proxy's table of a policy set: the proxy's JWKS
/// sources and WAF engines (shared with the running proxy).
#[derive(Clone)]
pub struct TableBuilder {
    pub jwks: Arc<crate::l7::jwks::JwksRegistry>,
    pub wafs: Arc<crate::l7::waf::WafEngines>,
    /// The proxy's transparent listener (the kernel redirects to it).
    pub proxy_port: u16,
}

impl TableBuilder {
    /// The table of `compiled`, its WAF engines loaded first (`Err` names the policy whose
    /// rules did not load; nothing changes then). Rate limits unchanged from `previous` keep
    /// their buckets.
    pub fn build(
        &self,
        compiled: &Compiled,
        previous: Option<&MeshTable>,
    ) -> Result<MeshTable, String> {
        self.wafs.prepare(compiled)?;
        Ok(MeshTable::from_compiled(
            compiled,
            &self.jwks,
            previous,
            Some(&self.wafs),
        ))
    }
}

/// The inbound side's [`Authorize`]: the tables in force when the stream arrives.
pub struct TableAuthorizer {
    pub tables: TableView,
}

impl Authorize for TableAuthorizer {
    fn check(&self, flow: &FlowRequest) -> Result<Option<Arc<crate::l7::HttpRoute>>, MtlsReason> {
        let current = self.tables.current.get().authorize(flow);
        match (&current, self.tables.staged.get()) {
            (Err(_), Some(staged)) => staged.authorize(flow).or(current),
            _ => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(principals: Option<Vec<PrincipalsModel>>) -> MeshDestination {
        MeshDestination {
            identity: 300,
            port: 5432,
            policies: vec!["MeshPolicy db".into()],
            principals,
            http_policy: None,
            http: None,
            brake: None,
            ingress_policy: None,
            ingress: None,
        }
    }

    fn workload(addr: &str, identity: u32, id: &str, local: bool) -> WorkloadAddr {
        WorkloadAddr {
            addr: addr.parse().expect("addr"),
            identity,
            spiffe_id: id.into(),
            pod: "ns/pod".into(),
            node: Some("node-1".into()),
            host_ip: None,
            local,
        }
    }

    #[test]
    fn principals_match_by_id_service_account_or_namespace() {
        let backend = SpiffeId::parse("spiffe://td/ns/shop/sa/backend").expect("id");
        let other = SpiffeId::parse("spiffe://td/ns/web/sa/frontend").expect("id");
        assert!(principal_allowed(&route(None), &other));
        let by_sa = PrincipalsModel {
            service_accounts: vec![("shop".into(), "backend".into())],
            ..Default::default()
        };
        assert!(principal_allowed(
            &route(Some(vec![by_sa.clone()])),
            &backend
        ));
        assert!(!principal_allowed(&route(Some(vec![by_sa])), &other));
        let by_ns = PrincipalsModel {
            namespaces: vec!["web".into()],
            ..Default::default()
        };
        let by_id = PrincipalsModel {
            spiffe_ids: vec![backend.to_string()],
            ..Default::default()
        };
        let both = route(Some(vec![by_ns, by_id]));
        assert!(principal_allowed(&both, &backend) && principal_allowed(&both, &other));
        assert!(!principal_allowed(&route(Some(Vec::new())), &backend));
    }

    #[test]
    fn inbound_checks_destination_source_and_principal() {
        let mut table = MeshTable {
            workloads: Workloads::new(vec![
                workload("10.0.2.5", 300, "spiffe://td/ns/shop/sa/db", true),
                workload("10.0.1.5", 301, "spiffe://td/ns/shop/sa/backend", false),
                workload("10.0.1.6", 302, "spiffe://td/ns/shop/sa/frontend", false),
            ]),
            ..MeshTable::default()
        };
        let by_sa = PrincipalsModel {
            service_accounts: vec![("shop".into(), "backend".into())],
            ..Default::default()
        };
        table
            .destinations
            .insert((300, 5432), route(Some(vec![by_sa])));
        let flow = |peer: &str, src: &str, dst: &str| FlowRequest {
            peer: SpiffeId::parse(peer).expect("id"),
            source: src.parse().expect("src"),
            destination: dst.parse().expect("dst"),
        };
        let backend = "spiffe://td/ns/shop/sa/backend";
        let frontend = "spiffe://td/ns/shop/sa/frontend";
        assert_eq!(
            table.check(&flow(backend, "10.0.1.5:40000", "10.0.2.5:5432")),
            Ok(())
        );
        assert_eq!(
            table.check(&flow(backend, "[::ffff:10.0.1.5]:40000", "10.0.2.5:5432")),
            Ok(())
        );
        assert_eq!(
            table.check(&flow(frontend, "10.0.1.6:40000", "10.0.2.5:5432")),
            Err(MtlsReason::PrincipalNotAllowed)
        );
        // A frontend certificate claiming the backend's address.
        assert_eq!(
            table.check(&flow(frontend, "10.0.1.5:40000", "10.0.2.5:5432")),
            Err(MtlsReason::SourceMismatch)
        );
        assert_eq!(
            table.check(&flow(backend, "10.0.1.5:40000", "10.0.2.5:8080")),
            Err(MtlsReason::NoRoute)
        );
        assert_eq!(
            table.check(&flow(backend, "10.0.1.5:40000", "10.0.1.6:5432")),
            Err(MtlsReason::NoRoute)
        );
    }
}
