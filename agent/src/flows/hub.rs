//! The flow hub: turns kernel events and proxy refusals into [`FlowRecord`]s and fans them out
//! to every reader (admin `/v1/flows` streams, the `--flow-log` file). Publishing never waits:
//! a reader that falls behind loses the oldest records it has not read, and the loss is counted
//! (`rampart_flow_records_lost_total`), so the kernel's ring is always drained on time.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rampart_common::event::FlowEvent;
use rampart_common::policy::Verdict;
use rampart_common::reason::{Direction, DropReason};
use tokio::sync::broadcast;

use super::names::FlowNames;
use super::record::{DecidedBy, FlowRecord, Observer, ProxyInfo, protocol_name};
use crate::flows::event::{ProxyEvent, ProxySide};
use crate::view::View;

/// Records kept for readers that connect later (`rampart flows` without `--follow`).
pub const RECENT_RECORDS: usize = 2048;
/// Records a reader may fall behind by before it loses the oldest.
const READER_BACKLOG: usize = 8192;

struct Fanout {
    recent: VecDeque<Arc<FlowRecord>>,
    sender: broadcast::Sender<Arc<FlowRecord>>,
}

pub struct FlowHub {
    node: String,
    /// The names of the policy generation in force.
    names: View<Arc<FlowNames>>,
    /// The recent records and the sender, under one lock: a new reader gets the recent ones and
    /// then every later one, with no gap and no repeat.
    fanout: Mutex<Fanout>,
    kernel_records: AtomicU64,
    proxy_records: AtomicU64,
    lost: AtomicU64,
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHub")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FlowHub {
    /// A hub for records of `node`, named with what `names` shows when each record is made.
    pub fn new(node: &str, names: View<Arc<FlowNames>>) -> FlowHub {
        let (sender, _) = broadcast::channel(READER_BACKLOG);
        FlowHub {
            node: node.to_owned(),
            names,
            fanout: Mutex::new(Fanout {
                recent: VecDeque::with_capacity(RECENT_RECORDS),
                sender,
            }),
            kernel_records: AtomicU64::new(0),
            proxy_records: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    fn names(&self) -> Arc<FlowNames> {
        self.names.get()
    }

    /// Publishes the kernel's events (their times are `CLOCK_MONOTONIC`).
    pub fn publish_kernel(&self, events: &[FlowEvent]) {
        if events.is_empty() {
            return;
        }
        let names = self.names();
        let offset = monotonic_to_unix_offset_ns();
        for e in events {
            let unix_ns = i128::from(e.time_ns) + offset;
            self.publish(kernel_record(&names, &self.node, e, unix_ns));
        }
        self.kernel_records
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Publishes one decision of the proxy: a refusal, or an HTTP request the L7 filters judged.
    pub fn publish_proxy(&self, event: &ProxyEvent) {
        let names = self.names();
        let record = proxy_record(&names, &self.node, event, now_unix_ns());
        self.publish(record);
        self.proxy_records.fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&self, record: FlowRecord) {
        let record = Arc::new(record);
        let mut fanout = match self.fanout.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if fanout.recent.len() == RECENT_RECORDS {
            fanout.recent.pop_front();
        }
        fanout.recent.push_back(Arc::clone(&record));
        // No reader is not an error.
        let _ = fanout.sender.send(record);
    }

    /// The recent records, oldest first, and a receiver of every record after them.
    pub fn subscribe(&self) -> (Vec<Arc<FlowRecord>>, broadcast::Receiver<Arc<FlowRecord>>) {
        let fanout = match self.fanout.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        (
            fanout.recent.iter().cloned().collect(),
            fanout.sender.subscribe(),
        )
    }

    /// A reader fell `n` records behind and lost them.
    pub fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn records(&self, observer: Observer) -> u64 {
        match observer {
            Observer::Kernel => self.kernel_records.load(Ordering::Relaxed),
            Observer::Proxy => self.proxy_records.load(Ordering::Relaxed),
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

fn kernel_record(names: &FlowNames, node: &str, e: &FlowEvent, unix_ns: i128) -> FlowRecord {
    let addr = |a: [u8; 16]| {
        let ip = std::net::Ipv6Addr::from(a).to_canonical();
        (!ip.is_unspecified()).then_some(ip)
    };
    let verdict = Verdict(e.verdict);
    let reason = DropReason(e.reason);
    // A braked connection carries the cookie of the rule that allowed it; the brake decided.
    let policy = if reason == DropReason::FLOOD_BRAKE {
        None
    } else {
        names.policy(e.cookie)
    };
    let decided_by = if policy.is_some() {
        DecidedBy::Rule
    } else if reason == DropReason::MTLS_REQUIRED
        || reason == DropReason::PROXY_UNAVAILABLE
        || reason == DropReason::FLOOD_BRAKE
    {
        DecidedBy::MeshPolicy
    } else if reason == DropReason::POLICY_DENIED || verdict == Verdict::AUDIT {
        DecidedBy::DefaultDeny
    } else if reason == DropReason::NONE {
        DecidedBy::DefaultAllow
    } else {
        DecidedBy::Datapath
    };
    let mesh_policies = if verdict == Verdict::REDIRECT || decided_by == DecidedBy::MeshPolicy {
        names.mesh_policies(e.dst_identity, e.dport)
    } else {
        Vec::new()
    };
    FlowRecord {
        time: rfc3339(unix_ns),
        node: node.to_owned(),
        observer: Observer::Kernel,
        direction: Direction(e.direction).name().to_owned(),
        protocol: protocol_name(e.proto),
        src: names.peer(addr(e.saddr), e.sport, e.src_identity),
        dst: names.peer(addr(e.daddr), e.dport, e.dst_identity),
        verdict: verdict.name().to_owned(),
        drop_reason: (reason != DropReason::NONE).then(|| reason.name().to_owned()),
        decided_by,
        policy,
        mesh_policies,
        interface_index: Some(e.ifindex),
        bytes: Some(e.len),
        proxy: None,
        http: None,
    }
}

fn proxy_record(names: &FlowNames, node: &str, e: &ProxyEvent, unix_ns: i128) -> FlowRecord {
    let peer = |a: Option<SocketAddr>| {
        names.peer(
            a.map(|a| a.ip()).map(|ip: IpAddr| ip.to_canonical()),
            a.map_or(0, |a| a.port()),
            0,
        )
    };
    let (src, dst) = (peer(e.source), peer(e.destination));
    let mesh_policies = names.mesh_policies(dst.identity, dst.port);
    FlowRecord {
        time: rfc3339(unix_ns),
        node: node.to_owned(),
        observer: Observer::Proxy,
        direction: match e.side {
            ProxySide::Inbound => "ingress".into(),
            ProxySide::Outbound => "egress".into(),
        },
        protocol: "tcp".into(),
        src,
        dst,
        verdict: if e.refused.is_some() { "deny" } else { "allow" }.into(),
        drop_reason: e.refused.map(|r| r.name().to_owned()),
        decided_by: DecidedBy::MeshPolicy,
        policy: None,
        mesh_policies,
        interface_index: None,
        bytes: None,
        proxy: Some(ProxyInfo {
            side: match e.side {
                ProxySide::Inbound => "inbound".into(),
                ProxySide::Outbound => "outbound".into(),
            },
            filter: e.refused.map_or("", |r| r.filter()).into(),
            peer_spiffe_id: e.peer.clone(),
        }),
        http: e.http.as_deref().cloned(),
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// What to add to a `CLOCK_MONOTONIC` time (`bpf_ktime_get_ns`) to get Unix time.
fn monotonic_to_unix_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

fn now_unix_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn rfc3339(unix_ns: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_common::reason::MtlsReason;

    fn event(verdict: Verdict, reason: DropReason, cookie: u32) -> FlowEvent {
        let mut daddr = [0u8; 16];
        daddr[10] = 0xff;
        daddr[11] = 0xff;
        daddr[12..].copy_from_slice(&[10, 0, 0, 5]);
        FlowEvent {
            time_ns: 1,
            daddr,
            dport: 80,
            proto: 6,
            verdict: verdict.0,
            reason: reason.0,
            cookie,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn kernel_records_name_the_decision() {
        let names = FlowNames::default();
        let denied = kernel_record(
            &names,
            "n1",
            &event(Verdict::DENY, DropReason::POLICY_DENIED, 0),
            0,
        );
        assert_eq!(denied.verdict, "deny");
        assert_eq!(denied.drop_reason.as_deref(), Some("policy_denied"));
        assert_eq!(denied.decided_by, DecidedBy::DefaultDeny);
        assert_eq!(denied.dst.ip, Some("10.0.0.5".parse().expect("ip")));
        assert_eq!(denied.src.ip, None, "an all-zero address is unknown");
        assert_eq!(denied.time, "1970-01-01T00:00:00Z");
        let allowed = kernel_record(&names, "n1", &event(Verdict::ALLOW, DropReason::NONE, 0), 0);
        assert_eq!(allowed.decided_by, DecidedBy::DefaultAllow);
        assert_eq!(allowed.drop_reason, None);
        let bad = kernel_record(
            &names,
            "n1",
            &event(Verdict::DENY, DropReason::INVALID_PACKET, 0),
            0,
        );
        assert_eq!(bad.decided_by, DecidedBy::Datapath);
        let json = serde_json::to_string(&denied).expect("json");
        assert!(json.contains("\"verdict\":\"deny\""), "{json}");
        assert!(json.contains("\"observer\":\"kernel\""), "{json}");
    }

    #[test]
    fn readers_get_recent_then_live_records_without_gap() {
        let hub = FlowHub::new("n1", View::fixed(Arc::default()));
        hub.publish_kernel(&[event(Verdict::ALLOW, DropReason::NONE, 0)]);
        let (recent, mut live) = hub.subscribe();
        assert_eq!(recent.len(), 1);
        hub.publish_proxy(&ProxyEvent {
            side: ProxySide::Inbound,
            http: None,
            refused: Some(MtlsReason::PrincipalNotAllowed.into()),
            peer: Some("spiffe://cluster.local/ns/a/sa/b".into()),
            source: Some("10.0.1.2:4000".parse().expect("addr")),
            destination: Some("10.0.0.5:80".parse().expect("addr")),
        });
        let next = live.try_recv().expect("live record");
        assert_eq!(next.observer, Observer::Proxy);
        assert_eq!(next.drop_reason.as_deref(), Some("principal_not_allowed"));
        assert_eq!(hub.records(Observer::Kernel), 1);
        assert_eq!(hub.records(Observer::Proxy), 1);
    }

    #[test]
    fn the_recent_buffer_is_bounded() {
        let hub = FlowHub::new("n1", View::fixed(Arc::default()));
        let many = vec![event(Verdict::ALLOW, DropReason::NONE, 0); RECENT_RECORDS + 10];
        hub.publish_kernel(&many);
        assert_eq!(hub.subscribe().0.len(), RECENT_RECORDS);
    }
}
