//! The file sources: the policy directory and the pushed files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{PolicySource, SourceRead};
use crate::generation::SourceDoc;
use crate::policy::source::{self, Read};

/// The `--policy-dir` directory (none: no objects). A reload parses only the files that
/// changed since the last one (`source::FileCache`).
pub struct DirectorySource {
    dir: Option<PathBuf>,
    cache: std::sync::Mutex<source::FileCache>,
}

impl DirectorySource {
    pub fn new(dir: Option<PathBuf>) -> DirectorySource {
        DirectorySource {
            dir,
            cache: std::sync::Mutex::default(),
        }
    }
}

impl PolicySource for DirectorySource {
    fn read(&self) -> SourceRead {
        let read = match (&self.dir, self.cache.lock()) {
            (Some(dir), Ok(mut cache)) => source::read_dir_cached(dir, &mut cache),
            (Some(dir), Err(_)) => source::read_dir(dir),
            (None, _) => Read::default(),
        };
        let documents = read
            .files
            .iter()
            .map(|(file, sha256)| SourceDoc {
                file: file.display().to_string(),
                sha256: sha256.clone(),
            })
            .collect();
        SourceRead {
            read,
            documents,
            ..SourceRead::default()
        }
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
