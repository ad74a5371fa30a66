//! `cargo xtask test`: every check the project has, in tiers, stopping at the first failure:
//! setup → formatting → clippy (host crates, then the kernel crate for its real target) →
//! cargo-deny (licences, bans, sources) → build
//! the agent → unit tests and privileged kernel tests (network namespaces, real programs) →
//! the conformance suites (NetworkPolicy against the real agent; JWT and rate limiting
//! through the proxy's verifier and limiter) → the demo's scenario → the image, built and run.
//!
//! Privileged tests need root; they fail (never skip) without it.

use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use rampart_ebpf_build::EbpfToolchain;

use crate::process::{cargo, exec, workspace_root};
use crate::setup;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip fmt and clippy (for a quick re-run of the tests while working).
    #[arg(long)]
    pub no_lint: bool,
    /// Passed to `cargo test` as a test name filter.
    pub filter: Option<String>,
}

pub fn run_all(args: &TestArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::all())?;
    xtask_builds_without_the_ebpf_toolchain()?;
    sweep()?;
    if !args.no_lint {
        exec(cargo().args(["fmt", "--all", "--check"]))?;
        exec(cargo().args([
            "clippy",
            "--locked",
            "--workspace",
            "--exclude",
            "rampart-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        clippy_kernel_crate()?;
        exec(cargo().args(["deny", "--locked", "check", "licenses", "bans", "sources"]))?;
        crate::manifests::run()?;
    }
    // The upgrade test's previous release: this agent with the map layouts before the current
    // ones (feature `previous-layout`), kept beside it as `rampart-previous`.
    exec(cargo().args([
        "build",
        "--locked",
        "-p",
        "rampart-agent",
        "--features",
        "previous-layout",
    ]))?;
    let bin = workspace_root().join("target/debug/rampart");
    let previous = workspace_root().join("target/debug/rampart-previous");
    std::fs::copy(&bin, &previous).with_context(|| {
        format!(
            "copying the previous layout's build to {}",
            previous.display()
        )
    })?;
    exec(cargo().args(["build", "--locked", "-p", "rampart-agent"]))?;
    let mut test = cargo();
    // Every host crate, the privileged tests (not a default member) included.
    test.args([
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "rampart-ebpf",
    ])
    .env("RAMPART_BIN", &bin)
    .env("RAMPART_PREVIOUS_BIN", &previous);
    if let Some(filter) = &args.filter {
        test.arg(filter);
    }
    let result = exec(&mut test);
    sweep()?;
    result?;
    if args.filter.is_none() {
        // The public conformance cases: NetworkPolicy against the real agent, with pods on
        // routed veths and on a bridge, then the proxy's JWT verifier and rate limiter.
        use crate::conformance::{Suite, TopologyArg};
        for topology in [TopologyArg::Routed, TopologyArg::Bridge] {
            crate::conformance::run_built(Suite::Netpol, None, None, topology, bin.clone())?;
            sweep()?;
        }
        for suite in [Suite::Jwt, Suite::Ratelimit, Suite::Waf, Suite::Dlp] {
            crate::conformance::run_built(suite, None, None, TopologyArg::Routed, bin.clone())?;
        }
        // More DLP cases of the public kinds, derived from the same specifications.
        crate::conformance::run_built(
            Suite::Dlp,
            Some(workspace_root().join(rampart_tests::dlp_cases::EXTRA_CASES)),
            None,
            TopologyArg::Routed,
            bin.clone(),
        )?;
        crate::conformance::waf_debian_report(bin.clone())?;
        // The fuzz targets, built, then each run briefly on its committed inputs (longer runs:
        // `cargo xtask fuzz`).
        use crate::fuzz::Build;
        crate::fuzz::build(Build::Dev)?;
        for (target, max_len) in crate::fuzz::TARGETS {
            crate::fuzz::run_target(target, max_len, crate::fuzz::SECONDS_IN_TEST, Build::Dev)?;
        }
        // A short soak: every layer under churn, certificate rotation and a hot restart.
        crate::soak::run_built(bin.clone(), crate::soak::MINUTES_IN_TEST, None)?;
        // The first run a newcomer sees: every layer on two nodes, each step checked.
        let demo = crate::demo::run_debug(&bin);
        sweep()?;
        demo?;
        // The agent's image, built and run: two namespace tests with the agents in containers.
        crate::image::run(&crate::image::ImageArgs {
            crs: None,
            prove: true,
        })?;
        sweep()?;
    }
    Ok(())
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    run_all(args)?;
    println!(
        "xtask test: all checks passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Clippy on the kernel crate, for `bpfel-unknown-none` (the only target it is built for), with
/// the toolchain that builds it.
fn clippy_kernel_crate() -> anyhow::Result<()> {
    let toolchain = EbpfToolchain::select()?;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        toolchain.rustup_name(),
        "cargo",
        "clippy",
        "--locked",
        "-p",
        "rampart-ebpf",
        // The benchmark baselines too (they are only in the benchmarks' object).
        "--features",
        "bench-baselines",
    ])
    .args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ])
    .args(["--target-dir", "target/clippy-ebpf", "--", "-D", "warnings"])
    // Build-std on stable needs RUSTC_BOOTSTRAP; on nightly it is harmless.
    .env("RUSTC_BOOTSTRAP", "1")
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "--cfg=bpf_target_arch=\"x86_64\"",
    );
    exec(&mut cmd)
}

/// xtask installs the eBPF toolchain and libmodsecurity, so building it must not build the
/// kernel object or link the WAF: no crate that does (the agent, the WAF engine) may be among
/// xtask's dependencies.
fn xtask_builds_without_the_ebpf_toolchain() -> anyhow::Result<()> {
    let tree = crate::process::output(cargo().args([
        "tree",
        "--locked",
        "-p",
        "xtask",
        "-e",
        "normal,build",
        "--prefix",
        "none",
    ]))
    .context("`cargo tree -p xtask` failed")?;
    if let Some(line) = tree.lines().find(|l| {
        ["rampart-agent ", "rampart-ebpf ", "rampart-waf "]
            .iter()
            .any(|c| l.starts_with(c))
    }) {
        anyhow::bail!(
            "xtask depends on `{line}`, which needs the eBPF toolchain or libmodsecurity that xtask installs"
        );
    }
    Ok(())
}

/// Removes network namespaces left by killed runs of the tests or the demo.
pub fn sweep() -> anyhow::Result<()> {
    for prefix in [
        rampart_tests::netns::TEST_PREFIX,
        rampart_tests::netns::DEMO_PREFIX,
    ] {
        let gone = rampart_tests::sweep_stale(prefix).context("sweeping stale namespaces")?;
        if !gone.is_empty() {
            eprintln!("removed stale namespaces: {}", gone.join(" "));
        }
    }
    Ok(())
}
