//! `--flow-log FILE`: every flow record as one JSON line, rotated by size (`FILE` → `FILE.1` →
//! ... → `FILE.N`, the oldest removed), written on a thread of its own so a slow disk never
//! stalls the agent; if it falls behind, the hub drops the oldest records for it and counts them.
//!
//! Hand-written: the rotation is a few renames, and the rotating-file crates either rotate by
//! time only (tracing-appender) or are not maintained.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::hub::FlowHub;
use crate::config::FlowLogSettings;

pub struct FlowLogWriter {
    settings: FlowLogSettings,
    out: BufWriter<File>,
    size: u64,
}

impl FlowLogWriter {
    /// Opens (appends to) the file: a path that cannot be written is an error at start-up.
    pub fn open(settings: FlowLogSettings) -> std::io::Result<FlowLogWriter> {
        let file = open_append(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(FlowLogWriter {
            settings,
            out: BufWriter::new(file),
            size,
        })
    }

    /// Writes every record the hub publishes from now on, on a thread of its own.
    pub fn start(mut self, hub: &Arc<FlowHub>) -> std::io::Result<()> {
        let (_, mut records) = hub.subscribe();
        let hub = Arc::clone(hub);
        std::thread::Builder::new()
            .name("rampart-flow-log".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    match records.blocking_recv() {
                        Ok(record) => {
                            let result = serde_json::to_vec(&*record)
                                .map_err(std::io::Error::other)
                                .and_then(|line| self.write_line(&line));
                            let result = result.and_then(|()| {
                                if records.is_empty() {
                                    self.out.flush()
                                } else {
                                    Ok(())
                                }
                            });
                            match result {
                                Ok(()) => failing = false,
                                Err(e) if !failing => {
                                    failing = true;
                                    tracing::warn!(
                                        path = %self.settings.path.display(),
                                        "writing the flow log: {e} (records are lost until it works again)"
                                    );
                                }
                                Err(_) => {}
                            }
                        }
                        Err(RecvError::Lagged(n)) => hub.count_lost(n),
                        Err(RecvError::Closed) => return,
                    }
                }
            })?;
        Ok(())
    }

    /// Appends one line (`line` without its newline), rotating first if it would not fit.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.settings.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let path = &self.settings.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.settings.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(path, numbered(1))?;
        self.out = BufWriter::new(open_append(path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rampart-flowlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = temp_dir("rotate");
        let path = dir.join("flows.jsonl");
        let mut w = FlowLogWriter::open(FlowLogSettings {
            path: path.clone(),
            max_bytes: 100,
            max_files: 2,
        })
        .expect("open");
        let line = [b'x'; 39]; // 40 bytes with the newline: two lines per file
        for _ in 0..9 {
            w.write_line(&line).expect("write");
        }
        w.out.flush().expect("flush");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        assert_eq!(size(&path), Some(40));
        assert_eq!(size(&dir.join("flows.jsonl.1")), Some(80));
        assert_eq!(size(&dir.join("flows.jsonl.2")), Some(80));
        assert_eq!(
            size(&dir.join("flows.jsonl.3")),
            None,
            "only max_files kept"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_path_is_an_error_at_start() {
        let err = FlowLogWriter::open(FlowLogSettings {
            path: "/nonexistent-dir/flows.jsonl".into(),
            max_bytes: 100,
            max_files: 1,
        });
        assert!(err.is_err());
    }
}
