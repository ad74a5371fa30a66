//! One published policy generation: everything the running agent derives from one accepted
//! policy set, built in one pass by the controller and published whole, once the kernel is
//! in step with it, through a `tokio::sync::watch`. The proxy, the flow hub, `policy explain`,
//! the metrics and the status document borrow the generation in force; none of them is written
//! to on a reload.
//!
//! Ordering: the kernel must never redirect a flow to the proxy by a state the proxy does not
//! know. So the controller first *stages* the new generation's proxy table, then flips the
//! kernel, then publishes the generation (which clears the stage); a kernel that refuses the
//! state only unstages it. The proxy asks the staged table whatever the table in force cannot
//! answer (`mesh::table::TableView`).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::flows::FlowNames;
use crate::mesh::table::{MeshTable, TableView};
use crate::policy::compile::Compiled;
use crate::view::View;

/// An accepted policy set, as everything above the kernel uses it.
#[derive(Debug)]
pub struct PolicyGeneration {
    /// 1 for the first set the agent installed, one more for each after it.
    pub number: u64,
    pub compiled: Arc<Compiled>,
    /// The proxy's table (workloads, mTLS destinations, L7 routes with their WAF engines);
    /// empty without the proxy.
    pub table: Arc<MeshTable>,
    /// What the flow log names identities, addresses and rule cookies.
    pub names: Arc<FlowNames>,
    pub summary: PolicySummary,
}

/// The sizes of a generation and the documents it was read from (`/status`, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    pub sources: Vec<SourceDoc>,
    pub identities: usize,
    pub endpoints: usize,
    pub rules: usize,
    pub map_entries: usize,
    pub ipcache4_entries: usize,
    pub ipcache6_entries: usize,
    pub mesh_entries: usize,
    /// Files held from pushes, and their bytes of text.
    pub pushed_files: usize,
    pub pushed_bytes: usize,
}

impl PolicySummary {
    /// The sizes of `compiled`, read from `sources`.
    pub fn of(
        compiled: &Compiled,
        sources: Vec<SourceDoc>,
        pushed: (usize, usize),
    ) -> PolicySummary {
        let ipcache4 = compiled
            .state
            .ipcache
            .iter()
            .filter(|r| r.addr.is_ipv4())
            .count();
        PolicySummary {
            sources,
            identities: compiled.identities.len(),
            endpoints: compiled.endpoints.len(),
            rules: compiled.rule_count,
            map_entries: compiled.state.policy.len(),
            ipcache4_entries: ipcache4,
            ipcache6_entries: compiled.state.ipcache.len() - ipcache4,
            mesh_entries: compiled.state.mesh.len(),
            pushed_files: pushed.0,
            pushed_bytes: pushed.1,
        }
    }
}

/// A document a policy set was read from: a file of the directory, a pushed file, or (later)
/// an API object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourceDoc {
    pub file: String,
    pub sha256: String,
}

/// The controller's end: stages tables and publishes generations.
#[derive(Debug)]
pub struct Publisher {
    current: watch::Sender<Option<Arc<PolicyGeneration>>>,
    staged: watch::Sender<Option<Arc<MeshTable>>>,
}

/// The readers' end: the generation in force, and views of its parts.
#[derive(Debug, Clone)]
pub struct Generations {
    current: watch::Receiver<Option<Arc<PolicyGeneration>>>,
    staged: watch::Receiver<Option<Arc<MeshTable>>>,
}

impl Publisher {
    /// A publisher with nothing published yet, and its readers.
    pub fn new() -> (Publisher, Generations) {
        let (current, current_rx) = watch::channel(None);
        let (staged, staged_rx) = watch::channel(None);
        (
            Publisher { current, staged },
            Generations {
                current: current_rx,
                staged: staged_rx,
            },
        )
    }

    /// Shows the proxy the table of a generation about to be installed.
    pub fn stage(&self, table: Arc<MeshTable>) {
        self.staged.send_replace(Some(table));
    }

    /// Withdraws the staged table (the kernel refused its generation).
    pub fn unstage(&self) {
        self.staged.send_replace(None);
    }

    /// Puts `generation` in force for every reader, then withdraws the staged table.
    pub fn publish(&self, generation: Arc<PolicyGeneration>) {
        self.current.send_replace(Some(generation));
        self.staged.send_replace(None);
    }

    /// The generation in force.
    pub fn current(&self) -> Option<Arc<PolicyGeneration>> {
        self.current.borrow().clone()
    }
}

impl Generations {
    /// The generation in force; `None` until the first set is installed.
    pub fn current(&self) -> Option<Arc<PolicyGeneration>> {
        self.current.borrow().clone()
    }

    /// Waits until a generation is in force.
    pub async fn first_in_force(&self) {
        let mut current = self.current.clone();
        let _ = current.wait_for(Option::is_some).await;
    }

    /// The proxy's view: the table in force (empty before the first set) and the staged one.
    pub fn tables(&self) -> TableView {
        let current = self.current.clone();
        let staged = self.staged.clone();
        TableView {
            current: View::new(move || {
                current
                    .borrow()
                    .as_ref()
                    .map(|g| Arc::clone(&g.table))
                    .unwrap_or_default()
            }),
            staged: View::new(move || staged.borrow().clone()),
        }
    }

    /// The flow hub's view: the names of the generation in force.
    pub fn names(&self) -> View<Arc<FlowNames>> {
        let current = self.current.clone();
        View::new(move || {
            current
                .borrow()
                .as_ref()
                .map(|g| Arc::clone(&g.names))
                .unwrap_or_default()
        })
    }
}
