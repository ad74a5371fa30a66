//! Running commands from tasks: echoed before they run, failing with the command line.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Runs `cmd` in the workspace root, echoing it; fails if it exits non-zero.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("+ {shown}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    eprintln!("  ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout if it succeeds.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `cargo` command for the toolchain running xtask (cargo sets `$CARGO`), without the
/// variables `cargo run` set for xtask itself (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): build
/// scripts that watch them (ring's) would see another package and rebuild, so a plain `cargo
/// build` after a `cargo xtask ...` (and the reverse) rebuilt ring and everything above it.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_for_xtask_itself) {
            command.env_remove(name);
        }
    }
    command
}

/// Whether `cargo run` sets this variable for the package it runs.
fn set_for_xtask_itself(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_cargo_does_not_inherit_xtasks_package_variables() {
        // `cargo test` sets them for this process as `cargo run` does for xtask.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = cargo();
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|n| n == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(removed.iter().any(|n| n == "CARGO_PKG_NAME"), "{removed:?}");
        assert!(!set_for_xtask_itself("CARGO_HOME"));
        assert!(!set_for_xtask_itself("CARGO_TARGET_DIR"));
    }
}
