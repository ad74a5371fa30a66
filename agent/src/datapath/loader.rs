//! The loaded object: the `Datapath` value, its errors, loading (pinned or not) and the
//! programs and maps it hands to the other files of this folder.

use super::pins::{PinError, PinRoot};
use aya::maps::{Array, Map, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::{SchedClassifier, Xdp, tc};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use rampart_common::config::DatapathConfig;
use rampart_common::counters::{RULE_STATS_OVERFLOW, RuleCounter};
use rampart_common::kernel_log::Program;
use rampart_common::maps;
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

/// The kernel object built by `agent/build.rs` (see `xtask/ebpf-build`).
pub(super) static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-ebpf"));

/// Program names in the kernel object (the eBPF functions' names).
pub(super) const PROG_XDP: &str = Program::Xdp.name();
pub(super) const PROG_TC_INGRESS: &str = Program::TcIngress.name();
pub(super) const PROG_TC_EGRESS: &str = Program::TcEgress.name();
pub(super) const PROG_TC_BRIDGE: &str = Program::TcBridge.name();

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
    #[error("test run of {program}: {source}")]
    TestRun {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the kernel programs' log: {0}")]
    KernelLog(String),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Migrate(#[from] Box<super::migrate::MigrateError>),
    #[error("pinning the link of {interface} at {path}: {reason}")]
    PinLink {
        interface: String,
        path: String,
        reason: String,
    },
    #[error("removing the stale XDP link pin {path}: {source}")]
    Unpin {
        path: String,
        source: std::io::Error,
    },
    #[error("counting possible CPUs: {0}")]
    Cpus(String),
    #[error("endpoint on ifindex {ifindex} has id 0, which the datapath reads as no endpoint")]
    EndpointIdZero { ifindex: u32 },
    #[error("ipcache prefix {addr}/{prefix_len} is longer than the address")]
    BadPrefix { addr: IpAddr, prefix_len: u8 },
}

/// The loaded kernel programs and their attachments.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub(super) attachments: Vec<Attachment>,
    pub(super) tcx: bool,
    /// XDP attaches as a bpf_link (kernel >= 5.9), which can be pinned.
    pub(super) xdp_links: bool,
    pub(super) config: DatapathConfig,
    pub(super) last_flip: Option<Instant>,
    pub(super) pins: Option<PinRoot>,
    /// What each generation holds, when known (see `written`).
    pub(super) written: [Option<super::written::Written>; 2],
    /// Flows carried from a previous layout's conntrack at load.
    pub(super) carried_flows: u64,
}

impl Datapath {
    /// Loads the embedded object and every program in it into the kernel (verifier included);
    /// attaches nothing.
    pub fn load() -> Result<Datapath, DatapathError> {
        Self::load_with(None)
    }

    /// Like [`Datapath::load`], with every map pinned under `root/maps` (pins already there are
    /// reused: conntrack, policy and counters survive a restart) and attachments pinned under
    /// `root/links` by [`Datapath::attach`].
    pub fn load_pinned(root: &Path) -> Result<Datapath, DatapathError> {
        Self::load_with(Some(PinRoot::prepare(root)?))
    }

    fn load_with(pins: Option<PinRoot>) -> Result<Datapath, DatapathError> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            for name in maps::ALL {
                loader.map_pin_path(name, pins.map(name));
            }
            // Counters of an earlier layout: the programs no longer write them.
            for name in maps::RETIRED {
                match std::fs::remove_file(pins.map(name)) {
                    Ok(()) => tracing::info!(map = name, "removed the pin of a retired map"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(DatapathError::Unpin {
                            path: pins.map(name).display().to_string(),
                            source,
                        });
                    }
                }
            }
        }
        // RAMPART_VERIFIER_LOG=1: the verifier's full log in load errors (debugging the programs).
        if std::env::var_os("RAMPART_VERIFIER_LOG").is_some() {
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        let mut ebpf = loader.load(KERNEL_OBJECT)?;
        // Maps of the previous layout: their entries first, while the old programs still run.
        let mut carried_flows = 0;
        if let Some(pins) = &pins
            && let Some(carried) = super::migrate::conntrack(pins, false)?
        {
            carried_flows = carried;
            tracing::info!(
                flows = carried,
                from = maps::CT_PREVIOUS,
                to = maps::CT,
                "carried conntrack into the new layout"
            );
        }
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PROG_XDP,
                source,
            })?;
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_TC_BRIDGE] {
            tc_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        // The rule counters' overflow slot must exist before any program runs (see RuleCounter).
        {
            let cpus = aya::util::nr_cpus()
                .map_err(|(what, e)| DatapathError::Cpus(format!("{what}: {e}")))?;
            let zeros = PerCpuValues::try_from(vec![RuleCounter::default(); cpus])
                .map_err(|e| DatapathError::Cpus(e.to_string()))?;
            let map = ebpf
                .map_mut(maps::RULE_STATS)
                .ok_or(DatapathError::MissingMap(maps::RULE_STATS))?;
            let mut rules: PerCpuHashMap<&mut MapData, u32, RuleCounter> =
                typed(maps::RULE_STATS, map)?;
            // BPF_NOEXIST: a pinned map from a previous agent keeps its counts.
            match rules.insert(RULE_STATS_OVERFLOW, zeros, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_err(maps::RULE_STATS)(e)),
            }
        }
        // A pinned CONFIG_V1 says which generation is live and the revision reached.
        let config = {
            let map = ebpf
                .map_mut(maps::CONFIG)
                .ok_or(DatapathError::MissingMap(maps::CONFIG))?;
            let array: Array<&mut MapData, DatapathConfig> = typed(maps::CONFIG, map)?;
            array.get(&0, 0).map_err(map_err(maps::CONFIG))?
        };
        let xdp_links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 9, 0));
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        Ok(Datapath {
            ebpf,
            attachments: Vec::new(),
            tcx,
            xdp_links,
            config,
            last_flip: None,
            pins,
            written: [None, None],
            carried_flows,
        })
    }

    /// Flows carried from a previous layout's conntrack when this datapath was loaded.
    pub fn carried_flows(&self) -> u64 {
        self.carried_flows
    }

    /// Once the new programs run on every link: carries the flows the old ones added to maps of
    /// the previous layout meanwhile and removes their pins (see `migrate`).
    /// Returns the flows carried.
    pub fn finish_migration(root: &Path) -> Result<u64, DatapathError> {
        let pins = PinRoot::prepare(root)?;
        let Some(carried) = super::migrate::conntrack(&pins, true)? else {
            return Ok(0);
        };
        tracing::info!(
            flows = carried,
            from = maps::CT_PREVIOUS,
            to = maps::CT,
            "carried the last conntrack entries into the new layout; the old map is unpinned"
        );
        Ok(carried)
    }

    pub(super) fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }
}

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

pub(super) fn typed<'a, T>(name: &'static str, map: &'a mut Map) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(map_err(name))
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    ebpf.program_mut(PROG_XDP)
        .ok_or(DatapathError::MissingProgram(PROG_XDP))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: PROG_XDP,
            source,
        })
}

pub(super) fn tc_program<'a>(
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

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map creation does not fail
/// there. Newer kernels use memory cgroups and ignore it.
pub(super) fn raise_memlock_limit() {
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

/// `BPF_NOEXIST` for map updates: fail if the key exists.
pub(super) const BPF_NOEXIST: u64 = 1;
