//! What the parts of a running agent share: the state the admin server, the metrics collector
//! and the status document read ([`AgentState`]), the commands the controller thread takes
//! ([`ControllerCommand`]) and the policy status it reports. Below the controller, the servers and the
//! composition root, so that none of them reaches up into another.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::config::RunConfig;
use crate::datapath::{Attachment, EventReader, Stats};
use crate::flows::FlowHub;
use crate::generation::{Generations, PolicyGeneration, SourceDoc};
use crate::mesh::runtime::MeshRuntime;

/// What the admin server and the metrics collector read of the running agent.
pub struct AgentState {
    pub config: RunConfig,
    pub started: Instant,
    /// The programs attached, as the controller last saw them.
    pub attachments: Arc<Mutex<Vec<Attachment>>>,
    pub stats: Stats,
    /// The kernel programs' log levels and record counts.
    pub kernel_log: Arc<crate::datapath::KernelLog>,
    /// The kernel's flow events; drained by a task so the ring never fills.
    pub events: Mutex<EventReader>,
    /// Events read from the ring so far.
    pub events_read: AtomicU64,
    /// Set when the agent begins to stop: it is no longer ready.
    pub stopping: AtomicBool,
    /// Set while a successor takes over: the kernel's event ring is its to read.
    pub handing_over: AtomicBool,
    /// What this agent's restart did (metrics).
    pub restart: RestartStats,
    /// The policy generations the controller publishes.
    pub generations: Generations,
    /// Policy sets the controller refused.
    pub rejections: Arc<Mutex<Rejections>>,
    /// Where changes to policy are sent (the controller thread owns the datapath).
    pub commands: Sender<ControllerCommand>,
    /// The mTLS proxy (with `--ca-dir`).
    pub mesh: Option<Arc<MeshRuntime>>,
    /// The flow log's records and readers.
    pub flows: Arc<FlowHub>,
    /// The Kubernetes source's health per watched kind (with `--kube` / `--kubeconfig`).
    pub kube: Option<Arc<crate::sources::kube::KubeHealth>>,
}

impl AgentState {
    /// Ready once a policy set is in the kernel (the programs are attached before the first),
    /// until the agent begins to stop or hands over: during a hot restart both processes answer
    /// on the shared metrics socket, and only the new one, once in force, may say ready.
    pub fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
            && !self.handing_over.load(Ordering::SeqCst)
            && self.generations.current().is_some()
    }

    /// The generation in force; `None` until the first set is installed.
    pub fn generation(&self) -> Option<Arc<PolicyGeneration>> {
        self.generations.current()
    }

    /// The policy status: the generation in force and the sets refused.
    pub fn policy_status(&self) -> PolicyStatus {
        let rejections = self
            .rejections
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        PolicyStatus::of(self.generation().as_deref(), rejections)
    }
}

/// What a hot restart did, for the metrics.
#[derive(Debug, Default)]
pub struct RestartStats {
    /// Milliseconds from this process's start until its predecessor stopped accepting (0: it
    /// started without one).
    pub takeover_ms: AtomicU64,
    /// Handovers this agent began that did not complete (the successor went away).
    pub handover_failures: AtomicU64,
    /// Flows carried from a previous layout's conntrack map when this agent started.
    pub conntrack_carried: AtomicU64,
}

/// Policy sets the controller refused: how many, and the first error of the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    pub total: u64,
    pub last_error: Option<String>,
}

/// Whether a source's change may still be under way when it is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// A file event: an editor writes a file in several steps, so the controller waits a moment
    /// and takes every queued change at once.
    Wait,
    /// A whole object version (an API event): the controller reloads at once; what arrives
    /// meanwhile is taken together by the next reload.
    Now,
}

pub enum ControllerCommand {
    /// Something in a policy source changed (the directory, or another watched source).
    SourceChanged(Settle),
    /// A change to the pushed files (`rampart policy push`). Answered once in force, or with
    /// every error.
    Push {
        change: PushChange,
        reply: tokio::sync::oneshot::Sender<Result<u64, Vec<String>>>,
    },
    /// A new agent takes over (`handover`): stop writing the kernel until `Resume` (it went
    /// away before it took the kernel) or `Shutdown`. Answered with the pushed files, which
    /// carry over. Pushes meanwhile are refused; source changes wait for `Resume`.
    Pause {
        reply: tokio::sync::oneshot::Sender<BTreeMap<String, String>>,
    },
    Resume,
    Shutdown,
}

/// Most files the pushed set holds, and most bytes of text: a push beyond either is refused
/// (every pushed file is kept and parsed again on each reload).
pub const MAX_PUSHED_FILES: usize = 256;
pub const MAX_PUSHED_BYTES: usize = 32 * 1024 * 1024;

/// A change to the pushed set: files added or replaced by name, names deleted, or (with
/// `replace_all`) the set made exactly `files`.
#[derive(Debug, Default, Clone)]
pub struct PushChange {
    pub files: Vec<(String, String)>,
    pub delete: Vec<String>,
    pub replace_all: bool,
}

