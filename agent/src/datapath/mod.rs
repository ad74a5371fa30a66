//! The loader: the only module of the agent that touches aya. It loads the embedded kernel object,
//! attaches its programs to interfaces, and hands out typed readers of the kernel maps. Everything
//! else in the agent talks to the types exported here.
//!
//! Without a pin root ([`Datapath::load`]), attachments live as long as the [`Datapath`] value:
//! dropping it detaches every program. With one ([`Datapath::load_pinned`], what `rampart run`
//! uses), maps and links are pinned on bpffs and outlive the agent (see `pins.rs`).
//!
//! Policy state reaches the kernel through [`Datapath::apply`], atomically: endpoints, ipcache
//! and policy are double-buffered (A/B maps); `apply` rewrites the inactive copy completely and
//! then writes the next revision (whose parity names the live generation) in one write, so every
//! packet sees one whole state.

use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
mod pins;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc};
use aya::programs::{TestRun as _, TestRunOptions};
use aya::util::KernelVersion;
use rampart_common::config::{ConfigFlags, DatapathConfig};
use rampart_common::conntrack::{CtEntry, CtKey};
use rampart_common::counters::{Hook, HookCounter, RULE_STATS_OVERFLOW, RuleCounter};
use rampart_common::endpoint::EndpointInfo;
use rampart_common::event::{FlowEvent, LOST_RATE_LIMITED, LOST_RING_FULL};
use rampart_common::frag::{FragEntry, FragKey};
use rampart_common::ipcache::IpcacheEntry;
use rampart_common::maps;
use rampart_common::maps::HOOK_STATS;
use rampart_common::mesh::{MeshEntry, MeshKey};
use rampart_common::policy::{PolicyEntry, PolicyKey};
use rampart_common::reason::{Direction, DropReason, drop_slot};
use serde::Serialize;

use crate::config::XdpAttachMode;
use crate::kernel_state::{IpcacheRecord, PolicyState};
pub use pins::{PinError, PinRoot, remove_all as remove_pins};

/// `BPF_NOEXIST` for map updates: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

/// How long after a generation flip the old generation may still be read by a program that
/// started before it; `apply` does not rewrite that generation sooner.
const GENERATION_GRACE: Duration = Duration::from_millis(20);

/// The kernel object built by `agent/build.rs` (see `xtask/ebpf-build`).
static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-ebpf"));

