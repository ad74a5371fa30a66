//! Keeps the kernel and the proxy in step with policy. The policy sources (the directory, the
//! pushed files, and any other [`PolicySource`]) are read, validated and compiled into one
//! [`PolicyGeneration`], which goes into force in three steps: its proxy table is staged, the
//! node takes its kernel state ([`Node::apply`], atomic), and the generation is published to
//! every reader. One thread owns the node; everything that wants a change sends it a
//! [`ControllerCommand`].
//!
//! A set with any error changes nothing: the last good generation stays in force (in the kernel
//! and for every reader), the errors are logged with file and line, counted, and kept as
//! `last_error`. A kernel that refuses the state only withdraws the staged table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::sources::{DirectorySource, PolicySource, PushedFiles, SourceRead, read_sources};

use crate::datapath::{Attachment, Datapath};
use crate::flows::FlowNames;
use crate::generation::{PolicyGeneration, PolicySummary, Publisher};
use crate::kernel_state::PolicyState;
use crate::mesh::table::{MeshTable, TableBuilder};
use crate::pod_interfaces::{self, PodInterface};
use crate::policy::diag::Diagnostic;
use crate::policy::model::ValidationMemo;
use crate::policy::{self, compile};
use crate::sources::Outcome;
use crate::state::{ControllerCommand, PushChange, Rejections, Settle};

/// Why nothing is installed yet with a source that has not listed everything.
pub const WAITING: &str =
    "waiting for every source's first complete view (the Kubernetes API's first list of each kind)";

/// How often the node's pod interfaces are read again (a new pod is found within this).
const RESCAN: Duration = Duration::from_secs(1);
/// Idle this long after a reload, the controller gives freed memory back (see `trim`).
const IDLE_TRIM: Duration = Duration::from_millis(200);
/// Events closer together than this are one change (an editor writes a file in several steps).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the controller changes on the node: the kernel's state and its attachments, and where
/// it learns the local pods' interfaces. The agent's is [`KernelNode`]; tests use their own.
pub trait Node {
    /// Puts `state` in force, atomically: on `Err` the previous state stays in force.
    fn apply(&mut self, state: &PolicyState) -> Result<(), String>;
    /// The interfaces of the pods on this node, by pod address.
    fn pod_interfaces(&self) -> std::io::Result<BTreeMap<IpAddr, PodInterface>>;
    /// The node's own addresses (`host`).
    fn host_addresses(&self) -> std::io::Result<BTreeSet<IpAddr>>;
    /// Attaches the programs to a local pod's interface.
    fn attach(&mut self, interface: &str) -> Result<(), String>;
    /// The index of `interface` now (`None`: there is none).
    fn ifindex(&self, interface: &str) -> Option<u32>;
    /// Drops what is kept of `interface`'s attachments once the interface they were on is gone
    /// (its pinned links, which the kernel detached with the interface).
    fn forget(&mut self, interface: &str) -> Result<(), String>;
    /// Readies the node for the next `apply` while nothing else is waiting (the kernel's node
    /// brings its inactive generation up to the live one). Returns whether it did any work.
    fn prepare_next(&mut self) -> Result<bool, String>;
    /// Every attachment, for the status document.
    fn attachments(&self) -> Vec<Attachment>;
}

/// The node as the kernel holds it: the loaded datapath and the routing table.
pub struct KernelNode {
    pub datapath: Datapath,
}

impl Node for KernelNode {
    fn apply(&mut self, state: &PolicyState) -> Result<(), String> {
        self.datapath
            .apply(state)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    }

    fn pod_interfaces(&self) -> std::io::Result<BTreeMap<IpAddr, PodInterface>> {
        pod_interfaces::read()
    }

    fn host_addresses(&self) -> std::io::Result<BTreeSet<IpAddr>> {
        crate::host_addresses::read()
    }

    fn prepare_next(&mut self) -> Result<bool, String> {
        self.datapath.prime_standby().map_err(|e| format!("{e:#}"))
    }

    fn attach(&mut self, interface: &str) -> Result<(), String> {
        // Pods' veths take TC only (see `Datapath::attach`); XDP goes on --interface uplinks.
        self.datapath
            .attach(interface, None)
            .map_err(|e| format!("{e:#}"))
    }

    fn attachments(&self) -> Vec<Attachment> {
        self.datapath.attachments().to_vec()
    }

