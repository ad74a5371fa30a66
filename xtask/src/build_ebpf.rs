//! `cargo xtask build-ebpf`: builds the kernel object exactly as `agent/build.rs` does (same
//! function, same toolchain rule) into `target/ebpf/rampart-ebpf`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::process::workspace_root;

pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let out_dir = root.join("target").join("ebpf");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // aya-build reads what cargo gives a build script; give it the same.
    // SAFETY: xtask is single-threaded here; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("OUT_DIR", &out_dir);
        std::env::set_var("CARGO_CFG_TARGET_ENDIAN", "little");
        std::env::set_var("CARGO_CFG_TARGET_ARCH", std::env::consts::ARCH);
    }
    let ebpf_dir = root.join("ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("workspace path is not UTF-8")?;
    let toolchain = rampart_ebpf_build::build_kernel_object(ebpf_dir, &[])?;
    let object = out_dir.join("rampart-ebpf");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("reading {}", object.display()))?
        .len();
    println!(
        "built {} ({size} bytes) with the {} toolchain",
        object.display(),
        toolchain.rustup_name()
    );
    Ok(object)
}
