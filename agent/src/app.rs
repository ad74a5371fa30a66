//! The composition root of `rampart run`: loads and attaches the datapath, starts the admin
//! server, reports readiness, and shuts everything down on SIGTERM or SIGINT.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Mode;
use crate::config::RunConfig;
use crate::datapath::{Attachment, Datapath, EventReader, PolicyState, Stats};
use crate::{admin, metrics};

/// What the admin server and the metrics collector read of the running agent.
pub struct AgentState {
    pub config: RunConfig,
    pub started: Instant,
    pub attachments: Vec<Attachment>,
    pub stats: Stats,
    /// The kernel's flow events; drained by a task so the ring never fills.
    pub events: Mutex<EventReader>,
    /// Events read from the ring so far.
    pub events_read: AtomicU64,
    /// True once every program is attached (and, later, the current policy is in the kernel).
    pub ready: AtomicBool,
}

pub fn run(config: RunConfig) -> anyhow::Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting rampart agent");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: RunConfig) -> anyhow::Result<()> {
    // Install the handlers first: a SIGTERM during loading must still stop us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    if let Some(dir) = &config.policy_dir {
        // The policy compiler is the next stage of the roadmap; until then nothing is enforced.
        tracing::warn!(dir = %dir.display(), "policy files are not read yet: every packet is counted and passed");
    }
    // Every interface must exist before anything is attached: a bad flag leaves nothing behind.
    for interface in &config.interfaces {
        if !interface_exists(interface) {
            anyhow::bail!("--interface {interface}: no such interface in this network namespace");
        }
    }
    let mut datapath =
        Datapath::load_pinned(&config.bpffs_root).context("loading the kernel programs")?;
    if datapath.revision() == 0 {
        // Fresh maps: no endpoints yet (every interface unmanaged), the agent-wide mode set.
        let initial = PolicyState {
            audit: config.mode == Mode::Audit,
            ..PolicyState::default()
        };
        datapath
            .apply(&initial)
            .context("installing the initial datapath state")?;
    } else {
        // A previous agent's state is pinned and enforcing; keep it until policy replaces it.
        tracing::info!(
            revision = datapath.revision(),
            "kept the pinned datapath state"
        );
    }
    for interface in &config.interfaces {
        datapath.attach(interface, config.xdp_mode)?;
        tracing::info!(%interface, "attached XDP and TC programs (pinned under --bpffs-root)");
    }
    let stats = datapath.take_stats()?;
    let events = Mutex::new(datapath.take_events()?);
    let state = Arc::new(AgentState {
        attachments: datapath.attachments().to_vec(),
        config,
        started: Instant::now(),
        stats,
        events,
        events_read: AtomicU64::new(0),
        ready: AtomicBool::new(false),
    });

    let metrics = Arc::new(metrics::Metrics::new(Arc::clone(&state)));
    let listener = tokio::net::TcpListener::bind(state.config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", state.config.metrics_addr))?;
    let server = tokio::spawn(admin::serve(listener, Arc::clone(&state), metrics));
    tokio::spawn(drain_events(Arc::clone(&state)));

    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(addr = %state.config.metrics_addr, "ready: serving /metrics, /readyz, /status");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        res = server => {
            res.context("admin server task")?.context("admin server")?;
        }
    }
    state.ready.store(false, Ordering::SeqCst);
    // The pinned links keep the programs attached and enforcing the last state after we exit:
    // a restart has no gap. `rampart cleanup` detaches them.
    drop(datapath);
    tracing::info!("stopped; programs stay attached (pinned); `rampart cleanup` removes them");
    Ok(())
}

/// Reads the kernel's flow events every 100 ms. Until the flow log exists they are counted and
/// logged at debug level; what matters here is that the ring is emptied.
async fn drain_events(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let events = match state.events.lock() {
            Ok(mut reader) => reader.drain(16 * 1024),
            Err(_) => return,
        };
        for e in &events {
            tracing::debug!(
                verdict = e.verdict,
                reason = e.reason,
                cookie = e.cookie,
                dport = e.dport,
                "flow event"
            );
        }
        state
            .events_read
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}