    fn ifindex(&self, interface: &str) -> Option<u32> {
        pod_interfaces::ifindex(interface)
    }

    fn forget(&mut self, interface: &str) -> Result<(), String> {
        self.datapath
            .forget(interface)
            .map_err(|e| format!("{e:#}"))
    }
}

/// How the controller compiles.
pub struct ControllerConfig {
    pub trust_domain: String,
    /// Agent-wide audit mode.
    pub audit: bool,
    /// Interfaces the programs are already attached to (the `--interface` uplinks).
    pub attached: Vec<String>,
    /// The sources, lowest precedence first (the pushed files come after all of them).
    pub sources: Vec<Box<dyn PolicySource>>,
    /// Builds the proxy's table of each set (with the mTLS proxy).
    pub proxy: Option<TableBuilder>,
}

pub struct Controller<N: Node> {
    node: N,
    config: ControllerConfig,
    /// What the compiler keeps between reloads (identities, cookies, trie entries).
    memory: compile::Memory,
    /// Pushed files, by name; they override source objects of the same kind and name.
    pushed: PushedFiles,
    /// The pod interfaces the generation in force was compiled with.
    interfaces: BTreeMap<IpAddr, PodInterface>,
    /// The node's addresses the generation in force was compiled with.
    host: BTreeSet<IpAddr>,
    /// The `--interface` uplinks (attached at start).
    uplinks: HashSet<String>,
    /// Pods' interfaces with programs on them, and the interface index they went on: a pod
    /// created again under the same interface name has a new index and needs them again.
    attached: HashMap<String, u32>,
    publisher: Publisher,
    rejections: Arc<Mutex<Rejections>>,
    attachments: Arc<Mutex<Vec<Attachment>>>,
    /// A reload ran since memory was last trimmed.
    untrimmed: bool,
    /// A state went into force since the node last prepared for the next one.
    unprepared: bool,
    /// Policies validated by earlier reloads.
    memo: ValidationMemo,
}

impl<N: Node> Controller<N> {
    /// A controller that publishes through `publisher` and reports refused sets in
    /// `rejections` and the node's attachments in `attachments`.
    pub fn new(
        node: N,
        config: ControllerConfig,
        publisher: Publisher,
        rejections: Arc<Mutex<Rejections>>,
        attachments: Arc<Mutex<Vec<Attachment>>>,
    ) -> Controller<N> {
        let uplinks = config.attached.iter().cloned().collect();
        Controller {
            node,
            config,
            memory: compile::Memory::new(),
            pushed: PushedFiles::default(),
            interfaces: BTreeMap::new(),
            host: BTreeSet::new(),
            uplinks,
            attached: HashMap::new(),
            publisher,
            rejections,
            attachments,
            untrimmed: false,
            unprepared: false,
            memo: ValidationMemo::new(),
        }
    }

    /// Installs the first policy set. On error the agent does not become ready (and the
    /// previous, pinned state, if any, stays in force).
    pub fn start(&mut self) -> Result<u64, Vec<String>> {
        let result = self.reload(None, None);
        self.trim();
        result
    }

    /// Serves commands until `Shutdown` or until every sender is gone.
    pub fn run(mut self, commands: Receiver<ControllerCommand>) {
        loop {
            let wait = if self.untrimmed || self.unprepared {
                IDLE_TRIM
            } else {
                RESCAN
            };
            let first = match commands.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.rescan();
                    self.prepare_next();
                    self.trim();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            if matches!(batch[0], ControllerCommand::SourceChanged(Settle::Wait)) {
                // Let the writer finish.
                std::thread::sleep(DEBOUNCE);
            }
            // Every queued change goes into one reload.
            batch.extend(commands.try_iter());
            if batch
                .iter()
                .any(|c| matches!(c, ControllerCommand::SourceChanged(_)))
            {
                let _ = self.reload(None, None);
            }
            for command in batch {
                match command {
                    ControllerCommand::SourceChanged(_) => {}
                    ControllerCommand::Push { change, reply } => {
                        let _ = reply.send(self.reload(Some(&change), None));
                    }
                    ControllerCommand::Pause { reply } => {
                        let _ = reply.send(self.pushed.files().clone());
                        if !self.paused(&commands) {
                            return;
                        }
                    }
                    ControllerCommand::Resume => {}
                    ControllerCommand::Shutdown => return,
                }
            }
        }
    }

