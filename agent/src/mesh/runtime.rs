//! The mesh side of `rampart run --ca-dir`: the node's policy routing for marked packets, the
//! outbound transparent listener that receives redirected flows, the inbound tunnel listener,
//! and the certificates (the node's, and one per local workload identity, issued on first use
//! and renewed at half-life; the root reloaded when its files change).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rampart_common::mesh::{MARK_FROM_PROXY, MARK_MASK, MARK_TO_PROXY};
use rampart_common::reason::{IngressReason, OutboundReason};
use tokio::net::{TcpListener, TcpStream};

use crate::config::MeshSettings;
use crate::listen::ConnectionCap;

use super::ca::{CA_CERT_FILE, Ca, WorkloadCert};
use super::ingress::IngressContext;
use super::policy_routing::ProxyRouting;
use super::table::{TableAuthorizer, TableBuilder, TableView};
use super::tls::{RotatingCert, TrustBundle, client_config, server_config};
use super::tunnel::{self, Inbound, TunnelStats, UpstreamSource};
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

/// Certificates of the node and its workloads, issued from the trust domain's CA.
struct Certs {
    ca: Ca,
    /// Roots trusted: the current CA, and the previous one while a rotation rolls out.
    bundle: TrustBundle,
    /// The root file's content, to notice a rotation.
    ca_pem: String,
    workloads: std::collections::HashMap<SpiffeId, WorkloadCert>,
    node: WorkloadCert,
    /// Tunnel server configurations presenting a local workload's certificate, until it is
    /// due for renewal.
    servers: std::collections::HashMap<SpiffeId, (SystemTime, Arc<rustls::ServerConfig>)>,
}

/// The certificates, shared by the outbound side (the source workload's client certificate)
/// and the tunnel's inbound side (the destination workload's server certificate).
struct CertStore {
    certs: Mutex<Certs>,
    ttl: Duration,
    tables: TableView,
}

impl CertStore {
    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Certs>> {
        self.certs
            .lock()
            .map_err(|_| anyhow::anyhow!("certificate store poisoned"))
    }

    /// A workload's certificate, issued on first use and renewed at half-life.
    fn workload_cert(&self, id: &SpiffeId) -> anyhow::Result<(WorkloadCert, TrustBundle)> {
        let mut certs = self.lock()?;
        let now = SystemTime::now();
        let fresh = certs
            .workloads
            .get(id)
            .filter(|c| now < c.renew_at())
            .cloned();
        let cert = match fresh {
            Some(c) => c,
            None => {
                let c = certs.ca.issue(id, self.ttl, now)?;
                tracing::debug!(workload = %id, "certificates: issued");
                certs.workloads.insert(id.clone(), c.clone());
                c
            }
        };
        Ok((cert, certs.bundle.clone()))
    }

    /// The tunnel server configuration presenting `id`'s certificate.
    fn server_config_of(&self, id: &SpiffeId) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let now = SystemTime::now();
        if let Some((renew_at, config)) = self.lock()?.servers.get(id)
            && now < *renew_at
        {
            return Ok(Arc::clone(config));
        }
        let (cert, bundle) = self.workload_cert(id)?;
        let config = server_config(&bundle, Arc::new(RotatingCert::new(&cert)?))?;
        self.lock()?
            .servers
            .insert(id.clone(), (cert.renew_at(), Arc::clone(&config)));
        Ok(config)
    }
}

impl tunnel::DestinationIdentity for CertStore {
    fn config_for(&self, addr: IpAddr) -> Option<(SpiffeId, Arc<rustls::ServerConfig>)> {
        let id = self.tables.find(|t| {
            t.workload(addr)
                .filter(|w| w.local)
                .and_then(|w| SpiffeId::parse(&w.spiffe_id).ok())
        })?;
        match self.server_config_of(&id) {
            Ok(config) => Some((id, config)),
            Err(e) => {
                tracing::warn!(workload = %id, "tunnel: no certificate to present: {e:#}");
                None
            }
        }
    }
}

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
    certs: Arc<CertStore>,
    node_cert: Arc<RotatingCert>,
    inbound: Arc<Inbound>,
    /// Flows from outside the cluster.
    pub ingress: Arc<IngressContext>,
    node_id: SpiffeId,
    trust_domain: String,
    events: Option<ProxyEventSink>,
}

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The SPIFFE ID a node's agent presents on its tunnel port.
pub fn node_spiffe_id(
    trust_domain: &str,
    node: &str,
) -> Result<SpiffeId, crate::spiffe::SpiffeError> {
    SpiffeId::parse(&format!("spiffe://{trust_domain}/rampart/node/{node}"))
}

