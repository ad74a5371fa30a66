//! Prometheus metrics (OpenMetrics text via prometheus-client). Kernel counters are read from the
//! per-CPU maps at scrape time by a collector, so a scrape always sees the kernel's current sums
//! and the datapath never waits on user space.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
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

        let stats = match self.state.hook_stats.read() {
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
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (hook, counter) in &stats {
            let labels = [("hook", hook.name())];
            ConstCounter::new(counter.packets).encode(packets.encode_family(&labels)?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "rampart_datapath_bytes",
            "Bytes seen by each kernel hook, summed over CPUs and interfaces",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (hook, counter) in &stats {
            let labels = [("hook", hook.name())];
            ConstCounter::new(counter.bytes).encode(bytes.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