    /// Waits, writing nothing, until `Resume` (true: carry on, reloading if a source changed
    /// meanwhile) or `Shutdown` (false).
    fn paused(&mut self, commands: &Receiver<ControllerCommand>) -> bool {
        tracing::info!("policy controller paused: a new agent is taking over");
        let mut changed = false;
        loop {
            match commands.recv() {
                Ok(ControllerCommand::Resume) => break,
                Ok(ControllerCommand::Shutdown) | Err(_) => return false,
                Ok(ControllerCommand::SourceChanged(_)) => changed = true,
                Ok(ControllerCommand::Push { reply, .. }) => {
                    let _ = reply.send(Err(vec![
                        "the agent is handing over to a new process: push again to the new one"
                            .to_owned(),
                    ]));
                }
                Ok(ControllerCommand::Pause { reply }) => {
                    let _ = reply.send(self.pushed.files().clone());
                }
            }
        }
        tracing::info!("policy controller resumed: the handover did not happen");
        if changed {
            let _ = self.reload(None, None);
        }
        true
    }

    /// The pushed files a predecessor handed over, in force from the first reload on.
    pub fn carry_pushed(&mut self, files: BTreeMap<String, String>) {
        self.pushed = PushedFiles::new(files);
    }

    /// Recompiles when the local pods' interfaces changed (a pod came or went), or the node's
    /// own addresses did.
    pub fn rescan(&mut self) {
        let interfaces = match self.node.pod_interfaces() {
            Ok(interfaces) => interfaces,
            Err(e) => {
                tracing::warn!("reading the node's routes: {e}");
                return;
            }
        };
        if interfaces != self.interfaces {
            tracing::info!("local pods' interfaces changed: recompiling");
        } else {
            match self.node.host_addresses() {
                Ok(host) if host != self.host => {
                    tracing::info!("the node's addresses changed: recompiling");
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!("reading the node's addresses: {e}");
                    return;
                }
            }
        }
        let _ = self.reload(None, Some(interfaces));
    }

    /// Reads, validates, compiles and installs the whole set (with `push` applied to the
    /// pushed files if it is accepted), for `interfaces` (read now if not given). Returns the
    /// new generation's number, or every error.
    pub fn reload(
        &mut self,
        push: Option<&PushChange>,
        interfaces: Option<BTreeMap<IpAddr, PodInterface>>,
    ) -> Result<u64, Vec<String>> {
        self.untrimmed = true;
        self.reload_set(push, interfaces)
    }

    /// Lets the node ready itself for the next state, once the controller is idle after a state
    /// went into force or the node refused one (at 100k rules the kernel's node writes 200 ms
    /// less at the next event).
    fn prepare_next(&mut self) {
        if !std::mem::take(&mut self.unprepared) {
            return;
        }
        match self.node.prepare_next() {
            Ok(worked) => tracing::debug!(worked, "node prepared for the next state"),
            // The next apply writes what it must on its own: nothing is lost but time.
            Err(e) => tracing::warn!("preparing the node for the next state: {e}"),
        }
    }