impl MeshRuntime {
    /// Loads the CA and issues the node's certificate. `trust_domain` must be the CA's.
    /// Routes come from `tables` (the controller's published generations); refusals on either
    /// side go to `events` (the flow log).
    pub fn new(
        settings: MeshSettings,
        trust_domain: &str,
        tables: TableView,
        events: Option<ProxyEventSink>,
    ) -> anyhow::Result<Arc<MeshRuntime>> {
        let ca = Ca::load(&settings.ca_dir)?;
        anyhow::ensure!(
            ca.trust_domain() == trust_domain,
            "--ca-dir {}: the root is for trust domain {:?}, the agent's --trust-domain is {trust_domain:?}",
            settings.ca_dir.display(),
            ca.trust_domain()
        );
        let node_id = node_spiffe_id(trust_domain, &settings.node_name)
            .with_context(|| format!("--node-name {:?}", settings.node_name))?;
        let node = ca.issue(&node_id, settings.cert_ttl, SystemTime::now())?;
        let bundle = TrustBundle::new(trust_domain, &[ca.cert_der().clone()])?;
        let node_cert = Arc::new(RotatingCert::new(&node)?);
        let certs = Arc::new(CertStore {
            certs: Mutex::new(Certs {
                ca_pem: ca.cert_pem().to_owned(),
                ca,
                bundle: bundle.clone(),
                workloads: std::collections::HashMap::new(),
                node,
                servers: std::collections::HashMap::new(),
            }),
            ttl: settings.cert_ttl,
            tables: tables.clone(),
        });
        let inbound_stats = Arc::new(TunnelStats::default());
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
        });
        let ingress = IngressContext {
            l7: Arc::clone(&inbound.l7),
            events: events.clone(),
            mark: MARK_FROM_PROXY,
            flows: AtomicU64::new(0),
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
            node_cert,
            inbound,
            ingress: Arc::new(ingress),
            node_id,
            trust_domain: trust_domain.to_owned(),
            events,
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

    /// Installs the policy routing, binds both listeners and spawns their tasks and the
    /// certificate upkeep. The listeners share `connections`: past it, new flows wait in the
    /// kernel's backlog.
    pub async fn start(self: &Arc<Self>, connections: ConnectionCap) -> anyhow::Result<()> {
        self.jwks.start(tokio::runtime::Handle::current());
        PROXY_ROUTING
            .install()
            .context("installing the policy routing for the proxy's mark (netlink)")?;
        let tunnel_listener = TcpListener::bind(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            self.settings.tunnel_port,
        ))
        .await
        .or(TcpListener::bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            self.settings.tunnel_port,
        ))
        .await)
        .with_context(|| format!("binding the tunnel port {}", self.settings.tunnel_port))?;
        tokio::spawn(tunnel::serve(
            tunnel_listener,
            Arc::clone(&self.inbound),
            connections.clone(),
        ));
        for addr in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let listener = transparent_listener(SocketAddr::new(addr, self.settings.proxy_port))
                .with_context(|| {
                    format!(
                        "binding the proxy's transparent listener on port {}",
                        self.settings.proxy_port
                    )
                })?;
            let me = Arc::clone(self);
            tokio::spawn(crate::listen::serve(
                "proxy",
                listener,
                connections.clone(),
                move |stream, peer| {
                    let me = Arc::clone(&me);
                    async move { me.outbound(stream, peer).await }
                },
            ));
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CA_POLL).await;
                if let Err(e) = me.upkeep() {
                    tracing::warn!("certificates: {e:#}");
                }
            }
        });
        tracing::info!(
            proxy_port = self.settings.proxy_port,
            tunnel_port = self.settings.tunnel_port,
            node = %self.node_id,
            "mTLS proxy listening"
        );
        Ok(())
    }

    /// Renews the node certificate at half-life and picks up a rotated root: the new root is
    /// trusted beside the old one, new certificates come from it, and established connections
    /// keep theirs.
    fn upkeep(&self) -> anyhow::Result<()> {
        let mut certs = self.certs.lock()?;
        let pem_path = self.settings.ca_dir.join(CA_CERT_FILE);
        let pem = std::fs::read_to_string(&pem_path).unwrap_or_default();
        let now = SystemTime::now();
        let mut renew = now >= certs.node.renew_at();
        if !pem.is_empty() && pem != certs.ca_pem {
            let ca = Ca::load(&self.settings.ca_dir)?;
            anyhow::ensure!(
                ca.trust_domain() == self.trust_domain,
                "the rotated root is for another trust domain"
            );
            let bundle = TrustBundle::new(
                &self.trust_domain,
                &[ca.cert_der().clone(), certs.ca.cert_der().clone()],
            )?;
            let config = server_config(&bundle, Arc::clone(&self.node_cert))?;
            if let Ok(mut c) = self.inbound.config.write() {
                *c = config;
            }
            certs.ca = ca;
            certs.ca_pem = pem;
            certs.bundle = bundle;
            certs.workloads.clear();
            certs.servers.clear();
            renew = true;
            tracing::info!("certificates: rotated root loaded (the previous root stays trusted)");
        }
        if renew {
            certs.node = certs.ca.issue(&self.node_id, self.certs.ttl, now)?;
            self.node_cert.replace(&certs.node)?;
            tracing::info!(node = %self.node_id, "certificates: node certificate renewed");
        }
        Ok(())
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
                let routes = self.ingress_routes(peer, original);
                return super::ingress::serve(stream, peer, original, route, routes, &self.ingress)
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
            .and_then(|(cert, bundle)| Ok(client_config(&bundle, &cert, server_id)?))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(workload = %src_id, "proxy: no certificate: {e:#}");
                return self.fail(OutboundReason::Certificate, peer, original);
            }
        };
        let mut flow = match tunnel::connect(tunnel_addr, config, peer, original).await {
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
        let mut stream = stream;
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut stream,
            &mut flow,
            tunnel::RELAY_BUFFER,
            tunnel::RELAY_BUFFER,
        )
        .await;
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
