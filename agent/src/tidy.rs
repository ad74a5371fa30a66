//! The agent's layering, checked on its source text (in the style of rust-analyzer's tidy
//! tests): a module may name only modules below it. Each rule names a file or folder and the
//! top-level modules it must not name; a new arrow that runs upward fails here with the file
//! and line. Bottom to top: `dns_name`, `spiffe`, `cli` → `config` → `policy/` → `datapath/`, `flows/`,
//! `l7/` → `mesh/` → `state` → `controller`, `admin`, `metrics`, `status` → `app`.
//!
//! The rules hold what is layered today; the rest of the target (ARCHITECTURE.md) is reached a
//! step at a time, each step adding its rule here.

use std::path::{Path, PathBuf};

/// (file or folder under `agent/src`, top-level modules it must not name).
const RULES: &[(&str, &[&str])] = &[
    // Leaves.
    ("dns_name.rs", &ALL),
    ("spiffe.rs", &ALL),
    ("cli.rs", &ALL),
    // Configuration is validated from the command line alone.
    ("config.rs", &ABOVE_CONFIG),
    // The compiler knows nothing of the running agent.
    (
        "policy",
        &[
            "admin",
            "admin_client",
            "app",
            "controller",
            "listen",
            "metrics",
            "state",
            "status",
        ],
    ),
    // Object validation takes identities from the leaf, not the proxy.
    ("policy/model.rs", &["mesh"]),
    ("policy/http.rs", &["mesh"]),
    // What the running agent shares sits below everything that reads it.
    (
        "state.rs",
        &["admin", "app", "controller", "metrics", "status"],
    ),
    // Nothing but the composition root names it.
    ("admin.rs", &["app"]),
    ("controller.rs", &["app"]),
    ("metrics", &["app"]),
    ("status.rs", &["app"]),
    (
        "mesh",
        &["app", "admin", "controller", "metrics", "state", "status"],
    ),
    (
        "l7",
        &["app", "admin", "controller", "metrics", "state", "status"],
    ),
    (
        "flows",
        &["app", "controller", "metrics", "state", "status"],
    ),
    (
        "datapath",
        &["app", "admin", "controller", "metrics", "state", "status"],
    ),
];

/// Every top-level module but the CLI and the leaves: configuration is built from those alone.
const ABOVE_CONFIG: [&str; 16] = [
    "admin",
    "admin_client",
    "app",
    "controller",
    "datapath",
    "flows",
    "l7",
    "listen",
    "mesh",
    "metrics",
    "policy",
    "policy_cli",
    "policy_map",
    "routes",
    "state",
    "status",
];

/// Every top-level module of the crate.
const ALL: [&str; 23] = [
    "admin",
    "admin_client",
    "app",
    "cli",
    "config",
    "controller",
    "datapath",
    "dns_name",
    "flows",
    "l7",
    "listen",
    "mesh",
    "metrics",
    "policy",
    "policy_cli",
    "policy_map",
    "routes",
    "spiffe",
    "state",
    "status",
    "tidy",
    "lib",
    "main",
];

/// The top-level modules a line of source names through `crate::` (single paths and
/// `crate::{a, b::c}` groups).
fn named_modules(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(
                inner
                    .split(',')
                    .filter_map(|item| first_segment(item.trim())),
            );
        } else if let Some(name) = first_segment(rest) {
            names.push(name);
        }
    }
    names
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
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

#[test]
fn no_module_names_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut violations = Vec::new();
    for file in &files {
        let Ok(relative) = file.strip_prefix(&src) else {
            continue;
        };
        let relative = relative.to_string_lossy().replace('\\', "/");
        let own = relative
            .split(['/', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (rule_path, forbidden) in RULES {
            let applies = relative == *rule_path || relative.starts_with(&format!("{rule_path}/"));
            if !applies {
                continue;
            }
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for name in named_modules(code) {
                    if name != own && forbidden.contains(&name.as_str()) {
                        violations.push(format!(
                            "agent/src/{relative}:{}: names crate::{name}, a layer above it",
                            number + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn module_paths_are_read_from_single_and_grouped_imports() {
    assert_eq!(named_modules("use crate::state::AgentState;"), ["state"]);
    assert_eq!(
        named_modules("use crate::{admin, metrics::Metrics};"),
        ["admin", "metrics"]
    );
    assert_eq!(
        named_modules("let x = crate::dns_name::is_dns_label(a) && crate::cli::X;"),
        ["dns_name", "cli"]
    );
    assert!(named_modules("use super::chain;").is_empty());
}
