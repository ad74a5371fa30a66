//! `policy_check`: a policy file through `rampart policy check`'s path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::policy::{self, compile, diag::Diagnostic, source};

const FILE: &str = "fuzz.yaml";

/// Reads, checks and compiles `data` as a policy file, as `rampart policy check` does.
pub fn policy_check(data: &[u8]) {
    // A file that is not UTF-8 is refused before it is parsed (`source::read_file`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read = source::parse_str(Path::new(FILE), text);
    // YAML's line breaks: LF, CRLF, and a lone CR.
    let bytes = text.as_bytes();
    let breaks = (0..bytes.len())
        .filter(|&i| bytes[i] == b'\n' || (bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    let lines = breaks as u64 + 1;
    for d in &read.diagnostics {
        named_in_file(d, lines);
    }
    let checked = match policy::check(read) {
        Ok(checked) => checked,
        Err(diagnostics) => {
            assert!(
                diagnostics.iter().any(Diagnostic::is_error),
                "a refused file without an error: {diagnostics:?}"
            );
            for d in &diagnostics {
                named_in_file(d, lines);
            }
            return;
        }
    };
    for w in &checked.warnings {
        named_in_file(w, lines);
    }
    let local = BTreeMap::new();
    let node = compile::Node {
        local: &local,
        host: &BTreeSet::new(),
        trust_domain: "cluster.local",
        audit: false,
    };
    let _ = compile::compile(&checked.model, node, &mut compile::Memory::new());
}

/// A diagnostic names the file, and a line of it if any.
fn named_in_file(d: &Diagnostic, lines: u64) {
    assert_eq!(d.origin.file, Path::new(FILE), "{d}");
    assert!(
        d.origin.pos.line <= lines,
        "{d}: past the file's {lines} lines"
    );
}
