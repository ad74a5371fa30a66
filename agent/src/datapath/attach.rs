//! Attaching the programs: XDP on uplinks, TC on pod veths (tcx, else clsact), each attachment
//! pinned so the next agent swaps its program in without a gap.

use super::loader::{
    Attachment, Datapath, DatapathError, PROG_TC_BRIDGE, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP,
    map_err, tc_program, typed, xdp_program,
};
use std::path::Path;

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};

use crate::config::XdpAttachMode;
use aya::maps::{HashMap, MapData};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::tc::TcAttachOptions;
use aya::programs::xdp::XdpLink;
use aya::programs::{TcAttachType, XdpMode, tc};
use rampart_common::counters::Hook;
use rampart_common::endpoint::InterfaceMac;
use rampart_common::maps;

impl Datapath {
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
            Some(mode) => match self.attach_xdp(interface, mode) {
                Ok(()) => {}
                Err(e) if xdp_taken(&e) => {
                    // One XDP program per interface (without a dispatcher, which the other
                    // program's owner would have to use too): the other agent's stays, and TC
                    // ingress makes the same decision here once the skb exists.
                    tracing::warn!(
                        %interface,
                        "another XDP program is attached; enforcing with TC ingress only: {e}"
                    );
                }
                Err(e) => return Err(e),
            },
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
        self.attach_tc(interface)?;
        self.record_hardware_address(interface)?;
        match crate::pod_interfaces::bridge_of(interface) {
            Some(bridge) => self.attach_bridge(&bridge),
            None => Ok(()),
        }
    }

    /// The hook name of [`PROG_TC_BRIDGE`]'s attachment (its pin's name).
    const BRIDGE_HOOK: &'static str = "tc_bridge";

    /// Attaches [`PROG_TC_BRIDGE`] to the TC ingress of `bridge`, the master of a pod's
    /// interface (once per bridge; pinned like the others): on a bridge CNI, a connection marked
    /// for the proxy on the pod's port gets the proxy's listener there (see the kernel's
    /// `proxy::assign_bridged`). It acts on marked packets only; everything else passes on.
    fn attach_bridge(&mut self, bridge: &str) -> Result<(), DatapathError> {
        if self
            .attachments
            .iter()
            .any(|a| a.interface == bridge && a.hook == Self::BRIDGE_HOOK)
        {
            return Ok(());
        }
        self.add_clsact(bridge)?;
        self.attach_tc_program(
            bridge,
            PROG_TC_BRIDGE,
            Self::BRIDGE_HOOK,
            TcAttachType::Ingress,
        )
    }

    /// Writes `interface`'s own hardware address to `IF_MAC_V1` (see
    /// `rampart_common::endpoint::InterfaceMac`): frames for the proxy on a pod's bridge port are
    /// addressed to it so that the bridge hands them up to the node.
    fn record_hardware_address(&mut self, interface: &str) -> Result<(), DatapathError> {
        let (Some(ifindex), Some(mac)) = (
            crate::pod_interfaces::ifindex(interface),
            crate::pod_interfaces::hardware_address(interface),
        ) else {
            // Gone already: the controller forgets it at its next read.
            return Ok(());
        };
        let name = maps::IF_MAC;
        let mut map: HashMap<&mut MapData, u32, InterfaceMac> = typed(name, self.map_mut(name)?)?;
        map.insert(ifindex, InterfaceMac { mac, _pad: [0; 2] }, 0)
            .map_err(map_err(name))
    }

    pub(super) fn attach_xdp(
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

    pub(super) fn attach_tc(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.add_clsact(interface)?;
        for (name, hook, attach_type) in [
            (PROG_TC_INGRESS, Hook::TC_INGRESS, TcAttachType::Ingress),
            (PROG_TC_EGRESS, Hook::TC_EGRESS, TcAttachType::Egress),
        ] {
            self.attach_tc_program(interface, name, hook.name(), attach_type)?;
        }
        Ok(())
    }

    /// Before tcx (kernel 6.6) TC programs hang off the clsact qdisc; it may exist already.
    fn add_clsact(&self, interface: &str) -> Result<(), DatapathError> {
        if self.tcx {
            return Ok(());
        }
        match tc::qdisc_add_clsact(interface) {
            Ok(()) | Err(tc::TcError::AlreadyAttached) => Ok(()),
            Err(source) => Err(DatapathError::Clsact {
                interface: interface.to_owned(),
                source,
            }),
        }
    }

    /// Attaches TC program `name` to `interface`'s `attach_type` hook, pinned as `hook` (tcx:
    /// first on the hook), and records the attachment.
    fn attach_tc_program(
        &mut self,
        interface: &str,
        name: &'static str,
        hook: &'static str,
        attach_type: TcAttachType,
    ) -> Result<(), DatapathError> {
        let tcx = self.tcx;
        let pin = self
            .pins
            .as_ref()
            .filter(|_| tcx)
            .map(|p| p.link(interface, hook));
        let prog = tc_program(&mut self.ebpf, name)?;
        attach_pinned(
            prog,
            interface,
            name,
            pin.as_deref(),
            |p, link: SchedClassifierLink| p.attach_to_link(link),
            |p| {
                if tcx {
                    // Before every program already on the hook: Rampart's drop is final
                    // whatever runs after it, and its pass hands the packet on to them.
                    p.attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                } else {
                    // A tc filter added without a priority goes before the existing ones.
                    p.attach(interface, attach_type)
                }
            },
            |p, id| p.take_link(id),
        )?;
        let program_id = program_id_of(prog.info(), name)?;
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            hook,
            program: name,
            program_id,
            method: if tcx { "tcx" } else { "tc-clsact" },
        });
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Forgets `interface`'s attachments once the interface is gone: the kernel detached its
    /// links with it, and their pins (which would keep the dead links, and be taken for the
    /// links of a new interface of the same name) are removed.
    pub fn forget(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attachments.retain(|a| a.interface != interface);
        let Some(dir) = self.pins.as_ref().map(|p| p.links_of(interface)) else {
            return Ok(());
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::Unpin {
                path: dir.display().to_string(),
                source,
            }),
        }
    }
}

/// Whether attaching XDP failed because the interface already has an XDP program (the kernel
/// answers `EBUSY` for another link, `EEXIST` for a program attached without one).
fn xdp_taken(e: &DatapathError) -> bool {
    matches!(
        e,
        DatapathError::Attach {
            source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }),
            ..
        } if matches!(io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
    )
}

pub(super) fn program_id_of(
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
    program: &'static str,
) -> Result<u32, DatapathError> {
    info.map(|i| i.id())
        .map_err(|source| DatapathError::Program { program, source })
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
