//! `rampart`: the node agent and its command-line tools. Parses arguments and hands a validated
//! configuration to the module that does the work; all wiring of the agent is in `app.rs`.

use clap::Parser as _;
use rampart_agent::{app, cli, config, status};

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_tracing();
    let result = match cli.command {
        cli::Command::Run(args) => config::RunConfig::from_args(args)
            .map_err(anyhow::Error::from)
            .and_then(app::run),
        cli::Command::Status(args) => status::run(&args),
        cli::Command::Cleanup(args) => rampart_agent::datapath::remove_pins(&args.bpffs_root)
            .map(|n| println!("removed {n} pins under {}", args.bpffs_root.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
