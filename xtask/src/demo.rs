//! `cargo xtask demo`: sets up, builds the agent and the demo scenario (`xtask/demo`, which
//! embeds the kernel object and so cannot be part of xtask itself), and runs it as root.

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

pub fn run() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs { check: false })?;
    rampart_tests::require_root();
    exec(cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        "rampart-agent",
        "-p",
        "rampart-demo",
    ]))?;
    let root = workspace_root();
    let target = root.join("target/release");
    exec(
        std::process::Command::new(target.join("rampart-demo"))
            .arg(target.join("rampart"))
            .arg(root.join("policies")),
    )
}
