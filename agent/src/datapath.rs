//! The loader: the only module of the agent that touches aya. It loads the embedded kernel object,
//! attaches its programs to interfaces, and hands out typed readers of the kernel maps. Everything
//! else in the agent talks to the types exported here.
//!
//! Attachments live as long as the [`Datapath`] value: dropping it detaches every program (the
//! links are owned by their file descriptors; nothing is pinned yet).

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc};
use aya::util::KernelVersion;
use rampart_common::counters::{Hook, HookCounter};
use rampart_common::maps::HOOK_STATS;
use serde::Serialize;

use crate::config::XdpAttachMode;

/// The kernel object built by `agent/build.rs` (see `xtask/ebpf-build`).
static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-ebpf"));

/// Program names in the kernel object (the eBPF functions' names).
const PROG_XDP: &str = "rp_xdp";
const PROG_TC_INGRESS: &str = "rp_tc_ingress";
const PROG_TC_EGRESS: &str = "rp_tc_egress";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the kernel object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} is missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        source: aya::programs::ProgramError,
    },
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact {
        interface: String,
        source: tc::TcError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// One program attached to one interface, as shown by `rampart status`.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub hook: &'static str,
    pub program: &'static str,
    pub program_id: u32,
    /// How it is attached: `xdp-auto|xdp-native|xdp-generic`, `tcx` (kernel >= 6.6), `tc-clsact`.
    pub method: &'static str,
}

/// The loaded kernel programs and their attachments.
pub struct Datapath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    tcx: bool,
}

impl Datapath {
    /// Loads the embedded object and every program in it into the kernel (verifier included);
    /// attaches nothing.
    pub fn load() -> Result<Datapath, DatapathError> {
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(KERNEL_OBJECT)?;
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PROG_XDP,
                source,
            })?;
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
            tc_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        Ok(Datapath {
            ebpf,
            attachments: Vec::new(),
            tcx,
        })
    }

    /// Attaches XDP and both TC programs to `interface`, in the caller's network namespace.
    pub fn attach(
        &mut self,
        interface: &str,
        xdp_mode: XdpAttachMode,
    ) -> Result<(), DatapathError> {
        let (mode, method) = match xdp_mode {
            XdpAttachMode::Auto => (XdpMode::Default, "xdp-auto"),
            XdpAttachMode::Native => (XdpMode::Driver, "xdp-native"),
            XdpAttachMode::Generic => (XdpMode::Skb, "xdp-generic"),
        };
        let xdp = xdp_program(&mut self.ebpf)?;
        xdp.attach(interface, mode)
            .map_err(|source| DatapathError::Attach {
                program: PROG_XDP,
                interface: interface.to_owned(),
                source,
            })?;
        let program_id = program_id_of(xdp.info(), PROG_XDP)?;
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            hook: Hook::XDP.name(),
            program: PROG_XDP,
            program_id,
            method,
        });

        if !self.tcx {
            // Before tcx (kernel 6.6) TC programs hang off the clsact qdisc; it may exist already.
            match tc::qdisc_add_clsact(interface) {
                Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                Err(source) => {
                    return Err(DatapathError::Clsact {
                        interface: interface.to_owned(),
                        source,
                    });
                }
            }
        }
        for (name, hook, attach_type) in [
            (PROG_TC_INGRESS, Hook::TC_INGRESS, TcAttachType::Ingress),
            (PROG_TC_EGRESS, Hook::TC_EGRESS, TcAttachType::Egress),
        ] {
            let prog = tc_program(&mut self.ebpf, name)?;
            prog.attach(interface, attach_type)
                .map_err(|source| DatapathError::Attach {
                    program: name,
                    interface: interface.to_owned(),
                    source,
                })?;
            let program_id = program_id_of(prog.info(), name)?;
            self.attachments.push(Attachment {
                interface: interface.to_owned(),
                hook: hook.name(),
                program: name,
                program_id,
                method: if self.tcx { "tcx" } else { "tc-clsact" },
            });
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Moves the hook counter map out of the object into a reader that can be shared across
    /// threads. Call once.
    pub fn take_hook_stats(&mut self) -> Result<HookStats, DatapathError> {
        let map = self
            .ebpf
            .take_map(HOOK_STATS)
            .ok_or(DatapathError::MissingMap(HOOK_STATS))?;
        let array = PerCpuArray::try_from(map).map_err(|source| DatapathError::Map {
            map: HOOK_STATS,
            source,
        })?;
        Ok(HookStats { array })
    }
}

/// Reader of `HOOK_STATS_V1`: packets and bytes per hook, summed over CPUs.
pub struct HookStats {
    array: PerCpuArray<MapData, HookCounter>,
}

impl HookStats {
    pub fn read(&self) -> Result<[(Hook, HookCounter); Hook::COUNT as usize], DatapathError> {
        let mut out = Hook::ALL.map(|h| (h, HookCounter::default()));
        for (hook, total) in &mut out {
            let per_cpu = self
                .array
                .get(&hook.0, 0)
                .map_err(|source| DatapathError::Map {
                    map: HOOK_STATS,
                    source,
                })?;
            *total = per_cpu
                .iter()
                .fold(HookCounter::default(), |acc, c| acc.add(*c));
        }
        Ok(out)
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    ebpf.program_mut(PROG_XDP)
        .ok_or(DatapathError::MissingProgram(PROG_XDP))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: PROG_XDP,
            source,
        })
}

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}

fn program_id_of(
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
    program: &'static str,
) -> Result<u32, DatapathError> {
    info.map(|i| i.id())
        .map_err(|source| DatapathError::Program { program, source })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map creation does not fail
/// there. Newer kernels use memory cgroups and ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if ret != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
