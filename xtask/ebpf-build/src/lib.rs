//! Builds the kernel object (`rampart-ebpf` for `bpfel-unknown-none`) the one way both the agent's
//! build script and `cargo xtask build-ebpf` use, so the embedded object and the one xtask prints
//! are the same build.
//!
//! Toolchain rule: the eBPF crate needs `-Z build-std=core`. The machine's `nightly` is used when
//! rustup has it; otherwise the `stable` toolchain with `RUSTC_BOOTSTRAP=1` set for the child cargo
//! only. `RAMPART_EBPF_TOOLCHAIN=nightly|stable` overrides the probe. No other toolchain is ever
//! named: none can be fetched on the machines we build on.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The environment variable that overrides the toolchain probe.
pub const TOOLCHAIN_ENV: &str = "RAMPART_EBPF_TOOLCHAIN";

/// The version of bpf-linker `cargo xtask setup` installs and the build expects.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The rustup toolchain that builds the kernel object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfToolchain {
    Nightly,
    /// Stable with `RUSTC_BOOTSTRAP=1` for the child cargo (unlocks `-Z build-std`).
    Stable,
}

impl EbpfToolchain {
    pub fn rustup_name(self) -> &'static str {
        match self {
            EbpfToolchain::Nightly => "nightly",
            EbpfToolchain::Stable => "stable",
        }
    }

    /// Picks the toolchain: the override if set, else nightly if rustup has it, else stable.
    pub fn select() -> anyhow::Result<EbpfToolchain> {
        match std::env::var(TOOLCHAIN_ENV).as_deref() {
            Ok("nightly") => return Ok(EbpfToolchain::Nightly),
            Ok("stable") => return Ok(EbpfToolchain::Stable),
            Ok("") | Err(std::env::VarError::NotPresent) => {}
            Ok(other) => bail!("{TOOLCHAIN_ENV}={other:?}: expected \"nightly\" or \"stable\""),
            Err(e) => bail!("{TOOLCHAIN_ENV}: {e}"),
        }
        if toolchain_runs("nightly") {
            Ok(EbpfToolchain::Nightly)
        } else {
            Ok(EbpfToolchain::Stable)
        }
    }
}

/// Whether `rustup run <name> rustc --version` works (the toolchain is installed and usable).
pub fn toolchain_runs(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the kernel object into `$OUT_DIR/rampart-ebpf` (aya-build reads `OUT_DIR`). `ebpf_dir`
/// is the `ebpf/` package directory.
/// Builds the kernel object with the kernel crate's `features` (the agent's: none; the
/// benchmarks': `bench-baselines`).
pub fn build_kernel_object(ebpf_dir: &str, features: &[&str]) -> anyhow::Result<EbpfToolchain> {
    let toolchain = EbpfToolchain::select()?;
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "bpf-linker is not on PATH; run `cargo xtask setup` (it installs bpf-linker \
             {BPF_LINKER_VERSION} against the LLVM of the `{}` toolchain)",
            toolchain.rustup_name()
        );
    }
    let aya_toolchain = match toolchain {
        EbpfToolchain::Nightly => aya_build::Toolchain::Nightly,
        EbpfToolchain::Stable => {
            // aya-build adds `-Z build-std=core` for a non-nightly toolchain only when
            // RUSTC_BOOTSTRAP=1 is set; it passes the variable to its child cargo. This process
            // is a build script or xtask, single-threaded at this point.
            // SAFETY: no other thread reads the environment concurrently.
            unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
            aya_build::Toolchain::Custom("stable")
        }
    };
    let package = aya_build::Package {
        name: "rampart-ebpf",
        root_dir: ebpf_dir,
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_toolchain).with_context(|| {
        format!(
            "building rampart-ebpf with the {} toolchain",
            toolchain.rustup_name()
        )
    })?;
    Ok(toolchain)
}