/// Program names in the kernel object (the eBPF functions' names).
const PROG_XDP: &str = "rp_xdp";
const PROG_TC_INGRESS: &str = "rp_tc_ingress";
const PROG_TC_EGRESS: &str = "rp_tc_egress";
const PROG_XDP_PASS: &str = "rp_xdp_pass";
const PROG_XDP_DROP: &str = "rp_xdp_drop";

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
    #[error(transparent)]
    Pin(#[from] PinError),
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

/// A program of the object, for [`Datapath::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    TcIngress,
    TcEgress,
    /// The benchmark baseline `rp_xdp_pass` (passes everything; loaded on first use).
    XdpPassBaseline,
    /// The benchmark baseline `rp_xdp_drop` (drops everything; loaded on first use).
    XdpDropBaseline,
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
    /// XDP attaches as a bpf_link (kernel >= 5.9), which can be pinned.
    xdp_links: bool,
    config: DatapathConfig,
    last_flip: Option<Instant>,
    pins: Option<PinRoot>,
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
        })
    }

    /// Installs `state` atomically (see the module docs) and returns the new policy revision.
    /// On error the live generation is untouched: the last good state stays in force.
    pub fn apply(&mut self, state: &PolicyState) -> Result<u32, DatapathError> {
        validate(state)?;
        self.wait_for_grace();
        let slot = self.next_slot();
        {
            let name = maps::ENDPOINTS[slot];
            let mut endpoints: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(name, self.map_mut(name)?)?;
            clear_hash(&mut endpoints, name)?;
            for (ifindex, info) in &state.endpoints {
                endpoints.insert(ifindex, info, 0).map_err(map_err(name))?;
            }
        }
        let v4 = state.ipcache.iter().filter_map(|r| match r.addr {
            IpAddr::V4(a) => Some((a.octets(), r)),
            IpAddr::V6(_) => None,
        });
        self.fill_ipcache(maps::IPCACHE4[slot], v4)?;
        let v6 = state.ipcache.iter().filter_map(|r| match r.addr {
            IpAddr::V6(a) => Some((a.octets(), r)),
            IpAddr::V4(_) => None,
        });
        self.fill_ipcache(maps::IPCACHE6[slot], v6)?;
        {
            let name = maps::POLICY[slot];
            let mut policy: LpmTrie<&mut MapData, PolicyKey, PolicyEntry> =
                typed(name, self.map_mut(name)?)?;
            clear_trie(&mut policy, name)?;
            for e in &state.policy {
                policy
                    .insert(&Key::new(e.prefix_len, e.key), e.entry, 0)
                    .map_err(map_err(name))?;
            }
        }
        {
            let name = maps::MESH[slot];
            let mut mesh: HashMap<&mut MapData, MeshKey, MeshEntry> =
                typed(name, self.map_mut(name)?)?;
            clear_hash(&mut mesh, name)?;
            for (k, v) in &state.mesh {
                mesh.insert(k, v, 0).map_err(map_err(name))?;
            }
        }
        self.config.proxy_port = state.proxy_port;
        self.publish_next_revision(if state.audit { ConfigFlags::AUDIT } else { 0 })
    }

    /// Switches agent-wide audit mode on or off, keeping the rest of the live state, as a new
    /// revision (tracked flows are judged again under the new mode at their next packet).
    pub fn set_audit(&mut self, audit: bool) -> Result<u32, DatapathError> {
        let flags = if audit {
            self.config.flags | ConfigFlags::AUDIT
        } else {
            self.config.flags & !ConfigFlags::AUDIT
        };
        // Both generations must hold the live state before the parity flips: copy it over.
        let live = (self.config.revision & 1) as usize;
        self.copy_generation(live, self.next_slot())?;
        self.publish_next_revision(flags)
    }

    /// The generation the next revision makes live (its parity): the one to write now.
    fn next_slot(&self) -> usize {
        (self.config.revision.wrapping_add(1) & 1) as usize
    }

    /// Writes the next revision to `CONFIG_V1`: the kernel reads the live generation as the
    /// revision's parity (one field, so no read pairs a generation with another revision);
    /// `active` mirrors it for readers of the map.
    fn publish_next_revision(&mut self, flags: u32) -> Result<u32, DatapathError> {
        let revision = self.config.revision.wrapping_add(1);
        let config = DatapathConfig {
            active: revision & 1,
            revision,
            flags,
            proxy_port: self.config.proxy_port,
            _pad: 0,
        };
        let mut array: Array<&mut MapData, DatapathConfig> =
            typed(maps::CONFIG, self.map_mut(maps::CONFIG)?)?;
        array.set(0, config, 0).map_err(map_err(maps::CONFIG))?;
        self.config = config;
        self.last_flip = Some(Instant::now());
        Ok(revision)
    }

    /// Waits until the generation that was live before the last flip can no longer be read by a
    /// program that started before it (see `GENERATION_GRACE`).
    fn wait_for_grace(&self) {
        if let Some(flipped) = self.last_flip {
            let since = flipped.elapsed();
            if since < GENERATION_GRACE {
                std::thread::sleep(GENERATION_GRACE - since);
            }
        }
    }

    /// Makes generation `to` a copy of generation `from` (every generation-indexed map).
    fn copy_generation(&mut self, from: usize, to: usize) -> Result<(), DatapathError> {
        self.wait_for_grace();
        let endpoints: Vec<(u32, EndpointInfo)> = {
            let map: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(maps::ENDPOINTS[from], self.map_mut(maps::ENDPOINTS[from])?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(maps::ENDPOINTS[from]))?
        };
        {
            let name = maps::ENDPOINTS[to];
            let mut map: HashMap<&mut MapData, u32, EndpointInfo> =
                typed(name, self.map_mut(name)?)?;
            clear_hash(&mut map, name)?;
            for (k, v) in endpoints {
                map.insert(k, v, 0).map_err(map_err(name))?;
            }
        }
        self.copy_trie::<[u8; 4], IpcacheEntry>(maps::IPCACHE4[from], maps::IPCACHE4[to])?;
        self.copy_trie::<[u8; 16], IpcacheEntry>(maps::IPCACHE6[from], maps::IPCACHE6[to])?;
        self.copy_trie::<PolicyKey, PolicyEntry>(maps::POLICY[from], maps::POLICY[to])?;
        let mesh: Vec<(MeshKey, MeshEntry)> = {
            let map: HashMap<&mut MapData, MeshKey, MeshEntry> =
                typed(maps::MESH[from], self.map_mut(maps::MESH[from])?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(maps::MESH[from]))?
        };
        let name = maps::MESH[to];
        let mut map: HashMap<&mut MapData, MeshKey, MeshEntry> = typed(name, self.map_mut(name)?)?;
        clear_hash(&mut map, name)?;
        for (k, v) in mesh {
            map.insert(k, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn copy_trie<K: aya::Pod, V: aya::Pod>(
        &mut self,
        from: &'static str,
        to: &'static str,
    ) -> Result<(), DatapathError> {
        let entries: Vec<(Key<K>, V)> = {
            let map: LpmTrie<&mut MapData, K, V> = typed(from, self.map_mut(from)?)?;
            map.iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(from))?
        };
        let mut map: LpmTrie<&mut MapData, K, V> = typed(to, self.map_mut(to)?)?;
        clear_trie(&mut map, to)?;
        for (k, v) in entries {
            map.insert(&k, v, 0).map_err(map_err(to))?;
        }
        Ok(())
    }

    /// The current policy revision (0 before the first `apply`).
    pub fn revision(&self) -> u32 {
        self.config.revision
    }

    /// Runs a program once on `packet` with `BPF_PROG_TEST_RUN` (not attached anywhere; the
    /// kernel presents the packet as received on the loopback interface, ifindex 1). Returns the
    /// program's return code.
    pub fn test_run(&mut self, kind: ProgramKind, packet: &[u8]) -> Result<u32, DatapathError> {
        self.test_run_repeat(kind, packet, 1).map(|(ret, _)| ret)
    }

    /// Runs a program `repeat` times on `packet` in the kernel; returns the last return code and
    /// the kernel's mean time per run.
    pub fn test_run_repeat(
        &mut self,
        kind: ProgramKind,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), DatapathError> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let (program, result) = match kind {
            ProgramKind::Xdp => (PROG_XDP, xdp_program(&mut self.ebpf)?.test_run(opts)),
            ProgramKind::TcIngress => (
                PROG_TC_INGRESS,
                tc_program(&mut self.ebpf, PROG_TC_INGRESS)?.test_run(opts),
            ),
            ProgramKind::TcEgress => (
                PROG_TC_EGRESS,
                tc_program(&mut self.ebpf, PROG_TC_EGRESS)?.test_run(opts),
            ),
            ProgramKind::XdpPassBaseline => (
                PROG_XDP_PASS,
                baseline_program(&mut self.ebpf, PROG_XDP_PASS)?.test_run(opts),
            ),
            ProgramKind::XdpDropBaseline => (
                PROG_XDP_DROP,
                baseline_program(&mut self.ebpf, PROG_XDP_DROP)?.test_run(opts),
            ),
        };
        result
            .map(|r| (r.return_value, r.duration))
            .map_err(|source| DatapathError::TestRun { program, source })
    }

    /// Replaces the content of one ipcache trie (of the inactive generation).
    fn fill_ipcache<'s, K: aya::Pod>(
        &mut self,
        name: &'static str,
        records: impl Iterator<Item = (K, &'s IpcacheRecord)>,
    ) -> Result<(), DatapathError> {
        let mut trie: LpmTrie<&mut MapData, K, IpcacheEntry> = typed(name, self.map_mut(name)?)?;
        clear_trie(&mut trie, name)?;
        for (addr, r) in records {
            let entry = IpcacheEntry {
                identity: r.identity,
                endpoint_ifindex: r.endpoint_ifindex,
            };
            trie.insert(&Key::new(u32::from(r.prefix_len), addr), entry, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    /// Attaches both TC programs to `interface`, and XDP too with `xdp_mode`, in the caller's
    /// network namespace.
    ///
    /// With a pin root, each attachment is pinned under `links/<interface>/<hook>`; if a pin is
    /// already there (a previous agent's), this program replaces the old one inside that link in
    /// one `bpf_link_update`, so the interface is never without a program. Without `xdp_mode`, a
    /// previous agent's pinned XDP link on the interface is removed (detached).
    ///
    /// Pods' veths take TC only: XDP on a veth makes the kernel turn off TSO on the pod's end
    /// (`veth_fix_features`), which cut pod-to-pod TCP throughput about 5x here, and it saves
    /// nothing there (the veth has already built the skb; TC ingress makes the same decision).
    /// XDP belongs on uplinks, where it drops before the skb exists.
    pub fn attach(
        &mut self,
        interface: &str,
        xdp_mode: Option<XdpAttachMode>,
    ) -> Result<(), DatapathError> {
        match xdp_mode {
            Some(mode) => self.attach_xdp(interface, mode)?,
            None => {
                if let Some(pin) = self
                    .pins
                    .as_ref()
                    .map(|p| p.link(interface, Hook::XDP.name()))
                    && pin.exists()
                {
                    std::fs::remove_file(&pin).map_err(|source| DatapathError::Unpin {
                        path: pin.display().to_string(),
                        source,
                    })?;
                }
            }
        }
        self.attach_tc(interface)
    }

    fn attach_xdp(
        &mut self,
        interface: &str,
        xdp_mode: XdpAttachMode,
    ) -> Result<(), DatapathError> {
        let (mode, method) = match xdp_mode {
            XdpAttachMode::Auto => (XdpMode::Default, "xdp-auto"),
            XdpAttachMode::Native => (XdpMode::Driver, "xdp-native"),
            XdpAttachMode::Generic => (XdpMode::Skb, "xdp-generic"),
        };
        // Only link-based attachments can be pinned (XDP from kernel 5.9, TC with tcx from 6.6);
        // a netlink one stays owned by its program and is detached with this agent, not leaked.
        let pin = self
            .pins
            .as_ref()
            .filter(|_| self.xdp_links)
            .map(|p| p.link(interface, Hook::XDP.name()));
        let xdp = xdp_program(&mut self.ebpf)?;
        attach_pinned(
            xdp,
            interface,
            PROG_XDP,
            pin.as_deref(),
            |p, link: XdpLink| p.attach_to_link(link),
            |p| p.attach(interface, mode),
            |p, id| p.take_link(id),
        )?;
        let program_id = program_id_of(xdp.info(), PROG_XDP)?;
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            hook: Hook::XDP.name(),
            program: PROG_XDP,
            program_id,
            method,
        });
        Ok(())
    }

    fn attach_tc(&mut self, interface: &str) -> Result<(), DatapathError> {
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
            let pin = self
                .pins
                .as_ref()
                .filter(|_| self.tcx)
                .map(|p| p.link(interface, hook.name()));
            let prog = tc_program(&mut self.ebpf, name)?;
            attach_pinned(
                prog,
                interface,
                name,
                pin.as_deref(),
                |p, link: SchedClassifierLink| p.attach_to_link(link),
                |p| p.attach(interface, attach_type),
                |p, id| p.take_link(id),
            )?;
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

    /// Moves the counter maps out of the object into a reader that can be shared across
    /// threads. Call once.
    pub fn take_stats(&mut self) -> Result<Stats, DatapathError> {
        Ok(Stats {
            hooks: self.take_counter_array(HOOK_STATS)?,
            drops: self.take_counter_array(maps::DROP_STATS)?,
            audits: self.take_counter_array(maps::AUDIT_STATS)?,
            forwarded: self.take_counter_array(maps::FWD_STATS)?,
            rules: {
                let map = self
                    .ebpf
                    .take_map(maps::RULE_STATS)
                    .ok_or(DatapathError::MissingMap(maps::RULE_STATS))?;
                PerCpuHashMap::try_from(map).map_err(map_err(maps::RULE_STATS))?
            },
            ct: {
                let map = self
                    .ebpf
                    .take_map(maps::CT)
                    .ok_or(DatapathError::MissingMap(maps::CT))?;
                HashMap::try_from(map).map_err(map_err(maps::CT))?
            },
            frags: {
                let map = self
                    .ebpf
                    .take_map(maps::FRAGS)
                    .ok_or(DatapathError::MissingMap(maps::FRAGS))?;
                HashMap::try_from(map).map_err(map_err(maps::FRAGS))?
            },
        })
    }

    /// Moves the event ring buffer and the lost-event counters out of the object into a
    /// reader. Call once.
    pub fn take_events(&mut self) -> Result<EventReader, DatapathError> {
        let ring = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(DatapathError::MissingMap(maps::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(maps::EVENTS))?;
        let lost = self
            .ebpf
            .take_map(maps::EVENTS_LOST)
            .ok_or(DatapathError::MissingMap(maps::EVENTS_LOST))?;
        let lost = PerCpuArray::try_from(lost).map_err(map_err(maps::EVENTS_LOST))?;
        Ok(EventReader { ring, lost })
    }

    fn take_counter_array(&mut self, name: &'static str) -> Result<CounterArray, DatapathError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let array = PerCpuArray::try_from(map).map_err(map_err(name))?;
        Ok(CounterArray { name, array })
    }
}

/// Checks a state before any of it is written: the kernel reads endpoint id 0 as "no endpoint"
/// (an endpoint with it would go unpoliced), and a prefix cannot be longer than its address.
fn validate(state: &PolicyState) -> Result<(), DatapathError> {
    if let Some((ifindex, _)) = state.endpoints.iter().find(|(_, e)| e.endpoint_id == 0) {
        return Err(DatapathError::EndpointIdZero { ifindex: *ifindex });
    }
    for r in &state.ipcache {
        let max = if r.addr.is_ipv4() { 32 } else { 128 };
        if r.prefix_len > max {
            return Err(DatapathError::BadPrefix {
                addr: r.addr,
                prefix_len: r.prefix_len,
            });
        }
    }
    Ok(())
}

/// Attaches `prog` to `interface` and, with a `pin` path, pins the attachment there. If a previous
/// agent pinned a link at `pin`, this program replaces the old one inside it (`update`: one
/// `bpf_link_update`, no gap); without one, or if that fails, it attaches anew (`attach`).
#[allow(
    clippy::too_many_arguments,
    reason = "the link operations differ per program type (XDP, TC) and aya has no trait for them; a struct of closures would only rename the arguments"
)]
fn attach_pinned<P, L, Id>(
    prog: &mut P,
    interface: &str,
    program: &'static str,
    pin: Option<&Path>,
    update: impl FnOnce(&mut P, L) -> Result<Id, aya::programs::ProgramError>,
    attach: impl FnOnce(&mut P) -> Result<Id, aya::programs::ProgramError>,
    take: impl FnOnce(&mut P, Id) -> Result<L, aya::programs::ProgramError>,
) -> Result<(), DatapathError>
where
    L: TryFrom<FdLink>,
    FdLink: TryFrom<L>,
{
    let err = |source| DatapathError::Attach {
        program,
        interface: interface.to_owned(),
        source,
    };
    let adopted = pin
        .and_then(take_pinned_link)
        .and_then(|fd| L::try_from(fd).ok());
    let id = match adopted.map(|link| update(prog, link)) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            tracing::warn!(%interface, program, "replacing the pinned program failed ({e}); attaching anew");
            attach(prog).map_err(err)?
        }
        None => attach(prog).map_err(err)?,
    };
    if let Some(path) = pin {
        let link = take(prog, id).map_err(err)?;
        pin_link(FdLink::try_from(link).ok(), path, interface)?;
    }
    Ok(())
}

