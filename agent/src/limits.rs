//! The proxy's bounds on what one client may hold (`rampart run --help`, "Proxy limits"):
//! the settings with their safe defaults, the counter of every time one was hit
//! (`rampart_proxy_limit_hits_total{limit}`), and the TLS handshake slots.
//!
//! Each limit closes one way a hostile or broken client could grow the agent without bound or
//! starve the others: a slow request head or body (slowloris, slow POST) holds a connection
//! and its buffers; an idle connection holds a descriptor; many connections or flows from one
//! source take the shares of the rest; an HTTP/2 client can open, reset and flood streams and
//! frames (CVE-2023-44487, CVE-2024-27316); a TLS handshake costs memory and CPU before the
//! client has proved anything.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// The settings; [`ProxyLimits::default`] holds the defaults `rampart run` starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyLimits {
    /// A client must send a whole HTTP/1 request head within this, counted from its first byte.
    pub request_head_timeout: Duration,
    /// A request body must arrive within this plus one second per `request_body_min_rate`
    /// bytes received (Apache's `mod_reqtimeout`: a slow POST is cut, a large upload at a
    /// sane rate is not); past it the request is answered `408`.
    pub request_body_timeout: Duration,
    pub request_body_min_rate: u64,
    /// An HTTP connection with no request in progress and no byte either way for this long is
    /// closed (HTTP/1 keep-alive, HTTP/2 with no open stream).
    pub http_idle_timeout: Duration,
    /// A tunnelled TCP flow with no byte either way for this long is closed (Envoy's
    /// `tcp_proxy` idle timeout).
    pub tunnel_idle_timeout: Duration,
    /// Connections the proxy holds at once (its transparent listeners and the tunnel); `None`:
    /// sized from the open-files limit.
    pub max_connections: Option<usize>,
    /// Connections from one address (a pod, a node, a client outside the cluster); `None`: a
    /// quarter of `max_connections`.
    pub max_connections_per_source: Option<usize>,
    /// Tunnelled flows one source workload identity holds at once on this node's inbound side;
    /// `None`: a quarter of `max_connections`.
    pub max_flows_per_identity: Option<usize>,
    /// HTTP/2: streams a client may have open at once on one connection (its SETTINGS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: streams a client may open and reset before the proxy has seen them
    /// (rapid reset); past it the connection gets a GOAWAY (`ENHANCE_YOUR_CALM`).
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2: streams the proxy may reset for a client's errors on one connection; past it,
    /// a GOAWAY.
    pub h2_max_local_error_resets: usize,
    /// A TLS handshake (tunnel, ingress) must finish within this, counted from the connection.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at once, and from one address: past either, a new
    /// connection waits for a slot within its handshake timeout, holding no TLS state (a
    /// flood of half-open handshakes costs bounded memory).
    pub max_tls_handshakes: usize,
    pub max_tls_handshakes_per_source: usize,
}

impl Default for ProxyLimits {
    fn default() -> ProxyLimits {
        ProxyLimits {
            request_head_timeout: Duration::from_secs(30),
            request_body_timeout: Duration::from_secs(30),
            request_body_min_rate: 1024,
            http_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_connections: None,
            max_connections_per_source: None,
            max_flows_per_identity: None,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_resets: 200,
            tls_handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 1024,
            max_tls_handshakes_per_source: 64,
        }
    }
}

impl ProxyLimits {
    /// The connection cap for a process allowed `fd_limit` open files, unless set.
    pub fn connections(&self, fd_limit: u64) -> usize {
        self.max_connections
            .unwrap_or_else(|| proxy_connections(fd_limit))
    }

    pub fn connections_per_source(&self, fd_limit: u64) -> usize {
        self.max_connections_per_source
            .unwrap_or_else(|| (self.connections(fd_limit) / 4).max(1))
    }

    pub fn flows_per_identity(&self, fd_limit: u64) -> usize {
        self.max_flows_per_identity
            .unwrap_or_else(|| (self.connections(fd_limit) / 4).max(1))
    }
}

/// File descriptors the agent keeps for itself (maps, programs, links, the policy files,
/// the admin listeners) when it sizes the proxy's connection cap.
const RESERVED_FDS: u64 = 512;

/// The proxy's connection cap for a process allowed `fd_limit` open files: a proxied flow holds
/// at most three (the client's socket, the tunnel, the pod's connection), and the agent keeps
/// [`RESERVED_FDS`] for itself.
fn proxy_connections(fd_limit: u64) -> usize {
    let usable = fd_limit.saturating_sub(RESERVED_FDS) / 3;
    usize::try_from(usable.clamp(64, 1 << 20)).unwrap_or(64)
}

/// The limits, as counted (`rampart_proxy_limit_hits_total{limit}`): a closed set, so the
/// label set is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestHeadTimeout,
    RequestBodyTimeout,
    HttpIdleTimeout,
    TunnelIdleTimeout,
    Connections,
    ConnectionsPerSource,
    FlowsPerIdentity,
    /// An HTTP/2 connection ended by the protocol's own limits: GOAWAY `ENHANCE_YOUR_CALM`
    /// (rapid reset, CONTINUATION or small-frame floods), a header list over its size.
    Http2Abuse,
    TlsHandshakeTimeout,
    TlsHandshakes,
    TlsHandshakesPerSource,
}

