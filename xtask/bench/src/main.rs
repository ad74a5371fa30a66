//! `cargo xtask bench [SUITE...] [--quick]`: benchmark suites, each printing a markdown table and
//! writing `target/bench/<suite>.json`, a list of [`Record`]s. Every figure is a median of
//! repeated runs reported beside a baseline measured in the same invocation: the machine is
//! shared and noisy, so ratios are what compare.

mod agent;
mod ca;
mod datapath;
mod haproxy;
mod http;
mod kube;
mod l7_creds;
mod policy;
mod proxy;
mod record;
mod restart;
mod traffic;
mod waf_floor;
mod xdp_drop;

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "rampart-bench")]
struct Args {
    /// Where to write `<suite>.json`.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Fewer and shorter runs (finishes in well under three minutes).
    #[arg(long)]
    quick: bool,
    /// Suites to run (all when none is given): datapath, xdp-drop, policy, agent, kube, proxy, ca,
    /// restart.
    suites: Vec<String>,
}

const SUITES: &[&str] = &[
    "datapath", "xdp-drop", "policy", "agent", "kube", "proxy", "ca", "restart",
];

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    rampart_tests::require_root();
    let suites: Vec<&str> = if args.suites.is_empty() {
        SUITES.to_vec()
    } else {
        args.suites.iter().map(String::as_str).collect()
    };
    for suite in &suites {
        if !SUITES.contains(suite) {
            anyhow::bail!("unknown suite {suite:?}; known: {}", SUITES.join(", "));
        }
    }
    std::fs::create_dir_all(&args.out)?;
    for suite in suites {
        let records = match suite {
            "datapath" => datapath::run(args.quick)?,
            "xdp-drop" => xdp_drop::run(args.quick)?,
            "agent" => agent::run(args.quick)?,
            "kube" => kube::run(args.quick)?,
            "policy" => policy::run(args.quick)?,
            "proxy" => proxy::run(args.quick)?,
            "ca" => ca::run(args.quick)?,
            "restart" => restart::run(args.quick)?,
            _ => unreachable!("checked above"),
        };
        record::print_table(suite, &records);
        let path = args.out.join(format!("{suite}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&records)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
