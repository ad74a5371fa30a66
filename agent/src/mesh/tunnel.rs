//! The node-to-node tunnel, shaped like Istio ambient's HBONE: one mutually authenticated TLS 1.3
//! connection to the destination node's agent, HTTP/2 on it, and one `CONNECT <dst ip:port>`
//! stream per tunnelled flow with the flow's original source in a `Forwarded: for=` header.
//!
//! Both ends prove who they are: the client presents the source workload's SVID, and names the
//! destination address in its SNI ([`server_name_for`]); the server presents the SVID of the
//! local workload at that address ([`DestinationIdentity`]), which the client checks against the
//! identity its own policy gives the address, and serves on that connection only streams to that
//! address.
//!
//! The inbound side ([`serve`]) refuses plaintext, clients without a certificate, certificates
//! from another CA or expired ones, and peers whose SPIFFE ID the [`Authorize`] policy does not
//! allow for that destination; every refusal is counted by [`MtlsReason`]. The outbound side is
//! [`connect`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_common::reason::MtlsReason;
use rustls::{CertificateError, ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::flows::event::{ProxyEvent, ProxyEventSink, ProxySide};
use crate::limits::{Limit, ProxyGuards};
use crate::listen::ConnectionCap;

use crate::spiffe::SpiffeId;

/// The port agents listen on for tunnels (ztunnel's HBONE port).
pub const TUNNEL_PORT: u16 = 15008;
/// HTTP/2 flow control of the tunnel: HTTP/2's default 64 KiB windows and 16 KiB frames
/// throttle a bulk flow to a fraction of the link (one stream carries one TCP flow here, and
/// the TCP flow has its own flow control end to end).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const MAX_FRAME: u32 = 256 << 10;
/// Buffer of each direction of a relayed flow.
pub const RELAY_BUFFER: usize = 64 << 10;

/// Largest header list a tunnel stream may carry (a CONNECT has a few short headers).
const MAX_TUNNEL_HEADERS: u32 = 16 << 10;
/// How long a connection the drain catches before its first stream waits for that stream.
const FIRST_STREAM_WAIT: Duration = Duration::from_secs(1);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
const SOURCE_HEADER: &str = "forwarded";

/// Counters of the inbound side.
#[derive(Debug, Default)]
pub struct TunnelStats {
    denied: [AtomicU64; MtlsReason::ALL.len()],
    accepted_streams: AtomicU64,
}

impl TunnelStats {
    fn deny(&self, reason: MtlsReason) {
        tracing::debug!(reason = reason.name(), "tunnel: refused");
        self.denied[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn denied(&self, reason: MtlsReason) -> u64 {
        self.denied[reason as usize].load(Ordering::Relaxed)
    }

    pub fn accepted_streams(&self) -> u64 {
        self.accepted_streams.load(Ordering::Relaxed)
    }
}

/// One tunnelled flow as the inbound side sees it.
#[derive(Debug, Clone)]
pub struct FlowRequest {
    pub peer: SpiffeId,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// The policy question the inbound side asks for each stream: `Err` names why not; `Ok` carries
/// the L7 rules for the flow's requests if its destination port has any (answered from the same
/// policy generation as the decision).
pub trait Authorize: Send + Sync {
    fn check(&self, flow: &FlowRequest) -> Result<Option<Arc<crate::l7::HttpRoute>>, MtlsReason>;
}

/// The server side of "both ends prove who they are": the TLS configuration that presents the
/// SVID of the local workload at an address, and that workload's SPIFFE ID; `None` when no local
/// workload has the address (the connection then presents the node's certificate, which no
/// client that named a workload accepts).
pub trait DestinationIdentity: Send + Sync {
    fn config_for(&self, addr: IpAddr) -> IdentityFuture<'_>;

    /// The identity of the local workload at `addr` in the policy in force, looked up for each
    /// stream (what the L7 chain's authorizers are told the destination is, whatever the
    /// client's handshake named).
    fn identity_of(&self, addr: IpAddr) -> Option<SpiffeId>;
}

/// What [`DestinationIdentity::config_for`] returns: the certificate may have to be asked for.
pub type IdentityFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<(SpiffeId, Arc<ServerConfig>)>> + Send + 'a>,
>;

/// The suffix of the SNI names that carry a destination address.
const SNI_SUFFIX: &str = ".dst.rampart.invalid";

/// The SNI a client sends for a flow to `addr`: the address's bytes in hex, then
/// [`SNI_SUFFIX`] (SNI carries DNS names only; `.invalid` is never a real one).
pub fn server_name_for(addr: IpAddr) -> ServerName<'static> {
    let octets: Vec<u8> = match addr.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let hex: String = octets.iter().map(|b| format!("{b:02x}")).collect();
    match ServerName::try_from(format!("{hex}{SNI_SUFFIX}")) {
        Ok(name) => name,
        // Hex digits and a fixed suffix always make a DNS name.
        Err(_) => ServerName::IpAddress(addr.into()),
    }
}

/// The destination address an SNI name of [`server_name_for`] carries.
pub fn destination_of_server_name(name: &str) -> Option<IpAddr> {
    let hex = name.strip_suffix(SNI_SUFFIX)?;
    if !hex.is_ascii() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The L7 route of a tunnelled flow, looked up in the table in force for each request; a flow
/// the table no longer admits is refused (counted and reported like a refused stream).
fn routes_of(inbound: Arc<Inbound>, flow: FlowRequest) -> crate::l7::serve::RouteLookup {
    Arc::new(move || match inbound.authorize.check(&flow) {
        Ok(Some(route)) => crate::l7::serve::RouteNow::Rules(route),
        Ok(None) => crate::l7::serve::RouteNow::NoRules,
        Err(reason) => {
            inbound.refuse(
                reason,
                Some(&flow.peer),
                Some(flow.source),
                Some(flow.destination),
            );
            tracing::info!(peer = %flow.peer, source = %flow.source, destination = %flow.destination, reason = reason.name(), "tunnel: flow no longer admitted");
            crate::l7::serve::RouteNow::Refused
        }
    })
}

/// How the inbound side opens the connection to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamSource {
    /// From this host's own address (tests on loopback).
    Plain,
    /// From the flow's original source address (a transparent socket), carrying `mark`, so the
    /// destination's policy sees the real source and the kernel knows the proxy sent it.
    Transparent { mark: u32 },
}

/// The inbound side: its TLS configuration (swapped whole when the roots change; connections
/// keep the one they started with), the policy and the counters.
pub struct Inbound {
    pub config: RwLock<Arc<ServerConfig>>,
    pub trust_domain: String,
    pub authorize: Arc<dyn Authorize>,
    pub stats: Arc<TunnelStats>,
    pub upstream: UpstreamSource,
    /// Refusals as flow events.
    pub events: Option<ProxyEventSink>,
    /// Counters of the L7 filters.
    pub l7: Arc<crate::l7::L7Stats>,
    /// The local workloads' certificates, by address (`None`: the node's certificate always).
    pub identities: Option<Arc<dyn DestinationIdentity>>,
    /// The agent's drain: tunnel connections get a GOAWAY, HTTP ones end at a request boundary.
    pub drain: crate::listen::Drain,
    /// The proxy's limits (handshakes, flows per identity, timeouts).
    pub guards: Arc<ProxyGuards>,
}

impl Inbound {
    /// Counts a refusal and reports it to the flow log.
    fn refuse(
        &self,
        reason: MtlsReason,
        peer: Option<&SpiffeId>,
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    ) {
        self.stats.deny(reason);
        if let Some(sink) = &self.events {
            sink(&ProxyEvent {
                side: ProxySide::Inbound,

                http: None,
                refused: Some(reason.into()),
                peer: peer.map(|p| p.as_str().to_owned()),
                source,
                destination,
            });
        }
    }
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Accepts tunnel connections on `listener` while `gate` is open, at most `cap` at once.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    cap: ConnectionCap,
    gate: crate::listen::Gate,
) {
    crate::listen::serve_while("tunnel", listener, cap, gate, move |stream, peer| {
        handle_connection(stream, peer, Arc::clone(&inbound))
    })
    .await;
}

async fn handle_connection(stream: TcpStream, remote: SocketAddr, inbound: Arc<Inbound>) {
    // Before a stream names the flow, a refusal knows only the connection's addresses.
    let local = stream.local_addr().ok();
    let refuse = |reason| inbound.refuse(reason, None, Some(remote), local);
    let limits = Arc::clone(&inbound.guards.limits);
    let timed_out = || {
        limits.hit(Limit::TlsHandshakeTimeout);
        refuse(MtlsReason::HandshakeFailed)
    };
    // The handshake holds a slot of the source's and the node's share until it ends; over
    // either share it waits for one, within its own timeout (then counted, closed).
    let deadline = tokio::time::Instant::now() + limits.settings.tls_handshake_timeout;
    let slots = &inbound.guards.handshakes;
    let Some(handshaking) = slots.start(remote.ip(), deadline, &limits.hits).await else {
        return;
    };
    // Request/response traffic: no Nagle delay on the tunnel.
    let _ = stream.set_nodelay(true);
    // A TLS client speaks first with a handshake record; anything else is plaintext.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => return refuse(MtlsReason::Plaintext),
        Ok(_) => return refuse(MtlsReason::HandshakeFailed),
        Err(_) => return timed_out(),
    }
    // The ClientHello first: its SNI names the destination, whose workload's certificate the
    // handshake then presents.
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout_at(deadline, lazy).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return refuse(of_handshake(&e)),
        Err(_) => return timed_out(),
    };
    let named = start
        .client_hello()
        .server_name()
        .and_then(destination_of_server_name);
    let workload = match (named, &inbound.identities) {
        (Some(addr), Some(identities)) => {
            match tokio::time::timeout_at(deadline, identities.config_for(addr)).await {
                Ok(Some((id, config))) => Some((addr, id, config)),
                _ => None,
            }
        }
        _ => None,
    };
    let (config, served) = match workload {
        Some((addr, id, config)) => (config, Some((addr, id))),
        None => match inbound.config.read() {
            Ok(c) => (Arc::clone(&c), None),
            Err(_) => return,
        },
    };
    let tls = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse(of_handshake(&e)),
        Err(_) => return timed_out(),
    };
    drop(handshaking);
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| SpiffeId::from_certificate(c));
    let peer = match peer {
        Some(Ok(id)) if id.trust_domain() == inbound.trust_domain => id,
        _ => return refuse(MtlsReason::NotSpiffe),
    };
    let served_addr = served.map(|(addr, _)| addr);
    let drain = inbound.drain.clone();
    let settings = limits.settings.clone();
    let streamed = Arc::new(tokio::sync::Notify::new());
    let stream_seen = Arc::clone(&streamed);
    let service = hyper::service::service_fn(move |req| {
        let inbound = Arc::clone(&inbound);
        let peer = peer.clone();
        stream_seen.notify_one();
        async move {
            Ok::<_, std::convert::Infallible>(handle_stream(req, peer, served_addr, inbound).await)
        }
    });
    // Pings find a peer that vanished without closing (a node gone, a partition), so its
    // connection and the descriptors of its flows do not stay open for ever.
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_TUNNEL_HEADERS)
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(settings.h2_max_local_error_resets)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    // Draining: a GOAWAY, so no new stream starts here; the flows in progress finish.
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = drain.started() => {
            // A connection accepted as the agent stopped accepting has its client's first
            // stream on the way: a GOAWAY now would refuse that flow, so it is served first.
            let first = tokio::time::timeout(FIRST_STREAM_WAIT, streamed.notified());
            tokio::select! {
                served = connection.as_mut() => served,
                _ = first => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(e) = served {
        if crate::l7::serve::h2_abuse(&e) {
            limits.hit(Limit::Http2Abuse);
            tracing::info!(source = %remote, error = %e, "tunnel: connection ended by its limits");
        }
        tracing::debug!(error = %e, "tunnel: connection ended");
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = code;
    resp
}

/// The original source from `Forwarded: for="<ip:port>"` (RFC 7239; IPv6 as `"[addr]:port"`).
fn forwarded_for(req: &Request<Incoming>) -> Option<SocketAddr> {
    let value = req.headers().get(SOURCE_HEADER)?.to_str().ok()?;
    value.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for")
            .then(|| v.trim_matches('"').parse().ok())
            .flatten()
    })
}

