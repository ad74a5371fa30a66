//! Reads policy files: YAML (multi-document) or JSON, each document one Kubernetes object.
//! Every problem becomes a [`Diagnostic`] with the file, line and column; nothing here panics on
//! input.
//!
//! A stream is split into documents at `---` / `...` lines before parsing, because the type of a
//! document (its `kind`) must be known before it can be read with positions kept (serde-saphyr's
//! `Spanned`); each document's `apiVersion`/`kind` come from a scan of its root keys (or, where
//! the scan cannot tell, a first parse), then it is read as its kind and its positions are
//! shifted back to the file's lines. Documents are parsed on all cores: they are independent,
//! and the YAML parser is most of the time a large set takes.

use std::path::{Path, PathBuf};

use crate::policy::spec::compact::{At, Spanned};
use serde::de::DeserializeOwned;

use super::diag::{Diagnostic, Origin, Pos};
use super::spec::objects::{self, TypeMeta};

/// Largest policy file read (bigger files are an error, not an allocation).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One object read from a file.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(objects::Namespace),
    Pod(Box<objects::Pod>),
    NetworkPolicy(objects::NetworkPolicy),
    ClusterPolicy(objects::ClusterPolicy),
    MeshPolicy(Box<objects::MeshPolicy>),
    Secret(objects::Secret),
    ConfigMap(objects::ConfigMap),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::ClusterPolicy(_) => "ClusterPolicy",
            Object::MeshPolicy(_) => "MeshPolicy",
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn metadata(&self) -> &objects::ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ClusterPolicy(o) => &o.metadata,
            Object::MeshPolicy(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }
}

/// What names an object across sources: (kind, namespace, name), borrowed from the object.
pub type ObjectKey<'a> = (&'static str, Option<&'a str>, Option<&'a str>);

/// An object and where it was read.
#[derive(Debug, Clone)]
pub struct SourceObject {
    /// Shared: a reload reads every object of the set, and copying 100k rules' specs took a
    /// fifth of a reload's time.
    pub object: std::sync::Arc<Object>,
    pub file: PathBuf,
    /// Lines of the file before the object's document (positions inside are relative to it).
    pub line_offset: u64,
    /// Where the document starts.
    pub start: Pos,
}

impl SourceObject {
    /// The file position of a location inside this object.
    pub fn origin(&self, loc: &At) -> Origin {
        Origin::new(&self.file, self.pos(loc))
    }

    pub fn pos(&self, loc: &At) -> Pos {
        if loc.line() == 0 {
            return self.start;
        }
        Pos {
            line: loc.line() + self.line_offset,
            col: loc.column(),
        }
    }

    /// The position of a spanned value inside this object.
    pub fn at<T>(&self, spanned: &Spanned<T>) -> Origin {
        self.origin(&spanned.referenced)
    }

    /// (kind, namespace, name): what makes two objects the same object.
    pub fn key(&self) -> ObjectKey<'_> {
        let meta = self.object.metadata();
        (
            self.object.kind(),
            meta.namespace.as_ref().map(|n| n.value.as_str()),
            meta.name.as_ref().map(|n| n.value.as_str()),
        )
    }

    /// The document as a whole.
    pub fn whole(&self) -> Origin {
        Origin::new(&self.file, self.start)
    }
}

/// Objects read and what was wrong.
#[derive(Debug, Default, Clone)]
pub struct Read {
    pub objects: Vec<SourceObject>,
    pub diagnostics: Vec<Diagnostic>,
    /// The files read and the SHA-256 (hex) of their contents.
    pub files: Vec<(PathBuf, String)>,
}

impl Read {
    fn merge(&mut self, other: Read) {
        self.objects.extend(other.objects);
        self.diagnostics.extend(other.diagnostics);
        self.files.extend(other.files);
    }
}

