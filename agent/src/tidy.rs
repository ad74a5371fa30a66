//! The agent's layering, checked on its source text (in the style of rust-analyzer's tidy
//! tests). Every `crate::`, `super::` and `self::` path in a file's non-test code is resolved to
//! the file of the module it names; then
//! - a file may name only modules of its own layer or one below ([`LAYERS`], bottom to top), and
//! - no file reaches itself through such names (no import cycle, within a layer too).
//!
//! A new arrow that runs upward, or closes a circle, fails here with the file and line of each
//! arrow. Test code (`#[cfg(test)]` items, `tests.rs` files) is not layered: tests may use
//! anything to build their fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The agent's modules, bottom to top. A module path names itself and everything inside it
/// unless a longer path is listed. ARCHITECTURE.md draws the same map.
const LAYERS: &[&[&str]] = &[
    // Leaves: domain types and helpers that know nothing of the agent.
    &[
        "dns_name",
        "spiffe",
        "cli",
        "kernel_log_level",
        "kernel_state",
        "listen",
        "limits",
        "activity",
        "pod_interfaces",
        "veth_peers",
        "admin_client",
        "allocator",
        "host_addresses",
        "view",
        "test_support",
    ],
    // The hot restart's protocol and socket passing (the composition root drives it).
    &["handover::wire", "handover::messages"],
    &["handover"],
    // Configuration is validated from the command line alone.
    &["config"],
    // Policy: read → spec shapes → sections and model → compile → decide.
    &["policy::diag"],
    &["policy::spec"],
    &["policy::source", "policy::crd"],
    &["policy::selector", "policy::secret", "policy::config_map"],
    &["policy::waf", "policy::dlp"],
    &["policy::http", "policy::ingress"],
    &["policy::model"],
    &["policy::identity", "policy::cookie"],
    &["policy", "policy::compile"],
    &["policy::verdict"],
    // The kernel loader and the flow log (which owns the proxy's event types).
    &["datapath", "flows"],
    // Certificates: the CA's signing and the TLS configurations, then the CA service (which
    // signs them for nodes, and whose client the mesh uses).
    &["mesh::ca", "mesh::tls"],
    &["ca_service"],
    // The proxy: the L7 filters, then the mesh that runs them.
    &["l7"],
    &["mesh"],
    // What the running agent shares, and the queries over it.
    &["generation"],
    // Where objects come from: files, pushes, the Kubernetes API.
    &["sources"],
    &["state", "explain"],
    &["controller", "status"],
    &["metrics"],
    &["admin"],
    &["policy_cli", "flows_cli", "ca_cli", "kernel_log_cli"],
    // The fuzz targets' properties: over the parsers of every layer below.
    &["fuzzing"],
    // The composition root and the binary.
    &["app"],
    &["lib", "main", "tidy"],
];

/// One file's place: its module path and layer.
struct SourceFile {
    relative: String,
    module: Vec<String>,
    text: String,
}

/// An arrow: `from` names the module in `to` at `line`.
#[derive(Debug, Clone)]
struct Arrow {
    to: String,
    line: usize,
    named: String,
}

/// The module path of a file under `src` (`policy/model/mod.rs` → `policy::model`; the crate
/// roots are `lib` and `main`, which no path names).
fn module_of(relative: &str) -> Vec<String> {
    let without = relative.strip_suffix(".rs").unwrap_or(relative);
    let mut parts: Vec<String> = without.split('/').map(str::to_owned).collect();
    if parts.len() > 1 && parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    parts
}

/// The layer of a module path: the layer of its longest listed prefix.
fn layer_of(module: &[String]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (layer, paths) in LAYERS.iter().enumerate() {
        for path in *paths {
            let segments: Vec<&str> = path.split("::").collect();
            let matches =
                segments.len() <= module.len() && segments.iter().zip(module).all(|(a, b)| a == b);
            if matches && best.is_none_or(|(len, _)| segments.len() > len) {
                best = Some((segments.len(), layer));
            }
        }
    }
    best.map(|(_, layer)| layer)
}

/// The source without its test code: `#[cfg(test)]` items are blanked (lines kept, so line
/// numbers stay true).
fn without_tests(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = &lines[i][..lines[i].len() - trimmed.len()];
            let close = format!("{indent}}}");
            let mut end = i + 1;
            let single = lines.get(end).is_some_and(|l| l.trim_end().ends_with(';'));
            if !single {
                while end < lines.len() && lines[end].trim_end() != close {
                    end += 1;
                }
            }
            for _ in i..=end.min(lines.len() - 1) {
                out.push(String::new());
            }
            i = end + 1;
            continue;
        }
        out.push(lines[i].split("//").next().unwrap_or_default().to_owned());
        i += 1;
    }
    out
}

