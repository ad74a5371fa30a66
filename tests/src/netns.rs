//! Named network namespaces with a guard that deletes them, and entering one from a thread.
//!
//! Names are `<prefix>-<pid>-<seq>-<label>`: unique per process and run, and the pid lets
//! [`sweep_stale`] tell a leftover of a dead run from a namespace another live run still uses.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;

use crate::cmd;

/// Prefix of every namespace the tests create.
pub const TEST_PREFIX: &str = "rpt";
/// Prefix of the namespaces `cargo xtask demo` creates.
pub const DEMO_PREFIX: &str = "rpd";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace under `/var/run/netns`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<seq>-<label>` with its loopback up.
    pub fn create(prefix: &str, label: &str) -> anyhow::Result<Netns> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{seq}-{label}", std::process::id());
        cmd::ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        cmd::ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result. Sockets
    /// opened by `f` live in the namespace. (A thread's network namespace is its own: entering it
    /// does not move the rest of the process.)
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        run_in(&self.path(), f)
    }

    /// The index of interface `name` in this namespace.
    pub fn ifindex(&self, name: &str) -> anyhow::Result<u32> {
        let cname = std::ffi::CString::new(name).context("interface name with NUL")?;
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let index = self.run(move || unsafe { libc::if_nametoindex(cname.as_ptr()) })?;
        if index == 0 {
            anyhow::bail!("no interface {name} in {}", self.name);
        }
        Ok(index)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs `f` on a new thread inside the namespace at `path` (see [`Netns::run`]).
pub fn run_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let owned = path.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&owned)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {path} panicked"))?
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread's namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

/// Deletes namespaces named `<prefix>-<pid>-...` whose process is gone, and their agents' pin
/// directories under the test bpffs: leftovers of a run that was killed before its guards ran.
/// Returns what was deleted.
pub fn sweep_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut deleted = Vec::new();
    if let Ok(entries) = std::fs::read_dir(crate::agent::TEST_BPFFS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_is_gone(prefix, &name) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing stale pins {name}"))?;
                deleted.push(format!("pins:{name}"));
            }
        }
    }
    let list = cmd::ip(&["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_is_gone(prefix, name) {
            cmd::ip(&["netns", "del", name])?;
            deleted.push(name.to_owned());
        }
    }
    Ok(deleted)
}

/// Whether `name` is `<prefix>-<pid>-...` and process `pid` no longer exists.
fn owner_is_gone(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) != 0 }
}