/// Takes over the link pinned at `path` (removing the pin; the link lives while we hold it).
fn take_pinned_link(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path).map(PinnedLink::unpin) {
        Ok(Ok(link)) => Some(link),
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), "unpinning a previous link: {e}");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "opening a previous link: {e}; removing it");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Pins `link` at `path`. Legacy (netlink) attachments cannot be pinned: they are kept by this
/// process only, and said so.
fn pin_link(link: Option<FdLink>, path: &Path, interface: &str) -> Result<(), DatapathError> {
    let fail = |reason: String| DatapathError::PinLink {
        interface: interface.to_owned(),
        path: path.display().to_string(),
        reason,
    };
    let Some(link) = link else {
        tracing::warn!(%interface, "a netlink attachment cannot be pinned: it ends with this agent");
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    // The pin holds the link: dropping the returned handle keeps the program attached.
    link.pin(path).map(drop).map_err(|e| fail(e.to_string()))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn typed<'a, T>(name: &'static str, map: &'a mut Map) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(map_err(name))
}

fn clear_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

fn clear_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<&mut MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<Key<K>> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Reader of the kernel's flow events (`EVENTS_V1`) and of the count of events it could not
/// write (`EVENTS_LOST_V1`).
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

/// Events the kernel could not write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsLost {
    pub rate_limited: u64,
    pub ring_full: u64,
}