    /// Gives the memory freed by reloads back to the kernel, once the controller is idle.
    ///
    /// A large set is parsed on every core and its intermediate forms freed; glibc keeps the
    /// freed pages in per-thread arenas, so without this the agent's resident memory grew with
    /// each reload of a 100k-rule set (165 → 430 MiB over six reloads). Trimming after every
    /// reload made the next one fault its pages in again (a sixth of a pod event's time at 100k
    /// rules): a burst of events trims once, after it.
    fn trim(&mut self) {
        if !std::mem::take(&mut self.untrimmed) {
            return;
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn reload_set(
        &mut self,
        push: Option<&PushChange>,
        interfaces: Option<BTreeMap<IpAddr, PodInterface>>,
    ) -> Result<u64, Vec<String>> {
        let pushed = match push.map(|change| change.apply(self.pushed.files())) {
            None => self.pushed.clone(),
            Some(Ok(next)) => PushedFiles::new(next),
            Some(Err(message)) => return Err(self.reject_message(message)),
        };
        if let Some(waiting) = self.config.sources.iter().position(|s| !s.synced()) {
            tracing::info!(
                source = waiting,
                "waiting for a source's first complete view"
            );
            return Err(vec![WAITING.to_owned()]);
        }
        let started = std::time::Instant::now();
        self.memo.next_reload();
        let sources = self
            .config
            .sources
            .iter()
            .map(|s| s.as_ref())
            .chain([&pushed as &dyn PolicySource]);
        let SourceRead {
            read,
            documents,
            validated,
        } = read_sources(sources);
        let read_at = started.elapsed();
        let (checked, rejected) = match self.check(read, validated) {
            Ok(c) => c,
            Err(diags) => return Err(self.reject(&diags)),
        };
        for w in &checked.warnings {
            tracing::warn!("{w}");
        }
        let interfaces = match interfaces.map_or_else(|| self.node.pod_interfaces(), Ok) {
            Ok(r) => r,
            Err(e) => return Err(self.reject_message(format!("reading the node's routes: {e}"))),
        };
        let host = match self.node.host_addresses() {
            Ok(h) => h,
            Err(e) => {
                return Err(self.reject_message(format!("reading the node's addresses: {e}")));
            }
        };
        // The --interface uplinks are never pods' (a node's uplink may be a veth too).
        let local: BTreeMap<IpAddr, u32> = interfaces
            .iter()
            .filter(|(_, t)| !self.uplinks.contains(&t.interface))
            .map(|(a, t)| (*a, t.ifindex))
            .collect();
        let node = compile::Node {
            local: &local,
            host: &host,
            trust_domain: &self.config.trust_domain,
            audit: self.config.audit,
        };
        let checked_at = started.elapsed();
        let mut compiled = compile::compile(&checked.model, node, &mut self.memory);
        let compiled_at = started.elapsed();
        for w in &compiled.warnings {
            tracing::warn!("{w}");
        }
        // The proxy's table (and the WAF's rules) before anything changes: a set whose rules do
        // not load is rejected like any bad policy.
        let table = match &self.config.proxy {
            Some(proxy) => {
                compiled.state.proxy_port = proxy.proxy_port;
                let previous = self.publisher.current().map(|g| Arc::clone(&g.table));
                match proxy.build(&compiled, previous.as_deref()) {
                    Ok(table) => Arc::new(table),
                    Err(e) => {
                        self.memory.abandon();
                        return Err(self.reject_message(e));
                    }
                }
            }
            None => Arc::new(MeshTable::default()),
        };
        // The proxy learns the new destinations before the kernel redirects by them.
        self.publisher.stage(Arc::clone(&table));
        let staged_at = started.elapsed();
        if let Err(e) = self.node.apply(&compiled.state) {
            self.publisher.unstage();
            self.memory.abandon();
            // A generation written half-way is unknown to the node until it is written again.
            self.unprepared = true;
            return Err(self.reject_message(format!("installing the compiled policy: {e}")));
        }
        let applied_at = started.elapsed();
        self.memory.finish();
        self.unprepared = true;
        self.attach_new_pods(&compiled, &interfaces);
        self.interfaces = interfaces;
        self.host = host;
        self.pushed = pushed;
        let number = self.publisher.current().map_or(0, |g| g.number) + 1;
        let generation = PolicyGeneration {
            number,
            names: Arc::new(FlowNames::from_compiled(&compiled)),
            summary: PolicySummary::of(&compiled, documents.clone(), self.pushed.size()),
            table,
            compiled: Arc::new(compiled),
        };
        let (endpoints, rules) = (generation.summary.endpoints, generation.summary.rules);
        self.publisher.publish(Arc::new(generation));
        for source in &self.config.sources {
            source.in_force(number, &documents, &rejected);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            generation = number,
            endpoints,
            rules,
            read_ms = ms(read_at),
            check_ms = ms(checked_at - read_at),
            compile_ms = ms(compiled_at - checked_at),
            table_ms = ms(staged_at - compiled_at),
            kernel_ms = ms(applied_at - staged_at),
            publish_ms = ms(started.elapsed() - applied_at),
            total_ms = ms(started.elapsed()),
            "policy in force"
        );
        Ok(number)
    }

    /// Validates the set. An object of a per-object source ([`PolicySource::last_good`]) whose
    /// document has errors is rejected on its own: its last good version is checked in its
    /// place (or, if that fails too, nothing), and the set checked again. Any other error
    /// rejects the set.
    fn check(
        &mut self,
        read: crate::policy::source::Read,
        validated: crate::policy::model::Validated,
    ) -> Result<(policy::Checked, BTreeMap<String, Outcome>), Vec<Diagnostic>> {
        let crate::policy::source::Read {
            mut objects,
            mut diagnostics,
            ..
        } = read;
        let mut rejected: BTreeMap<String, Outcome> = BTreeMap::new();
        loop {
            let errors = match policy::check_objects(
                &objects,
                diagnostics.clone(),
                validated.clone(),
                Some(&mut self.memo),
            ) {
                Ok(checked) => return Ok((checked, rejected)),
                Err(diags) => diags,
            };
            let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for d in errors.iter().filter(|d| d.is_error()) {
                by_file
                    .entry(d.origin.file.display().to_string())
                    .or_default()
                    .push(d.to_string());
            }
            let mut progress = false;
            for (file, messages) in by_file {
                let Some(owner) = self
                    .config
                    .sources
                    .iter()
                    .find_map(|s| s.last_good(&file).map(|lg| (s, lg)))
                else {
                    // A whole-set source's document: the set is rejected.
                    return Err(errors);
                };
                let (_, last_good) = owner;
                let file = file.clone();
                let keep_last_good = match rejected.get(&file) {
                    // The current version failed: try the last good one.
                    None => !last_good.objects.is_empty(),
                    // The last good version failed too: nothing of this document.
                    Some(Outcome::Rejected {
                        kept_last_good: true,
                        ..
                    }) => false,
                    // Nothing of it is left, yet errors name it: no way forward.
                    Some(_) => return Err(errors),
                };
                objects.retain(|o| o.file.display().to_string() != file);
                diagnostics.retain(|d| d.origin.file.display().to_string() != file);
                if keep_last_good {
                    objects.extend(last_good.objects);
                    diagnostics.extend(last_good.diagnostics);
                }
                let entry = rejected.entry(file.clone()).or_insert(Outcome::Rejected {
                    errors: messages.clone(),
                    kept_last_good: keep_last_good,
                });
                if let Outcome::Rejected { kept_last_good, .. } = entry {
                    *kept_last_good = keep_last_good;
                }
                tracing::error!(document = %file, kept_last_good = keep_last_good, "object rejected: {}", messages.join("; "));
                progress = true;
            }
            if !progress {
                return Err(errors);
            }
        }
    }

    /// Programs on the interfaces of local pods that have none yet, and what was kept of
    /// interfaces that are gone (deleted, or replaced by a new one of the same name) dropped.
    fn attach_new_pods(
        &mut self,
        compiled: &compile::Compiled,
        interfaces: &BTreeMap<IpAddr, PodInterface>,
    ) {
        // An interface the routes still name has the index they give; one they no longer name
        // may still be there (its pod's route went first).
        let routed: BTreeMap<&str, u32> = interfaces
            .values()
            .map(|t| (t.interface.as_str(), t.ifindex))
            .collect();
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, ifindex)| {
                let now = routed
                    .get(name.as_str())
                    .copied()
                    .or_else(|| self.node.ifindex(name));
                now != Some(**ifindex)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for interface in gone {
            self.attached.remove(&interface);
            match self.node.forget(&interface) {
                Ok(()) => {
                    tracing::info!(%interface, "a pod's interface is gone: its links dropped")
                }
                Err(e) => tracing::error!(%interface, "dropping a gone interface's links: {e}"),
            }
        }
        let wanted: BTreeMap<&str, u32> = compiled
            .endpoints
            .iter()
            .filter_map(|e| {
                interfaces
                    .values()
                    .find(|t| t.ifindex == e.ifindex)
                    .map(|t| (t.interface.as_str(), t.ifindex))
            })
            .collect();
        for (interface, ifindex) in wanted {
            if self.uplinks.contains(interface) || self.attached.get(interface) == Some(&ifindex) {
                continue;
            }
            match self.node.attach(interface) {
                Ok(()) => {
                    tracing::info!(%interface, ifindex, "attached to a local pod's interface");
                    self.attached.insert(interface.to_owned(), ifindex);
                }
                Err(e) => tracing::error!(%interface, "attaching: {e}"),
            }
        }
        *lock(&self.attachments) = self.node.attachments();
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
        self.count_rejection(lines.first().cloned());
        lines
    }

    fn reject_message(&self, message: String) -> Vec<String> {
        tracing::error!("policy rejected: {message}");
        self.count_rejection(Some(message.clone()));
        vec![message]
    }

    fn count_rejection(&self, first: Option<String>) {
        let mut rejections = lock(&self.rejections);
        rejections.total += 1;
        rejections.last_error = first;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
