//! Other agents' programs, as a CNI or a monitoring agent attaches them: on a pod's interface
//! (TC), one that counts the packets it sees and one that drops TCP to a port, each passing the
//! rest on (`TC_ACT_UNSPEC`, tcx's "next"), and one that ends the chain (`TC_ACT_OK`); on an
//! uplink (XDP), a counter. The coexistence tests attach them before Rampart and
//! check that they stay attached and keep working.
//!
//! Hand-assembled and loaded with the `bpf(2)` system call: the harness has no BPF compiler (the
//! agent's programs are built by `xtask`'s toolchain and embedded in the agent), and each of
//! these is a dozen instructions.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

// bpf(2) commands and constants (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_PASS: i32 = 2;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `__sk_buff` offsets of `data` and `data_end`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

/// One instruction: opcode, destination and source registers, offset, immediate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes (class | op | source).
const MOV64_IMM: u8 = 0xb7;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const STX_W: u8 = 0x63;
const ATOMIC_DW: u8 = 0xdb;
const LD_IMM64: u8 = 0x18;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const JGT_REG: u8 = 0x2d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// The hook a program goes on.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// TC ingress: on a pod's interface, what the pod sends.
    Ingress,
    /// TC egress: on a pod's interface, what the node delivers to the pod.
    Egress,
    /// XDP (the driver's mode if it has one).
    Xdp,
}

/// A loaded program (and its map, for the counter); attached while its link is held.
#[derive(Debug)]
pub struct ForeignProgram {
    prog: OwnedFd,
    counts: Option<OwnedFd>,
    links: Vec<OwnedFd>,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed bpf_attr of the size passed, filled for `cmd`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn fd(r: libc::c_long) -> anyhow::Result<OwnedFd> {
    let raw = i32::try_from(r).context("a file descriptor")?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn load(name: &str, insns: &[Insn]) -> anyhow::Result<OwnedFd> {
    load_as(name, BPF_PROG_TYPE_SCHED_CLS, 0, insns)
}

fn load_as(
    name: &str,
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
) -> anyhow::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, u32::try_from(insns.len())?);
    put_u32(&mut attr, 68, expected_attach_type);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, u32::try_from(log.len())?);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    let bytes = name.as_bytes();
    attr[48..48 + bytes.len().min(15)].copy_from_slice(&bytes[..bytes.len().min(15)]);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(r) => fd(r),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "loading {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

impl ForeignProgram {
    /// Counts every packet it sees (in an array map), passes each on.
    pub fn counter() -> anyhow::Result<ForeignProgram> {
        Self::counting("foreign_count", BPF_PROG_TYPE_SCHED_CLS, 0, TC_ACT_UNSPEC)
    }

    /// The same counter as an XDP program (`XDP_PASS`), for an uplink.
    pub fn xdp_counter() -> anyhow::Result<ForeignProgram> {
        Self::counting("foreign_xdp", BPF_PROG_TYPE_XDP, BPF_XDP, XDP_PASS)
    }

