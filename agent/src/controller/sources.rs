//! Where policy objects come from. Every source answers one question, "what do you hold now?",
//! with objects (and their positions) and the documents they were read from; the controller
//! reads every source on each reload and lays them over each other: an object of a later
//! source replaces one of an earlier source with the same kind, namespace and name. Today the
//! sources are the policy directory and the pushed files (always last); the Kubernetes API
//! comes in as one more.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use crate::generation::SourceDoc;
use crate::policy::source::{self, Read};

/// What a source holds now.
#[derive(Debug, Default)]
pub struct SourceRead {
    pub read: Read,
    pub documents: Vec<SourceDoc>,
}

/// A source of policy objects (see the module's documentation).
pub trait PolicySource: Send {
    fn read(&self) -> SourceRead;
}

/// The `--policy-dir` directory (none: no objects).
pub struct DirectorySource {
    pub dir: Option<PathBuf>,
}

impl PolicySource for DirectorySource {
    fn read(&self) -> SourceRead {
        let read = match &self.dir {
            Some(dir) => source::read_dir(dir),
            None => Read::default(),
        };
        let documents = read
            .files
            .iter()
            .map(|(file, sha256)| SourceDoc {
                file: file.display().to_string(),
                sha256: sha256.clone(),
            })
            .collect();
        SourceRead { read, documents }
    }
}

/// The files of `rampart policy push`, by name (shown as `push:NAME`).
#[derive(Debug, Clone, Default)]
pub struct PushedFiles {
    files: BTreeMap<String, String>,
}

impl PushedFiles {
    pub fn new(files: BTreeMap<String, String>) -> PushedFiles {
        PushedFiles { files }
    }

    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// Files held and their bytes of text.
    pub fn size(&self) -> (usize, usize) {
        (self.files.len(), self.files.values().map(String::len).sum())
    }
}

impl PolicySource for PushedFiles {
    fn read(&self) -> SourceRead {
        let mut out = SourceRead::default();
        for (name, text) in &self.files {
            let file = PathBuf::from(format!("push:{name}"));
            let r = source::parse_str(&file, text);
            out.documents.push(SourceDoc {
                file: file.display().to_string(),
                sha256: source::sha256_hex(text.as_bytes()),
            });
            out.read.objects.extend(r.objects);
            out.read.diagnostics.extend(r.diagnostics);
        }
        out
    }
}

/// Reads `sources` in order, each laid over those before it.
pub fn read_sources<'a>(sources: impl IntoIterator<Item = &'a dyn PolicySource>) -> SourceRead {
    let mut all = SourceRead::default();
    for source in sources {
        let SourceRead { read, documents } = source.read();
        let replaced: HashSet<_> = read.objects.iter().map(source::SourceObject::key).collect();
        all.read.objects.retain(|o| !replaced.contains(&o.key()));
        all.read.objects.extend(read.objects);
        all.read.diagnostics.extend(read.diagnostics);
        all.read.files.extend(read.files);
        all.documents.extend(documents);
    }
    all
}
