//! The composition root of `rampart run`: loads and attaches the datapath, starts the admin
//! server, reports readiness, and shuts everything down on SIGTERM or SIGINT.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use std::os::fd::AsFd as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Mode;
use crate::config::RunConfig;
use crate::controller::{Controller, ControllerConfig, DirectorySource, KernelNode, PolicySource};
use crate::datapath::Datapath;
use crate::flows::FlowHub;
use crate::flows::event::ProxyEventSink;
use crate::flows::file_log::FlowLogWriter;
use crate::generation::Publisher;
use crate::handover::messages::{Hello, Offer, listener};
use crate::handover::{self, Sockets};
use crate::kernel_state::PolicyState;
use crate::listen::Gate;
use crate::mesh::carried_certs::CarriedCerts;
use crate::mesh::runtime::MeshRuntime;
use crate::sources::kube::KubeSource;
use crate::state::{AgentState, ControllerCommand, Rejections, RestartStats, Settle};
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
    let begun = Instant::now();
    // Install the handlers first: a SIGTERM during loading must still stop us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Every interface must exist before anything is attached: a bad flag leaves nothing behind.
    for interface in &config.interfaces {
        if !interface_exists(interface) {
            anyhow::bail!("--interface {interface}: no such interface in this network namespace");
        }
    }
    // A running agent of this node hands its listening sockets over (see `handover`); from
    // here it writes nothing to the kernel until this one is in force or gives up.
    let sockets = Arc::new(Sockets::default());
    let me = Hello {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        node_name: config.node_name.clone(),
        bpffs_root: config.bpffs_root.display().to_string(),
    };
    let mut takeover = handover::find_predecessor(&config.handover.socket, me.clone(), &sockets)
        .await
        .context("--handover-socket")?;
    if let Some(t) = &takeover {
        tracing::info!(
            version = %t.offer.version,
            pid = t.offer.pid,
            listeners = ?t.offer.listeners,
            pushed_files = t.offer.pushed.len(),
            "taking over from the running agent"
        );
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
            let carried = takeover
                .as_ref()
                .filter(|t| !t.offer.certificates.is_null())
                .and_then(|t| {
                    serde_json::from_value::<CarriedCerts>(t.offer.certificates.clone())
                        .map_err(|e| {
                            tracing::warn!(
                                "the previous agent's certificates are not readable here: {e}"
                            )
                        })
                        .ok()
                });
            Some(
                MeshRuntime::new(
                    settings.clone(),
                    &config.trust_domain,
                    generations.tables(),
                    Some(sink),
                    carried.as_ref(),
                    fd_limit,
                )
                .await
                .context("starting the mTLS proxy")?,
            )
        }
        None => None,
    };
    if let (Some(mesh), Some(t)) = (&mesh, &takeover)
        && !t.offer.jwks.is_null()
    {
        match serde_json::from_value::<Vec<crate::l7::jwks::CarriedJwks>>(t.offer.jwks.clone()) {
            Ok(sets) => mesh.jwks.seed(&sets),
            Err(e) => tracing::warn!("the previous agent's JWKS are not readable here: {e}"),
        }
    }
    let flow_log = match &config.flow_log {
        Some(settings) => Some(
            FlowLogWriter::open(settings.clone())
                .with_context(|| format!("--flow-log {}", settings.path.display()))?,
        ),
        None => None,
    };
    if let Some(t) = &mut takeover {
        t.taking_kernel()
            .await
            .context("the running agent went away during the handover")?;
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
        datapath.attach(interface, Some(config.xdp_mode))?;
        tracing::info!(%interface, "attached XDP and TC programs (pinned under --bpffs-root)");
    }
    let stats = datapath.take_stats()?;
    let events = Mutex::new(datapath.take_events()?);
    let (kernel_log, kernel_log_reader) = datapath
        .take_kernel_log(config.kernel_log_level)
        .context("the kernel programs' log")?;
    tokio::spawn(read_kernel_log(kernel_log_reader));
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
        kernel_log,
        events,
        events_read: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        handing_over: AtomicBool::new(false),
        restart: RestartStats {
            conntrack_carried: AtomicU64::new(datapath.carried_flows()),
            ..RestartStats::default()
        },
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
        let cap = crate::listen::ConnectionCap::for_proxy(&mesh.guards.limits, fd_limit);
        mesh.start(cap, &sockets).await?;
    }

    let metrics = Arc::new(metrics::Metrics::new(Arc::clone(&state)));
    let addr = state.config.metrics_addr;
    let listener = match sockets.inherit_tcp(listener::METRICS, addr) {
        Some(listener) => tokio::net::TcpListener::from_std(listener)
            .context("the metrics listener handed over")?,
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-addr {addr}"))?,
    };
    let admin_path = &state.config.admin_socket;
    let admin_socket = match sockets.inherit_unix(listener::ADMIN, admin_path) {
        Some(listener) => {
            tokio::net::UnixListener::from_std(listener).context("the admin socket handed over")?
        }
        None => admin::bind_admin_socket(admin_path)
            .with_context(|| format!("--admin-socket {}", admin_path.display()))?,
    };
    sockets
        .offer(listener::METRICS, listener.as_fd())
        .and_then(|()| sockets.offer(listener::ADMIN, admin_socket.as_fd()))
        .context("keeping the listeners for a successor")?;
    for unused in sockets.close_unused() {
        tracing::info!(listener = %unused, "a listener the previous agent handed over is not used here: closed");
    }
    // The metrics address and the admin socket serve at once (a predecessor serves them too
    // until this agent is in force); the proxy accepts once a generation is in force.
    let control = Gate::open_now();
    // Neither server ever returns: a listener's failure is retried, never the end of the agent.
    tokio::spawn(admin::serve_metrics(
        listener,
        Arc::clone(&state),
        Arc::clone(&metrics),
        control.clone(),
    ));
    tokio::spawn(admin::serve_admin(
        admin_socket,
        Arc::clone(&state),
        metrics,
        control.clone(),
    ));
    tokio::spawn(drain_events(Arc::clone(&state)));
    tokio::spawn(sweep_conntrack(Arc::clone(&state)));

    // The first policy set, then the watcher and the controller thread. A first set with errors
    // leaves the agent running and unready until a good one arrives.
    let config = ControllerConfig {
        trust_domain: state.config.trust_domain.clone(),
        audit: state.config.mode == Mode::Audit,
        attached: state.config.interfaces.clone(),
        sources: {
            let mut sources: Vec<Box<dyn PolicySource>> = vec![Box::new(DirectorySource::new(
                state.config.policy_dir.clone(),
            ))];
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
    if let Some(t) = &takeover {
        controller.carry_pushed(t.offer.pushed.clone());
    }
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

    // Once a generation is in force: the proxy accepts, the predecessor (if any) stops and
    // drains, and this agent serves handovers to its own successor.
    let (ended, mut end) = tokio::sync::watch::channel(None::<End>);
    let ended = Arc::new(ended);
    tokio::spawn(take_over(
        takeover,
        begun,
        me,
        Arc::clone(&sockets),
        Arc::new(HandingOver {
            state: Arc::clone(&state),
            control: control.clone(),
            ended: Arc::clone(&ended),
        }),
    ));

    let handover_ended = async {
        match end.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        _ = sigterm.recv() => End::Signal("SIGTERM"),
        _ = sigint.recv() => End::Signal("SIGINT"),
        Some(why) = handover_ended => why,
    };
    state.stopping.store(true, Ordering::SeqCst);
    if let End::Signal(signal) = why {
        tracing::info!("{signal}: shutting down");
    }
    if let End::KernelLost = why {
        // The successor loaded its programs and went away: what this agent knows of the kernel
        // is stale. The pinned state keeps enforcing; the next agent adopts it.
        let _ = commands.send(ControllerCommand::Shutdown);
        anyhow::bail!(
            "a new agent took over the kernel programs and went away before it was ready: \
             exiting (the pinned state stays in force; start an agent to adopt it)"
        );
    }
    // Stop accepting and let the open connections finish.
    if let Some(mesh) = &state.mesh {
        mesh.stop_accepting();
        let grace = state.config.handover.drain;
        let deadline = tokio::time::Instant::now() + grace;
        let open = mesh.open_connections();
        if open > 0 {
            tracing::info!(
                connections = open,
                grace_seconds = grace.as_secs(),
                "draining"
            );
        }
        while mesh.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let left = mesh.open_connections();
        if left > 0 {
            // The ones that held the drain, so the client that keeps them can be found.
            let oldest: Vec<String> = mesh
                .oldest_connections(8)
                .iter()
                .map(|c| {
                    let peer = c.peer.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
                    let age = c.opened.elapsed().as_secs();
                    format!("{} from {peer}, open {age}s", c.listener)
                })
                .collect();
            tracing::warn!(
                connections = left,
                ?oldest,
                "the drain's grace period ended: closing them"
            );
        } else if open > 0 {
            tracing::info!("drained");
        }
    }
    let handed_over = matches!(why, End::HandedOver);
    if handed_over && state.config.handover.wait_for_signal {
        tracing::info!("handed over and drained: waiting for SIGTERM");
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    control.stop();
    let _ = commands.send(ControllerCommand::Shutdown);
    if controller_thread.join().is_err() {
        tracing::error!("the policy thread panicked");
    }
    // The pinned links keep the programs attached and enforcing the last state after we exit:
    // a restart has no gap. `rampart cleanup` detaches them.
    if handed_over {
        // The sockets at these paths are the successor's now.
        tracing::info!("stopped after the handover; the new agent serves");
    } else {
        let _ = std::fs::remove_file(&state.config.admin_socket);
        let _ = std::fs::remove_file(&state.config.handover.socket);
        tracing::info!("stopped; programs stay attached (pinned); `rampart cleanup` removes them");
    }
    Ok(())
}

/// Why the agent stops.
#[derive(Debug, Clone)]
enum End {
    Signal(&'static str),
    /// A successor serves.
    HandedOver,
    /// A successor took the kernel and went away.
    KernelLost,
}

/// Waits for the first generation in force, opens the proxy, finishes a takeover, then serves
/// handovers.
async fn take_over(
    takeover: Option<handover::Takeover>,
    begun: Instant,
    me: Hello,
    sockets: Arc<Sockets>,
    handing: Arc<HandingOver>,
) {
    let state = &handing.state;
    state.generations.first_in_force().await;
    // Every link runs this build's programs now: maps of the previous layout can go.
    match Datapath::finish_migration(&state.config.bpffs_root) {
        Ok(carried) => {
            state
                .restart
                .conntrack_carried
                .fetch_add(carried, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("carrying the previous layout's maps: {e}"),
    }
    if let Some(mesh) = &state.mesh {
        mesh.gate.open();
    }
    if let Some(t) = takeover {
        match t.ready().await {
            Ok(connections) => {
                let took = begun.elapsed();
                state.restart.takeover_ms.store(
                    u64::try_from(took.as_millis()).unwrap_or(u64::MAX).max(1),
                    Ordering::Relaxed,
                );
                tracing::info!(
                    draining = connections,
                    takeover_ms = took.as_millis(),
                    "took over: the previous agent stopped accepting and drains"
                );
            }
            Err(e) => tracing::warn!("the previous agent did not confirm the handover: {e}"),
        }
    }
    let listener = match handover::bind(&state.config.handover.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}: no hot restart from this agent");
            return;
        }
    };
    handover::serve(listener, me, sockets, handing).await;
}

/// The old agent's side of a handover.
struct HandingOver {
    state: Arc<AgentState>,
    /// The metrics address's and the admin socket's gate.
    control: Gate,
    ended: Arc<tokio::sync::watch::Sender<Option<End>>>,
}

impl handover::Predecessor for HandingOver {
    async fn pause(&self) -> Result<Offer, String> {
        let (reply, paused) = tokio::sync::oneshot::channel();
        self.state
            .commands
            .send(ControllerCommand::Pause { reply })
            .map_err(|_| "the policy controller has stopped".to_owned())?;
        let pushed = tokio::time::timeout(std::time::Duration::from_secs(20), paused)
            .await
            .map_err(|_| "the policy controller did not pause within 20 s".to_owned())?
            .map_err(|_| "the policy controller has stopped".to_owned())?;
        self.state.handing_over.store(true, Ordering::SeqCst);
        let (jwks, certificates) = match &self.state.mesh {
            Some(mesh) => (
                serde_json::to_value(mesh.jwks.carried()).unwrap_or_default(),
                mesh.certs
                    .carried()
                    .ok()
                    .and_then(|c| serde_json::to_value(c).ok())
                    .unwrap_or_default(),
            ),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        Ok(Offer {
            pushed,
            jwks,
            certificates,
            ..Offer::default()
        })
    }

    fn resume(&self) {
        self.state
            .restart
            .handover_failures
            .fetch_add(1, Ordering::Relaxed);
        self.state.handing_over.store(false, Ordering::SeqCst);
        let _ = self.state.commands.send(ControllerCommand::Resume);
        tracing::warn!("the new agent went away before taking over: carrying on");
    }

    fn kernel_lost(&self) {
        self.state
            .restart
            .handover_failures
            .fetch_add(1, Ordering::Relaxed);
        self.ended.send_replace(Some(End::KernelLost));
    }

    fn handed_over(&self) -> u64 {
        self.control.stop();
        let open = match &self.state.mesh {
            Some(mesh) => mesh.stop_accepting(),
            None => 0,
        };
        self.ended.send_replace(Some(End::HandedOver));
        open as u64
    }
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

/// How often the conntrack table is swept (`datapath::conntrack_sweep`).
const CONNTRACK_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps the conntrack table for ever, off the executor (a full table takes a few hundred
/// milliseconds of map syscalls).
async fn sweep_conntrack(state: Arc<AgentState>) {
    let mut warned = false;
    loop {
        tokio::time::sleep(CONNTRACK_SWEEP_EVERY).await;
        let swept = {
            let state = Arc::clone(&state);
            tokio::task::spawn_blocking(move || state.stats.sweep_conntrack()).await
        };
        match swept {
            Ok(Ok(sweep)) => {
                warned = false;
                if sweep.pressure {
                    tracing::warn!(
                        entries = sweep.entries,
                        expired = sweep.expired,
                        unconfirmed = sweep.unconfirmed,
                        "conntrack nearly full: unconfirmed flows removed early; new flows drop as ct_full while it is full"
                    );
                } else if sweep.expired > 0 {
                    tracing::debug!(
                        entries = sweep.entries,
                        expired = sweep.expired,
                        "conntrack swept"
                    );
                }
            }
            Ok(Err(e)) if !warned => {
                tracing::warn!("conntrack sweep: {e}");
                warned = true;
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::warn!("conntrack sweep task: {e}"),
        }
    }
}

/// Reads the kernel's flow events every 100 ms into the flow hub (which never waits for its
/// readers), so the ring is always emptied.
async fn drain_events(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        if state.handing_over.load(Ordering::Relaxed) {
            // The successor reads the ring now (or will, once it resumes us).
            continue;
        }
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

/// Writes the kernel programs' log records every 250 ms (they are rare; the ring holds 128 KiB),
/// as `drain_events` reads the flow events.
async fn read_kernel_log(mut reader: crate::datapath::KernelLogReader) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tick.tick().await;
        reader.read();
    }
}