    fn counting(
        name: &str,
        prog_type: u32,
        expected_attach_type: u32,
        verdict: i32,
    ) -> anyhow::Result<ForeignProgram> {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_ARRAY);
        put_u32(&mut attr, 4, 4);
        put_u32(&mut attr, 8, 8);
        put_u32(&mut attr, 12, 1);
        let map = fd(bpf(BPF_MAP_CREATE, &mut attr).context("creating the counter's map")?)?;
        let map_fd = map.as_raw_fd();
        let insns = [
            insn(MOV64_IMM, 1, 0, 0, 0),
            insn(STX_W, 10, 1, -4, 0), // key 0 on the stack
            insn(MOV64_REG, 2, 10, 0, 0),
            insn(ADD64_IMM, 2, 0, 0, -4),
            insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
            insn(0, 0, 0, 0, 0),
            insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
            insn(JEQ_IMM, 0, 0, 2, 0), // no value: pass
            insn(MOV64_IMM, 1, 0, 0, 1),
            insn(ATOMIC_DW, 0, 1, 0, 0), // lock *(u64 *)(r0 + 0) += r1
            insn(MOV64_IMM, 0, 0, 0, verdict),
            insn(EXIT, 0, 0, 0, 0),
        ];
        Ok(ForeignProgram {
            prog: load_as(name, prog_type, expected_attach_type, &insns)?,
            counts: Some(map),
            links: Vec::new(),
        })
    }

    /// Drops IPv4 TCP to `port` (headers without options), passes everything else on.
    pub fn tcp_port_dropper(port: u16) -> anyhow::Result<ForeignProgram> {
        let port = i32::from(u16::from_le_bytes(port.to_be_bytes()));
        let insns = [
            insn(LDX_W, 2, 1, SKB_DATA, 0),
            insn(LDX_W, 3, 1, SKB_DATA_END, 0),
            insn(MOV64_REG, 4, 2, 0, 0),
            insn(ADD64_IMM, 4, 0, 0, 38), // Ethernet + IPv4 + the TCP ports
            insn(JGT_REG, 4, 3, 8, 0),
            insn(LDX_H, 5, 2, 12, 0),
            insn(JNE_IMM, 5, 0, 6, 0x0008), // EtherType IPv4, as loaded little-endian
            insn(LDX_B, 5, 2, 23, 0),
            insn(JNE_IMM, 5, 0, 4, 6), // TCP
            insn(LDX_H, 5, 2, 36, 0),
            insn(JNE_IMM, 5, 0, 2, port),
            insn(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT),
            insn(EXIT, 0, 0, 0, 0),
            insn(MOV64_IMM, 0, 0, 0, TC_ACT_UNSPEC),
            insn(EXIT, 0, 0, 0, 0),
        ];
        Ok(ForeignProgram {
            prog: load("foreign_drop", &insns)?,
            counts: None,
            links: Vec::new(),
        })
    }

    /// Passes every packet with `TC_ACT_OK`, which ends the hook's chain (as a CNI's program
    /// does once it has routed a packet): whatever runs after it never sees the packet.
    pub fn chain_ender() -> anyhow::Result<ForeignProgram> {
        let insns = [insn(MOV64_IMM, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)];
        Ok(ForeignProgram {
            prog: load("foreign_ok", &insns)?,
            counts: None,
            links: Vec::new(),
        })
    }

    /// Attaches to `interface` in `ns` with a link (tcx: after whatever is there), held until
    /// this is dropped.
    pub fn attach(&mut self, ns: &Netns, interface: &str, hook: Hook) -> anyhow::Result<()> {
        let prog = u32::try_from(self.prog.as_raw_fd())?;
        let interface = std::ffi::CString::new(interface)?;
        let link = ns.run(move || -> anyhow::Result<libc::c_long> {
            // SAFETY: if_nametoindex reads a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(interface.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {interface:?}");
            }
            let mut attr = [0u8; 128];
            put_u32(&mut attr, 0, prog);
            put_u32(&mut attr, 4, ifindex);
            put_u32(
                &mut attr,
                8,
                match hook {
                    Hook::Ingress => BPF_TCX_INGRESS,
                    Hook::Egress => BPF_TCX_EGRESS,
                    Hook::Xdp => BPF_XDP,
                },
            );
            bpf(BPF_LINK_CREATE, &mut attr).context("attaching with a link")
        })??;
        self.links.push(fd(link)?);
        Ok(())
    }

    /// Packets the counter has seen.
    pub fn count(&self) -> anyhow::Result<u64> {
        let map = self.counts.as_ref().context("not a counter")?;
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, u32::try_from(map.as_raw_fd())?);
        put_u64(&mut attr, 8, std::ptr::from_ref(&key) as u64);
        put_u64(&mut attr, 16, std::ptr::from_mut(&mut value) as u64);
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading the counter")?;
        Ok(value)
    }
}
