//! The composition root of `rampart run`: loads and attaches the datapath, starts the admin
//! server, reports readiness, and shuts everything down on SIGTERM or SIGINT.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Mode;
use crate::config::RunConfig;
use crate::controller::{Controller, ControllerConfig, DirectorySource, KernelNode, PolicySource};
use crate::datapath::Datapath;
use crate::flows::FlowHub;
use crate::flows::event::ProxyEventSink;
use crate::flows::file_log::FlowLogWriter;
use crate::generation::Publisher;
use crate::kernel_state::PolicyState;
use crate::mesh::runtime::MeshRuntime;
use crate::sources::kube::KubeSource;
use crate::state::{AgentState, ControllerCommand, Rejections, Settle};
use crate::{admin, metrics};

/// The runtime's worker threads (the agent's work is mostly in the kernel and on the
/// controller's thread).
const WORKER_THREADS: usize = 2;

pub fn run(config: RunConfig) -> anyhow::Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting rampart agent");
    // Before any thread starts: the proxy's connection cap is sized from this limit.
    let fd_limit = crate::listen::raise_fd_limit().context("raising the open-files limit")?;
    tracing::info!(fd_limit, "open-files limit");
    crate::allocator::limit_arenas(2 * WORKER_THREADS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run_async(config, fd_limit))
}