impl PushChange {
    /// The pushed set after this change, or why it is refused.
    pub(crate) fn apply(
        &self,
        pushed: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut next = if self.replace_all {
            BTreeMap::new()
        } else {
            pushed.clone()
        };
        for name in &self.delete {
            if next.remove(name).is_none() {
                return Err(format!(
                    "push: --delete {name:?}: no pushed file has that name"
                ));
            }
        }
        for (name, text) in &self.files {
            next.insert(name.clone(), text.clone());
        }
        let bytes: usize = next.values().map(String::len).sum();
        if next.len() > MAX_PUSHED_FILES || bytes > MAX_PUSHED_BYTES {
            return Err(format!(
                "push: the pushed set would hold {} files and {bytes} bytes, over the limit of \
                 {MAX_PUSHED_FILES} files and {MAX_PUSHED_BYTES} bytes; delete pushed files \
                 (`rampart policy push --delete NAME`) or put the objects in the policy directory",
                next.len()
            ));
        }
        Ok(next)
    }
}

/// What the agent reports about policy (in `/status` and metrics).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct PolicyStatus {
    /// Increases by one each time a new policy set is in the kernel.
    pub generation: u64,
    /// The files of the set in force and their SHA-256.
    pub sources: Vec<SourceDoc>,
    pub errors_total: u64,
    pub last_error: Option<String>,
    pub identities: usize,
    pub endpoints: usize,
    pub rules: usize,
    pub map_entries: usize,
    /// Entries of the IPv4 and IPv6 ipcache tries and of the mTLS map for the set in force.
    #[serde(default)]
    pub ipcache4_entries: usize,
    #[serde(default)]
    pub ipcache6_entries: usize,
    #[serde(default)]
    pub mesh_entries: usize,
    /// Files held from pushes, and their bytes of text.
    #[serde(default)]
    pub pushed_files: usize,
    #[serde(default)]
    pub pushed_bytes: usize,
}

impl PolicyStatus {
    pub fn of(generation: Option<&PolicyGeneration>, rejections: Rejections) -> PolicyStatus {
        let summary = generation.map(|g| g.summary.clone()).unwrap_or_default();
        PolicyStatus {
            generation: generation.map_or(0, |g| g.number),
            sources: summary.sources,
            errors_total: rejections.total,
            last_error: rejections.last_error,
            identities: summary.identities,
            endpoints: summary.endpoints,
            rules: summary.rules,
            map_entries: summary.map_entries,
            ipcache4_entries: summary.ipcache4_entries,
            ipcache6_entries: summary.ipcache6_entries,
            mesh_entries: summary.mesh_entries,
            pushed_files: summary.pushed_files,
            pushed_bytes: summary.pushed_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn a_push_replaces_deletes_or_resets_the_pushed_set() {
        let held = set(&[("a.yaml", "A"), ("b.yaml", "B")]);
        let replace = PushChange {
            files: vec![("a.yaml".into(), "A2".into())],
            ..PushChange::default()
        };
        assert_eq!(
            replace.apply(&held),
            Ok(set(&[("a.yaml", "A2"), ("b.yaml", "B")]))
        );
        let delete = PushChange {
            delete: vec!["b.yaml".into()],
            ..PushChange::default()
        };
        assert_eq!(delete.apply(&held), Ok(set(&[("a.yaml", "A")])));
        let missing = PushChange {
            delete: vec!["c.yaml".into()],
            ..PushChange::default()
        };
        assert!(missing.apply(&held).is_err_and(|e| e.contains("c.yaml")));
        let reset = PushChange {
            files: vec![("c.yaml".into(), "C".into())],
            replace_all: true,
            ..PushChange::default()
        };
        assert_eq!(reset.apply(&held), Ok(set(&[("c.yaml", "C")])));
    }

    #[test]
    fn the_pushed_set_is_bounded_in_files_and_bytes() {
        let mut held = BTreeMap::new();
        for i in 0..MAX_PUSHED_FILES {
            held.insert(format!("{i}.yaml"), String::new());
        }
        let one_more = PushChange {
            files: vec![("new.yaml".into(), String::new())],
            ..PushChange::default()
        };
        assert!(
            one_more
                .apply(&held)
                .is_err_and(|e| e.contains("256 files"))
        );
        let replacing = PushChange {
            files: vec![("0.yaml".into(), "x".into())],
            ..PushChange::default()
        };
        assert!(replacing.apply(&held).is_ok());
        let big = "x".repeat(MAX_PUSHED_BYTES / 2 + 1);
        let twice = PushChange {
            files: vec![("1.yaml".into(), big.clone()), ("2.yaml".into(), big)],
            ..PushChange::default()
        };
        assert!(
            twice
                .apply(&BTreeMap::new())
                .is_err_and(|e| e.contains("bytes"))
        );
    }
}