impl Limit {
    pub const ALL: [Limit; 11] = [
        Limit::RequestHeadTimeout,
        Limit::RequestBodyTimeout,
        Limit::HttpIdleTimeout,
        Limit::TunnelIdleTimeout,
        Limit::Connections,
        Limit::ConnectionsPerSource,
        Limit::FlowsPerIdentity,
        Limit::Http2Abuse,
        Limit::TlsHandshakeTimeout,
        Limit::TlsHandshakes,
        Limit::TlsHandshakesPerSource,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Limit::RequestHeadTimeout => "request_head_timeout",
            Limit::RequestBodyTimeout => "request_body_timeout",
            Limit::HttpIdleTimeout => "http_idle_timeout",
            Limit::TunnelIdleTimeout => "tunnel_idle_timeout",
            Limit::Connections => "connections",
            Limit::ConnectionsPerSource => "connections_per_source",
            Limit::FlowsPerIdentity => "flows_per_identity",
            Limit::Http2Abuse => "http2_abuse",
            Limit::TlsHandshakeTimeout => "tls_handshake_timeout",
            Limit::TlsHandshakes => "tls_handshakes",
            Limit::TlsHandshakesPerSource => "tls_handshakes_per_source",
        }
    }
}

/// How often each limit was hit.
#[derive(Debug, Default)]
pub struct LimitHits([AtomicU64; Limit::ALL.len()]);

impl LimitHits {
    pub fn hit(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit as usize].load(Ordering::Relaxed)
    }
}

/// The settings and their counters, shared by everything the proxy serves.
#[derive(Debug, Default)]
pub struct Limits {
    pub settings: ProxyLimits,
    pub hits: LimitHits,
}

impl Limits {
    pub fn new(settings: ProxyLimits) -> Arc<Limits> {
        Arc::new(Limits {
            settings,
            hits: LimitHits::default(),
        })
    }

    pub fn hit(&self, limit: Limit) {
        self.hits.hit(limit);
    }
}

/// What the proxy's listeners check their limits with: the settings and counters, the TLS
/// handshake slots, and the tunnelled flows by source workload identity.
#[derive(Debug)]
pub struct ProxyGuards {
    pub limits: Arc<Limits>,
    pub handshakes: HandshakeSlots,
    /// Inbound flows by the source's SPIFFE ID.
    pub identity_flows: KeyedSlots<String>,
    /// The open-files limit the connection cap is sized from.
    pub fd_limit: u64,
}

impl ProxyGuards {
    pub fn new(settings: ProxyLimits, fd_limit: u64) -> Arc<ProxyGuards> {
        let handshakes = HandshakeSlots::new(&settings);
        let identity_flows = KeyedSlots::new(settings.flows_per_identity(fd_limit));
        Arc::new(ProxyGuards {
            limits: Limits::new(settings),
            handshakes,
            identity_flows,
            fd_limit,
        })
    }

    /// A slot for a flow from the workload `identity`, or `None` (counted) when it holds its
    /// share already.
    pub fn identity_flow(&self, identity: &str) -> Option<KeyedSlot<String>> {
        let slot = self.identity_flows.take(&identity.to_owned());
        if slot.is_none() {
            self.limits.hit(Limit::FlowsPerIdentity);
        }
        slot
    }
}

/// Live counts by key (a source address, a workload identity) under a limit each: a slot is
/// taken while it is under, and its guard gives it back.
#[derive(Debug)]
pub struct KeyedSlots<K> {
    limit: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
    /// Woken whenever a slot is given back (for [`KeyedSlots::take_by`]).
    released: Arc<tokio::sync::Notify>,
}