/// The module paths a source text names, each with its 0-based line: `crate::a::b`,
/// `super::x`, `self::y`, and groups (`crate::a::{self, b::c, d::{e, f}}`) across lines.
fn named_paths(lines: &[String], own: &[String]) -> Vec<(Vec<String>, usize)> {
    let text = lines.join("\n");
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(rest) = text.get(at..) else {
            at += 1;
            continue;
        };
        let root: Option<(usize, Vec<String>)> = if rest.starts_with("crate::") {
            Some(("crate::".len(), Vec::new()))
        } else if rest.starts_with("super::") || rest.starts_with("self::") {
            // `super` of `a/b.rs` (module a::b) is `a`; of `a/b/mod.rs` (module a::b) too.
            let mut base = own.to_vec();
            let mut len = 0;
            let mut remaining = rest;
            if remaining.starts_with("self::") {
                len += "self::".len();
                remaining = &remaining["self::".len()..];
            }
            while let Some(next) = remaining.strip_prefix("super::") {
                base.pop();
                len += "super::".len();
                remaining = next;
            }
            Some((len, base))
        } else {
            None
        };
        let preceded_by_ident = at > 0 && {
            let c = bytes[at - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b':'
        };
        match root {
            Some((len, base)) if !preceded_by_ident => {
                let line = text[..at].matches('\n').count();
                let mut cursor = at + len;
                for path in parse_tree(&text, &mut cursor) {
                    let mut full = base.clone();
                    full.extend(path);
                    found.push((full, line));
                }
                at = cursor.max(at + 1);
            }
            _ => at += 1,
        }
    }
    found
}

/// Parses `a::b`, `a::{b, c::d}` or `{...}` at `cursor`, returning each path it names.
fn parse_tree(text: &str, cursor: &mut usize) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let skip_space = |cursor: &mut usize| {
        while *cursor < bytes.len() && (bytes[*cursor] as char).is_whitespace() {
            *cursor += 1;
        }
    };
    let mut prefix = Vec::new();
    loop {
        skip_space(cursor);
        if *cursor < bytes.len() && bytes[*cursor] == b'{' {
            *cursor += 1;
            let mut paths = Vec::new();
            loop {
                skip_space(cursor);
                if *cursor >= bytes.len() {
                    break;
                }
                if bytes[*cursor] == b'}' {
                    *cursor += 1;
                    break;
                }
                if bytes[*cursor] == b',' {
                    *cursor += 1;
                    continue;
                }
                let before = *cursor;
                for path in parse_tree(text, cursor) {
                    let mut full = prefix.clone();
                    full.extend(path);
                    paths.push(full);
                }
                // `x as y`, `*` and anything else up to the next separator.
                while *cursor < bytes.len() && !matches!(bytes[*cursor], b',' | b'}') {
                    *cursor += 1;
                }
                if *cursor == before {
                    *cursor += 1;
                }
            }
            return paths;
        }
        let start = *cursor;
        while *cursor < bytes.len()
            && (bytes[*cursor].is_ascii_alphanumeric() || bytes[*cursor] == b'_')
        {
            *cursor += 1;
        }
        let segment = &text[start..*cursor];
        if segment.is_empty() {
            return vec![prefix];
        }
        if segment != "self" {
            prefix.push(segment.to_owned());
        }
        if text[*cursor..].starts_with("::") {
            *cursor += 2;
        } else {
            return vec![prefix];
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every non-test source file of the crate.
fn source_files() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = Vec::new();
    for path in paths {
        let Ok(relative) = path.strip_prefix(&src) else {
            continue;
        };
        let relative = relative.to_string_lossy().replace('\\', "/");
        if relative == "tests.rs" || relative.ends_with("/tests.rs") || relative.contains("/tests/")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        files.push(SourceFile {
            module: module_of(&relative),
            relative,
            text,
        });
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    files
}

/// Each file's arrows to other files (the file of the longest module prefix a path names).
fn arrows(files: &[SourceFile]) -> BTreeMap<String, Vec<Arrow>> {
    let by_module: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|f| (f.module.clone(), f.relative.as_str()))
        .collect();
    let mut all = BTreeMap::new();
    for file in files {
        let lines = without_tests(&file.text);
        let mut out: Vec<Arrow> = Vec::new();
        for (path, line) in named_paths(&lines, &file.module) {
            let target = (0..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]).copied());
            if let Some(to) = target
                && to != file.relative
                && !out.iter().any(|a| a.to == to && a.line == line + 1)
            {
                out.push(Arrow {
                    to: to.to_owned(),
                    line: line + 1,
                    named: path.join("::"),
                });
            }
        }
        all.insert(file.relative.clone(), out);
    }
    all
}

