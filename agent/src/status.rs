//! `rampart status`: the agent's status document (served at `/status`) and the client that
//! fetches and prints it.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::app::AgentState;
use crate::cli::StatusArgs;

/// The status document. Field names are part of the `--json` interface: add, never rename.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusDoc {
    pub version: String,
    pub ready: bool,
    pub uptime_seconds: u64,
    pub mode: String,
    pub policy_dir: Option<String>,
    pub bpffs_root: String,
    pub attachments: Vec<AttachmentDoc>,
    pub counters: Vec<HookCounterDoc>,
    /// The policy set in force (absent from agents older than the policy compiler).
    #[serde(default)]
    pub policy: Option<crate::controller::PolicyStatus>,
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
            ready: state.ready.load(Ordering::SeqCst),
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
            policy: state.policy.lock().ok().map(|p| p.clone()),
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
        let _ = writeln!(out, "bpffs root: {}", self.bpffs_root);
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
    let body = runtime.block_on(fetch(args.metrics_addr))?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let doc: StatusDoc = serde_json::from_str(&body).with_context(|| {
        format!(
            "the agent at {} sent a status document this client cannot read",
            args.metrics_addr
        )
    })?;
    print!("{}", doc.render());
    Ok(())
}

async fn fetch(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let (status, body) =
        crate::admin_client::request(addr, hyper::Method::GET, "/status", None).await?;
    if !status.is_success() {
        bail!("the agent answered /status with {status}");
    }
    String::from_utf8(body.to_vec()).context("/status is not UTF-8")
}