impl<K> Clone for KeyedSlots<K> {
    fn clone(&self) -> Self {
        KeyedSlots {
            limit: self.limit,
            open: Arc::clone(&self.open),
            released: Arc::clone(&self.released),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedSlots<K> {
    pub fn new(limit: usize) -> KeyedSlots<K> {
        KeyedSlots {
            limit: limit.max(1),
            open: Arc::new(Mutex::new(HashMap::new())),
            released: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for `key`, or `None` when it holds its limit already.
    pub fn take(&self, key: &K) -> Option<KeyedSlot<K>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(KeyedSlot {
            open: Arc::clone(&self.open),
            released: Arc::clone(&self.released),
            key: key.clone(),
        })
    }

    /// A slot for `key`, waiting for one to be given back until `deadline` (`None` then).
    pub async fn take_by(&self, key: &K, deadline: tokio::time::Instant) -> Option<KeyedSlot<K>> {
        loop {
            // Registered before the attempt, so a slot given back in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(slot) = self.take(key) {
                return Some(slot);
            }
            tokio::time::timeout_at(deadline, released).await.ok()?;
        }
    }

    /// Keys holding a slot now (entries are removed at zero, so this is bounded by the slots).
    pub fn keys(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One slot of a [`KeyedSlots`], given back when dropped.
#[derive(Debug)]
pub struct KeyedSlot<K: Eq + Hash> {
    open: Arc<Mutex<HashMap<K, usize>>>,
    released: Arc<tokio::sync::Notify>,
    key: K,
}

impl<K: Eq + Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
        drop(open);
        self.released.notify_waiters();
    }
}

/// TLS handshakes in progress: at most `total` at once and `per_source` from one address. A
/// handshake over either share waits for a slot (a burst of new flows from one node is
/// normal) until its deadline; only then is it refused. A connection waiting holds its socket
/// and no TLS state, and the connection share of its address bounds how many wait.
#[derive(Debug, Clone)]
pub struct HandshakeSlots {
    total: Arc<tokio::sync::Semaphore>,
    per_source: KeyedSlots<IpAddr>,
}

/// A handshake in progress; the slots are given back when it is dropped.
#[derive(Debug)]
pub struct Handshaking {
    _total: tokio::sync::OwnedSemaphorePermit,
    _source: KeyedSlot<IpAddr>,
}

impl HandshakeSlots {
    pub fn new(settings: &ProxyLimits) -> HandshakeSlots {
        HandshakeSlots {
            total: Arc::new(tokio::sync::Semaphore::new(
                settings.max_tls_handshakes.max(1),
            )),
            per_source: KeyedSlots::new(settings.max_tls_handshakes_per_source),
        }
    }

    /// A slot for a handshake from `source` by `deadline`, or the limit that refused it
    /// (counted).
    pub async fn start(
        &self,
        source: IpAddr,
        deadline: tokio::time::Instant,
        hits: &LimitHits,
    ) -> Option<Handshaking> {
        let Some(from_source) = self
            .per_source
            .take_by(&source.to_canonical(), deadline)
            .await
        else {
            hits.hit(Limit::TlsHandshakesPerSource);
            return None;
        };
        let total = Arc::clone(&self.total).acquire_owned();
        let Ok(Ok(total)) = tokio::time::timeout_at(deadline, total).await else {
            hits.hit(Limit::TlsHandshakes);
            return None;
        };
        Some(Handshaking {
            _total: total,
            _source: from_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_slots_hold_each_key_to_its_limit_and_forget_keys_at_zero() {
        let slots = KeyedSlots::new(2);
        let a1 = slots.take(&"a").expect("first");
        let a2 = slots.take(&"a").expect("second");
        assert!(slots.take(&"a").is_none(), "a third is over the limit");
        let b = slots.take(&"b").expect("another key has its own share");
        drop(a1);
        let a3 = slots.take(&"a").expect("a slot given back is free again");
        drop((a2, a3, b));
        assert_eq!(slots.keys(), 0, "keys at zero are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn handshakes_over_a_share_wait_until_their_deadline_and_count_which_limit_refused() {
        let settings = ProxyLimits {
            max_tls_handshakes: 3,
            max_tls_handshakes_per_source: 2,
            ..ProxyLimits::default()
        };
        let (slots, hits) = (HandshakeSlots::new(&settings), LimitHits::default());
        let one: IpAddr = "10.0.0.1".parse().expect("address");
        let two: IpAddr = "10.0.0.2".parse().expect("address");
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut held = Vec::new();
        for ip in [one, one, two] {
            held.push(
                slots
                    .start(ip, soon(), &hits)
                    .await
                    .expect("under both limits"),
            );
        }
        assert!(slots.start(one, soon(), &hits).await.is_none());
        assert_eq!(hits.get(Limit::TlsHandshakesPerSource), 1);
        assert!(slots.start(two, soon(), &hits).await.is_none());
        assert_eq!(hits.get(Limit::TlsHandshakes), 1);
        // A waiting handshake gets the slot given back before its deadline.
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let hits = LimitHits::default();
                slots.start(one, soon(), &hits).await.is_some()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(held.remove(0));
        assert!(
            waiting.await.expect("task"),
            "a slot given back was not taken"
        );
    }

    #[test]
    fn shares_default_to_a_quarter_of_the_cap() {
        let set = ProxyLimits {
            max_connections: Some(400),
            ..ProxyLimits::default()
        };
        assert_eq!(set.connections(1 << 20), 400);
        assert_eq!(set.connections_per_source(1 << 20), 100);
        assert_eq!(set.flows_per_identity(1 << 20), 100);
        let set = ProxyLimits {
            max_flows_per_identity: Some(7),
            ..set
        };
        assert_eq!(set.flows_per_identity(1 << 20), 7);
    }

    #[test]
    fn every_limit_has_its_own_name() {
        let names: std::collections::HashSet<_> = Limit::ALL.iter().map(|l| l.name()).collect();
        assert_eq!(names.len(), Limit::ALL.len());
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i);
        }
    }
}