/// One CONNECT stream; `served`: the destination address whose workload's certificate the
/// connection presented (streams to any other address are refused).
async fn handle_stream(
    req: Request<Incoming>,
    peer: SpiffeId,
    served: Option<IpAddr>,
    inbound: Arc<Inbound>,
) -> Response<Empty<Bytes>> {
    let destination = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
    let (Some(destination), Some(source), true) = (
        destination,
        forwarded_for(&req),
        req.method() == Method::CONNECT,
    ) else {
        inbound.refuse(MtlsReason::BadRequest, Some(&peer), None, None);
        return status(StatusCode::BAD_REQUEST);
    };
    if served.is_some_and(|addr| addr != destination.ip().to_canonical()) {
        inbound.refuse(
            MtlsReason::DestinationMismatch,
            Some(&peer),
            Some(source),
            Some(destination),
        );
        tracing::info!(%peer, %source, %destination, "tunnel: stream to another workload than the handshake proved");
        return status(StatusCode::FORBIDDEN);
    }
    let flow = FlowRequest {
        peer,
        source,
        destination,
    };
    let http_route = match inbound.authorize.check(&flow) {
        Ok(route) => route,
        Err(reason) => {
            inbound.refuse(reason, Some(&flow.peer), Some(source), Some(destination));
            tracing::info!(peer = %flow.peer, %source, %destination, reason = reason.name(), "tunnel: flow refused");
            return status(StatusCode::FORBIDDEN);
        }
    };
    // One source workload holds at most its share of this node's flows.
    let Some(identity_slot) = inbound.guards.identity_flow(flow.peer.as_str()) else {
        tracing::info!(peer = %flow.peer, %source, %destination, "tunnel: the source identity holds its share of flows already");
        return status(StatusCode::TOO_MANY_REQUESTS);
    };
    inbound
        .stats
        .accepted_streams
        .fetch_add(1, Ordering::Relaxed);
    if http_route.is_some() {
        // L7: the pod's connection opens when a request first passes the filters.
        let peer = crate::l7::context::Peer {
            spiffe_id: Some(flow.peer.clone()),
            source,
            destination,
            destination_spiffe_id: inbound
                .identities
                .as_ref()
                .and_then(|i| i.identity_of(destination.ip())),
            server_name: None,
        };
        let shared = crate::l7::serve::RelayShared {
            stats: Arc::clone(&inbound.l7),
            events: inbound.events.clone(),
            drain: inbound.drain.clone(),
            limits: Arc::clone(&inbound.guards.limits),
        };
        let routes = routes_of(Arc::clone(&inbound), flow.clone());
        let connect = connector(Arc::clone(&inbound), flow);
        tokio::spawn(async move {
            let _identity_slot = identity_slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let downstream = TokioIo::new(upgraded);
                    crate::l7::serve::relay(downstream, connect, routes, peer, shared).await;
                }
                Err(e) => tracing::debug!(error = %e, "tunnel: stream upgrade failed"),
            }
        });
        return status(StatusCode::OK);
    }
    let Some(upstream) = open_upstream(&inbound, &flow).await else {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    };
    let limits = Arc::clone(&inbound.guards.limits);
    tokio::spawn(async move {
        let _identity_slot = identity_slot;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let idle = limits.settings.tunnel_idle_timeout;
                let upgraded = TokioIo::new(upgraded);
                if crate::activity::relay_until_idle(upgraded, upstream, RELAY_BUFFER, idle).await
                    == crate::activity::RelayEnd::Idle
                {
                    limits.hit(Limit::TunnelIdleTimeout);
                }
            }
            Err(e) => tracing::debug!(error = %e, "tunnel: stream upgrade failed"),
        }
    });
    status(StatusCode::OK)
}

