//! The example policies of `policies/`, for the unit tests that check what they show.

/// The policy set of example files under `policies/` (paths relative to it, e.g.
/// `auth/oidc.yaml`), read as a directory of their own and checked; fails the test on an error.
pub fn checked(files: &[&str]) -> super::Checked {
    static DIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dir = std::env::temp_dir().join(format!(
        "rampart-examples-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::create_dir_all(&dir);
    for file in files {
        let name = file.rsplit('/').next().unwrap_or(file);
        std::fs::copy(root.join(file), dir.join(name)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let checked = super::check(super::source::read_dir(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    checked.unwrap_or_else(|d| panic!("{files:?}: {d:?}"))
}
