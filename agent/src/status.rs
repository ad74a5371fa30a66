//! `rampart status`: the agent's status document (served at `/status`) and the client that
//! fetches and prints it.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::cli::StatusArgs;
use crate::flows::record::Observer;
use crate::state::AgentState;

/// The status document. Field names are part of the `--json` interface: add, never rename.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusDoc {
    pub version: String,
    pub ready: bool,
    pub uptime_seconds: u64,
    pub mode: String,
    pub policy_dir: Option<String>,
    /// The Kubernetes source, with `--kube` / `--kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeDoc>,
    pub bpffs_root: String,
    pub attachments: Vec<AttachmentDoc>,
    pub counters: Vec<HookCounterDoc>,
    /// The policy set in force (absent from agents older than the policy compiler).
    #[serde(default)]
    pub policy: Option<crate::state::PolicyStatus>,
    #[serde(default)]
    pub node: String,
    /// Entries and capacity of each kernel map.
    #[serde(default)]
    pub maps: Vec<MapDoc>,
    /// The local pods enforced for.
    #[serde(default)]
    pub endpoints: Vec<EndpointDoc>,
    /// The mTLS proxy, when it runs.
    #[serde(default)]
    pub mesh: Option<MeshDoc>,
    #[serde(default)]
    pub flow_log: FlowLogDoc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeDoc {
    pub server: String,
    /// Every watched kind has had its first complete list.
    pub synced: bool,
    pub kinds: Vec<KubeKindDoc>,
    /// Objects whose current version is rejected (their last good version, if any, in force):
    /// document name → errors.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeKindDoc {
    pub kind: String,
    pub synced: bool,
    pub events: u64,
    pub relists: u64,
    pub errors: u64,
    pub rejected: u64,
    /// Seconds since the kind's last event.
    pub last_event_age_seconds: Option<f64>,
    pub last_error: Option<String>,
}

