//! Prometheus metrics (OpenMetrics text via prometheus-client). Kernel counters are read from the
//! per-CPU maps at scrape time by a collector, so a scrape always sees the kernel's current sums
//! and the datapath never waits on user space.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::app::AgentState;

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

        let attached = ConstGauge::new(self.state.attachments.len() as i64);
        attached.encode(encoder.encode_descriptor(
            "rampart_programs_attached",
            "Kernel programs attached to interfaces by this agent",
            None,
            attached.metric_type(),
        )?)?;

        let stats = match self.state.stats.hooks() {
            Ok(stats) => stats,
            Err(e) => {
                // A scrape must not fail because one map read did; the gap shows in the series.
                tracing::warn!("reading the hook counters: {e}");
                return Ok(());
            }
        };
        let mut packets = encoder.encode_descriptor(
            "rampart_datapath_packets",
            "Packets seen by each kernel hook, summed over CPUs and interfaces",
            None,
            MetricType::Counter,
        )?;
        for (hook, counter) in &stats {
            let labels = [("hook", hook.name())];
            ConstCounter::new(counter.packets).encode(packets.encode_family(&labels)?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "rampart_datapath_bytes",
            "Bytes seen by each kernel hook, summed over CPUs and interfaces",
            None,
            MetricType::Counter,
        )?;
        for (hook, counter) in &stats {
            let labels = [("hook", hook.name())];
            ConstCounter::new(counter.bytes).encode(bytes.encode_family(&labels)?)?;
        }
        self.encode_verdicts(&mut encoder)?;
        self.encode_rules(&mut encoder)?;
        self.encode_events(&mut encoder)
    }
}

impl AgentCollector {
    /// Decisions per rule cookie (bounded by `MAX_RULE_STATS` plus the overflow series).
    fn encode_rules(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rules = match self.state.stats.rules() {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!("reading the rule counters: {e}");
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            "rampart_rule_decisions",
            "Flow decisions per policy rule cookie (0: no rule matched; 4294967295: overflow) and verdict",
            None,
            MetricType::Counter,
        )?;
        for (cookie, c) in rules {
            let cookie = cookie.to_string();
            for (verdict, value) in [
                ("allow", c.allow),
                ("deny", c.deny),
                ("audit", c.audit),
                ("redirect", c.redirect),
            ] {
                let labels = [("cookie", cookie.as_str()), ("verdict", verdict)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// Flow events read from the kernel, and those it could not write.
    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = ConstCounter::new(
            self.state
                .events_read
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        read.encode(encoder.encode_descriptor(
            "rampart_events",
            "Flow events (drops and new-flow verdicts) read from the kernel",
            None,
            read.metric_type(),
        )?)?;
        let lost = match self.state.events.lock().map(|r| r.lost()) {
            Ok(Ok(lost)) => lost,
            Ok(Err(e)) => {
                tracing::warn!("reading the lost-event counters: {e}");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let mut family = encoder.encode_descriptor(
            "rampart_events_lost",
            "Flow events the kernel did not write, by cause (rate_limited, ring_full)",
            None,
            MetricType::Counter,
        )?;
        for (cause, value) in [
            ("rate_limited", lost.rate_limited),
            ("ring_full", lost.ring_full),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("cause", cause)])?)?;
        }
        Ok(())
    }

    /// Drops and audited would-be drops by (reason, direction), forwarded by direction.
    fn encode_verdicts(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.state.stats;
        let (drops, audited, forwarded) = match (stats.drops(), stats.audited(), stats.forwarded())
        {
            (Ok(d), Ok(a), Ok(f)) => (d, a, f),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::warn!("reading the verdict counters: {e}");
                return Ok(());
            }
        };
        for (name, help, rows, bytes) in [
            (
                "rampart_drops",
                "Packets dropped by the datapath, by drop reason and direction",
                &drops,
                false,
            ),
            (
                "rampart_drop_bytes",
                "Bytes dropped by the datapath, by drop reason and direction",
                &drops,
                true,
            ),
            (
                "rampart_audited",
                "Packets audit mode let through that enforce mode would drop, by reason and direction",
                &audited,
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in rows.iter() {
                let labels = [
                    ("reason", row.reason.name()),
                    ("direction", row.direction.name()),
                ];
                let value = if bytes {
                    row.counter.bytes
                } else {
                    row.counter.packets
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, bytes) in [
            (
                "rampart_forwarded",
                "Packets the datapath's policy forwarded, by direction",
                false,
            ),
            (
                "rampart_forwarded_bytes",
                "Bytes the datapath's policy forwarded, by direction",
                true,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (direction, counter) in &forwarded {
                let value = if bytes {
                    counter.bytes
                } else {
                    counter.packets
                };
                ConstCounter::new(value)
                    .encode(family.encode_family(&[("direction", direction.name())])?)?;
            }
        }
        Ok(())
    }
}
