//! `rampart`: the node agent and its command-line tools. Parses arguments and hands a validated
//! configuration to the module that does the work; all wiring of the agent is in `app.rs`.

use anyhow::Context as _;
use clap::Parser as _;
use rampart_agent::{app, cli, config, policy_cli, status};

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_tracing();
    let result = match cli.command {
        cli::Command::Policy(cli::PolicyCommand::Check(args)) => {
            return exit(policy_cli::check(&args));
        }
        cli::Command::Policy(cli::PolicyCommand::Push(args)) => {
            return exit(policy_cli::push(&args));
        }
        cli::Command::Policy(cli::PolicyCommand::Explain(args)) => {
            return exit(policy_cli::explain(&args).map(|()| true));
        }
        cli::Command::Run(args) => config::RunConfig::from_args(*args)
            .map_err(anyhow::Error::from)
            .and_then(app::run),
        cli::Command::Ca(cli::CaCommand::Init(args)) => ca_init(&args),
        cli::Command::Ca(cli::CaCommand::NodeToken(args)) => {
            rampart_agent::ca_cli::node_token(&args)
        }
        cli::Command::Ca(cli::CaCommand::Serve(args)) => rampart_agent::ca_cli::serve_ca(&args),
        cli::Command::Ca(cli::CaCommand::Request(args)) => rampart_agent::ca_cli::request(&args),
        cli::Command::Status(args) => status::run(&args),
        cli::Command::Crds => {
            print!("{}", rampart_agent::policy::crd::definitions_yaml());
            Ok(())
        }
        cli::Command::Flows(args) => rampart_agent::flows_cli::run(&args),
        cli::Command::Cleanup(args) => cleanup(&args),
        cli::Command::KernelLog(args) => rampart_agent::kernel_log_cli::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `rampart cleanup`: the pins (which detaches the programs), then the proxy's policy routing.
fn cleanup(args: &cli::CleanupArgs) -> anyhow::Result<()> {
    let pins = rampart_agent::datapath::remove_pins(&args.bpffs_root)?;
    println!("removed {pins} pins under {}", args.bpffs_root.display());
    rampart_agent::mesh::runtime::PROXY_ROUTING
        .remove()
        .context("removing the proxy's policy routing")?;
    println!("removed the proxy's policy routing rules and routes");
    Ok(())
}

/// `rampart ca init`: a new root for the trust domain, written to `--dir`.
fn ca_init(args: &cli::CaInitArgs) -> anyhow::Result<()> {
    let validity = std::time::Duration::from_secs(u64::from(args.validity_days) * 86_400);
    let ca = rampart_agent::mesh::ca::Ca::generate(
        &args.trust_domain,
        validity,
        std::time::SystemTime::now(),
    )?;
    ca.write(&args.dir, args.force)?;
    println!(
        "created the root of trust domain {} in {} ({}, {}; valid {} days)",
        ca.trust_domain(),
        args.dir.display(),
        rampart_agent::mesh::ca::CA_CERT_FILE,
        rampart_agent::mesh::ca::CA_KEY_FILE,
        args.validity_days
    );
    Ok(())
}

/// Exit status of a command that reports its own findings: 0 if it succeeded, 1 if it found
/// problems, 2 if it could not run.
fn exit(result: anyhow::Result<bool>) -> std::process::ExitCode {
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("rampart: error: {e:#}");
            std::process::ExitCode::from(2)
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