impl KubeDoc {
    fn from_health(health: &crate::sources::kube::KubeHealth) -> KubeDoc {
        let kinds: Vec<KubeKindDoc> = health
            .snapshot()
            .into_iter()
            .map(|(kind, h)| KubeKindDoc {
                kind: kind.to_owned(),
                synced: h.synced,
                events: h.events,
                relists: h.relists,
                errors: h.errors,
                rejected: h.rejected,
                last_event_age_seconds: h.last_event.map(|t| t.elapsed().as_secs_f64()),
                last_error: h.last_error,
            })
            .collect();
        KubeDoc {
            server: health.server.clone(),
            synced: kinds.iter().all(|k| k.synced),
            kinds,
            rejected: health.rejected(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapDoc {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
    pub fill_ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointDoc {
    pub pod: String,
    pub ifindex: u32,
    pub identity: u32,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshDoc {
    pub node_name: String,
    pub proxy_port: u16,
    pub tunnel_port: u16,
    pub ca_dir: String,
    pub mtls_routes: usize,
    /// `--ca-url`, or absent when the agent signs with --ca-dir's key.
    #[serde(default)]
    pub ca_url: Option<String>,
    /// Seconds until the node certificate expires.
    #[serde(default)]
    pub node_certificate_seconds_left: u64,
    /// Certificates the CA could not issue or renew.
    #[serde(default)]
    pub certificate_failures: u64,
    /// Workload certificates held (local workload identities that opened or took a tunnel).
    #[serde(default)]
    pub workload_certificates: usize,
    /// Seconds until the first of them expires.
    #[serde(default)]
    pub workload_certificate_seconds_left: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowLogDoc {
    pub kernel_records: u64,
    pub proxy_records: u64,
    pub lost: u64,
    #[serde(default)]
    pub file: Option<String>,
}

/// Entries and capacity of each kernel map: the double-buffered ones from the set in force, the
/// ones the kernel fills by walking them (see `Stats::kernel_table_entries`).
pub fn map_fill(state: &AgentState) -> Vec<MapDoc> {
    use rampart_common::maps::{
        MAX_CT, MAX_ENDPOINTS, MAX_FRAGS, MAX_IPCACHE, MAX_MESH, MAX_POLICY, MAX_RULE_STATS,
    };
    let status = state.policy_status();
    let mut rows = vec![
        ("endpoints", status.endpoints, MAX_ENDPOINTS),
        ("ipcache4", status.ipcache4_entries, MAX_IPCACHE),
        ("ipcache6", status.ipcache6_entries, MAX_IPCACHE),
        ("policy", status.map_entries, MAX_POLICY),
        ("mesh", status.mesh_entries, MAX_MESH),
    ];
    match state.stats.kernel_table_entries() {
        Ok(k) => {
            rows.push(("conntrack", k.conntrack, MAX_CT));
            rows.push(("fragments", k.fragments, MAX_FRAGS));
            rows.push(("rule_stats", k.rule_stats, MAX_RULE_STATS));
        }
        Err(e) => tracing::warn!("reading the conntrack, fragment and rule-counter maps: {e}"),
    }
    rows.into_iter()
        .map(|(map, entries, capacity)| MapDoc {
            map: map.to_owned(),
            entries,
            capacity,
            fill_ratio: entries as f64 / f64::from(capacity),
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttachmentDoc {
    pub interface: String,
    pub hook: String,
    pub program: String,
    pub program_id: u32,
    pub method: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HookCounterDoc {
    pub hook: String,
    pub packets: u64,
    pub bytes: u64,
}

impl StatusDoc {
    pub fn from_state(state: &AgentState) -> StatusDoc {
        let counters = match state.stats.hooks() {
            Ok(stats) => stats
                .iter()
                .map(|(hook, c)| HookCounterDoc {
                    hook: hook.name().into(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
            Err(e) => {
                tracing::warn!("reading the hook counters: {e}");
                Vec::new()
            }
        };
        StatusDoc {
            version: env!("CARGO_PKG_VERSION").into(),
            ready: state.is_ready(),
            uptime_seconds: state.started.elapsed().as_secs(),
            mode: serde_json::to_value(state.config.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            policy_dir: state
                .config
                .policy_dir
                .as_ref()
                .map(|p| p.display().to_string()),
            kube: state.kube.as_deref().map(KubeDoc::from_health),
            bpffs_root: state.config.bpffs_root.display().to_string(),
            attachments: state
                .attachments
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default()
                .iter()
                .map(|a| AttachmentDoc {
                    interface: a.interface.clone(),
                    hook: a.hook.into(),
                    program: a.program.into(),
                    program_id: a.program_id,
                    method: a.method.into(),
                })
                .collect(),
            counters,
            policy: Some(state.policy_status()),
            node: state.config.node_name.clone(),
            maps: map_fill(state),
            endpoints: state
                .generation()
                .map(|g| {
                    g.compiled
                        .endpoints
                        .iter()
                        .map(|e| EndpointDoc {
                            pod: e.pod.clone(),
                            ifindex: e.ifindex,
                            identity: e.identity,
                            isolated_ingress: e.isolated_ingress,
                            isolated_egress: e.isolated_egress,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            mesh: state.mesh.as_ref().map(|m| {
                let workloads = m.certs.workloads_time_left();
                MeshDoc {
                    node_name: m.settings.node_name.clone(),
                    proxy_port: m.settings.proxy_port,
                    tunnel_port: m.settings.tunnel_port,
                    ca_dir: m.settings.ca_dir.display().to_string(),
                    mtls_routes: m.tables.current.get().destinations(),
                    ca_url: m.settings.ca_service.as_ref().map(|c| c.url.clone()),
                    node_certificate_seconds_left: m.certs.node_time_left().as_secs(),
                    workload_certificates: workloads.0,
                    workload_certificate_seconds_left: workloads.1.map(|left| left.as_secs()),
                    certificate_failures: m
                        .certs
                        .ca_failures
                        .load(std::sync::atomic::Ordering::Relaxed),
                }
            }),
            flow_log: FlowLogDoc {
                kernel_records: state.flows.records(Observer::Kernel),
                proxy_records: state.flows.records(Observer::Proxy),
                lost: state.flows.lost(),
                file: state
                    .config
                    .flow_log
                    .as_ref()
                    .map(|f| f.path.display().to_string()),
            },
        }
    }

    /// The human-readable form printed by `rampart status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rampart {}  ready: {}  up: {}s  mode: {}",
            self.version,
            if self.ready { "yes" } else { "no" },
            self.uptime_seconds,
            self.mode
        );
        let _ = writeln!(
            out,
            "policy dir: {}",
            self.policy_dir.as_deref().unwrap_or("(none)")
        );
        if let Some(k) = &self.kube {
            let last = k
                .kinds
                .iter()
                .filter_map(|c| c.last_event_age_seconds)
                .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.min(a))));
            let _ = writeln!(
                out,
                "source: Kubernetes API {}  synced: {}  last event: {}  relists: {}  watch errors: {}",
                k.server,
                if k.synced { "yes" } else { "no" },
                last.map_or("none".to_owned(), |a| format!("{a:.0}s ago")),
                k.kinds.iter().map(|c| c.relists).sum::<u64>(),
                k.kinds.iter().map(|c| c.errors).sum::<u64>(),
            );
            for (document, errors) in &k.rejected {
                let _ = writeln!(
                    out,
                    "  rejected {document} (its last good version, if any, in force):"
                );
                for e in errors {
                    let _ = writeln!(out, "    {e}");
                }
            }
            for c in k
                .kinds
                .iter()
                .filter(|c| !c.synced || c.last_error.is_some())
            {
                let _ = writeln!(
                    out,
                    "  {}: {}{}",
                    c.kind,
                    if c.synced { "synced" } else { "not synced" },
                    c.last_error
                        .as_deref()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
        let _ = writeln!(out, "node: {}  bpffs root: {}", self.node, self.bpffs_root);
        if let Some(m) = &self.mesh {
            let _ = writeln!(
                out,
                "mTLS proxy: listener :{}  tunnel :{}  CA {}  mTLS routes {}",
                m.proxy_port, m.tunnel_port, m.ca_dir, m.mtls_routes
            );
            let _ = writeln!(
                out,
                "certificates: from {}  node certificate valid {} s more  CA failures {}",
                m.ca_url
                    .as_deref()
                    .unwrap_or("this node's key (--ca-dir; development only)"),
                m.node_certificate_seconds_left,
                m.certificate_failures
            );
            if let Some(left) = m.workload_certificate_seconds_left {
                let _ = writeln!(
                    out,
                    "workload certificates: {}  the first expires in {left} s",
                    m.workload_certificates
                );
            }
        }
        let _ = writeln!(
            out,
            "flow log: {} kernel + {} proxy records, {} lost by readers{}",
            self.flow_log.kernel_records,
            self.flow_log.proxy_records,
            self.flow_log.lost,
            self.flow_log
                .file
                .as_deref()
                .map(|f| format!("  file {f}"))
                .unwrap_or_default()
        );
        if let Some(p) = &self.policy {
            let _ = writeln!(
                out,
                "policy: generation {}  identities {}  endpoints {}  rules {}  map entries {}  errors {}",
                p.generation, p.identities, p.endpoints, p.rules, p.map_entries, p.errors_total
            );
            for s in &p.sources {
                let _ = writeln!(out, "  source {}  sha256 {}", s.file, s.sha256);
            }
            if let Some(e) = &p.last_error {
                let _ = writeln!(out, "  last error: {e}");
            }
        }
        let _ = writeln!(out, "\nattachments:");
        let _ = writeln!(
            out,
            "  {:<16} {:<11} {:<14} {:>6}  METHOD",
            "INTERFACE", "HOOK", "PROGRAM", "ID"
        );
        for a in &self.attachments {
            let _ = writeln!(
                out,
                "  {:<16} {:<11} {:<14} {:>6}  {}",
                a.interface, a.hook, a.program, a.program_id, a.method
            );
        }
        if !self.endpoints.is_empty() {
            let _ = writeln!(out, "\nendpoints:");
            let _ = writeln!(
                out,
                "  {:<32} {:>7} {:>9}  ISOLATED",
                "POD", "IFINDEX", "IDENTITY"
            );
            for e in &self.endpoints {
                let isolated = match (e.isolated_ingress, e.isolated_egress) {
                    (true, true) => "ingress+egress",
                    (true, false) => "ingress",
                    (false, true) => "egress",
                    (false, false) => "-",
                };
                let _ = writeln!(
                    out,
                    "  {:<32} {:>7} {:>9}  {isolated}",
                    e.pod, e.ifindex, e.identity
                );
            }
        }
        if !self.maps.is_empty() {
            let _ = writeln!(out, "\nmaps:");
            let _ = writeln!(
                out,
                "  {:<11} {:>9} {:>9} {:>6}",
                "MAP", "ENTRIES", "CAPACITY", "FILL"
            );
            for m in &self.maps {
                let _ = writeln!(
                    out,
                    "  {:<11} {:>9} {:>9} {:>5.1}%",
                    m.map,
                    m.entries,
                    m.capacity,
                    m.fill_ratio * 100.0
                );
            }
        }
        let _ = writeln!(out, "\ncounters (all interfaces, all CPUs):");
        let _ = writeln!(out, "  {:<11} {:>12} {:>14}", "HOOK", "PACKETS", "BYTES");
        for c in &self.counters {
            let _ = writeln!(out, "  {:<11} {:>12} {:>14}", c.hook, c.packets, c.bytes);
        }
        out
    }
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let body = runtime.block_on(fetch(&args.admin_socket))?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let doc: StatusDoc = serde_json::from_str(&body).with_context(|| {
        format!(
            "the agent at {} sent a status document this client cannot read",
            args.admin_socket.display()
        )
    })?;
    print!("{}", doc.render());
    Ok(())
}

async fn fetch(socket: &std::path::Path) -> anyhow::Result<String> {
    let (status, body) =
        crate::admin_client::request(socket, hyper::Method::GET, "/status", None).await?;
    if !status.is_success() {
        bail!("the agent answered /status with {status}");
    }
    String::from_utf8(body.to_vec()).context("/status is not UTF-8")
}
