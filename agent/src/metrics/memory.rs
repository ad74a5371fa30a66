//! The agent's own memory, as a scrape reports it: what its allocations hold, what the allocator
//! holds from the kernel for them, and what is resident (Envoy reports the same three as
//! `server.memory_allocated`, `memory_heap_size` and `memory_physical_size`).
//!
//! Resident memory is what a node pays, but it moves with the allocator's free pages (a reload's
//! intermediate forms are freed into per-thread arenas and trimmed later); the allocated bytes
//! move only with what the agent keeps, so they show what one more pod or rule costs.

/// One reading of the agent's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Bytes in live allocations (glibc `mallinfo2`: in-use chunks and mapped blocks).
    pub allocated: Option<u64>,
    /// Bytes the allocator holds from the kernel: its arenas and mapped blocks, in use or free.
    pub heap: Option<u64>,
    /// Resident pages of the whole process (`/proc/self/statm`): code, stacks, heap, mappings.
    pub resident: Option<u64>,
}

impl Memory {
    /// Reads the current figures (each `None` where this build or system cannot tell).
    pub fn read() -> Memory {
        let (allocated, heap) = allocator();
        Memory {
            allocated,
            heap,
            resident: std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|statm| resident_of_statm(&statm)),
        }
    }
}

/// Resident bytes from the text of `/proc/<pid>/statm` (pages: size, resident, ...).
fn resident_of_statm(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(target_env = "gnu")]
fn allocator() -> (Option<u64>, Option<u64>) {
    // SAFETY: mallinfo2 only reads the allocator's statistics (under its arena locks).
    let info = unsafe { libc::mallinfo2() };
    let (in_use, arenas, mapped) = (info.uordblks as u64, info.arena as u64, info.hblkhd as u64);
    (Some(in_use + mapped), Some(arenas + mapped))
}

#[cfg(not(target_env = "gnu"))]
fn allocator() -> (Option<u64>, Option<u64>) {
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_resident_pages_in_bytes() {
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        assert_eq!(
            resident_of_statm("1000 250 40 10 0 300 0\n"),
            Some(250 * page)
        );
        assert_eq!(resident_of_statm("1000"), None);
        assert_eq!(resident_of_statm("1000 x"), None);
    }

    #[test]
    fn allocations_show_in_the_allocated_bytes() {
        let before = Memory::read();
        let Some(start) = before.allocated else {
            return; // not glibc: nothing to read
        };
        let held: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 * 1024]).collect();
        let after = Memory::read();
        // Other tests allocate and free on other threads meanwhile: 32 MiB held here must show
        // as at least 16 MiB more.
        assert!(
            after.allocated.unwrap_or(0) >= start + 16 * 1024 * 1024,
            "{before:?} -> {after:?}"
        );
        assert!(after.heap >= after.allocated, "{after:?}");
        assert!(after.resident.unwrap_or(0) > 0, "{after:?}");
        drop(held);
    }
}
