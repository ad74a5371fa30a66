//! The conntrack sweep: `CT_V3` is a hash that never evicts a live flow (see
//! `rampart_common::conntrack`), so entries whose flows ended without a FIN the programs saw
//! (and the half-open flows of a SYN flood) are removed here: expired ones always, and while
//! the table is nearly full also TCP flows whose handshake never completed and that have been
//! idle a few seconds.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use aya::maps::MapError;
use rampart_common::conntrack::{CT_PRESSURE_PERCENT, CtKey, Swept, ct_sweep};
use rampart_common::maps::{self, MAX_CT};

use super::loader::{DatapathError, map_err};
use super::stats::Stats;

/// What one sweep found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackSweep {
    /// Entries before the sweep.
    pub entries: usize,
    /// Whether the table was under pressure (unconfirmed flows removed early).
    pub pressure: bool,
    pub expired: u64,
    pub unconfirmed: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

impl Stats {
    /// Removes the entries [`ct_sweep`] says are done, and counts them.
    pub fn sweep_conntrack(&self) -> Result<ConntrackSweep, DatapathError> {
        let mut ct = self.ct.lock().unwrap_or_else(PoisonError::into_inner);
        let now = monotonic_ns();
        // One walk: what is expired, and what would go under pressure (decided by the count).
        let mut entries = 0usize;
        let (mut expired, mut unconfirmed): (Vec<CtKey>, Vec<CtKey>) = (Vec::new(), Vec::new());
        for item in ct.iter() {
            match item {
                Ok((key, entry)) => {
                    entries += 1;
                    match ct_sweep(&key, &entry, now, true) {
                        Some(Swept::Expired) => expired.push(key),
                        Some(Swept::Unconfirmed) => unconfirmed.push(key),
                        None => {}
                    }
                }
                // Removed by a program while we walk: the walk restarts from the first key.
                Err(MapError::KeyNotFound) => break,
                Err(e) => return Err(map_err(maps::CT)(e)),
            }
        }
        let pressure = (entries as u64) * 100 >= u64::from(MAX_CT) * CT_PRESSURE_PERCENT;
        if !pressure {
            unconfirmed.clear();
        }
        let done = expired
            .into_iter()
            .map(|k| (k, Swept::Expired))
            .chain(unconfirmed.into_iter().map(|k| (k, Swept::Unconfirmed)));
        let mut sweep = ConntrackSweep {
            entries,
            pressure,
            ..ConntrackSweep::default()
        };
        for (key, why) in done {
            match ct.remove(&key) {
                Ok(()) => match why {
                    Swept::Expired => sweep.expired += 1,
                    Swept::Unconfirmed => sweep.unconfirmed += 1,
                },
                // Gone already (a program saw it expire, or its FIN): nothing to count.
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(maps::CT)(e)),
            }
        }
        self.swept[0].fetch_add(sweep.expired, Ordering::Relaxed);
        self.swept[1].fetch_add(sweep.unconfirmed, Ordering::Relaxed);
        Ok(sweep)
    }

    /// Entries the sweeps removed so far: (expired, unconfirmed under pressure).
    pub fn conntrack_swept(&self) -> (u64, u64) {
        (
            self.swept[0].load(Ordering::Relaxed),
            self.swept[1].load(Ordering::Relaxed),
        )
    }
}
