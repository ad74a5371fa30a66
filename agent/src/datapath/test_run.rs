//! `BPF_PROG_TEST_RUN`: a packet through a program without an interface (tests and the
//! `xdp-drop` benchmark), and the benchmark baselines.

use super::loader::{
    Datapath, DatapathError, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, tc_program, xdp_program,
};
use aya::Ebpf;
use aya::programs::Xdp;
use aya::programs::{TestRun as _, TestRunOptions};
use std::time::Duration;

impl Datapath {
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
}

pub(super) const PROG_XDP_PASS: &str = "rp_xdp_pass";

pub(super) const PROG_XDP_DROP: &str = "rp_xdp_drop";

/// A program of the object, for [`Datapath::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    TcIngress,
    TcEgress,
    /// The benchmark baseline `rp_xdp_pass` (passes everything; loaded on first use). Only in an
    /// object built with the `bench-baselines` feature; otherwise `MissingProgram`.
    XdpPassBaseline,
    /// The benchmark baseline `rp_xdp_drop` (drops everything; loaded on first use; the same).
    XdpDropBaseline,
}

/// A benchmark baseline XDP program, loaded on first use (the agent never loads or attaches it).
pub(super) fn baseline_program<'e>(
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