impl EventReader {
    /// Takes up to `max` events waiting in the ring, oldest first. Never blocks.
    pub fn drain(&mut self, max: usize) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.ring.next() else { break };
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the record holds at least one FlowEvent written by the kernel programs;
                // FlowEvent is plain old data, read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
        }
        out
    }

    pub fn lost(&self) -> Result<EventsLost, DatapathError> {
        let sum = |slot: u32| -> Result<u64, DatapathError> {
            let per_cpu = self
                .lost
                .get(&slot, 0)
                .map_err(map_err(maps::EVENTS_LOST))?;
            Ok(per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok(EventsLost {
            rate_limited: sum(LOST_RATE_LIMITED)?,
            ring_full: sum(LOST_RING_FULL)?,
        })
    }
}

/// One per-CPU counter array.
struct CounterArray {
    name: &'static str,
    array: PerCpuArray<MapData, HookCounter>,
}

impl CounterArray {
    /// Slot `index` summed over CPUs.
    fn sum(&self, index: u32) -> Result<HookCounter, DatapathError> {
        let per_cpu = self.array.get(&index, 0).map_err(map_err(self.name))?;
        Ok(per_cpu
            .iter()
            .fold(HookCounter::default(), |acc, c| acc.add(*c)))
    }
}

/// Readers of the kernel counters, summed over CPUs.
pub struct Stats {
    hooks: CounterArray,
    drops: CounterArray,
    audits: CounterArray,
    forwarded: CounterArray,
    rules: PerCpuHashMap<MapData, u32, RuleCounter>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    frags: HashMap<MapData, FragKey, FragEntry>,
}

/// Entries of the maps the kernel fills itself (counted by walking their keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTableEntries {
    pub conntrack: usize,
    pub fragments: usize,
    pub rule_stats: usize,
}

