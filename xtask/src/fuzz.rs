//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the libFuzzer targets of `fuzz/` (cargo fuzz,
//! on nightly) on their committed corpus. New inputs a run finds go to a scratch corpus under
//! `target/fuzz-corpus/` (kept between runs; never committed); an input that fails a property is
//! saved in `fuzz/artifacts/<target>/` and fails the run, and becomes a regression test once it
//! is copied to `fuzz/regressions/<target>/` (replayed by `rampart_agent::fuzzing`'s tests).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::process::{exec, workspace_root};

/// The targets, and the longest input each is given (bytes): a body or a file must be longer
/// than the masker's hold-back or a policy file, a frame no longer than an Ethernet MTU.
pub const TARGETS: [(&str, usize); 8] = [
    ("policy_check", 16384),
    ("jwt_token", 4096),
    ("jwks_document", 8192),
    ("dlp_stream", 20000),
    ("decoders", 8192),
    ("http_head", 4096),
    ("client_hello", 4096),
    ("packet", 1600),
];

/// How long `cargo xtask test` runs each target.
pub const SECONDS_IN_TEST: u64 = 10;

/// The cargo-fuzz release setup installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// One target (default: every target in turn).
    pub target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Build without optimisation (debug assertions on): builds in a fraction of the time, runs
    /// several times slower; what `cargo xtask test` uses for its short runs.
    #[arg(long)]
    pub dev: bool,
}

/// How the targets are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `-O`: release, for long runs.
    Optimised,
    /// `--dev`: unoptimised with debug assertions, for short ones.
    Dev,
}

impl Build {
    fn flag(self) -> &'static str {
        match self {
            Build::Optimised => "-O",
            Build::Dev => "--dev",
        }
    }
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::SetupArgs::all())?;
    let targets: Vec<(&str, usize)> = match &args.target {
        None => TARGETS.to_vec(),
        Some(name) => vec![
            *TARGETS
                .iter()
                .find(|(t, _)| t == name)
                .with_context(|| format!("no fuzz target {name:?}; the targets: {}", names()))?,
        ],
    };
    let how = if args.dev {
        Build::Dev
    } else {
        Build::Optimised
    };
    build(how)?;
    let mut failed = Vec::new();
    for (target, max_len) in targets {
        if let Err(e) = run_target(target, max_len, args.seconds, how) {
            eprintln!("fuzz: {target}: {e:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn names() -> String {
    TARGETS.map(|(t, _)| t).join(", ")
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `cargo fuzz` on the nightly toolchain: rustup's `cargo` proxy from PATH (not `$CARGO`, the
/// stable cargo that runs xtask) with `RUSTUP_TOOLCHAIN=nightly`, and none of the variables
/// cargo set for xtask itself.
fn cargo_fuzz() -> Command {
    let mut command = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| {
            n == "CARGO"
                || n == "RUSTC"
                || n == "RUSTDOC"
                || n.starts_with("CARGO_PKG_")
                || n.starts_with("CARGO_MANIFEST_")
        }) {
            command.env_remove(name);
        }
    }
    command.env("RUSTUP_TOOLCHAIN", "nightly").arg("fuzz");
    command
}

/// Builds every target once (with AddressSanitizer).
pub fn build(how: Build) -> anyhow::Result<()> {
    exec(cargo_fuzz().args(["build", how.flag()]))
        .context("building the fuzz targets (cargo fuzz on nightly)")
}

/// Runs one built target for `seconds` on its committed corpus and a scratch corpus.
pub fn run_target(target: &str, max_len: usize, seconds: u64, how: Build) -> anyhow::Result<()> {
    let scratch = workspace_root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("{}", scratch.display()))?;
    let seeds = fuzz_dir().join("corpus").join(target);
    let regressions = fuzz_dir().join("regressions").join(target);
    let mut command = cargo_fuzz();
    command.args(["run", how.flag(), target]);
    command.arg(&scratch).arg(&seeds);
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    command.args([
        "--".to_owned(),
        format!("-max_total_time={seconds}"),
        format!("-max_len={max_len}"),
        // Each input is judged on its own: a slow one is a finding too, and memory is bounded.
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
    ]);
    exec(&mut command)
}
