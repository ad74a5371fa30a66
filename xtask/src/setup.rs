//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to build and test Rampart,
//! and does nothing (quickly) when it is all there.
//!
//! 1. Debian packages the build and the tests use (`apt-get`, as root).
//! 2. `rust-src` for the toolchain that builds the kernel crate (`rustup component add`).
//! 3. `bpf-linker` (pinned), built against that toolchain's own LLVM: rustc's shared libLLVM is
//!    linked through a persistent prefix that also holds a symlink under the library's SONAME, so
//!    the linker starts from any environment (the recipe in `../shared/toolchain.md`). A stamp
//!    records which libLLVM it was built against; a toolchain update triggers a rebuild.
//!
//! 4. `cargo-deny` (pinned), for the licence/ban/source checks of `cargo xtask test`.
//!
//! `--purpose demo` (what `cargo xtask demo` runs) installs only what the demo needs: no
//! cargo-deny, and only the Debian packages marked for it.
//!
//! Only crates.io, Debian and `rustup component add` are used; no toolchain is ever fetched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use rampart_ebpf_build::{BPF_LINKER_VERSION, EbpfToolchain};

use crate::fuzz::CARGO_FUZZ_VERSION;
use crate::process::{cargo, exec, output};

/// What a machine is set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// `cargo xtask demo`: the build, the eBPF toolchain and what the agent and the demo's
    /// namespaces use at run time.
    Demo,
    /// Everything: the tests, the conformance suites, the benchmarks, the image.
    All,
}

/// A Debian package, and whether the demo needs it (everything else is for the tests,
/// benchmarks and image only).
pub struct Package {
    pub name: &'static str,
    pub demo: bool,
}

const fn demo(name: &'static str) -> Package {
    Package { name, demo: true }
}

const fn tests(name: &'static str) -> Package {
    Package { name, demo: false }
}

pub const DEBIAN_PACKAGES: &[Package] = &[
    // The host linker and C toolchain, pkg-config (libmodsecurity's flags).
    demo("build-essential"),
    demo("pkg-config"),
    // `ip` (namespaces, links, routes), `sysctl`, `ping` (ICMP probes).
    demo("iproute2"),
    demo("procps"),
    demo("iputils-ping"),
    demo("ca-certificates"),
    // The WAF: libmodsecurity v3 (the agent links it) and Debian's Core Rule Set (3.3, the
    // default rule directory).
    demo("libmodsecurity-dev"),
    demo("modsecurity-crs"),
    // Inspecting programs and links when a test fails.
    tests("bpftool"),
    // The baselines `cargo xtask bench` measures Rampart against.
    tests("iptables"),
    tests("nftables"),
    // The peer proxy of the `proxy` suite (TLS 1.3 with client certificates both ways).
    tests("haproxy"),
    // The mTLS test captures the underlay to show that only TLS crosses it.
    tests("tcpdump"),
    // A test checks that pods keep TSO with the agent attached.
    tests("ethtool"),
    // promtool checks the metrics, and a real Prometheus server scrapes an agent in a test.
    tests("prometheus"),
    // `cargo xtask manifests` runs kubernetes-validate from a virtualenv of its own.
    tests("python3-venv"),
    // `cargo xtask image`: buildah builds the image; podman (with runc: crun fails here) runs it.
    tests("buildah"),
    tests("podman"),
    tests("runc"),
    // The LDAP provider's tests run a real OpenLDAP server (slapd, slapadd, slappasswd).
    tests("slapd"),
    // The OIDC login test drives a real browser (puppeteer-core over Debian's Chromium; the
    // provider and the driver run on the machine's Node.js, their packages from `npm ci`).
    tests("chromium"),
];

/// The cargo-deny release `cargo xtask test` runs.
pub const CARGO_DENY_VERSION: &str = "0.20.2";

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
    /// What to set up for: `demo` installs only what `cargo xtask demo` needs.
    #[arg(long, value_enum, default_value = "all")]
    pub purpose: Purpose,
}

impl SetupArgs {
    /// Everything, installed.
    pub fn all() -> SetupArgs {
        SetupArgs {
            check: false,
            purpose: Purpose::All,
        }
    }
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let toolchain = EbpfToolchain::select()?;
    let tc = toolchain.rustup_name();
    if toolchain == EbpfToolchain::Stable {
        eprintln!(
            "setup: no usable `nightly` toolchain; the kernel crate builds on `stable` with RUSTC_BOOTSTRAP=1"
        );
    }
    let missing_packages = missing_debian_packages(args.purpose);
    let needs_rust_src = !has_rust_src(tc)?;
    let linker = LinkerState::probe(tc)?;
    // cargo-deny is for `cargo xtask test` only (building it takes minutes).
    let needs_cargo_deny = args.purpose == Purpose::All && !has_cargo_deny();
    // cargo-fuzz too (`cargo xtask fuzz`, and the short runs in `cargo xtask test`).
    let needs_cargo_fuzz = args.purpose == Purpose::All && !has_cargo_fuzz();

    if args.check {
        let mut missing = Vec::new();
        if !missing_packages.is_empty() {
            missing.push(format!("Debian packages: {}", missing_packages.join(" ")));
        }
        if needs_rust_src {
            missing.push(format!("rust-src for the {tc} toolchain"));
        }
        if let LinkerState::Missing(why) = &linker {
            missing.push(format!("bpf-linker {BPF_LINKER_VERSION}: {why}"));
        }
        if needs_cargo_deny {
            missing.push(format!("cargo-deny {CARGO_DENY_VERSION}"));
        }
        if needs_cargo_fuzz {
            missing.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
        }
        if missing.is_empty() {
            println!("setup: everything is installed (eBPF toolchain: {tc})");
            return Ok(());
        }
        bail!("missing: {}; run `cargo xtask setup`", missing.join("; "));
    }

