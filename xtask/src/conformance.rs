//! `cargo xtask conformance <suite> [--cases FILE]`: runs a conformance suite against the real
//! agent and prints each case's result, ending with `N passed, M failed` (probes).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Suite {
    /// Kubernetes NetworkPolicy reachability (`netpol-reachability/v1`), against the real agent
    /// in network namespaces (root).
    Netpol,
    /// JWT / JWS verification (`jwt_cases.jsonl`, keys in `jwt_keys.json` beside it), through the
    /// agent's verifier.
    Jwt,
    /// Token-bucket scenarios (`ratelimit_scenarios.jsonl`) through the agent's limiter on a fake
    /// clock.
    Ratelimit,
}

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    #[arg(value_enum)]
    pub suite: Suite,
    /// A cases file in the suite's format (default: the public cases kept in the repository).
    #[arg(long, value_name = "FILE")]
    pub cases: Option<PathBuf>,
}

pub fn run(args: &ConformanceArgs) -> anyhow::Result<()> {
    match args.suite {
        Suite::Netpol => {}
        // Library-level suites: no agent process, no root, no eBPF toolchain.
        Suite::Jwt | Suite::Ratelimit => {
            return run_built(args.suite, args.cases.clone(), PathBuf::new());
        }
    }
    setup::run(&setup::SetupArgs { check: false })?;
    rampart_tests::require_root();
    exec(cargo().args(["build", "--locked", "-p", "rampart-agent"]))?;
    let bin = workspace_root().join("target/debug/rampart");
    run_built(args.suite, args.cases.clone(), bin)
}

/// Runs the suite with an agent binary already built (`cargo xtask test` builds it once).
pub fn run_built(suite: Suite, cases: Option<PathBuf>, bin: PathBuf) -> anyhow::Result<()> {
    match suite {
        Suite::Netpol => netpol(cases, bin),
        Suite::Jwt => library_suite(
            cases,
            rampart_tests::jwt_cases::DEFAULT_CASES,
            rampart_tests::jwt_cases::run,
        ),
        Suite::Ratelimit => library_suite(
            cases,
            rampart_tests::ratelimit_cases::DEFAULT_CASES,
            rampart_tests::ratelimit_cases::run,
        ),
    }
}

/// Runs a suite whose runner returns (passed, failed), and fails if any case failed.
fn library_suite(
    cases: Option<PathBuf>,
    default: &str,
    runner: impl FnOnce(&std::path::Path) -> anyhow::Result<(usize, usize)>,
) -> anyhow::Result<()> {
    let path = cases.unwrap_or_else(|| workspace_root().join(default));
    let (passed, failed) = runner(&path)?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} of {} cases failed", passed + failed);
    }
    Ok(())
}

fn netpol(cases: Option<PathBuf>, bin: PathBuf) -> anyhow::Result<()> {
    let path =
        cases.unwrap_or_else(|| workspace_root().join(rampart_tests::netpol_cases::DEFAULT_CASES));
    let file = rampart_tests::netpol_cases::load(&path)?;
    crate::test::sweep()?;
    let work_dir = std::env::temp_dir().join("rampart-conformance");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    println!(
        "netpol conformance: {} cases from {}",
        file.cases.len(),
        path.display()
    );
    let score = rampart_tests::netpol_runner::run(
        &file.cases,
        rampart_tests::netns::TEST_PREFIX,
        &work_dir,
        &bin,
    )?;
    println!("{} passed, {} failed", score.passed, score.failed);
    if score.failed > 0 {
        bail!(
            "{} of {} cases failed",
            score.cases_failed,
            file.cases.len()
        );
    }
    Ok(())
}
