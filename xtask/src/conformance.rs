//! `cargo xtask conformance <suite> [--cases FILE]`: runs a conformance suite against the real
//! agent and prints each case's result, ending with `N passed, M failed` (probes).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use rampart_tests::waf_e2e::Protocol;

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
    /// HTTP requests (`waf_requests.jsonl`), as raw HTTP/1.1 bytes and then over HTTP/2 through
    /// the real proxy with the WAF at its defaults over the Core Rule Set (root).
    Waf,
    /// DLP cases (`dlp_cases.jsonl`): bodies and targets with sensitive data and look-alikes,
    /// through the real proxy between two nodes, each under exactly its detectors (root).
    Dlp,
}

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    #[arg(value_enum)]
    pub suite: Suite,
    /// A cases file in the suite's format (default: the public cases).
    #[arg(long, value_name = "FILE")]
    pub cases: Option<PathBuf>,
    /// `waf` only: the Core Rule Set directory the agents load (default: CRS 4.28.0 in
    /// `../shared`; Debian's is /usr/share/modsecurity-crs).
    #[arg(long, value_name = "DIR")]
    pub crs: Option<PathBuf>,
    /// `netpol` only: how the pods are plugged into the node: `routed` (a host route per pod on
    /// its veth, as Calico does) or `bridge` (veths on a bridge with the gateway, as flannel and
    /// the bridge plugin do).
    #[arg(long, value_enum, default_value = "routed")]
    pub topology: TopologyArg,
}

/// How the netpol runner plugs pods (`--topology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyArg {
    Routed,
    Bridge,
}

impl TopologyArg {
    fn network(self) -> rampart_tests::topology::PodNetwork {
        match self {
            TopologyArg::Routed => rampart_tests::topology::PodNetwork::Routed,
            TopologyArg::Bridge => rampart_tests::topology::PodNetwork::Bridge,
        }
    }
}

pub fn run(args: &ConformanceArgs) -> anyhow::Result<()> {
    if !matches!(args.suite, Suite::Netpol | Suite::Waf | Suite::Dlp) && !is_root() {
        // Every case through the verifier or limiter needs neither root nor the agent; the
        // end-to-end sample through the proxy does.
        println!("not root: the end-to-end sample through the proxy is not run");
        return library_only(args.suite, args.cases.clone());
    }
    setup::run(&setup::SetupArgs::all())?;
    rampart_tests::require_root();
    exec(cargo().args(["build", "--locked", "-p", "rampart-agent"]))?;
    let bin = workspace_root().join("target/debug/rampart");
    run_built(
        args.suite,
        args.cases.clone(),
        args.crs.clone(),
        args.topology,
        bin,
    )
}

/// Runs the suite with an agent binary already built (`cargo xtask test` builds it once). The
/// JWT and rate-limit suites run their end-to-end sample through the proxy first, then every
/// case through the verifier or limiter, so that the output ends with the cases' count.
pub fn run_built(
    suite: Suite,
    cases: Option<PathBuf>,
    crs: Option<PathBuf>,
    topology: TopologyArg,
    bin: PathBuf,
) -> anyhow::Result<()> {
    match suite {
        Suite::Netpol => netpol(cases, bin, topology),
        Suite::Waf => waf(cases, crs, bin),
        Suite::Dlp => dlp(cases, bin),
        Suite::Jwt => {
            let path = cases_path(cases, rampart_tests::jwt_cases::DEFAULT_CASES);
            let (loaded, keys) = rampart_tests::jwt_cases::load(&path)?;
            crate::test::sweep()?;
            let sample = rampart_tests::l7_e2e::jwt_sample(
                &loaded,
                &keys,
                &bin,
                rampart_tests::netns::TEST_PREFIX,
            );
            crate::test::sweep()?;
            let library = library_suite(&path, rampart_tests::jwt_cases::run);
            let (passed, failed) = sample?;
            library?;
            rampart_tests::l7_e2e::ensure_passed("jwt", passed, failed)
        }
        Suite::Ratelimit => {
            let path = cases_path(cases, rampart_tests::ratelimit_cases::DEFAULT_CASES);
            let scenarios = rampart_tests::ratelimit_cases::load(&path)?;
            crate::test::sweep()?;
            let sample = rampart_tests::l7_e2e::ratelimit_sample(
                &scenarios,
                &bin,
                rampart_tests::netns::TEST_PREFIX,
            );
            crate::test::sweep()?;
            let library = library_suite(&path, rampart_tests::ratelimit_cases::run);
            let (passed, failed) = sample?;
            library?;
            rampart_tests::l7_e2e::ensure_passed("ratelimit", passed, failed)
        }
    }
}

fn waf(cases: Option<PathBuf>, crs: Option<PathBuf>, bin: PathBuf) -> anyhow::Result<()> {
    let (passed1, failed1) = waf_report(
        cases.clone(),
        crs.clone(),
        bin.clone(),
        Protocol::Http1Raw,
        Tally::Gate,
    )?;
    let (passed2, failed2) = waf_report(cases, crs, bin, Protocol::Http2, Tally::Gate)?;
    let (passed, failed) = (passed1 + passed2, failed1 + failed2);
    println!("HTTP/1.1 and HTTP/2: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} of {} cases failed", passed + failed);
    }
    Ok(())
}

