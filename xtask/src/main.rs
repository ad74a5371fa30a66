//! `cargo xtask <task>`: the project's own tasks. Each is a module with one job.

mod bench;
mod build_ebpf;
mod conformance;
mod demo;
mod fuzz;
mod image;
mod manifests;
mod process;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Rampart project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, rust-src, bpf-linker). Idempotent.
    Setup(setup::SetupArgs),
    /// Build the kernel object to target/ebpf/rampart-ebpf.
    BuildEbpf,
    /// Run every check: fmt, clippy (host and eBPF), unit tests, kernel tests. Needs root.
    Test(test::TestArgs),
    /// Build, start a small node/pod topology with the agent, show what it sees, clean up.
    Demo,
    /// Run a conformance suite against the real agent; ends with `N passed, M failed`. Needs root.
    Conformance(conformance::ConformanceArgs),
    /// Run benchmark suites (ratios to baselines run side by side). Needs root.
    Bench(bench::BenchArgs),
    /// Render deploy/ (kustomize) and validate it against the supported Kubernetes releases'
    /// schemas, and the example policies against the CRDs.
    Manifests,
    /// Build the agent's OCI image (buildah); `--prove` runs a two-node test with it (podman).
    Image(image::ImageArgs),
    /// Run the libFuzzer targets (cargo fuzz, nightly) on their committed corpus; `packet`
    /// needs root.
    Fuzz(fuzz::FuzzArgs),
    /// Two nodes under mixed traffic through every layer, with policy churn, certificate
    /// rotation and hot restarts, checked continuously; fails on any violation. Needs root.
    Soak(soak::SoakArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args),
        Task::BuildEbpf => build_ebpf::run().map(|_| ()),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Conformance(args) => conformance::run(&args),
        Task::Manifests => manifests::run(),
        Task::Image(args) => image::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Soak(args) => soak::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