/// Whether a file name is a policy file of a directory (`*.yaml`, `*.yml`, `*.json`; hidden
/// files, such as an editor's or a writer's temporary file, are not).
pub fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The policy files of `dir`, sorted by name (not recursive).
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::error(
            Origin::new(dir, Pos::default()),
            format!("cannot read: {e}"),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Diagnostic::error(
                Origin::new(dir, Pos::default()),
                format!("cannot read: {e}"),
            )
        })?;
        let path = entry.path();
        if is_policy_file(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every policy file of `dir`.
pub fn read_dir(dir: &Path) -> Read {
    read_dir_cached(dir, &mut FileCache::default())
}

/// Reads the given files.
pub fn read_files(files: &[PathBuf]) -> Read {
    let mut read = Read::default();
    for file in files {
        read.merge(read_file(file));
    }
    read
}

/// What the files of a directory read into at their last read, by path and content hash, so
/// that a reload parses only the files that changed. The unchanged files' objects are the same
/// shared objects as before, which the validation memo then recognises: at 100k rules in one
/// file, a change in another file took 1.5 s to be enforced, most of it parsing the unchanged
/// one again.
#[derive(Debug, Default)]
pub struct FileCache {
    files: std::collections::HashMap<PathBuf, (String, Read)>,
}

/// [`read_dir`], reusing what `cache` holds for files whose contents did not change.
pub fn read_dir_cached(dir: &Path, cache: &mut FileCache) -> Read {
    let files = match policy_files(dir) {
        Ok(files) => files,
        Err(d) => {
            cache.files.clear();
            return Read {
                objects: Vec::new(),
                diagnostics: vec![d],
                files: Vec::new(),
            };
        }
    };
    let mut read = Read::default();
    let mut kept = std::collections::HashMap::with_capacity(files.len());
    for file in files {
        let text = match read_text(&file) {
            Ok(text) => text,
            Err(message) => {
                read.merge(unreadable(&file, message));
                continue;
            }
        };
        let sha256 = sha256_hex(text.as_bytes());
        let of_file = match cache.files.remove(&file) {
            Some((hash, cached)) if hash == sha256 => cached,
            _ => parse_file(&file, &text, sha256.clone()),
        };
        read.merge(of_file.clone());
        kept.insert(file, (sha256, of_file));
    }
    cache.files = kept;
    read
}

/// The text of a policy file, or why it cannot be read.
fn read_text(file: &Path) -> Result<String, String> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.len() > MAX_FILE_BYTES => Err(format!(
            "file is {} bytes; the limit is {MAX_FILE_BYTES}",
            meta.len()
        )),
        Ok(_) => std::fs::read(file).map_err(|e| format!("cannot read: {e}")),
        Err(e) => Err(format!("cannot read: {e}")),
    }
    .and_then(|bytes| String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}")))
}

fn unreadable(file: &Path, message: String) -> Read {
    Read {
        objects: Vec::new(),
        diagnostics: vec![Diagnostic::error(
            Origin::new(file, Pos::default()),
            message,
        )],
        files: Vec::new(),
    }
}

/// Reads one file.
pub fn read_file(file: &Path) -> Read {
    match read_text(file) {
        Ok(text) => parse_file(file, &text, sha256_hex(text.as_bytes())),
        Err(message) => unreadable(file, message),
    }
}

