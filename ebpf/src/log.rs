//! Logs of the programs' rare and slow paths, through aya-log (records in its ring buffer, read
//! by the agent). Each program's level is in `KERNEL_LOG_V1`, off unless the agent turns it up
//! (`rampart run --kernel-log-level`, `rampart kernel-log` on a running agent). A call site costs
//! one array read while its level is off; none is on a packet's fast path (see
//! `rampart_common::kernel_log`).

use aya_ebpf::macros::map;
use aya_ebpf::maps::Array;
use rampart_common::kernel_log::Program;
use rampart_common::reason::DropReason;

#[map(name = "KERNEL_LOG_V1")]
static KERNEL_LOG: Array<u32> = Array::with_max_entries(Program::COUNT, 0);

/// Whether `program` logs records at `level` (1 error … 5 trace).
#[inline(always)]
pub fn enabled(program: Program, level: u32) -> bool {
    KERNEL_LOG
        .get(program as u32)
        .is_some_and(|logged| *logged >= level)
}

/// aya-log's number of a level macro's name.
macro_rules! level_number {
    (error) => {
        1
    };
    (warn) => {
        2
    };
    (info) => {
        3
    };
    (debug) => {
        4
    };
}

/// `klog!(program, level, "format", args…)`: a record from `program` (its name is the record's
/// target) when its level is on; `level` is aya-log's macro (`error`, `warn`, `info`, `debug`).
macro_rules! klog {
    ($program:expr, $level:ident, $($format:tt)+) => {{
        let program: rampart_common::kernel_log::Program = $program;
        if enabled(program, level_number!($level)) {
            aya_log_ebpf::$level!(&(), target: program.name(), $($format)+);
        }
    }};
}

// The records, one function each and out of line: a record is built on the stack, and inlined
// into a program's frame it pushed the deepest call chain past the verifier's 512 bytes.

/// A lookup that cannot fail (the per-CPU scratch slot, the configuration entry) did.
#[inline(never)]
pub fn map_lookup_failed(program: Program) {
    klog!(
        program,
        error,
        "a lookup that cannot fail did (scratch or configuration): dropped as map_lookup_failed"
    );
}

/// A malformed packet, dropped as `reason`.
#[inline(never)]
pub fn malformed(program: Program, reason: DropReason, bytes: u64, ifindex: u32) {
    klog!(
        program,
        debug,
        "dropped a malformed packet as {} ({} bytes, ifindex {})",
        reason.name(),
        bytes,
        ifindex
    );
}

/// A new flow conntrack could not take (`errno`, negative).
#[inline(never)]
pub fn conntrack_insert_failed(program: Program, errno: i32) {
    klog!(
        program,
        warn,
        "conntrack insert failed (error {}): dropped as ct_full",
        errno
    );
}

/// A Service translation that could not rewrite the packet (`reply`: back to the frontend).
#[inline(never)]
pub fn service_rewrite_failed(program: Program, ifindex: u32, reply: bool) {
    if reply {
        klog!(
            program,
            warn,
            "rewriting a reply to its Service frontend failed (ifindex {}): dropped",
            ifindex
        );
    } else {
        klog!(
            program,
            warn,
            "rewriting a packet to its Service backend failed (ifindex {}): dropped",
            ifindex
        );
    }
}

/// A frame for the proxy that could not be addressed to this host.
#[inline(never)]
pub fn proxy_frame_failed(program: Program, ifindex: u32) {
    klog!(
        program,
        warn,
        "addressing a frame for the proxy to this host failed (ifindex {}): dropped",
        ifindex
    );
}

/// A connection for the proxy with no listener to assign it to.
#[inline(never)]
pub fn no_proxy_listener(program: Program) {
    klog!(
        program,
        warn,
        "no proxy listener for a redirected connection: dropped as proxy_unavailable"
    );
}
