//! A kernel program's log level (`rampart run --kernel-log-level`, `rampart kernel-log`, the
//! admin API's `/v1/kernel-log`), and the number `KERNEL_LOG_V1` holds for it.

use rampart_common::kernel_log::{MAX_LEVEL, OFF};

/// A program's log level, as the command line and the admin API name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KernelLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLogLevel {
    pub const ALL: [KernelLogLevel; 6] = [
        KernelLogLevel::Off,
        KernelLogLevel::Error,
        KernelLogLevel::Warn,
        KernelLogLevel::Info,
        KernelLogLevel::Debug,
        KernelLogLevel::Trace,
    ];

    /// The number `KERNEL_LOG_V1` holds (aya-log's numbering; 0 is off).
    pub fn number(self) -> u32 {
        match self {
            KernelLogLevel::Off => OFF,
            KernelLogLevel::Error => 1,
            KernelLogLevel::Warn => 2,
            KernelLogLevel::Info => 3,
            KernelLogLevel::Debug => 4,
            KernelLogLevel::Trace => MAX_LEVEL,
        }
    }

    pub fn from_number(n: u32) -> KernelLogLevel {
        Self::ALL
            .into_iter()
            .find(|l| l.number() == n)
            .unwrap_or(KernelLogLevel::Trace)
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelLogLevel::Off => "off",
            KernelLogLevel::Error => "error",
            KernelLogLevel::Warn => "warn",
            KernelLogLevel::Info => "info",
            KernelLogLevel::Debug => "debug",
            KernelLogLevel::Trace => "trace",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_number_as_aya_log_does_and_round_trip() {
        assert_eq!(KernelLogLevel::Off.number(), 0);
        assert_eq!(KernelLogLevel::Error.number(), 1);
        assert_eq!(KernelLogLevel::Trace.number(), MAX_LEVEL);
        for level in KernelLogLevel::ALL {
            assert_eq!(KernelLogLevel::from_number(level.number()), level);
            let json = serde_json::to_string(&level).expect("json");
            assert_eq!(json, format!("\"{}\"", level.name()));
        }
    }
}