#[test]
fn no_module_names_one_above_it() {
    let files = source_files();
    assert!(files.len() > 50, "found only {} files", files.len());
    let module_of_file: BTreeMap<&str, &[String]> = files
        .iter()
        .map(|f| (f.relative.as_str(), f.module.as_slice()))
        .collect();
    let mut violations = Vec::new();
    for file in &files {
        if layer_of(&file.module).is_none() {
            violations.push(format!(
                "agent/src/{}: module {} is in no layer of tidy.rs",
                file.relative,
                file.module.join("::")
            ));
        }
    }
    let all = arrows(&files);
    for (from, out) in &all {
        let Some(own) = module_of_file.get(from.as_str()).and_then(|m| layer_of(m)) else {
            continue;
        };
        for arrow in out {
            let Some(theirs) = module_of_file
                .get(arrow.to.as_str())
                .and_then(|m| layer_of(m))
            else {
                continue;
            };
            if theirs > own {
                violations.push(format!(
                    "agent/src/{from}:{}: names {}, a layer above it",
                    arrow.line, arrow.named
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_file_reaches_itself_through_imports() {
    let all = arrows(&source_files());
    // Depth-first search; a back edge closes a cycle, reported arrow by arrow.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut cycles = Vec::new();
    for start in all.keys() {
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        if done.contains(start.as_str()) {
            continue;
        }
        let mut path: Vec<&str> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        while let Some((node, next)) = stack.pop() {
            if next == 0 {
                path.push(node);
            }
            let out = &all[node];
            if next < out.len() {
                stack.push((node, next + 1));
                let arrow = &out[next];
                let to = arrow.to.as_str();
                if let Some(at) = path.iter().position(|p| *p == to) {
                    let mut shown = Vec::new();
                    for (i, file) in path[at..].iter().enumerate() {
                        let line = if at + i + 1 < path.len() {
                            lines[at + i]
                        } else {
                            arrow.line
                        };
                        shown.push(format!("agent/src/{file}:{line}"));
                    }
                    shown.push(format!("agent/src/{to}"));
                    cycles.push(shown.join(" → "));
                } else if !done.contains(to) {
                    lines.push(arrow.line);
                    stack.push((to, 0));
                }
            } else {
                done.insert(node);
                path.pop();
                lines.pop();
            }
        }
    }
    cycles.truncate(10);
    assert!(
        cycles.is_empty(),
        "import cycles (the first 10):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn paths_are_read_from_single_grouped_and_relative_imports() {
    let own = vec!["policy".to_owned(), "model".to_owned()];
    let read = |text: &str| -> Vec<String> {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        named_paths(&lines, &own)
            .into_iter()
            .map(|(p, _)| p.join("::"))
            .collect()
    };
    assert_eq!(read("use crate::state::AgentState;"), ["state::AgentState"]);
    assert_eq!(
        read("use crate::{admin, metrics::Metrics};"),
        ["admin", "metrics::Metrics"]
    );
    assert_eq!(
        read("let x = crate::dns_name::is_dns_label(a) && crate::cli::X;"),
        ["dns_name::is_dns_label", "cli::X"]
    );
    assert_eq!(
        read("use crate::policy::{\n    self,\n    spec::{objects::Pod, RuleAction as R},\n};"),
        [
            "policy",
            "policy::spec::objects::Pod",
            "policy::spec::RuleAction"
        ]
    );
    assert_eq!(
        read("use super::diag::Diagnostic;"),
        ["policy::diag::Diagnostic"]
    );
    assert_eq!(read("use super::super::cli;"), ["cli"]);
    assert_eq!(read("other_crate::x"), Vec::<String>::new());
}

#[test]
fn test_code_is_not_layered() {
    let text = "use crate::a;\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod more {\n    use crate::b;\n}\nuse crate::c; // crate::d\n";
    let lines = without_tests(text);
    let named: Vec<String> = named_paths(&lines, &[])
        .into_iter()
        .map(|(p, line)| format!("{}@{line}", p.join("::")))
        .collect();
    assert_eq!(named, ["a@0", "c@7"]);
}

#[test]
fn every_listed_layer_names_a_module_that_exists() {
    let files = source_files();
    for paths in LAYERS {
        for path in *paths {
            let module: Vec<String> = path.split("::").map(str::to_owned).collect();
            assert!(
                files.iter().any(|f| f.module.starts_with(&module)) || *path == "main",
                "tidy.rs lists {path}, which no file is"
            );
        }
    }
}
