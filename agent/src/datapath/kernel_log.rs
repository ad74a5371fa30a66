//! The kernel programs' logs (aya-log): each program's level in `KERNEL_LOG_V1`, set at start
//! (`rampart run --kernel-log-level`) and on a running agent (`rampart kernel-log`), and the
//! reader of their records, which become `tracing` events (target `rampart::kernel`, the
//! program and the kernel's level as fields) and are counted by level.
//!
//! Records are written at INFO or above whatever their kernel level: turning a program's level
//! up is the operator's request to see them, which the agent's own log filter must not undo.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{Array, MapData};
use aya_log::EbpfLogger;
use rampart_common::kernel_log::{MAX_LEVEL, Program};
use rampart_common::maps;

use super::loader::{Datapath, DatapathError, map_err};
use crate::kernel_log_level::KernelLogLevel;

/// The programs' log levels, and the records read so far by level.
pub struct KernelLog {
    levels: Mutex<Array<MapData, u32>>,
    /// Indexed by aya-log's level number minus one (error … trace).
    records: [AtomicU64; MAX_LEVEL as usize],
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog").finish_non_exhaustive()
    }
}

impl KernelLog {
    /// Sets `program`'s level, or every program's when `None`.
    pub fn set(
        &self,
        program: Option<Program>,
        level: KernelLogLevel,
    ) -> Result<(), DatapathError> {
        let mut levels = self
            .levels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in Program::ALL {
            if program.is_none_or(|only| only == p) {
                levels
                    .set(p as u32, level.number(), 0)
                    .map_err(map_err(maps::KERNEL_LOG))?;
            }
        }
        Ok(())
    }

    /// Every program's level now.
    pub fn levels(&self) -> Result<Vec<(Program, KernelLogLevel)>, DatapathError> {
        let levels = self
            .levels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Program::ALL
            .into_iter()
            .map(|p| {
                let n = levels
                    .get(&(p as u32), 0)
                    .map_err(map_err(maps::KERNEL_LOG))?;
                Ok((p, KernelLogLevel::from_number(n)))
            })
            .collect()
    }

    /// Records read so far at `level` (`Off` counts nothing).
    pub fn records(&self, level: KernelLogLevel) -> u64 {
        match level.number().checked_sub(1) {
            Some(i) => self.records[i as usize].load(Ordering::Relaxed),
            None => 0,
        }
    }

    fn count(&self, level: log::Level) {
        let i = match level {
            log::Level::Error => 0,
            log::Level::Warn => 1,
            log::Level::Info => 2,
            log::Level::Debug => 3,
            log::Level::Trace => 4,
        };
        self.records[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the programs' records (see [`KernelLogReader::read`]).
pub struct KernelLogReader {
    logger: EbpfLogger<Forward>,
}

impl KernelLogReader {
    /// Writes every record waiting in the ring buffer as a `tracing` event. aya-log panics on
    /// a record it cannot decode; that record is skipped (the ring has moved past it) and
    /// reading goes on.
    pub fn read(&mut self) {
        let logger = &mut self.logger;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())).is_err() {
            tracing::warn!("a kernel log record could not be decoded: skipped");
        }
    }
}

/// Hands aya-log's records to `tracing` and counts them.
struct Forward {
    log: std::sync::Arc<KernelLog>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.log.count(record.level());
        let program = record.target();
        let level = record.level().as_str().to_ascii_lowercase();
        let message = record.args();
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "rampart::kernel", program, level, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "rampart::kernel", program, level, "{message}")
            }
            _ => tracing::info!(target: "rampart::kernel", program, level, "{message}"),
        }
    }

    fn flush(&self) {}
}

impl Datapath {
    /// Takes the programs' log levels (set to `initial` for every program) and the reader of
    /// their records. Once only.
    pub fn take_kernel_log(
        &mut self,
        initial: KernelLogLevel,
    ) -> Result<(std::sync::Arc<KernelLog>, KernelLogReader), DatapathError> {
        let map = self
            .ebpf
            .take_map(maps::KERNEL_LOG)
            .ok_or(DatapathError::MissingMap(maps::KERNEL_LOG))?;
        let levels = Array::try_from(map).map_err(map_err(maps::KERNEL_LOG))?;
        let log = std::sync::Arc::new(KernelLog {
            levels: Mutex::new(levels),
            records: Default::default(),
        });
        log.set(None, initial)?;
        let logger = EbpfLogger::init_with_logger(
            &mut self.ebpf,
            Forward {
                log: std::sync::Arc::clone(&log),
            },
        )
        .map_err(|e| DatapathError::KernelLog(e.to_string()))?;
        Ok((log, KernelLogReader { logger }))
    }
}
