//! Ingress: a flow from outside the cluster that the kernel redirected at the uplink to the
//! proxy's transparent listener (the port's MeshPolicy has an `ingress` section). The proxy
//! terminates TLS if the policy has certificates (chosen by SNI, see [`super::sni`]), runs the
//! port's `http` chain on every request exactly as for a tunnelled flow (a world client has no
//! SPIFFE ID, so rules that name principals never match it), and connects to the pod from the
//! client's own address with the proxy's mark, so the pod's policy and logs see the real client.
//!
//! Refusals are counted in `rampart_proxy_denied_total{filter="ingress",reason}` and reported as
//! flow records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use rampart_common::reason::IngressReason;

use super::tunnel;
use crate::flows::event::{ProxyEvent, ProxyEventSink, ProxySide};
use crate::l7::context::Peer;
use crate::l7::serve::RouteLookup;
use crate::l7::{HttpRoute, L7Stats};
use crate::limits::{Limit, ProxyGuards};
use crate::spiffe::SpiffeId;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// One destination port's ingress, as the proxy runs it (built with each mesh table).
#[derive(Debug)]
pub struct IngressRoute {
    /// The MeshPolicy whose `ingress` section this is.
    pub policy: String,
    /// `None`: plaintext.
    pub tls: Option<Arc<ServerConfig>>,
    /// The port's L7 rules; `None`: bytes are relayed as they are.
    pub http: Option<Arc<HttpRoute>>,
}

/// What ingress flows share: counters, the flow log, the mark of connections to pods.
pub struct IngressContext {
    pub l7: Arc<L7Stats>,
    pub events: Option<ProxyEventSink>,
    /// `SO_MARK` of the connection to the pod.
    pub mark: u32,
    /// Flows that reached their pod.
    pub flows: AtomicU64,
    /// The agent's drain (HTTP connections end at a request boundary).
    pub drain: crate::listen::Drain,
    /// The proxy's limits (handshakes, timeouts).
    pub guards: Arc<ProxyGuards>,
}

impl IngressContext {
    pub fn refuse(&self, reason: IngressReason, source: SocketAddr, destination: SocketAddr) {
        self.l7.deny(reason.into());
        tracing::info!(%source, %destination, reason = reason.name(), "ingress: refused");
        if let Some(sink) = &self.events {
            sink(&ProxyEvent {
                side: ProxySide::Inbound,

                http: None,
                refused: Some(reason.into()),
                peer: None,
                source: Some(source),
                destination: Some(destination),
            });
        }
    }
}

/// Serves one ingress flow from `source` to the pod at `destination` until either side closes.
///
/// `routes` answers each request's L7 route from the policy in force (when the port had
/// rules as the connection was accepted).
/// `destination_id`: the destination pod's workload identity (shown to authorizers).
pub async fn serve(
    stream: TcpStream,
    source: SocketAddr,
    (destination, destination_id): (SocketAddr, Option<SpiffeId>),
    route: Arc<IngressRoute>,
    routes: RouteLookup,
    ctx: &Arc<IngressContext>,
) {
    let Some(tls) = &route.tls else {
        return relay(
            stream,
            None,
            (source, destination, destination_id),
            &route,
            routes,
            ctx,
        )
        .await;
    };
    // A handshake holds a slot of the source's and the node's share until it ends; over
    // either share it waits for one, within its own timeout (then counted, closed).
    let limits = &ctx.guards.limits;
    let deadline = tokio::time::Instant::now() + limits.settings.tls_handshake_timeout;
    let slots = &ctx.guards.handshakes;
    let Some(handshaking) = slots.start(source.ip(), deadline, &limits.hits).await else {
        return;
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            return ctx.refuse(IngressReason::Plaintext, source, destination);
        }
        Ok(_) => return,
        // Silent: nothing was asked, but the slot was held.
        Err(_) => return limits.hit(Limit::TlsHandshakeTimeout),
    }
    let accepted =
        tokio::time::timeout_at(deadline, TlsAcceptor::from(Arc::clone(tls)).accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%source, error = %e, "ingress: TLS handshake failed");
            return ctx.refuse(IngressReason::TlsHandshakeFailed, source, destination);
        }
        Err(_) => {
            limits.hit(Limit::TlsHandshakeTimeout);
            return ctx.refuse(IngressReason::TlsHandshakeFailed, source, destination);
        }
    };
    drop(handshaking);
    let server_name = stream.get_ref().1.server_name().map(str::to_owned);
    relay(
        stream,
        server_name,
        (source, destination, destination_id),
        &route,
        routes,
        ctx,
    )
    .await
}

/// The connection to the pod from the client's address; `None` (counted) if the pod does not
/// accept it.
async fn connect_pod(
    source: SocketAddr,
    destination: SocketAddr,
    ctx: &IngressContext,
) -> Option<TcpStream> {
    match tunnel::transparent_connect(source, destination, ctx.mark).await {
        Ok(upstream) => {
            ctx.flows.fetch_add(1, Ordering::Relaxed);
            Some(upstream)
        }
        Err(e) => {
            tracing::debug!(%destination, error = %e, "ingress: pod unreachable");
            ctx.refuse(IngressReason::UpstreamUnreachable, source, destination);
            None
        }
    }
}

/// Relays: through the L7 chain if the port has rules (the pod's connection opened when a
/// request first passes), else as bytes.
async fn relay<D>(
    downstream: D,
    server_name: Option<String>,
    (source, destination, destination_id): (SocketAddr, SocketAddr, Option<SpiffeId>),
    route: &IngressRoute,
    routes: RouteLookup,
    ctx: &Arc<IngressContext>,
) where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match &route.http {
        Some(_) => {
            let peer = Peer {
                spiffe_id: None,
                source,
                destination,
                destination_spiffe_id: destination_id,
                server_name,
            };
            let pods = Arc::clone(ctx);
            let connect: crate::l7::serve::Connect<TcpStream> = Box::new(move || {
                Box::pin(async move { connect_pod(source, destination, &pods).await })
            });
            let shared = crate::l7::serve::RelayShared {
                stats: Arc::clone(&ctx.l7),
                events: ctx.events.clone(),
                drain: ctx.drain.clone(),
                limits: Arc::clone(&ctx.guards.limits),
            };
            crate::l7::serve::relay(downstream, connect, routes, peer, shared).await;
        }
        None => {
            let Some(upstream) = connect_pod(source, destination, ctx).await else {
                return;
            };
            let idle = ctx.guards.limits.settings.tunnel_idle_timeout;
            if crate::activity::relay_until_idle(downstream, upstream, tunnel::RELAY_BUFFER, idle)
                .await
                == crate::activity::RelayEnd::Idle
            {
                ctx.guards.limits.hit(Limit::TunnelIdleTimeout);
            }
        }
    }
}