/// The connection from the flow's source to its destination; `None` (counted, logged) if the
/// destination does not accept it.
async fn open_upstream(inbound: &Inbound, flow: &FlowRequest) -> Option<TcpStream> {
    let connected = match inbound.upstream {
        UpstreamSource::Plain => TcpStream::connect(flow.destination).await,
        UpstreamSource::Transparent { mark } => {
            transparent_connect(flow.source, flow.destination, mark).await
        }
    };
    match connected {
        Ok(stream) => Some(stream),
        Err(e) => {
            inbound.refuse(
                MtlsReason::UpstreamUnreachable,
                Some(&flow.peer),
                Some(flow.source),
                Some(flow.destination),
            );
            tracing::info!(destination = %flow.destination, error = %e, "tunnel: destination unreachable");
            None
        }
    }
}

/// [`open_upstream`] for the L7 relay, which calls it when the first request passes.
fn connector(inbound: Arc<Inbound>, flow: FlowRequest) -> crate::l7::serve::Connect<TcpStream> {
    Box::new(move || Box::pin(async move { open_upstream(&inbound, &flow).await }))
}

/// Connects to `destination` from `source`'s address, which need not be an address of this host
/// (`IP_TRANSPARENT`), with `SO_MARK` `mark`, from a port other than `source`'s own: the
/// client's flow and the proxy's flow to the pod must be different flows to the kernel's
/// conntrack (an ingress client's flow is tracked on this node too, as redirected).
pub(crate) async fn transparent_connect(
    source: SocketAddr,
    destination: SocketAddr,
    mark: u32,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bound = || -> std::io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(destination),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if destination.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
        socket.set_mark(mark)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SocketAddr::new(source.ip(), 0).into())?;
        Ok(socket)
    };
    let mut socket = bound()?;
    // The kernel picks the port at bind; a second pick cannot be the same port (the first is
    // still held), so one retry suffices.
    let port = |s: &Socket| {
        s.local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
    };
    if port(&socket) == Some(source.port()) {
        let other = bound()?;
        socket = other;
    }
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(destination).await
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the tunnel at {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("TLS with the tunnel at {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP/2 with the tunnel: {0}")]
    Http(#[from] hyper::Error),
    #[error("the tunnel refused the flow: {0}")]
    Refused(StatusCode),
}

