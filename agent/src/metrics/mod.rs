//! Prometheus metrics (OpenMetrics text via prometheus-client). Kernel counters are read from the
//! per-CPU maps at scrape time by a collector, so a scrape always sees the kernel's current sums
//! and the datapath never waits on user space.

mod memory;
pub mod prometheus_text;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::datapath::ReasonCount;
use crate::state::AgentState;
use rampart_common::counters::HookCounter;

pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(state: Arc<AgentState>) -> Metrics {
        let mut registry = Registry::default();
        registry.register(
            "rampart_build",
            "Build information of the running agent",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(AgentCollector { state }));
        Metrics { registry }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The same metrics in the Prometheus text format 0.0.4.
    pub fn encode_prometheus_text(&self) -> Result<String, std::fmt::Error> {
        Ok(prometheus_text::from_openmetrics(&self.encode()?))
    }
}

/// Reads the agent's state and the kernel counters on each scrape.
struct AgentCollector {
    state: Arc<AgentState>,
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let uptime = ConstGauge::new(self.state.started.elapsed().as_secs_f64());
        uptime.encode(encoder.encode_descriptor(
            "rampart_uptime_seconds",
            "Seconds since the agent started",
            None,
            uptime.metric_type(),
        )?)?;
        let attached = ConstGauge::new(self.state.attachments.lock().map_or(0, |a| a.len() as i64));
        attached.encode(encoder.encode_descriptor(
            "rampart_programs_attached",
            "Kernel programs attached to interfaces by this agent",
            None,
            attached.metric_type(),
        )?)?;
        self.encode_memory(&mut encoder)?;
        self.encode_restart(&mut encoder)?;
        // Each group reads its own maps; a failed read leaves out that group only (a scrape must
        // not fail because one map read did: the gap shows in the series).
        self.encode_policy(&mut encoder)?;
        self.encode_hooks(&mut encoder)?;
        self.encode_verdicts(&mut encoder)?;
        self.encode_rules(&mut encoder)?;
        self.encode_maps(&mut encoder)?;
        self.encode_mesh(&mut encoder)?;
        self.encode_flows(&mut encoder)?;
        self.encode_kube(&mut encoder)?;
        self.encode_events(&mut encoder)
    }
}

/// An unlabelled counter (through `counter_family` an empty label set would print as
/// `name{}`).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

/// A labelled counter family: one sample per (labels, value) row.
fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The value of a map read, or `None` after logging what failed.
fn read<T>(what: &str, result: Result<T, crate::datapath::DatapathError>) -> Option<T> {
    result
        .map_err(|e| tracing::warn!("reading the {what}: {e}"))
        .ok()
}

impl AgentCollector {
    /// What this agent's start did: a takeover's time, failed handovers, carried flows.
    fn encode_restart(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let restart = &self.state.restart;
        let took = restart.takeover_ms.load(relaxed);
        if took > 0 {
            let gauge = ConstGauge::new(took as f64 / 1000.0);
            gauge.encode(encoder.encode_descriptor(
                "rampart_handover_takeover_seconds",
                "How long this agent took, from its start, to take over from the running agent (absent: it started without one)",
                None,
                gauge.metric_type(),
            )?)?;
        }
        counter(
            encoder,
            "rampart_handover_failures",
            "Handovers to a new agent that did not complete (it went away; this agent carried on, or exited if it had taken the kernel)",
            restart.handover_failures.load(relaxed),
        )?;
        counter(
            encoder,
            "rampart_conntrack_carried",
            "Tracked flows carried from a previous layout's conntrack map when this agent started",
            restart.conntrack_carried.load(relaxed),
        )
    }