async fn run_async(config: RunConfig, fd_limit: u64) -> anyhow::Result<()> {
    // Install the handlers first: a SIGTERM during loading must still stop us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Every interface must exist before anything is attached: a bad flag leaves nothing behind.
    for interface in &config.interfaces {
        if !interface_exists(interface) {
            anyhow::bail!("--interface {interface}: no such interface in this network namespace");
        }
    }
    // The mesh's CA and certificates load before anything is attached: a bad --ca-dir leaves
    // nothing behind.
    // Every reader borrows the policy generations the controller publishes.
    let (publisher, generations) = Publisher::new();
    let flows = Arc::new(FlowHub::new(&config.node_name, generations.names()));
    let mesh = match &config.mesh {
        Some(settings) => {
            let hub = Arc::clone(&flows);
            let sink: ProxyEventSink = Arc::new(move |e| hub.publish_proxy(e));
            Some(
                MeshRuntime::new(
                    settings.clone(),
                    &config.trust_domain,
                    generations.tables(),
                    Some(sink),
                )
                .await
                .context("starting the mTLS proxy")?,
            )
        }
        None => None,
    };
    let flow_log = match &config.flow_log {
        Some(settings) => Some(
            FlowLogWriter::open(settings.clone())
                .with_context(|| format!("--flow-log {}", settings.path.display()))?,
        ),
        None => None,
    };
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
        datapath.attach(interface, Some(config.xdp_mode))?;
        tracing::info!(%interface, "attached XDP and TC programs (pinned under --bpffs-root)");
    }
    let stats = datapath.take_stats()?;
    let events = Mutex::new(datapath.take_events()?);
    let (commands, receiver) = std::sync::mpsc::channel();
    // The Kubernetes source starts watching now; nothing goes into force before its first
    // complete list of every kind (the controller waits for it).
    let kube = match &config.kube {
        Some(connection) => {
            let changed = commands.clone();
            let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                let _ = changed.send(ControllerCommand::SourceChanged(Settle::Now));
            });
            Some(
                KubeSource::start(
                    connection,
                    &config.node_name,
                    &config.kube_lease_namespace,
                    notify,
                )
                .await
                .context("connecting to the Kubernetes API")?,
            )
        }
        None => None,
    };
    let state = Arc::new(AgentState {
        kube: kube.as_ref().map(KubeSource::health),
        attachments: Arc::new(Mutex::new(datapath.attachments().to_vec())),
        config,
        started: Instant::now(),
        stats,
        events,
        events_read: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        generations,
        rejections: Arc::new(Mutex::new(Rejections::default())),
        commands: commands.clone(),
        mesh,
        flows,
    });
    if let Some(writer) = flow_log {
        writer
            .start(&state.flows)
            .context("starting the flow log writer")?;
    }
    if let Some(mesh) = &state.mesh {
        mesh.start(crate::listen::ConnectionCap::for_proxy(fd_limit))
            .await?;
    }

    let metrics = Arc::new(metrics::Metrics::new(Arc::clone(&state)));
    let listener = tokio::net::TcpListener::bind(state.config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", state.config.metrics_addr))?;
    let admin_socket = admin::bind_admin_socket(&state.config.admin_socket)
        .with_context(|| format!("--admin-socket {}", state.config.admin_socket.display()))?;
    // Neither server ever returns: a listener's failure is retried, never the end of the agent.
    tokio::spawn(admin::serve_metrics(
        listener,
        Arc::clone(&state),
        Arc::clone(&metrics),
    ));
    tokio::spawn(admin::serve_admin(
        admin_socket,
        Arc::clone(&state),
        metrics,
    ));
    tokio::spawn(drain_events(Arc::clone(&state)));

    // The first policy set, then the watcher and the controller thread. A first set with errors
    // leaves the agent running and unready until a good one arrives.
    let config = ControllerConfig {
        trust_domain: state.config.trust_domain.clone(),
        audit: state.config.mode == Mode::Audit,
        attached: state.config.interfaces.clone(),
        sources: {
            let mut sources: Vec<Box<dyn PolicySource>> = vec![Box::new(DirectorySource {
                dir: state.config.policy_dir.clone(),
            })];
            sources.extend(kube.map(|k| Box::new(k) as Box<dyn PolicySource>));
            sources
        },
        proxy: state.mesh.as_ref().map(|mesh| mesh.table_builder()),
    };
    let mut controller = Controller::new(
        KernelNode { datapath },
        config,
        publisher,
        Arc::clone(&state.rejections),
        Arc::clone(&state.attachments),
    );
    let _watcher = match &state.config.policy_dir {
        Some(dir) => Some(watch(dir, commands.clone())?),
        None => None,
    };
    match controller.start() {
        Ok(generation) => {
            tracing::info!(generation, addr = %state.config.metrics_addr, admin_socket = %state.config.admin_socket.display(), "ready: serving /metrics, /readyz; the admin API on its socket");
        }
        Err(errors) if errors.iter().any(|e| e == crate::controller::WAITING) => {
            tracing::info!(
                "waiting for the Kubernetes API's first complete list: not ready until then"
            );
        }
        Err(_) => tracing::error!("the first policy set was rejected: not ready until it is fixed"),
    }
    let controller_thread = std::thread::Builder::new()
        .name("rampart-policy".into())
        .spawn(move || controller.run(receiver))
        .context("starting the policy thread")?;

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    state.stopping.store(true, Ordering::SeqCst);
    let _ = commands.send(ControllerCommand::Shutdown);
    if controller_thread.join().is_err() {
        tracing::error!("the policy thread panicked");
    }
    // The pinned links keep the programs attached and enforcing the last state after we exit:
    // a restart has no gap. `rampart cleanup` detaches them.
    let _ = std::fs::remove_file(&state.config.admin_socket);
    tracing::info!("stopped; programs stay attached (pinned); `rampart cleanup` removes them");
    Ok(())
}

/// Watches the policy directory; every change becomes a `SourceChanged` command.
fn watch(
    dir: &std::path::Path,
    commands: Sender<ControllerCommand>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = commands.send(ControllerCommand::SourceChanged(Settle::Wait));
            }
            Err(e) => tracing::warn!("watching the policy directory: {e}"),
        })
        .context("starting the policy directory watcher")?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching --policy-dir {}", dir.display()))?;
    Ok(watcher)
}

/// Reads the kernel's flow events every 100 ms into the flow hub (which never waits for its
/// readers), so the ring is always emptied.
async fn drain_events(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let events = match state.events.lock() {
            Ok(mut reader) => reader.drain(16 * 1024),
            Err(_) => return,
        };
        state.flows.publish_kernel(&events);
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
