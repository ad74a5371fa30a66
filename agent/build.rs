//! Builds the kernel object and leaves it at `$OUT_DIR/rampart-ebpf`, where `src/datapath/mod.rs`
//! embeds it.
fn main() -> anyhow::Result<()> {
    println!(
        "cargo:rerun-if-env-changed={}",
        rampart_ebpf_build::TOOLCHAIN_ENV
    );
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    rampart_ebpf_build::build_kernel_object(ebpf_dir)?;
    Ok(())
}
