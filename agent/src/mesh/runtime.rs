//! The mesh side of `rampart run --ca-dir`: the node's policy routing for marked packets, the
//! outbound transparent listener that receives redirected flows, the inbound tunnel listener,
//! and the upkeep of the certificates ([`super::certs`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rampart_common::mesh::{MARK_FROM_PROXY, MARK_MASK, MARK_TO_PROXY};
use rampart_common::reason::{IngressReason, OutboundReason};
use tokio::net::{TcpListener, TcpStream};

use crate::config::MeshSettings;
use crate::handover::Sockets;
use crate::limits::{Limit, ProxyGuards};
use crate::listen::{ConnectionCap, Drain, Gate};
use std::os::fd::AsFd as _;

use super::carried_certs::CarriedCerts;
use super::certs::CertStore;
use super::ingress::IngressContext;
use super::policy_routing::ProxyRouting;
use super::table::{TableAuthorizer, TableBuilder, TableView};
use super::tls::{RotatingCert, client_config, server_config};
use super::tunnel::{self, DestinationIdentity as _, Inbound, TunnelStats, UpstreamSource};
use crate::flows::event::{ProxyEvent, ProxyEventSink, ProxySide};
use crate::spiffe::SpiffeId;

/// The policy routing that delivers packets marked for the proxy locally: a rule at priority 90
/// (before the main table's 32766) into table 21072, which holds `local default dev lo`.
pub const PROXY_ROUTING: ProxyRouting = ProxyRouting {
    mark: MARK_TO_PROXY,
    mask: MARK_MASK,
    priority: 90,
    table: 21072,
};
/// How often the CA files are checked for a rotated root.
const CA_POLL: Duration = Duration::from_secs(2);
/// How often the policy routing is checked, and put back when someone removed it.
const ROUTING_CHECK: Duration = Duration::from_secs(5);

