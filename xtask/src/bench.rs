//! `cargo xtask bench [SUITE...] [--quick]`: sets up, builds the benchmark binary
//! (`xtask/bench`, which embeds the kernel object and so cannot be part of xtask) in release
//! mode, and runs it as root. Results: a markdown table per suite and `target/bench/<suite>.json`.

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Fewer and shorter runs.
    #[arg(long)]
    pub quick: bool,
    /// Suites to run (all when none is given).
    pub suites: Vec<String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::all())?;
    rampart_tests::require_root();
    // The proxy suite runs the agent binary (target/release/rampart) beside the bench binary.
    exec(cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        "rampart-bench",
        "-p",
        "rampart-agent",
        // The XDP baselines the `xdp-drop` suite measures against, in this build's object only.
        "--features",
        "rampart-agent/bench-baselines",
    ]))?;
    let root = workspace_root();
    let mut cmd = std::process::Command::new(root.join("target/release/rampart-bench"));
    cmd.arg("--out").arg(root.join("target/bench"));
    if args.quick {
        cmd.arg("--quick");
    }
    cmd.args(&args.suites);
    exec(&mut cmd)
}