/// The objects of `file`'s `text`, and the file with the hash of its contents.
fn parse_file(file: &Path, text: &str, sha256: String) -> Read {
    let mut read = parse_str(file, text);
    read.files.push((file.to_owned(), sha256));
    read
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses the text of a file (YAML stream or JSON document) named `file` in diagnostics.
pub fn parse_str(file: &Path, text: &str) -> Read {
    let mut read = Read::default();
    let docs = expand_lists(file, split_documents(text), &mut read.diagnostics);
    let results = parse_documents(file, &docs);
    for result in results {
        match result {
            Ok(Some(object)) => read.objects.push(object),
            Ok(None) => {}
            Err(d) => read.diagnostics.push(d),
        }
    }
    read
}

/// Below this many bytes a file is parsed on the calling thread.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

type Parsed = Result<Option<SourceObject>, Diagnostic>;

/// Parses `docs` in order, spread over the available cores when there is enough text.
fn parse_documents(file: &Path, docs: &[Document]) -> Vec<Parsed> {
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || docs.len() < 2 || bytes < PARALLEL_MIN_BYTES {
        return docs.iter().map(|d| parse_document(file, d)).collect();
    }
    let chunk = docs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = docs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|d| parse_document(file, d))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    // parse_document does not panic on input; should a parser bug make it, the
                    // set is rejected rather than the agent brought down.
                    vec![Err(Diagnostic::error(
                        Origin::new(file, Pos { line: 1, col: 1 }),
                        "internal error while parsing this file",
                    ))]
                })
            })
            .collect()
    })
}

/// `apiVersion` and `kind` read from a document's root keys without parsing it, where that is
/// certain: in a block mapping at the root, every line that starts at column 0 and is not a
/// comment is a root key (values, block scalars and continuation lines are indented), so two
/// such lines `apiVersion: <plain>` and `kind: <plain>`, each once, are the object's type. Any
/// other shape (flow mapping, JSON, quoted values, complex keys, repeats) returns `None` and the
/// document is parsed for its type instead. (A document whose root is not a mapping, where a
/// column-0 line could sit inside a scalar, is an error whichever way its type is read.)
fn scan_type_meta(text: &str) -> Option<TypeMeta> {
    let plain = |v: &str| {
        let v = match v.find(" #") {
            Some(i) => &v[..i],
            None => v,
        }
        .trim();
        let ok = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'));
        ok.then(|| v.to_owned())
    };
    let (mut api_version, mut kind) = (None, None);
    for line in text.lines() {
        let (slot, value) = if let Some(value) = line.strip_prefix("apiVersion:") {
            (&mut api_version, value)
        } else if let Some(value) = line.strip_prefix("kind:") {
            (&mut kind, value)
        } else {
            continue;
        };
        if slot.is_some() || !value.starts_with([' ', '\t']) {
            return None;
        }
        *slot = Some(plain(value)?);
    }
    Some(TypeMeta {
        api_version: Some(api_version?),
        kind: Some(kind?),
    })
}

/// Whether a document is a list of objects (`kind: List`, as `kubectl get -o yaml` prints
/// several objects, or `<Kind>List` as the API serves a list).
fn is_list(doc: &Document) -> bool {
    let meta =
        scan_type_meta(&doc.text).or_else(|| serde_saphyr::from_str::<TypeMeta>(&doc.text).ok());
    meta.and_then(|m| m.kind)
        .is_some_and(|k| k == "List" || (k.ends_with("List") && k.len() > 4))
}

