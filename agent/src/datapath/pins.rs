//! Where the datapath's maps and links live on bpffs, so that they outlive the agent:
//!
//! ```text
//! <bpffs-root>/maps/<MAP_NAME>            every map (reused by the next agent: state survives)
//! <bpffs-root>/links/<interface>/<hook>   every attachment (programs stay attached and enforcing)
//! ```
//!
//! A restarted agent opens the pinned maps, and for each pinned link swaps its own program into
//! the link in one `bpf_link_update`: there is no moment without enforcement. `rampart cleanup`
//! removes the pins, which detaches the programs.

use std::path::{Path, PathBuf};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--bpffs-root {path}: {reason}")]
    Root { path: String, reason: String },
    #[error("removing {path}: {source}")]
    Remove {
        path: String,
        source: std::io::Error,
    },
}

/// The pin layout under one root.
#[derive(Debug, Clone)]
pub struct PinRoot {
    root: PathBuf,
}

impl PinRoot {
    /// Checks that `root` is (or can be created) on a bpf filesystem and creates its
    /// directories. If `root` is under `/sys/fs/bpf` and nothing is mounted there, mounts bpffs
    /// there first, as Cilium's agent does.
    pub fn prepare(root: &Path) -> Result<PinRoot, PinError> {
        let fail = |reason: String| PinError::Root {
            path: root.display().to_string(),
            reason,
        };
        if root.starts_with("/sys/fs/bpf") && !is_bpffs(Path::new("/sys/fs/bpf")) {
            mount_bpffs(Path::new("/sys/fs/bpf"))
                .map_err(|e| fail(format!("mounting bpffs on /sys/fs/bpf: {e}")))?;
        }
        for dir in [root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        }
        if !is_bpffs(root) {
            return Err(fail(
                "is not on a bpf filesystem (mount one: `mount -t bpf bpf DIR`)".into(),
            ));
        }
        Ok(PinRoot {
            root: root.to_owned(),
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, interface: &str, hook: &str) -> PathBuf {
        self.links_of(interface).join(hook)
    }

    /// The directory of `interface`'s links.
    pub fn links_of(&self, interface: &str) -> PathBuf {
        self.root.join("links").join(interface)
    }
}

#[allow(
    clippy::useless_conversion,
    reason = "statfs.f_type is i64 on x86_64 but a narrower type on other architectures"
)]
fn is_bpffs(path: &Path) -> bool {
    let Some(cpath) = path.to_str().and_then(|p| std::ffi::CString::new(p).ok()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(cpath.as_ptr(), &mut st) == 0 && i64::from(st.f_type) == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> std::io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes every pin under `root` (links first: that detaches the programs; then maps) and the
/// directories. Returns the number of pins removed. A missing root is not an error.
pub fn remove_all(root: &Path) -> Result<usize, PinError> {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let dir = root.join(sub);
        if dir.exists() {
            removed += remove_tree(&dir)?;
        }
    }
    if root.exists() {
        std::fs::remove_dir(root).map_err(|source| PinError::Remove {
            path: root.display().to_string(),
            source,
        })?;
    }
    Ok(removed)
}

fn remove_tree(dir: &Path) -> Result<usize, PinError> {
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| PinError::Remove { path, source }
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let path = entry.map_err(err(dir))?.path();
        if path.is_dir() {
            removed += remove_tree(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(err(&path))?;
            removed += 1;
        }
    }
    std::fs::remove_dir(dir).map_err(err(dir))?;
    Ok(removed)
}