/// A packets/bytes count for one (reason, direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: DropReason,
    pub direction: Direction,
    pub counter: HookCounter,
}

impl Stats {
    /// Packets and bytes per hook.
    pub fn hooks(&self) -> Result<[(Hook, HookCounter); Hook::COUNT as usize], DatapathError> {
        let mut out = Hook::ALL.map(|h| (h, HookCounter::default()));
        for (hook, total) in &mut out {
            *total = self.hooks.sum(hook.0)?;
        }
        Ok(out)
    }

    /// Dropped packets by every defined reason (except `none`) and direction.
    pub fn drops(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        reason_counts(&self.drops)
    }

    /// Would-be drops that audit mode let through, by reason and direction.
    pub fn audited(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        reason_counts(&self.audits)
    }

    /// Packets forwarded by policy (new flows allowed and tracked flows), by direction.
    pub fn forwarded(&self) -> Result<[(Direction, HookCounter); 2], DatapathError> {
        Ok([
            (
                Direction::INGRESS,
                self.forwarded.sum(u32::from(Direction::INGRESS.0))?,
            ),
            (
                Direction::EGRESS,
                self.forwarded.sum(u32::from(Direction::EGRESS.0))?,
            ),
        ])
    }
}

impl Stats {
    /// How full the conntrack, fragment and rule-counter maps are. Walks every key: a full
    /// conntrack table (262144 entries) takes on the order of 100 ms.
    pub fn kernel_table_entries(&self) -> Result<KernelTableEntries, DatapathError> {
        let count = |keys: &mut dyn Iterator<Item = Result<(), aya::maps::MapError>>,
                     name: &'static str|
         -> Result<usize, DatapathError> {
            let mut n = 0;
            for key in keys {
                match key {
                    Ok(()) => n += 1,
                    // An LRU entry evicted while we walk: the walk restarts from the first key in
                    // the kernel; what we counted is still a fair reading.
                    Err(aya::maps::MapError::KeyNotFound) => break,
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
            Ok(n)
        };
        Ok(KernelTableEntries {
            conntrack: count(&mut self.ct.keys().map(|k| k.map(|_| ())), maps::CT)?,
            fragments: count(&mut self.frags.keys().map(|k| k.map(|_| ())), maps::FRAGS)?,
            rule_stats: count(
                &mut self.rules.keys().map(|k| k.map(|_| ())),
                maps::RULE_STATS,
            )?,
        })
    }

    /// Decisions per rule cookie, summed over CPUs, ordered by cookie. Cookie 0: no rule (the
    /// isolation default); `RULE_STATS_OVERFLOW`: cookies that found the map full.
    pub fn rules(&self) -> Result<Vec<(u32, RuleCounter)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.rules.iter() {
            let (cookie, per_cpu) = item.map_err(map_err(maps::RULE_STATS))?;
            out.push((
                cookie,
                per_cpu
                    .iter()
                    .fold(RuleCounter::default(), |a, c| a.add(*c)),
            ));
        }
        out.sort_by_key(|(cookie, _)| *cookie);
        Ok(out)
    }
}

fn reason_counts(array: &CounterArray) -> Result<Vec<ReasonCount>, DatapathError> {
    let mut out = Vec::new();
    for reason in DropReason::ALL
        .into_iter()
        .filter(|r| *r != DropReason::NONE)
    {
        for direction in Direction::ALL {
            let counter = array.sum(drop_slot(reason, direction))?;
            out.push(ReasonCount {
                reason,
                direction,
                counter,
            });
        }
    }
    Ok(out)
}

/// A benchmark baseline XDP program, loaded on first use (the agent never loads or attaches it).
fn baseline_program<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut Xdp, DatapathError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| DatapathError::Program {
            program: name,
            source,
        })?;
    }
    Ok(prog)
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