impl ConnectError {
    /// Whether the tunnel ended before it took the flow, so that nothing reached the
    /// destination and opening it again on a new connection is safe: the connection closed
    /// during the TLS handshake or before the stream was sent, or the server refused the stream
    /// unprocessed (`REFUSED_STREAM`, or a graceful GOAWAY that excludes it). A draining agent
    /// does this to a connection it accepted as it stopped accepting.
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectError::Tls(_, e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            ConnectError::Http(e) => {
                e.is_canceled()
                    || std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<h2::Error>())
                        .is_some_and(|h| {
                            h.reason() == Some(h2::Reason::REFUSED_STREAM)
                                || (h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR))
                        })
            }
            ConnectError::Tcp(..) | ConnectError::Refused(_) => false,
        }
    }

    /// Whether the handshake failed because the server's certificate does not name the
    /// identity the client expects (another workload, or a node).
    pub fn is_wrong_server_identity(&self) -> bool {
        let ConnectError::Tls(_, e) = self else {
            return false;
        };
        matches!(
            e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        )
    }
}

/// A tunnelled flow's stream, as the outbound side holds it.
pub type FlowStream = TokioIo<hyper::upgrade::Upgraded>;

/// Opens a tunnel to `tunnel` (presenting the certificate in `config`) and one CONNECT stream to
/// `destination` on behalf of `source`.
///
/// A tunnel that ended before it took the flow ([`ConnectError::is_retriable`]: an agent that
/// stopped accepting as it handed over to its successor) is opened once more on a new
/// connection, which the listening socket's new owner accepts.
pub async fn connect(
    tunnel: SocketAddr,
    config: Arc<ClientConfig>,
    source: SocketAddr,
    destination: SocketAddr,
) -> Result<FlowStream, ConnectError> {
    // The server is checked by SPIFFE ID (see `tls::client_config`); the SNI names the
    // destination, whose workload's certificate the server presents.
    let name = server_name_for(destination.ip());
    match connect_named(
        tunnel,
        Arc::clone(&config),
        name.clone(),
        source,
        destination,
    )
    .await
    {
        Err(e) if e.is_retriable() => {
            tracing::debug!(%tunnel, %destination, "tunnel: closed before it took the flow ({e}); opening it again");
            connect_named(tunnel, config, name, source, destination).await
        }
        connected => connected,
    }
}