pub struct MeshRuntime {
    pub settings: MeshSettings,
    /// The policy generation's tables, as the controller publishes them.
    pub tables: TableView,
    pub inbound_stats: Arc<TunnelStats>,
    /// JWKS sources of the L7 rules, refreshed on this runtime.
    pub jwks: Arc<crate::l7::jwks::JwksRegistry>,
    /// WAF engines, one per profile the L7 rules use.
    pub wafs: Arc<crate::l7::waf::WafEngines>,
    outbound_errors: [AtomicU64; OutboundReason::ALL.len()],
    pub outbound_flows: AtomicU64,
    /// Times the policy routing was found missing (in part or whole) and installed again.
    pub routing_repaired: AtomicU64,
    pub certs: Arc<CertStore>,
    node_cert: Arc<RotatingCert>,
    inbound: Arc<Inbound>,
    /// Flows from outside the cluster.
    pub ingress: Arc<IngressContext>,
    node_id: SpiffeId,
    events: Option<ProxyEventSink>,
    /// The transparent listeners and the tunnel accept only while it is open: from the first
    /// policy generation in force until a successor takes over (or SIGTERM).
    pub gate: Gate,
    /// Started when this agent stops accepting: HTTP connections end at a request boundary.
    pub drain: Drain,
    /// The listeners' connections (set by `start`).
    connections: std::sync::OnceLock<ConnectionCap>,
    /// What one client may hold (`settings.limits`), and the counts of those limits.
    pub guards: Arc<ProxyGuards>,
}

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MeshRuntime {
    /// Loads the CA and issues the node's certificate. `trust_domain` must be the CA's.
    /// Routes come from `tables` (the controller's published generations); refusals on either
    /// side go to `events` (the flow log).
    pub async fn new(
        settings: MeshSettings,
        trust_domain: &str,
        tables: TableView,
        events: Option<ProxyEventSink>,
        carried: Option<&CarriedCerts>,
        fd_limit: u64,
    ) -> anyhow::Result<Arc<MeshRuntime>> {
        let guards = ProxyGuards::new(settings.limits.clone(), fd_limit);
        let node_id = SpiffeId::node(trust_domain, &settings.node_name)
            .with_context(|| format!("--node-name {:?}", settings.node_name))?;
        let certs = Arc::new(
            CertStore::open(
                &settings,
                trust_domain,
                node_id.clone(),
                tables.clone(),
                carried,
            )
            .await?,
        );
        let bundle = certs.bundle()?;
        let node_cert = Arc::new(RotatingCert::new(&certs.node()?)?);
        let inbound_stats = Arc::new(TunnelStats::default());
        let drain = Drain::default();
        let inbound = Arc::new(Inbound {
            config: RwLock::new(server_config(&bundle, Arc::clone(&node_cert))?),
            trust_domain: trust_domain.to_owned(),
            authorize: Arc::new(TableAuthorizer {
                tables: tables.clone(),
            }),
            stats: Arc::clone(&inbound_stats),
            upstream: UpstreamSource::Transparent {
                mark: MARK_FROM_PROXY,
            },
            events: events.clone(),
            l7: Arc::new(crate::l7::L7Stats::default()),
            identities: Some(Arc::clone(&certs) as Arc<dyn tunnel::DestinationIdentity>),
            drain: drain.clone(),
            guards: Arc::clone(&guards),
        });
        let ingress = IngressContext {
            l7: Arc::clone(&inbound.l7),
            events: events.clone(),
            mark: MARK_FROM_PROXY,
            flows: AtomicU64::new(0),
            drain: drain.clone(),
            guards: Arc::clone(&guards),
        };
        Ok(Arc::new(MeshRuntime {
            wafs: Arc::new(crate::l7::waf::WafEngines::new(settings.crs_dir.clone())),
            certs,
            settings,
            tables,
            inbound_stats,
            jwks: Arc::new(crate::l7::jwks::JwksRegistry::default()),
            outbound_errors: Default::default(),
            outbound_flows: AtomicU64::new(0),
            routing_repaired: AtomicU64::new(0),
            node_cert,
            inbound,
            ingress: Arc::new(ingress),
            node_id,
            events,
            gate: Gate::closed(),
            drain,
            connections: std::sync::OnceLock::new(),
            guards,
        }))
    }

    /// What the controller needs to build this proxy's tables.
    pub fn table_builder(&self) -> TableBuilder {
        TableBuilder {
            jwks: Arc::clone(&self.jwks),
            wafs: Arc::clone(&self.wafs),
            proxy_port: self.settings.proxy_port,
        }
    }

    /// Counters of the L7 filters on the inbound side.
    pub fn l7_stats(&self) -> &crate::l7::L7Stats {
        &self.inbound.l7
    }

    pub fn outbound_errors(&self, e: OutboundReason) -> u64 {
        self.outbound_errors[e as usize].load(Ordering::Relaxed)
    }

    /// Counts an outbound failure of the flow `source` → `destination` and reports it.
    fn fail(&self, e: OutboundReason, source: SocketAddr, destination: SocketAddr) {
        self.outbound_errors[e as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = &self.events {
            sink(&ProxyEvent {
                side: ProxySide::Outbound,

                http: None,
                refused: Some(e.into()),
                peer: None,
                source: Some(source),
                destination: Some(destination),
            });
        }
    }

    /// Installs the policy routing, binds both listeners (or takes them over from `sockets`,
    /// which a predecessor filled, and offers them there to a successor) and spawns their tasks
    /// and the certificate upkeep. The listeners accept once [`MeshRuntime::gate`] opens, and
    /// share `connections`: past it, new flows wait in the kernel's backlog.
    pub async fn start(
        self: &Arc<Self>,
        connections: ConnectionCap,
        sockets: &Sockets,
    ) -> anyhow::Result<()> {
        use crate::handover::messages::listener;
        let _ = self.connections.set(connections.clone());
        self.jwks.start(tokio::runtime::Handle::current());
        PROXY_ROUTING
            .install()
            .context("installing the policy routing for the proxy's mark (netlink)")?;
        let port = self.settings.tunnel_port;
        let tunnel_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let tunnel_v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let inherited = sockets
            .inherit_tcp(listener::TUNNEL, tunnel_v6)
            .or_else(|| sockets.inherit_tcp(listener::TUNNEL, tunnel_v4))
            .map(TcpListener::from_std)
            .transpose()
            .context("the tunnel listener handed over")?;
        let tunnel_listener = match inherited {
            Some(listener) => listener,
            None => TcpListener::bind(tunnel_v6)
                .await
                .or(TcpListener::bind(tunnel_v4).await)
                .with_context(|| format!("binding the tunnel port {port}"))?,
        };
        sockets
            .offer(listener::TUNNEL, tunnel_listener.as_fd())
            .context("keeping the tunnel listener for a successor")?;
        tokio::spawn(tunnel::serve(
            tunnel_listener,
            Arc::clone(&self.inbound),
            connections.clone(),
            self.gate.clone(),
        ));
        for (addr, name) in [
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), listener::PROXY_V4),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), listener::PROXY_V6),
        ] {
            let at = SocketAddr::new(addr, self.settings.proxy_port);
            let listener = match sockets.inherit_tcp(name, at) {
                Some(listener) => {
                    TcpListener::from_std(listener).context("the proxy's listener handed over")?
                }
                None => transparent_listener(at).with_context(|| {
                    format!(
                        "binding the proxy's transparent listener on port {}",
                        self.settings.proxy_port
                    )
                })?,
            };
            sockets
                .offer(name, listener.as_fd())
                .context("keeping the proxy's listener for a successor")?;
            let me = Arc::clone(self);
            tokio::spawn(crate::listen::serve_while(
                "proxy",
                listener,
                connections.clone(),
                self.gate.clone(),
                move |stream, peer| {
                    let me = Arc::clone(&me);
                    async move { me.outbound(stream, peer).await }
                },
            ));
        }
        tokio::spawn(Arc::clone(self).keep_routing());
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CA_POLL).await;
                if let Err(e) = me.upkeep().await {
                    tracing::warn!("certificates: {e:#}");
                }
            }
        });
        tracing::info!(
            proxy_port = self.settings.proxy_port,
            tunnel_port = self.settings.tunnel_port,
            node = %self.node_id,
            "mTLS proxy listening (accepting once policy is in force)"
        );
        Ok(())
    }

    /// Checks the policy routing every [`ROUTING_CHECK`] and installs it again where a rule or
    /// route is missing (another tool flushed the table, an operator deleted the rule): without
    /// it, marked packets are routed to their destinations instead of the proxy, and an mTLS
    /// port's flows fail until the next restart. Stops once this agent drains: its successor
    /// owns the routing then, and may lay it out differently.
    async fn keep_routing(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROUTING_CHECK).await;
            if self.drain.is_draining() {
                return;
            }
            // A few netlink requests on a blocking socket.
            let checked = tokio::task::spawn_blocking(|| {
                if PROXY_ROUTING.installed()? {
                    return Ok(false);
                }
                PROXY_ROUTING.install().map(|()| true)
            })
            .await;
            match checked {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    self.routing_repaired.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        priority = PROXY_ROUTING.priority,
                        table = PROXY_ROUTING.table,
                        "the policy routing for the proxy's mark was missing; installed again"
                    );
                }
                Ok(Err(e)) => tracing::warn!("checking the policy routing (netlink): {e}"),
                Err(e) => tracing::warn!("checking the policy routing: {e}"),
            }
        }
    }

    /// Stops accepting (for good) and starts the drain; returns the connections still open.
    pub fn stop_accepting(&self) -> usize {
        self.gate.stop();
        self.drain.start();
        self.open_connections()
    }

    /// Proxied connections open now (transparent and tunnel).
    pub fn open_connections(&self) -> usize {
        self.connections.get().map_or(0, ConnectionCap::open)
    }

    /// The `n` connections open longest (see [`ConnectionCap::oldest`]).
    pub fn oldest_connections(&self, n: usize) -> Vec<crate::listen::OpenConnection> {
        self.connections
            .get()
            .map_or_else(Vec::new, |c| c.oldest(n))
    }

    /// Renews the node certificate at half-life and picks up a rotated root (the new root is
    /// trusted beside the old one, new certificates come from it, and established connections
    /// keep theirs), puts them in force, then renews the workloads' certificates.
    async fn upkeep(&self) -> anyhow::Result<()> {
        let changed = self.certs.upkeep().await?;
        if let Some(node) = &changed.node {
            self.node_cert.replace(node)?;
        }
        if let Some(bundle) = &changed.bundle {
            let config = server_config(bundle, Arc::clone(&self.node_cert))?;
            if let Ok(mut c) = self.inbound.config.write() {
                *c = config;
            }
        }
        self.certs.renew_workloads().await
    }

    /// The L7 route of an ingress flow from `source` to `original`, looked up in the table in
    /// force for each request; a port no longer open to outside clients refuses it (counted).
    fn ingress_routes(
        self: &Arc<Self>,
        source: SocketAddr,
        original: SocketAddr,
    ) -> crate::l7::serve::RouteLookup {
        use crate::l7::serve::RouteNow;
        let this = Arc::clone(self);
        Arc::new(move || {
            let route = this.tables.find(|t| t.ingress(original));
            match route.map(|r| r.http.clone()) {
                Some(Some(http)) => RouteNow::Rules(http),
                Some(None) => RouteNow::NoRules,
                None => {
                    this.ingress
                        .refuse(IngressReason::NoRoute, source, original);
                    RouteNow::Refused
                }
            }
        })
    }

    /// A redirected flow: the accepted socket's local address is the original destination. A
    /// local pod's flow goes into the tunnel; one from outside the cluster to a local pod's
    /// ingress port is served here.
    async fn outbound(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let original = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let _ = stream.set_nodelay(true);
        let (src_id, tunnel_addr, server_id) = {
            let table = self
                .tables
                .knowing(|t| t.workload(peer.ip()).is_some() || t.ingress(original).is_some());
            if table.workload(peer.ip()).is_none()
                && let Some(route) = table.ingress(original)
            {
                drop(table);
                let destination_id = self.certs.identity_of(original.ip());
                let routes = self.ingress_routes(peer, original);
                return super::ingress::serve(
                    stream,
                    peer,
                    (original, destination_id),
                    route,
                    routes,
                    &self.ingress,
                )
                .await;
            }
            let Some(src) = table.workload(peer.ip()).filter(|w| w.local) else {
                tracing::info!(%peer, %original, "proxy: source is not a local workload");
                return self.fail(OutboundReason::UnknownSource, peer, original);
            };
            let dst = table.workload(original.ip());
            let Some(host) = dst.and_then(|d| d.host_ip) else {
                tracing::info!(%peer, %original, "proxy: destination has no node address");
                return self.fail(OutboundReason::UnknownDestination, peer, original);
            };
            // The destination's agent must prove the identity of the workload at the address
            // (it presents that workload's certificate for the SNI the tunnel sends).
            let (Ok(src_id), Some(Ok(server_id))) = (
                SpiffeId::parse(&src.spiffe_id),
                dst.map(|d| SpiffeId::parse(&d.spiffe_id)),
            ) else {
                return self.fail(OutboundReason::Certificate, peer, original);
            };
            (
                src_id,
                SocketAddr::new(host, self.settings.tunnel_port),
                server_id,
            )
        };
        let config = match self
            .certs
            .workload_cert(&src_id)
            .await
            .and_then(|(cert, bundle)| Ok(client_config(&bundle, &cert, server_id)?))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(workload = %src_id, "proxy: no certificate: {e:#}");
                return self.fail(OutboundReason::Certificate, peer, original);
            }
        };
        let flow = match tunnel::connect(tunnel_addr, config, peer, original).await {
            Ok(f) => f,
            Err(e) if e.is_wrong_server_identity() => {
                tracing::warn!(%peer, %original, tunnel = %tunnel_addr, "proxy: the destination's agent did not prove the destination workload's identity: {e}");
                return self.fail(OutboundReason::DestinationIdentity, peer, original);
            }
            Err(e) => {
                tracing::info!(%peer, %original, tunnel = %tunnel_addr, "proxy: {e}");
                return self.fail(OutboundReason::Tunnel, peer, original);
            }
        };
        self.outbound_flows.fetch_add(1, Ordering::Relaxed);
        let idle = self.guards.limits.settings.tunnel_idle_timeout;
        if crate::activity::relay_until_idle(stream, flow, tunnel::RELAY_BUFFER, idle).await
            == crate::activity::RelayEnd::Idle
        {
            self.guards.limits.hit(Limit::TunnelIdleTimeout);
        }
    }
}

/// A listener that accepts connections for any address (`IP_TRANSPARENT`): the kernel hands it
/// the redirected SYNs (`bpf_sk_assign`), and its accepted sockets keep the original addresses.
fn transparent_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}
