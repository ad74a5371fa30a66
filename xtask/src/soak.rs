//! `cargo xtask soak [--minutes N]`: two nodes under mixed traffic through every layer, with
//! policy churn, certificate rotation and hot restarts, checked continuously (see
//! `rampart_tests::soak`). `cargo xtask test` runs it for [`MINUTES_IN_TEST`]; run it longer by
//! hand.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

/// The soak's length in `cargo xtask test`.
pub const MINUTES_IN_TEST: u64 = 2;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long the traffic runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub minutes: u64,
    /// The Core Rule Set the WAF loads (default: the shared CRS 4 beside the project, else
    /// Debian's).
    #[arg(long, value_name = "DIR")]
    pub crs: Option<PathBuf>,
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::all())?;
    rampart_tests::require_root();
    exec(cargo().args(["build", "--locked", "-p", "rampart-agent"]))?;
    let bin = workspace_root().join("target/debug/rampart");
    run_built(bin, args.minutes, args.crs.clone())
}

/// The soak with an agent binary already built.
pub fn run_built(bin: PathBuf, minutes: u64, crs: Option<PathBuf>) -> anyhow::Result<()> {
    let crs = crs.unwrap_or_else(|| rampart_tests::soak::default_crs(&workspace_root()));
    crate::test::sweep()?;
    let result = rampart_tests::soak::run(&rampart_tests::soak::SoakOptions {
        duration: Duration::from_secs(minutes * 60),
        bin,
        crs,
    });
    crate::test::sweep()?;
    result
}