    /// The agent's memory (a figure this build cannot read is left out).
    fn encode_memory(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let memory = memory::Memory::read();
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                memory.resident,
            ),
            (
                "rampart_memory_allocated_bytes",
                "Bytes in the agent's live heap allocations",
                memory.allocated,
            ),
            (
                "rampart_memory_heap_size_bytes",
                "Bytes the agent's allocator holds from the kernel, in use or free",
                memory.heap,
            ),
        ] {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }

    /// The mTLS proxy's counters (only when it runs).
    fn encode_mesh(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use rampart_common::reason::{MtlsReason, OutboundReason};
        let Some(mesh) = &self.state.mesh else {
            return Ok(());
        };
        counter(
            encoder,
            "rampart_certificate_failures",
            "Certificates the CA could not issue or renew (the current one kept serving while valid)",
            mesh.certs
                .ca_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let left = ConstGauge::new(
            i64::try_from(mesh.certs.node_time_left().as_secs()).unwrap_or(i64::MAX),
        );
        left.encode(encoder.encode_descriptor(
            "rampart_node_certificate_expiry_seconds",
            "Seconds until the node's certificate expires",
            None,
            left.metric_type(),
        )?)?;
        if let (_, Some(soonest)) = mesh.certs.workloads_time_left() {
            let left = ConstGauge::new(i64::try_from(soonest.as_secs()).unwrap_or(i64::MAX));
            left.encode(encoder.encode_descriptor(
                "rampart_workload_certificate_expiry_seconds",
                "Seconds until the first of this node's workload certificates expires",
                None,
                left.metric_type(),
            )?)?;
        }
        let stats = &mesh.inbound_stats;
        // One family for every refusal of the proxy's chain: the tunnel's own (`filter="mtls"`:
        // handshake, peer identity, principal), ingress's (`filter="ingress"`: TLS, the pod)
        // and the L7 filters' (`authn`, `authz`, `ratelimit`); reasons are closed sets, so the
        // label set is bounded.
        let tunnel = MtlsReason::ALL.iter().map(|r| {
            (
                vec![
                    ("filter", "mtls".to_owned()),
                    ("reason", r.name().to_owned()),
                ],
                stats.denied(*r),
            )
        });
        let l7 = mesh
            .l7_stats()
            .denials()
            .into_iter()
            .map(|((filter, reason), n)| {
                (
                    vec![("filter", filter.to_owned()), ("reason", reason.to_owned())],
                    n,
                )
            });
        counter_family(
            encoder,
            "rampart_proxy_denied",
            "Connections, streams and requests the proxy refused, by filter and reason",
            tunnel.chain(l7),
        )?;
        let hits = &mesh.guards.limits.hits;
        counter_family(
            encoder,
            "rampart_proxy_limit_hits",
            "Times a client hit one of the proxy's limits (rampart run's \"Proxy limits\"): slow heads and bodies, idle connections and flows, connection, flow and handshake shares, HTTP/2 abuse",
            crate::limits::Limit::ALL
                .iter()
                .map(|l| (vec![("limit", l.name().to_owned())], hits.get(*l))),
        )?;
        counter(
            encoder,
            "rampart_proxy_requests_forwarded",
            "HTTP requests that passed the L7 filters and went to the destination",
            mesh.l7_stats().forwarded_total(),
        )?;
        let sources = mesh.jwks.sources();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        counter_family(
            encoder,
            "rampart_jwks_fetches",
            "JWKS fetches (file, URL or OIDC discovery) by source and result",
            sources.iter().flat_map(|s| {
                let source = s.location.to_string();
                [
                    (
                        vec![("source", source.clone()), ("result", "ok".to_owned())],
                        s.stats.fetched.load(relaxed),
                    ),
                    (
                        vec![("source", source), ("result", "error".to_owned())],
                        s.stats.failed.load(relaxed),
                    ),
                ]
            }),
        )?;
        counter_family(
            encoder,
            "rampart_jwks_stale_served",
            "Verifications that used a JWKS past its refresh time because refreshes failed (kept up to 24 h)",
            sources.iter().map(|s| {
                (
                    vec![("source", s.location.to_string())],
                    s.stats.stale_served.load(relaxed),
                )
            }),
        )?;
        let mut age = encoder.encode_descriptor(
            "rampart_jwks_age_seconds",
            "Seconds since each JWKS source was last fetched successfully (absent: never)",
            None,
            MetricType::Gauge,
        )?;
        for s in &sources {
            if let Some(seconds) = s.age() {
                let source = s.location.to_string();
                ConstGauge::new(seconds.as_secs_f64())
                    .encode(age.encode_family(&[("source", source.as_str())])?)?;
            }
        }
        let l7 = mesh.l7_stats();
        let waf = l7.waf_matches();
        for (name, help, blocked) in [
            (
                "rampart_waf_blocked",
                "Requests the WAF blocked, by MeshPolicy and CRS rule group",
                true,
            ),
            (
                "rampart_waf_detected",
                "Requests the WAF's rules would block, let through by Detect mode, by MeshPolicy and CRS rule group",
                false,
            ),
        ] {
            counter_family(
                encoder,
                name,
                help,
                waf.iter()
                    .filter(|((_, _, b), _)| *b == blocked)
                    .map(|((policy, group, _), n)| {
                        (
                            vec![
                                ("policy", policy.clone()),
                                ("rule_group", (*group).to_owned()),
                            ],
                            *n,
                        )
                    }),
            )?;
        }
        counter_family(
            encoder,
            "rampart_dlp_matches",
            "Sensitive data the DLP filter found in requests and responses, by direction, detector and action (mask, redact, block, shadow)",
            l7.dlp_matches()
                .into_iter()
                .map(|((direction, detector, action), n)| {
                    (
                        vec![
                            ("direction", direction.to_owned()),
                            ("detector", detector),
                            ("action", action.to_owned()),
                        ],
                        n,
                    )
                }),
        )?;
        counter(
            encoder,
            "rampart_waf_evaluated",
            "Requests the WAF evaluated",
            l7.waf_evaluated_total(),
        )?;
        counter(
            encoder,
            "rampart_waf_engine_errors",
            "Requests the WAF engine failed on (refused with 503, or let through with onEngineError: Allow)",
            l7.waf_errors_total(),
        )?;
        counter(
            encoder,
            "rampart_proxy_ratelimit_shadow",
            "Requests over a rate limit in shadow mode (counted, passed)",
            mesh.l7_stats().shadow_limited_total(),
        )?;
        counter_family(
            encoder,
            "rampart_proxy_outbound_errors",
            "Redirected flows the proxy could not tunnel, by reason",
            OutboundReason::ALL.iter().map(|e| {
                (
                    vec![("reason", e.name().to_owned())],
                    mesh.outbound_errors(*e),
                )
            }),
        )?;
        counter(
            encoder,
            "rampart_policy_routing_repaired",
            "Times the policy routing that delivers marked packets to the proxy was found missing and installed again",
            mesh.routing_repaired
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        counter_family(
            encoder,
            "rampart_proxy_flows",
            "Flows through the proxy, by side (outbound: from a local pod into the tunnel; inbound: from the tunnel to a local pod; ingress: from outside the cluster to a local pod)",
            [
                (
                    vec![("direction", "outbound".to_owned())],
                    mesh.outbound_flows
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    vec![("direction", "inbound".to_owned())],
                    stats.accepted_streams(),
                ),
                (
                    vec![("direction", "ingress".to_owned())],
                    mesh.ingress
                        .flows
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            ],
        )
    }

    /// Packets and bytes per hook.
    fn encode_hooks(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(hooks) = read("hook counters", self.state.stats.hooks()) else {
            return Ok(());
        };
        let rows = |pick: fn(&HookCounter) -> u64| {
            hooks
                .iter()
                .map(move |(hook, c)| (vec![("hook", hook.name().to_owned())], pick(c)))
        };
        counter_family(
            encoder,
            "rampart_datapath_packets",
            "Packets seen by each kernel hook, summed over CPUs and interfaces",
            rows(|c| c.packets),
        )?;
        counter_family(
            encoder,
            "rampart_datapath_bytes",
            "Bytes seen by each kernel hook, summed over CPUs and interfaces",
            rows(|c| c.bytes),
        )
    }

    /// Drops and audited would-be drops by (reason, direction), forwarded by direction.
    fn encode_verdicts(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.state.stats;
        let by_reason = |rows: &[ReasonCount], pick: fn(&HookCounter) -> u64| {
            rows.iter()
                .map(move |r| {
                    let labels = vec![
                        ("reason", r.reason.name().to_owned()),
                        ("direction", r.direction.name().to_owned()),
                    ];
                    (labels, pick(&r.counter))
                })
                .collect::<Vec<_>>()
        };
        if let Some(drops) = read("drop counters", stats.drops()) {
            counter_family(
                encoder,
                "rampart_drops",
                "Packets dropped by the datapath, by drop reason and direction",
                by_reason(&drops, |c| c.packets),
            )?;
            counter_family(
                encoder,
                "rampart_drop_bytes",
                "Bytes dropped by the datapath, by drop reason and direction",
                by_reason(&drops, |c| c.bytes),
            )?;
        }
        if let Some(audited) = read("audit counters", stats.audited()) {
            counter_family(
                encoder,
                "rampart_audited",
                "Packets audit mode let through that enforce mode would drop, by reason and direction",
                by_reason(&audited, |c| c.packets),
            )?;
        }
        if let Some(forwarded) = read("forwarding counters", stats.forwarded()) {
            let by_direction = |pick: fn(&HookCounter) -> u64| {
                forwarded
                    .iter()
                    .map(move |(d, c)| (vec![("direction", d.name().to_owned())], pick(c)))
            };
            counter_family(
                encoder,
                "rampart_forwarded",
                "Packets the datapath's policy forwarded, by direction",
                by_direction(|c| c.packets),
            )?;
            counter_family(
                encoder,
                "rampart_forwarded_bytes",
                "Bytes the datapath's policy forwarded, by direction",
                by_direction(|c| c.bytes),
            )?;
        }
        Ok(())
    }

    /// Decisions per policy (the kernel counts per rule cookie; cookies are summed by the policy
    /// that owns them). Cardinality: one series per policy of the set in force and verdict, plus
    /// `policy=""` (no rule decided: the isolation default, or no policy selects the pod) and
    /// `policy="(overflow)"` (rules beyond the kernel's `MAX_RULE_STATS` = 16384 counted cookies).
    /// Counters of policies that left the set are dropped with them.
    fn encode_rules(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use rampart_common::counters::{RULE_STATS_OVERFLOW, RuleCounter};
        let Some(rules) = read("rule counters", self.state.stats.rules()) else {
            return Ok(());
        };
        let compiled = self.state.generation().map(|g| Arc::clone(&g.compiled));
        let mut by_policy: std::collections::BTreeMap<String, RuleCounter> = Default::default();
        for (cookie, counter) in rules {
            let policy = match cookie {
                0 => String::new(),
                RULE_STATS_OVERFLOW => "(overflow)".to_owned(),
                n => match compiled.as_ref().and_then(|c| c.rules.get(&n)) {
                    Some(rule) => rule.policy.to_string(),
                    None => continue,
                },
            };
            let sum = by_policy.entry(policy).or_default();
            *sum = sum.add(counter);
        }
        let rows = by_policy.into_iter().flat_map(|(policy, c)| {
            [
                ("allow", c.allow),
                ("deny", c.deny),
                ("audit", c.audit),
                ("redirect", c.redirect),
            ]
            .map(|(verdict, value)| {
                (
                    vec![("policy", policy.clone()), ("verdict", verdict.to_owned())],
                    value,
                )
            })
        });
        counter_family(
            encoder,
            "rampart_policy_verdicts",
            "New-flow decisions by the policy whose rule decided (empty: no rule, the isolation default) and verdict",
            rows,
        )
    }

    /// Entries, capacity and fill ratio of each kernel map, and the conntrack table's size.
    fn encode_maps(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = crate::status::map_fill(&self.state);
        if let Some(ct) = rows.iter().find(|m| m.map == "conntrack") {
            let ct = ConstGauge::new(ct.entries as i64);
            ct.encode(encoder.encode_descriptor(
                "rampart_conntrack_entries",
                "Flows in the kernel's connection tracking table",
                None,
                ct.metric_type(),
            )?)?;
        }
        let (expired, unconfirmed) = self.state.stats.conntrack_swept();
        counter_family(
            encoder,
            "rampart_conntrack_swept",
            "Conntrack entries the agent's sweep removed: expired, or (the table nearly full) TCP flows whose handshake never completed",
            [
                (vec![("reason", "expired".to_owned())], expired),
                (vec![("reason", "unconfirmed".to_owned())], unconfirmed),
            ],
        )?;
        counter_family(
            encoder,
            "rampart_kernel_log_records",
            "Log records the kernel programs wrote and the agent read, by kernel level (programs log only once `--kernel-log-level` or `rampart kernel-log` turns them up)",
            crate::kernel_log_level::KernelLogLevel::ALL
                .into_iter()
                .skip(1)
                .map(|level| {
                    (
                        vec![("level", level.name().to_owned())],
                        self.state.kernel_log.records(level),
                    )
                }),
        )?;
        let mut entries = encoder.encode_descriptor(
            "rampart_map_entries",
            "Entries in each kernel map (the active generation of the double-buffered ones)",
            None,
            MetricType::Gauge,
        )?;
        for m in &rows {
            ConstGauge::new(m.entries as i64)
                .encode(entries.encode_family(&[("map", m.map.as_str())])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "rampart_map_capacity",
            "Maximum entries of each kernel map",
            None,
            MetricType::Gauge,
        )?;
        for m in &rows {
            ConstGauge::new(i64::from(m.capacity))
                .encode(capacity.encode_family(&[("map", m.map.as_str())])?)?;
        }
        let mut ratio = encoder.encode_descriptor(
            "rampart_map_fill_ratio",
            "Entries over capacity of each kernel map (0 to 1); LRU maps evict their oldest entries at 1",
            None,
            MetricType::Gauge,
        )?;
        for m in &rows {
            ConstGauge::new(m.fill_ratio)
                .encode(ratio.encode_family(&[("map", m.map.as_str())])?)?;
        }
        Ok(())
    }

    /// The policy set in force: generation, errors, identities, endpoints, rules.
    fn encode_policy(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.state.policy_status();
        let gauges = [
            (
                "rampart_policy_generation",
                "Policy sets installed in the kernel since the agent started (increases on each)",
                status.generation as i64,
            ),
            (
                "rampart_identities",
                "Workload identities of the policy set in force",
                status.identities as i64,
            ),
            (
                "rampart_endpoints",
                "Local pods the datapath enforces for",
                status.endpoints as i64,
            ),
            (
                "rampart_policy_rules",
                "Compiled policy rules of the set in force (before they become map entries)",
                status.rules as i64,
            ),
            (
                "rampart_policy_map_entries",
                "Entries of the kernel's policy trie for the set in force",
                status.map_entries as i64,
            ),
            (
                "rampart_policy_pushed_files",
                "Files held from `rampart policy push` (at most 256)",
                status.pushed_files as i64,
            ),
            (
                "rampart_policy_pushed_bytes",
                "Bytes of text held from `rampart policy push` (at most 32 MiB)",
                status.pushed_bytes as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let errors = ConstCounter::new(status.errors_total);
        errors.encode(encoder.encode_descriptor(
            "rampart_policy_errors",
            "Policy sets rejected (syntax or validation errors, or a failed install); the last good set stays in force",
            None,
            errors.metric_type(),
        )?)
    }

    /// The Kubernetes source's watches, per kind (only with `--kube` / `--kubeconfig`).
    fn encode_kube(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(health) = &self.state.kube else {
            return Ok(());
        };
        let kinds = health.snapshot();
        let rows = |f: fn(&crate::sources::kube::KindHealth) -> u64| {
            kinds
                .iter()
                .map(move |(kind, h)| (vec![("kind", (*kind).to_owned())], f(h)))
                .collect::<Vec<_>>()
        };
        counter_family(
            encoder,
            "rampart_kube_watch_events",
            "Objects added, changed or deleted as the Kubernetes API's watches (and lists) reported them, per kind",
            rows(|h| h.events),
        )?;
        counter_family(
            encoder,
            "rampart_kube_relists",
            "Complete lists of a kind: the first, and one after each watch that expired (410 Gone) or could not resume",
            rows(|h| h.relists),
        )?;
        counter_family(
            encoder,
            "rampart_kube_watch_errors",
            "Failed lists and watches of a kind (each retried with backoff; enforcement stays as it is meanwhile)",
            rows(|h| h.errors),
        )?;
        counter_family(
            encoder,
            "rampart_kube_objects_rejected",
            "Object versions rejected on their own (invalid Pods, Namespaces and Nodes on arrival, policies, Secrets and ConfigMaps when the set is checked); the last good version stays in force",
            rows(|h| h.rejected),
        )?;
        let leading = ConstGauge::new(i64::from(
            health.leading.load(std::sync::atomic::Ordering::Relaxed),
        ));
        leading.encode(encoder.encode_descriptor(
            "rampart_kube_status_writer",
            "1 while this agent holds the Lease that makes it the one writer of Rampart objects' status",
            None,
            leading.metric_type(),
        )?)?;
        counter(
            encoder,
            "rampart_kube_status_writes",
            "Statuses written on Rampart objects (only the Lease holder writes)",
            health
                .status_writes
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "rampart_kube_status_write_errors",
            "Status writes the API server refused or that failed",
            health
                .status_errors
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let mut synced = encoder.encode_descriptor(
            "rampart_kube_synced",
            "1 once a kind's first complete list has arrived",
            None,
            MetricType::Gauge,
        )?;
        for (kind, h) in &kinds {
            ConstGauge::new(i64::from(h.synced))
                .encode(synced.encode_family(&[("kind", (*kind).to_owned())])?)?;
        }
        let mut age = encoder.encode_descriptor(
            "rampart_kube_last_event_age_seconds",
            "Seconds since the last event of a kind (absent before the first)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, h) in &kinds {
            if let Some(at) = h.last_event {
                ConstGauge::new(at.elapsed().as_secs_f64())
                    .encode(age.encode_family(&[("kind", (*kind).to_owned())])?)?;
            }
        }
        Ok(())
    }

    /// Flow log records published, and those readers lost.
    fn encode_flows(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::flows::record::Observer;
        let hub = &self.state.flows;
        counter_family(
            encoder,
            "rampart_flow_records",
            "Flow log records published, by observer (kernel verdicts, proxy refusals)",
            [
                (
                    vec![("observer", "kernel".to_owned())],
                    hub.records(Observer::Kernel),
                ),
                (
                    vec![("observer", "proxy".to_owned())],
                    hub.records(Observer::Proxy),
                ),
            ],
        )?;
        let lost = ConstCounter::new(hub.lost());
        lost.encode(encoder.encode_descriptor(
            "rampart_flow_records_lost",
            "Flow log records a reader (a rampart flows stream, the --flow-log file) fell too far behind to get",
            None,
            lost.metric_type(),
        )?)
    }

    /// Flow events read from the kernel, and those it could not write.
    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read_count = ConstCounter::new(
            self.state
                .events_read
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        read_count.encode(encoder.encode_descriptor(
            "rampart_events",
            "Flow events (drops and new-flow verdicts) read from the kernel",
            None,
            read_count.metric_type(),
        )?)?;
        let lost = match self.state.events.lock() {
            Ok(reader) => read("lost-event counters", reader.lost()),
            Err(_) => None,
        };
        let Some(lost) = lost else { return Ok(()) };
        counter_family(
            encoder,
            "rampart_events_lost",
            "Flow events the kernel did not write, by cause (rate_limited, ring_full)",
            [
                (
                    vec![("cause", "rate_limited".to_owned())],
                    lost.rate_limited,
                ),
                (vec![("cause", "ring_full".to_owned())], lost.ring_full),
            ],
        )
    }
}
