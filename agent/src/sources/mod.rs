//! Where policy objects come from. Every source answers one question, "what do you hold now?",
//! with objects (and their positions) and the documents they were read from, plus objects it
//! validated itself; the controller reads every source on each reload and lays them over each
//! other: an object of a later source replaces one of an earlier source with the same kind,
//! namespace and name. The order is the policy directory, then the Kubernetes API, then the
//! pushed files (an operator's override, always last).
//!
//! A source is either whole-set (the directory, the pushes: a set with an error changes
//! nothing) or per-object (the Kubernetes API: an object with an error is rejected on its own
//! and its last accepted version stays in force; see [`PolicySource::last_good`]).

pub mod files;
pub mod kube;

use std::collections::{BTreeMap, HashSet};

pub use files::{DirectorySource, PushedFiles};

use crate::generation::SourceDoc;
use crate::policy::model::Validated;
use crate::policy::source::{self, Read};

/// What a source holds now.
#[derive(Debug, Default)]
pub struct SourceRead {
    /// Documents still to validate.
    pub read: Read,
    pub documents: Vec<SourceDoc>,
    /// Objects the source validated itself.
    pub validated: Validated,
}

/// What happened to one object of a per-object source in a reload that put a generation in
/// force: accepted as it is now, or rejected (with the errors) and its last good version kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected {
        errors: Vec<String>,
        /// Whether an earlier version stays in force (else the object is not enforced at all).
        kept_last_good: bool,
    },
}

/// A source of policy objects (see the module's documentation).
pub trait PolicySource: Send {
    fn read(&self) -> SourceRead;

    /// Whether the source has its first complete view: the controller installs nothing before
    /// every source has (whatever is in force stays).
    fn synced(&self) -> bool {
        true
    }

    /// For a per-object source that read the document `file`: what to validate instead when
    /// the document's current version has errors (its last accepted version, or nothing).
    /// `None`: `file` is not this source's, or the source is whole-set.
    fn last_good(&self, _file: &str) -> Option<Read> {
        None
    }

    /// A generation built from the documents `read` (as this source gave them) went into
    /// force; `rejected` says, by document, which of them were rejected (every other one was
    /// accepted).
    fn in_force(
        &self,
        _generation: u64,
        _read: &[SourceDoc],
        _rejected: &BTreeMap<String, Outcome>,
    ) {
    }
}

/// Reads `sources` in order, each laid over those before it.
pub fn read_sources<'a>(sources: impl IntoIterator<Item = &'a dyn PolicySource>) -> SourceRead {
    let mut all = SourceRead::default();
    for source in sources {
        let SourceRead {
            read,
            documents,
            validated,
        } = source.read();
        // Keys are borrowed, and not gathered at all while nothing came before: at 50k pods,
        // copying each pod's names into keys took a quarter of a reload.
        if !(all.read.objects.is_empty() && all.validated.is_empty()) {
            let replaced: HashSet<_> = read
                .objects
                .iter()
                .map(source::SourceObject::key)
                .chain(validated.keys())
                .collect();
            all.read.objects.retain(|o| !replaced.contains(&o.key()));
            all.validated.remove_keys(&replaced);
        }
        all.read.objects.extend(read.objects);
        all.read.diagnostics.extend(read.diagnostics);
        all.read.files.extend(read.files);
        all.documents.extend(documents);
        all.validated.append(validated);
    }
    all
}