/// Debian's Core Rule Set (3.3.4 on Debian 12), which `cargo xtask setup` installs.
pub const DEBIAN_CRS_DIR: &str = "/usr/share/modsecurity-crs";

/// The WAF cases against Debian's CRS, for its rates: CRS 3.3 misses attacks that CRS 4 blocks
/// and blocks some benign requests, so its failures are reported, not fatal. Its tally is not in
/// the `N passed, M failed` form: every line of that form in the output is a gate.
pub fn waf_debian_report(bin: PathBuf) -> anyhow::Result<()> {
    waf_report(
        None,
        Some(PathBuf::from(DEBIAN_CRS_DIR)),
        bin,
        Protocol::Http1Raw,
        Tally::Report("Debian's CRS"),
    )?;
    Ok(())
}

/// How a WAF run's tally is printed.
#[derive(Debug, Clone, Copy)]
enum Tally {
    /// `N passed, M failed`: the caller fails the run on any failure.
    Gate,
    /// A figure only, named so (its failures fail nothing).
    Report(&'static str),
}

/// Runs the WAF cases in `protocol` and prints each, the rates per category and the tally.
fn waf_report(
    cases: Option<PathBuf>,
    crs: Option<PathBuf>,
    bin: PathBuf,
    protocol: Protocol,
    tally: Tally,
) -> anyhow::Result<(usize, usize)> {
    use rampart_tests::waf_cases;
    let shared = || waf_cases::shared_dir(&workspace_root());
    let path = match cases {
        Some(path) => path,
        None => shared()?.join(waf_cases::DEFAULT_CASES),
    };
    let crs = match crs {
        Some(crs) => crs,
        None => shared()?.join(waf_cases::DEFAULT_CRS),
    };
    let cases = waf_cases::load(&path)?;
    println!(
        "waf conformance ({protocol:?}): {} cases from {}, Core Rule Set {}, paranoia level 1, threshold 5",
        cases.len(),
        path.display(),
        crs.display()
    );
    crate::test::sweep()?;
    let result = rampart_tests::waf_e2e::run(
        &cases,
        &crs,
        &bin,
        rampart_tests::netns::TEST_PREFIX,
        protocol,
    );
    crate::test::sweep()?;
    let (passed, failed) = result?;
    match tally {
        Tally::Gate => println!("{passed} passed, {failed} failed"),
        Tally::Report(what) => println!(
            "report only, not a gate: {what} handled {passed} of {} cases as expected",
            passed + failed
        ),
    }
    Ok((passed, failed))
}

/// The DLP cases through the real proxy: each case's line, the rates per category, the tally.
fn dlp(cases: Option<PathBuf>, bin: PathBuf) -> anyhow::Result<()> {
    use rampart_tests::dlp_cases;
    let path = cases_path(cases, dlp_cases::DEFAULT_CASES);
    let cases = dlp_cases::load(&path)?;
    println!(
        "dlp conformance: {} cases from {}",
        cases.len(),
        path.display()
    );
    crate::test::sweep()?;
    let result = rampart_tests::dlp_e2e::run(&cases, &bin, rampart_tests::netns::TEST_PREFIX);
    crate::test::sweep()?;
    let (passed, failed) = result?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} of {} cases failed", passed + failed);
    }
    Ok(())
}

fn cases_path(cases: Option<PathBuf>, default: &str) -> PathBuf {
    cases.unwrap_or_else(|| workspace_root().join(default))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The library-level part of a suite alone.
fn library_only(suite: Suite, cases: Option<PathBuf>) -> anyhow::Result<()> {
    match suite {
        Suite::Jwt => library_suite(
            &cases_path(cases, rampart_tests::jwt_cases::DEFAULT_CASES),
            rampart_tests::jwt_cases::run,
        ),
        Suite::Ratelimit => library_suite(
            &cases_path(cases, rampart_tests::ratelimit_cases::DEFAULT_CASES),
            rampart_tests::ratelimit_cases::run,
        ),
        Suite::Netpol | Suite::Waf | Suite::Dlp => {
            bail!("this suite runs only against the real agent (root)")
        }
    }
}

/// Runs every case of a library-level suite (verifier or limiter): prints `N passed, M failed`
/// and fails if any case failed.
fn library_suite(
    path: &std::path::Path,
    runner: impl FnOnce(&std::path::Path) -> anyhow::Result<(usize, usize)>,
) -> anyhow::Result<()> {
    let (passed, failed) = runner(path)?;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} of {} cases failed", passed + failed);
    }
    Ok(())
}

fn netpol(cases: Option<PathBuf>, bin: PathBuf, topology: TopologyArg) -> anyhow::Result<()> {
    let path =
        cases.unwrap_or_else(|| workspace_root().join(rampart_tests::netpol_cases::DEFAULT_CASES));
    let file = rampart_tests::netpol_cases::load(&path)?;
    crate::test::sweep()?;
    let work_dir = std::env::temp_dir().join("rampart-conformance");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    println!(
        "netpol conformance: {} cases from {}, {} pods",
        file.cases.len(),
        path.display(),
        match topology {
            TopologyArg::Routed => "routed",
            TopologyArg::Bridge => "bridged",
        }
    );
    let score = rampart_tests::netpol_runner::run(
        &file.cases,
        rampart_tests::netns::TEST_PREFIX,
        &work_dir,
        &bin,
        topology.network(),
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
