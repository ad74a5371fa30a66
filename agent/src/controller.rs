//! Keeps the kernel in step with policy: reads the policy directory (and pushed objects),
//! validates, compiles, and installs the result atomically; attaches the programs to the
//! interfaces of local pods as they appear. One thread owns the datapath; everything that wants a
//! change sends it a [`ControllerCommand`].
//!
//! A set with any error changes nothing: the last good state stays in force, the errors are
//! logged with file and line, counted, and kept as `last_error`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::config::{Mode, RunConfig};
use crate::datapath::Datapath;
use crate::mesh::table::MeshTable;
use crate::pod_interfaces::{self, PodInterface};
use crate::policy::diag::Diagnostic;
use crate::policy::identity::Allocator;
use crate::policy::source::{self, Read};
use crate::policy::{self, compile};
use crate::state::{AgentState, ControllerCommand, PushChange, SourceDoc};

/// How often the node's routes are read again (a new pod's interface is found within this).
const RESCAN: Duration = Duration::from_secs(1);
/// Events closer together than this are one change (an editor writes a file in several steps).
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Controller {
    datapath: Datapath,
    config: RunConfig,
    state: Arc<AgentState>,
    alloc: Allocator,
    /// Pushed files, by name; they override directory objects of the same kind and name.
    pushed: BTreeMap<String, String>,
    /// The host routes the state in force was compiled with.
    routes: BTreeMap<IpAddr, PodInterface>,
    attached: HashSet<String>,
}

impl Controller {
    pub fn new(datapath: Datapath, config: RunConfig, state: Arc<AgentState>) -> Controller {
        let attached = config.interfaces.iter().cloned().collect();
        Controller {
            datapath,
            config,
            state,
            alloc: Allocator::new(),
            pushed: BTreeMap::new(),
            routes: BTreeMap::new(),
            attached,
        }
    }

    /// Installs the first policy set. On error the agent does not become ready (and the
    /// previous, pinned state, if any, stays in force).
    pub fn start(&mut self) -> Result<u64, Vec<String>> {
        self.reload(None, None)
    }

    /// Serves commands until `Shutdown` or until every sender is gone.
    pub fn run(mut self, commands: Receiver<ControllerCommand>) {
        loop {
            let first = match commands.recv_timeout(RESCAN) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.rescan();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            if matches!(batch[0], ControllerCommand::FilesChanged) {
                // Let the writer finish, then take every queued change at once.
                std::thread::sleep(DEBOUNCE);
                batch.extend(commands.try_iter());
            }
            if batch
                .iter()
                .any(|c| matches!(c, ControllerCommand::FilesChanged))
            {
                let _ = self.reload(None, None);
            }
            for command in batch {
                match command {
                    ControllerCommand::FilesChanged => {}
                    ControllerCommand::Push { change, reply } => {
                        let _ = reply.send(self.reload(Some(&change), None));
                    }
                    ControllerCommand::Shutdown => return,
                }
            }
        }
    }