/// Replaces each list document by one document per item. An item of a block sequence (what
/// kubectl prints) keeps its lines and columns: its lines are cut out of the list as they are,
/// with the `- ` before its first key blanked. An item of a flow sequence or JSON array is
/// written out again as YAML, so positions inside it count from the item's first line.
fn expand_lists(file: &Path, docs: Vec<Document>, diags: &mut Vec<Diagnostic>) -> Vec<Document> {
    #[derive(serde::Deserialize)]
    struct Items {
        #[serde(default)]
        items: Vec<Spanned<serde_json::Value>>,
    }
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        if !is_list(&doc) {
            out.push(doc);
            continue;
        }
        let items = match serde_saphyr::from_str::<Items>(&doc.text) {
            Ok(list) => list.items,
            Err(e) => {
                let e = e.without_snippet();
                let line = e.location().map_or(1, |l| l.line().max(1)) + doc.line_offset;
                diags.push(Diagnostic::error(
                    Origin::new(file, Pos { line, col: 1 }),
                    format!("list: {}", error_message(e)),
                ));
                continue;
            }
        };
        let lines: Vec<&str> = yaml_lines(&doc.text).collect();
        let starts: Vec<(usize, usize)> = items
            .iter()
            .map(|i| {
                let at = &i.referenced;
                (at.line() as usize, at.column() as usize)
            })
            .collect();
        for (index, item) in items.iter().enumerate() {
            let (line, col) = starts[index];
            let first = line.checked_sub(1).and_then(|l| lines.get(l));
            let block = col >= 3 && first.is_some_and(|l| l.as_bytes().get(col - 3) == Some(&b'-'));
            if !block {
                match serde_saphyr::to_string(&item.value) {
                    Ok(text) => out.push(Document {
                        text,
                        line_offset: doc.line_offset + line.saturating_sub(1) as u64,
                    }),
                    Err(e) => diags.push(Diagnostic::error(
                        Origin::new(
                            file,
                            Pos {
                                line: doc.line_offset + line as u64,
                                col: col as u64,
                            },
                        ),
                        format!("list item: {e}"),
                    )),
                }
                continue;
            }
            // The item's lines: from its first to the line before the next item, or for the
            // last, to the first line indented less than the item (the list's next key).
            let end = match starts.get(index + 1) {
                Some((next, _)) => next - 1,
                None => (line..lines.len())
                    .find(|&l| {
                        let t = lines[l];
                        let indent = t.len() - t.trim_start_matches(' ').len();
                        !t.trim().is_empty() && !t.trim_start().starts_with('#') && indent < col - 1
                    })
                    .unwrap_or(lines.len()),
            };
            let mut text = String::new();
            // Lines before the item stay (blank) so that line numbers are the file's.
            for (l, content) in lines.iter().enumerate().take(end).skip(line - 1) {
                if l == line - 1 {
                    let mut first = content.to_string();
                    first.replace_range(col - 3..col - 2, " ");
                    text.push_str(&first);
                } else {
                    text.push_str(content);
                }
            }
            out.push(Document {
                text,
                line_offset: doc.line_offset + (line - 1) as u64,
            });
        }
    }
    out
}

/// One document of a stream: its text, and the number of lines before it.
#[derive(Debug)]
struct Document {
    text: String,
    line_offset: u64,
}

/// Splits a YAML stream at its document markers (`---` and `...` at the start of a line). A
/// marker's line is blanked, not removed, so columns and line counts stay as in the file; content
/// after `---` on the same line stays in the document.
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut offset = 0u64;
    for (index, line) in yaml_lines(text).enumerate() {
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
        };
        if is_marker("---") || is_marker("...") {
            docs.push(Document {
                text: std::mem::take(&mut current),
                line_offset: offset,
            });
            offset = index as u64;
            if is_marker("---") {
                // Keep what follows the marker (`--- {a: 1}`), at its column.
                current.push_str("   ");
                current.push_str(&line[3..]);
            } else {
                current.push('\n');
            }
            continue;
        }
        current.push_str(line);
    }
    docs.push(Document {
        text: current,
        line_offset: offset,
    });
    docs.retain(|d| has_content(&d.text));
    docs
}

/// The lines of `text` as YAML counts them, each with its break: a line ends at LF, CRLF or a
/// lone CR (YAML 1.2 §5.4), so line numbers here are the parser's.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'\n' => {
                    end += 1;
                    break;
                }
                b'\r' => {
                    end += if bytes.get(end + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    break;
                }
                _ => end += 1,
            }
        }
        // CR and LF are ASCII: `start` and `end` are on character boundaries.
        let line = &text[start..end];
        start = end;
        Some(line)
    })
}

/// Whether a document holds anything but blanks and comments.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
    })
}