    install_debian_packages(&missing_packages)?;
    if needs_rust_src {
        exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", tc]))
            .with_context(|| format!("`rustup component add rust-src --toolchain {tc}` failed: rustup must reach its dist server"))?;
    }
    if let LinkerState::Missing(why) = linker {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} ({why})");
        install_bpf_linker(tc)?;
    }
    if needs_cargo_deny {
        install_cargo_tool("cargo-deny", CARGO_DENY_VERSION)?;
    }
    if needs_cargo_fuzz {
        install_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)?;
    }
    println!(
        "setup: ready in {:.1}s (eBPF toolchain: {tc}, bpf-linker {BPF_LINKER_VERSION})",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn has_cargo_fuzz() -> bool {
    has_cargo_tool("fuzz", CARGO_FUZZ_VERSION)
}

fn has_cargo_deny() -> bool {
    has_cargo_tool("deny", CARGO_DENY_VERSION)
}

/// Whether `cargo <subcommand> --version` runs and names `version`.
fn has_cargo_tool(subcommand: &str, version: &str) -> bool {
    output(cargo().args([subcommand, "--version"])).is_some_and(|v| v.contains(version))
}

/// `cargo install --locked <krate> --version <version>`, from crates.io.
fn install_cargo_tool(krate: &str, version: &str) -> anyhow::Result<()> {
    eprintln!("setup: installing {krate} {version}");
    exec(cargo().args(["install", "--locked", krate, "--version", version]))
        .with_context(|| format!("installing {krate} from crates.io"))
}

fn missing_debian_packages(purpose: Purpose) -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .filter(|pkg| pkg.demo || purpose == Purpose::All)
        .map(|pkg| pkg.name)
        .filter(|pkg| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

fn install_debian_packages(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "Debian packages missing: {}; run as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    exec(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn sysroot(tc: &str) -> anyhow::Result<PathBuf> {
    let out = output(Command::new("rustup").args(["run", tc, "rustc", "--print", "sysroot"]))
        .with_context(|| {
            format!("the `{tc}` toolchain does not run (`rustup run {tc} rustc --print sysroot`)")
        })?;
    Ok(PathBuf::from(out.trim()))
}

fn has_rust_src(tc: &str) -> anyhow::Result<bool> {
    Ok(sysroot(tc)?
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists())
}

/// The toolchain's shared libLLVM: `libLLVM.so.<ver>-rust-<rustc>` (the real library; the
/// `libLLVM-<major>-rust-*.so` next to it is a linker script).
fn toolchain_libllvm(tc: &str) -> anyhow::Result<PathBuf> {
    let lib = sysroot(tc)?.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: the `{tc}` toolchain ships no shared LLVM",
        lib.display()
    )
}

/// The LLVM major version of the toolchain (bpf-linker's cargo feature must match it).
fn llvm_major(tc: &str) -> anyhow::Result<String> {
    let vv =
        output(Command::new("rustup").args(["run", tc, "rustc", "-vV"])).context("rustc -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV names no LLVM version")?;
    Ok(version.split('.').next().unwrap_or_default().to_owned())
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Persistent directory for the LLVM link prefix and the stamp (it becomes bpf-linker's RUNPATH,
/// so it must outlive the build).
fn state_dir() -> anyhow::Result<PathBuf> {
    Ok(home()?.join(".local/share/rampart"))
}

enum LinkerState {
    Ready,
    Missing(String),
}

impl LinkerState {
    fn probe(tc: &str) -> anyhow::Result<LinkerState> {
        let libllvm = toolchain_libllvm(tc)?;
        let want = stamp_text(&libllvm);
        let stamp = state_dir()?.join("bpf-linker.stamp");
        let have = std::fs::read_to_string(&stamp).unwrap_or_default();
        if have.trim() != want {
            return Ok(LinkerState::Missing(format!(
                "not built against {}",
                libllvm.display()
            )));
        }
        // Starts without the rustup environment (LD_LIBRARY_PATH unset) and is the pinned version.
        let version = output(
            Command::new("bpf-linker")
                .arg("--version")
                .env_remove("LD_LIBRARY_PATH"),
        );
        match version {
            Some(v) if v.contains(BPF_LINKER_VERSION) => Ok(LinkerState::Ready),
            Some(v) => Ok(LinkerState::Missing(format!("found {}", v.trim()))),
            None => Ok(LinkerState::Missing(
                "`bpf-linker --version` does not run".into(),
            )),
        }
    }
}

fn stamp_text(libllvm: &Path) -> String {
    format!("bpf-linker {BPF_LINKER_VERSION} {}", libllvm.display())
}

fn install_bpf_linker(tc: &str) -> anyhow::Result<()> {
    let libllvm = toolchain_libllvm(tc)?;
    let soname = libllvm.file_name().context("libLLVM has no file name")?;
    let major = llvm_major(tc)?;
    let prefix = state_dir()?.join(format!("llvm-{}", soname.to_string_lossy()));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    exec(
        Command::new("rustup")
            .args([
                "run",
                tc,
                "cargo",
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker from crates.io")?;
    let stamp = state_dir()?.join("bpf-linker.stamp");
    std::fs::write(&stamp, stamp_text(&libllvm))
        .with_context(|| format!("writing {}", stamp.display()))?;
    match output(
        Command::new("bpf-linker")
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    ) {
        Some(v) => eprintln!("setup: {}", v.trim()),
        None => bail!("bpf-linker was installed but does not start; is $CARGO_HOME/bin on PATH?"),
    }
    Ok(())
}