    /// Recompiles when the node's routes to pods changed (a pod's interface came or went).
    fn rescan(&mut self) {
        match pod_interfaces::read() {
            Ok(routes) if routes != self.routes => {
                tracing::info!("routes to local pods changed: recompiling");
                let _ = self.reload(None, Some(routes));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the node's routes: {e}"),
        }
    }

    /// Reads, validates, compiles and installs the whole set (with `push` added to the pushed
    /// files if it is accepted), for `routes` (read now if not given). Returns the new
    /// generation, or every error.
    fn reload(
        &mut self,
        push: Option<&PushChange>,
        routes: Option<BTreeMap<IpAddr, PodInterface>>,
    ) -> Result<u64, Vec<String>> {
        let result = self.reload_set(push, routes);
        // A large set is parsed on every core and its intermediate forms freed; glibc keeps the
        // freed pages in per-thread arenas, so without this the agent's resident memory grew
        // with each reload of a 100k-rule set (165 → 430 MiB over six reloads).
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        result
    }

    fn reload_set(
        &mut self,
        push: Option<&PushChange>,
        routes: Option<BTreeMap<IpAddr, PodInterface>>,
    ) -> Result<u64, Vec<String>> {
        let pushed = match push.map(|change| change.apply(&self.pushed)) {
            None => self.pushed.clone(),
            Some(Ok(next)) => next,
            Some(Err(message)) => return Err(self.reject_message(message)),
        };
        let (read, sources) = read_all(self.config.policy_dir.as_deref(), &pushed);
        let checked = match policy::check(read) {
            Ok(c) => c,
            Err(diags) => return Err(self.reject(&diags)),
        };
        for w in &checked.warnings {
            tracing::warn!("{w}");
        }
        let routes = match routes.map_or_else(pod_interfaces::read, Ok) {
            Ok(r) => r,
            Err(e) => return Err(self.reject_message(format!("reading the node's routes: {e}"))),
        };
        let local: BTreeMap<IpAddr, u32> = routes.iter().map(|(a, t)| (*a, t.ifindex)).collect();
        let node = compile::Node {
            local: &local,
            trust_domain: &self.config.trust_domain,
            audit: self.config.mode == Mode::Audit,
        };
        let mut compiled = compile::compile(&checked.model, node, &mut self.alloc);
        for w in &compiled.warnings {
            tracing::warn!("{w}");
        }
        // The WAF's rules load before anything changes: a set whose rules do not load is
        // rejected like any bad policy.
        if let Some(mesh) = &self.state.mesh
            && let Err(e) = mesh.wafs.prepare(&compiled)
        {
            self.alloc.abandon();
            return Err(self.reject_message(e));
        }
        // The proxy learns the new routes before the kernel redirects by them.
        let previous_table = self.state.mesh.as_ref().map(|mesh| {
            compiled.state.proxy_port = mesh.settings.proxy_port;
            let previous = mesh.table.read().map(|t| Arc::clone(&t)).ok();
            mesh.set_table(MeshTable::from_compiled(
                &compiled,
                &mesh.jwks,
                previous.as_deref(),
                Some(&mesh.wafs),
            ));
            previous
        });
        if let Err(e) = self.datapath.apply(&compiled.state) {
            self.alloc.abandon();
            if let (Some(mesh), Some(Some(previous))) = (&self.state.mesh, previous_table)
                && let Ok(mut t) = mesh.table.write()
            {
                *t = previous;
            }
            return Err(self.reject_message(format!("installing the compiled policy: {e}")));
        }
        self.alloc.finish();
        self.pushed = pushed;
        // Programs on the interfaces of local pods that have none yet.
        let wanted: BTreeSet<&str> = compiled
            .endpoints
            .iter()
            .filter_map(|e| {
                routes
                    .values()
                    .find(|t| t.ifindex == e.ifindex)
                    .map(|t| t.interface.as_str())
            })
            .collect();
        for interface in wanted {
            if self.attached.contains(interface) {
                continue;
            }
            // Pods' veths take TC only (see `Datapath::attach`); XDP goes on --interface uplinks.
            match self.datapath.attach(interface, None) {
                Ok(()) => {
                    tracing::info!(%interface, "attached to a local pod's interface");
                    self.attached.insert(interface.to_owned());
                }
                Err(e) => tracing::error!(%interface, "attaching: {e:#}"),
            }
        }
        self.routes = routes;
        let (endpoints, rules) = (compiled.endpoints.len(), compiled.rule_count);
        let generation = {
            let mut status = lock(&self.state.policy);
            status.generation += 1;
            status.sources = sources;
            status.identities = compiled.identities.len();
            status.endpoints = compiled.endpoints.len();
            status.rules = compiled.rule_count;
            status.map_entries = compiled.state.policy.len();
            let v4 = compiled
                .state
                .ipcache
                .iter()
                .filter(|r| r.addr.is_ipv4())
                .count();
            status.ipcache4_entries = v4;
            status.ipcache6_entries = compiled.state.ipcache.len() - v4;
            status.mesh_entries = compiled.state.mesh.len();
            status.pushed_files = self.pushed.len();
            status.pushed_bytes = self.pushed.values().map(String::len).sum();
            status.generation
        };
        *lock(&self.state.attachments) = self.datapath.attachments().to_vec();
        // Flow records and `policy explain` use the names of the set now in force.
        self.state
            .flows
            .set_names(crate::flows::FlowNames::from_compiled(&compiled));
        if let Ok(mut c) = self.state.compiled.write() {
            *c = Some(Arc::new(compiled));
        }
        self.state.ready.store(true, Ordering::SeqCst);
        tracing::info!(generation, endpoints, rules, "policy in force");
        Ok(generation)
    }

    fn reject(&self, diags: &[Diagnostic]) -> Vec<String> {
        let lines: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        for line in &lines {
            tracing::error!("policy rejected: {line}");
        }
        self.count_error(lines.first().cloned());
        lines
    }

    fn reject_message(&self, message: String) -> Vec<String> {
        tracing::error!("policy rejected: {message}");
        self.count_error(Some(message.clone()));
        vec![message]
    }

    fn count_error(&self, first: Option<String>) {
        let mut status = lock(&self.state.policy);
        status.errors_total += 1;
        status.last_error = first;
    }
}

/// Reads the directory and the pushed files; pushed objects replace directory objects of the
/// same kind, namespace and name.
fn read_all(dir: Option<&Path>, pushed: &BTreeMap<String, String>) -> (Read, Vec<SourceDoc>) {
    let mut read = match dir {
        Some(dir) => source::read_dir(dir),
        None => Read::default(),
    };
    let mut sources: Vec<SourceDoc> = read
        .files
        .iter()
        .map(|(file, sha256)| SourceDoc {
            file: file.display().to_string(),
            sha256: sha256.clone(),
        })
        .collect();
    let mut overlay = Read::default();
    for (name, text) in pushed {
        let file = PathBuf::from(format!("push:{name}"));
        let r = source::parse_str(&file, text);
        sources.push(SourceDoc {
            file: file.display().to_string(),
            sha256: source::sha256_hex(text.as_bytes()),
        });
        overlay.objects.extend(r.objects);
        overlay.diagnostics.extend(r.diagnostics);
    }
    let replaced: HashSet<_> = overlay
        .objects
        .iter()
        .map(source::SourceObject::key)
        .collect();
    read.objects.retain(|o| !replaced.contains(&o.key()));
    read.objects.extend(overlay.objects);
    read.diagnostics.extend(overlay.diagnostics);
    (read, sources)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
