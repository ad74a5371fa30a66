//! Builds the kernel object and leaves it at `$OUT_DIR/rampart-ebpf`, where `src/datapath/mod.rs`
//! embeds it.
fn main() -> anyhow::Result<()> {
    println!(
        "cargo:rerun-if-env-changed={}",
        rampart_ebpf_build::TOOLCHAIN_ENV
    );
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    // The benchmarks' build (feature `bench-baselines`) adds the bare XDP baselines to the
    // object; the agent's own object never has them.
    let mut features = Vec::new();
    if std::env::var_os("CARGO_FEATURE_BENCH_BASELINES").is_some() {
        features.push("bench-baselines");
    }
    // The upgrade test's build of the previous map layouts.
    if std::env::var_os("CARGO_FEATURE_PREVIOUS_LAYOUT").is_some() {
        features.push("previous-layout");
    }
    rampart_ebpf_build::build_kernel_object(ebpf_dir, &features)?;
    Ok(())
}
