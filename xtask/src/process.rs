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

/// A `cargo` command for the toolchain running xtask (cargo sets `$CARGO`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