/// [`connect`] with the SNI given (tests send one that names another destination).
pub(super) async fn connect_named(
    tunnel: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    source: SocketAddr,
    destination: SocketAddr,
) -> Result<FlowStream, ConnectError> {
    let tcp = TcpStream::connect(tunnel)
        .await
        .map_err(|e| ConnectError::Tcp(tunnel, e))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(tunnel, e))?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tunnel: client connection ended");
        }
    });
    let for_value = format!("for=\"{source}\"");
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(destination.to_string())
        .header(SOURCE_HEADER, for_value)
        .body(Empty::<Bytes>::new())
        .map_err(|_| ConnectError::Refused(StatusCode::BAD_REQUEST))?;
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        return Err(ConnectError::Refused(resp.status()));
    }
    Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
}

/// The reason a failed server handshake stands for.
fn of_handshake(e: &std::io::Error) -> MtlsReason {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return MtlsReason::HandshakeFailed;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => MtlsReason::NoClientCertificate,
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                MtlsReason::UnknownCa
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => MtlsReason::CertificateExpired,
            _ => MtlsReason::BadCertificate,
        },
        rustls::Error::PeerIncompatible(_) => MtlsReason::ProtocolVersion,
        _ => MtlsReason::HandshakeFailed,
    }
}

#[cfg(test)]
mod tests;
