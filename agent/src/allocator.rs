//! The allocator's settings for the agent process.
//!
//! glibc gives threads up to eight heaps ("arenas") per core, and memory freed into one arena is
//! reused only by the threads on it. The agent's reloads allocate on whichever thread runs them
//! (the API watches on the runtime's workers, the compile on the controller's thread), so the
//! freed intermediate forms of each reload sat in several arenas between the objects kept, and
//! the pages that hold both stayed resident: at 10k pods the resident memory grew 1.2 KiB per
//! pod for 0.6 KiB of live allocations. The agent caps them at twice the runtime's workers
//! (4): resident growth 0.8–0.87 KiB per pod, and no event took longer in the `kube`
//! benchmark. A cap of 2 saved a little more memory (0.65–0.8 KiB) but cost the WAF, whose
//! engine allocates on the proxy's threads, 15% of its request rate in the `proxy` benchmark;
//! at 4 the WAF ran as fast as without a cap. Each thread still allocates small blocks from its
//! own cache, which is what keeps threads from contending.

/// Caps the number of malloc arenas at `arenas` (at least one), unless the operator set
/// `MALLOC_ARENA_MAX` (glibc reads it itself). Call before threads start.
pub fn limit_arenas(arenas: usize) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(target_env = "gnu")]
    {
        let arenas = libc::c_int::try_from(arenas.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a setting of the allocator; M_ARENA_MAX limits arenas
        // created from now on.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } == 0 {
            tracing::warn!(arenas, "the allocator refused an arena limit");
        }
    }
}
