//! The kernel programs' logs (aya-log): which program logs at which level. `KERNEL_LOG_V1` is an
//! array with one `u32` per [`Program`]: [`OFF`] (the default), or the most verbose level that
//! program writes, numbered as aya-log numbers them (1 error … 5 trace). Only rare and slow paths
//! log (a failed map update, a map lookup that cannot fail but did, a malformed packet, a
//! rewrite that failed); nothing on a packet's fast path does.

/// Logging off.
pub const OFF: u32 = 0;
/// The most verbose level (aya-log's `Trace`).
pub const MAX_LEVEL: u32 = 5;

/// A kernel program, as an index of `KERNEL_LOG_V1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Program {
    Xdp = 0,
    TcIngress = 1,
    TcEgress = 2,
    TcBridge = 3,
}

impl Program {
    pub const COUNT: u32 = 4;
    pub const ALL: [Program; Self::COUNT as usize] = [
        Program::Xdp,
        Program::TcIngress,
        Program::TcEgress,
        Program::TcBridge,
    ];

    /// The program's name in the kernel (and in the object).
    #[inline(always)]
    pub const fn name(self) -> &'static str {
        match self {
            Program::Xdp => "rp_xdp",
            Program::TcIngress => "rp_tc_ingress",
            Program::TcEgress => "rp_tc_egress",
            Program::TcBridge => "rp_tc_bridge",
        }
    }

    pub fn from_name(name: &str) -> Option<Program> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}