fn parse_document(file: &Path, doc: &Document) -> Result<Option<SourceObject>, Diagnostic> {
    let first_line = yaml_lines(&doc.text)
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .unwrap_or(0) as u64;
    let start = Pos {
        line: doc.line_offset + first_line + 1,
        col: 1,
    };
    let start_origin = Origin::new(file, start);
    let meta: TypeMeta = match scan_type_meta(&doc.text) {
        Some(meta) => meta,
        None => parse(file, doc)?,
    };
    let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
        return Err(Diagnostic::error(
            start_origin,
            "document has no apiVersion or no kind",
        ));
    };
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(parse(file, doc)?),
        ("v1", "Pod") => Object::Pod(Box::new(parse(file, doc)?)),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(parse(file, doc)?),
        ("rampart.dev/v1alpha1", "ClusterPolicy") => Object::ClusterPolicy(parse(file, doc)?),
        ("rampart.dev/v1alpha1", "MeshPolicy") => Object::MeshPolicy(Box::new(parse(file, doc)?)),
        ("v1", "Secret") => Object::Secret(parse(file, doc)?),
        ("v1", "ConfigMap") => Object::ConfigMap(parse(file, doc)?),
        (
            _,
            "Namespace" | "Pod" | "NetworkPolicy" | "ClusterPolicy" | "MeshPolicy" | "Secret"
            | "ConfigMap",
        ) => {
            return Err(Diagnostic::error(
                start_origin,
                format!("{kind}: unsupported apiVersion {api_version:?}"),
            ));
        }
        _ => {
            return Err(Diagnostic::warning(
                start_origin,
                format!("unknown kind {kind} (apiVersion {api_version}): ignored"),
            ));
        }
    };
    Ok(Some(SourceObject {
        object: std::sync::Arc::new(object),
        file: file.to_owned(),
        line_offset: doc.line_offset,
        start,
    }))
}

fn parse<T: DeserializeOwned>(file: &Path, doc: &Document) -> Result<T, Diagnostic> {
    // YAML 1.2 core booleans: `y`, `no`, `on` are strings (a namespace called `y` stays one).
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<T>(&doc.text, options).map_err(|e| {
        let e = e.without_snippet();
        let pos = match e.location() {
            Some(loc) if loc.line() > 0 => Pos {
                line: loc.line() + doc.line_offset,
                col: loc.column(),
            },
            _ => Pos {
                line: doc.line_offset + 1,
                col: 1,
            },
        };
        Diagnostic::error(Origin::new(file, pos), error_message(e))
    })
}

