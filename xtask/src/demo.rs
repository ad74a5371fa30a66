//! `cargo xtask demo`: sets up (only what the demo needs), builds the agent and the demo
//! scenario (`xtask/demo`, which embeds the kernel object and so cannot be part of xtask
//! itself) in the debug profile, and runs it as root. `cargo xtask test` runs the same scenario against its debug
//! build: every step of the demo checks what it shows.

use std::path::Path;

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

/// The demo runs on the debug build: it takes as long as on the release build (about 9 s:
/// its steps wait for the kernel and the agents, not for the agent's code), and a fresh clone
/// builds it in a fraction of the release build's time.
pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs {
        check: false,
        purpose: setup::Purpose::Demo,
    })?;
    rampart_tests::require_root();
    exec(cargo().args([
        "build",
        "--locked",
        "-p",
        "rampart-agent",
        "-p",
        "rampart-demo",
    ]))?;
    let target = workspace_root().join("target/debug");
    run_scenario(&target.join("rampart-demo"), &target.join("rampart"))
}

/// Builds the scenario in the debug profile and runs it with `agent` (the test run's).
pub fn run_debug(agent: &Path) -> anyhow::Result<()> {
    exec(cargo().args(["build", "--locked", "-p", "rampart-demo"]))?;
    let demo = workspace_root().join("target/debug/rampart-demo");
    run_scenario(&demo, agent)
}

fn run_scenario(demo: &Path, agent: &Path) -> anyhow::Result<()> {
    exec(
        std::process::Command::new(demo)
            .arg(agent)
            .arg(workspace_root().join("policies")),
    )
}