/// The message of a parser error, without the position it appends (reported separately).
fn error_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Read {
        parse_str(Path::new("p.yaml"), text)
    }

    #[test]
    fn splits_documents_and_keeps_lines() {
        let read = parse(
            "# header\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  bogus: 1\n",
        );
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
        assert_eq!(read.objects[0].start.line, 2);
        assert_eq!(read.diagnostics.len(), 1);
        let d = &read.diagnostics[0];
        assert_eq!(d.origin.pos.line, 12, "{d}");
        assert_eq!(d.origin.pos.col, 3, "{d}");
        assert!(d.message.contains("bogus"), "{d}");
    }

    #[test]
    fn kubernetes_kinds_take_fields_of_newer_versions_and_network_policy_specs_do_not() {
        let read = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, newMetaField: 1}\nspec:\n  aFieldFromV1_40: {x: 1}\n  containers: [{name: c, newContainerField: true, ports: [{containerPort: 80, newPortField: 1}]}]\nstatus: {podIP: 10.0.0.1, newStatusField: []}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x, newMetaField: 1}\nnewTopLevelField: 1\n",
        );
        assert_eq!(read.objects.len(), 2, "{:?}", read.diagnostics);
        assert!(read.diagnostics.is_empty(), "{:?}", read.diagnostics);
        let read = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x, newMetaField: 1}\nspec: {podSelector: {}, ingress: [{from: [{aNewPeerKind: {}}]}]}\n",
        );
        assert!(read.objects.is_empty());
        assert!(
            read.diagnostics[0].message.contains("aNewPeerKind"),
            "{:?}",
            read.diagnostics
        );
    }

    /// A lone CR ends a line for the parser: a list's items and the documents after it are cut
    /// out at the parser's lines, so errors point into the file (a fuzzer found an error at
    /// line 11 of a 6-line file).
    #[test]
    fn a_lone_cr_is_a_line_break_for_lists_and_documents() {
        let text = "apiVersion: v1\nkind: List\ritems:\n- {apiTgra: {name: a}}\n- {apiVersion: v1, kind: Pod, metadaat: {name: p, namespace: a}}\n";
        let lines = |text: &str| -> Vec<u64> {
            let read = parse_str(Path::new("f.yaml"), text);
            let mut diags = read.diagnostics.clone();
            if let Err(errors) = crate::policy::check(read) {
                diags.extend(errors);
            }
            let mut lines: Vec<u64> = diags.iter().map(|d| d.origin.pos.line).collect();
            lines.sort();
            lines.dedup();
            lines
        };
        assert_eq!(lines(text), [4, 5]);
        let text = "apiVersion: v1\rkind: Namespace\rmetadata: {name: a}\r---\rapiVersion: v1\rkind: Namespace\r\rmetadata: {name: [b]}\r";
        assert_eq!(lines(text), [8]);
        assert_eq!(
            yaml_lines("a\rb\r\nc\nd").collect::<Vec<_>>(),
            ["a\r", "b\r\n", "c\n", "d"]
        );
    }

    #[test]
    fn a_list_reads_as_its_items_with_the_file_positions() {
        // As `kubectl get pods,networkpolicies -o yaml` prints it.
        let text = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: a\n    namespace: x\n  status:\n    podIP: 10.0.0.1\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: x}\n  spec:\n    podSelector: {}\n    bogus: 1\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
        let read = parse(text);
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
        assert_eq!(read.objects[0].object.kind(), "Pod");
        assert_eq!(read.objects[0].start.line, 3);
        assert_eq!(read.diagnostics.len(), 1, "{:?}", read.diagnostics);
        let d = &read.diagnostics[0];
        assert_eq!((d.origin.pos.line, d.origin.pos.col), (15, 5), "{d}");
        // The JSON form (`-o json`) reads too.
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}
]}"#;
        let read = parse(json);
        assert_eq!(read.objects.len(), 2, "{:?}", read.diagnostics);
    }

    #[test]
    fn unknown_kinds_are_warnings() {
        let read = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n");
        assert!(read.objects.is_empty());
        assert_eq!(read.diagnostics.len(), 1);
        assert!(!read.diagnostics[0].is_error());
        assert_eq!(
            read.diagnostics[0].to_string(),
            "p.yaml:1:1: warning: unknown kind Deployment (apiVersion apps/v1): ignored"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let read = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
        assert_eq!(read.diagnostics.len(), 1);
        assert!(read.diagnostics[0].is_error());
        assert!(
            read.diagnostics[0].origin.pos.line >= 3,
            "{}",
            read.diagnostics[0]
        );
    }

    #[test]
    fn json_documents_read() {
        let read = parse(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}"#);
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
    }

    #[test]
    fn content_after_the_marker_stays() {
        let read = parse("--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n");
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
    }

    #[test]
    fn a_reread_directory_parses_only_the_files_that_changed() {
        let dir = std::env::temp_dir().join(format!("rampart-file-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ns =
            |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        std::fs::write(dir.join("a.yaml"), ns("a")).expect("write");
        std::fs::write(dir.join("b.yaml"), ns("b")).expect("write");
        let mut cache = FileCache::default();
        let object = |read: &Read, name: &str| {
            read.objects
                .iter()
                .find(|o| o.object.metadata().name.as_ref().map(|n| n.value.as_str()) == Some(name))
                .map(|o| std::sync::Arc::clone(&o.object))
        };
        let first = read_dir_cached(&dir, &mut cache);
        assert_eq!(first.objects.len(), 2);
        assert_eq!(first.files, read_dir(&dir).files);

        // b changes: a's object is the one read before, b's is read again.
        std::fs::write(dir.join("b.yaml"), ns("b2")).expect("write");
        let second = read_dir_cached(&dir, &mut cache);
        let (a1, a2) = (object(&first, "a"), object(&second, "a"));
        assert!(
            a1.zip(a2)
                .is_some_and(|(x, y)| std::sync::Arc::ptr_eq(&x, &y))
        );
        assert!(object(&second, "b").is_none() && object(&second, "b2").is_some());
        assert_eq!(second.files, read_dir(&dir).files);

        // A broken edit is reported at its line; fixed, the file is read again.
        std::fs::write(dir.join("b.yaml"), "apiVersion: v1\nkind: [\n").expect("write");
        let broken = read_dir_cached(&dir, &mut cache);
        assert_eq!(broken.objects.len(), 1);
        assert_eq!(broken.diagnostics.len(), 1, "{:?}", broken.diagnostics);
        std::fs::write(dir.join("b.yaml"), ns("b3")).expect("write");
        assert!(object(&read_dir_cached(&dir, &mut cache), "b3").is_some());

        // A removed file's objects go, and so does its entry.
        std::fs::remove_file(dir.join("b.yaml")).expect("remove");
        let third = read_dir_cached(&dir, &mut cache);
        assert_eq!(third.objects.len(), 1);
        assert_eq!(cache.files.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policy_file_names() {
        assert!(is_policy_file(Path::new("/d/a.yaml")));
        assert!(is_policy_file(Path::new("/d/a.json")));
        assert!(!is_policy_file(Path::new("/d/.a.yaml")));
        assert!(!is_policy_file(Path::new("/d/a.yaml.tmp")));
    }

    #[test]
    fn root_keys_give_the_type_only_when_certain() {
        let meta = |t: &str| scan_type_meta(t).map(|m| (m.api_version, m.kind));
        let some = |a: &str, k: &str| Some((Some(a.to_owned()), Some(k.to_owned())));
        assert_eq!(
            meta("apiVersion: networking.k8s.io/v1 # c\nkind: NetworkPolicy\n"),
            some("networking.k8s.io/v1", "NetworkPolicy")
        );
        // Indented lines are values, never the root's keys.
        assert_eq!(
            meta("kind: Pod\nmetadata:\n  kind: Namespace\napiVersion: v1\n"),
            some("v1", "Pod")
        );
        for unsure in [
            "{apiVersion: v1, kind: Pod}",
            "{\"apiVersion\": \"v1\", \"kind\": \"Pod\"}",
            "apiVersion: v1\nkind: \"Pod\"\n",
            "apiVersion: v1\nkind: Pod\nkind: Namespace\n",
            "apiVersion: v1\nkind:Pod\n",
            "apiVersion: v1\n",
        ] {
            assert_eq!(meta(unsure), None, "{unsure}");
        }
        // What the scan leaves to the parser still reads.
        let read = parse("{apiVersion: v1, kind: Namespace, metadata: {name: a}}\n");
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
        let read = parse("apiVersion: v1\nkind: \"Namespace\"\nmetadata: {name: a}\n");
        assert_eq!(read.objects.len(), 1, "{:?}", read.diagnostics);
    }

    #[test]
    fn large_files_parse_in_parallel_in_order_with_positions() {
        let mut text = String::new();
        let n = 4000;
        for i in 0..n {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{i}\n  labels: {{a: b, c: d, e: f, g: h, i: j}}\n"
            ));
        }
        text.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: last\nspec: {oops: 1}\n");
        assert!(text.len() > PARALLEL_MIN_BYTES);
        let read = parse(&text);
        assert_eq!(read.objects.len(), n);
        let names: Vec<_> = read
            .objects
            .iter()
            .map(|o| o.object.metadata().name.as_ref().map(|n| n.value.clone()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(name.as_deref(), Some(format!("ns-{i}").as_str()));
        }
        assert_eq!(read.diagnostics.len(), 1);
        assert_eq!(read.diagnostics[0].origin.pos.line, 6 * n as u64 + 6);
    }
}
