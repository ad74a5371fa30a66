//! What the shipped DaemonSet (`deploy/daemonset.yaml`) grants the agent, for tests that run the
//! agent as it would run on a cluster: with the container's capabilities and no others.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The agent container's `securityContext` in the DaemonSet.
fn agent_security_context() -> anyhow::Result<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "agent"))
        .map(|c| c["securityContext"].clone())
        .context("the DaemonSet has no agent container")
}

/// Whether the DaemonSet runs the agent without a seccomp profile (`Unconfined`).
pub fn daemonset_seccomp_unconfined() -> anyhow::Result<bool> {
    Ok(agent_security_context()?["seccompProfile"]["type"] == "Unconfined")
}

/// The capabilities the DaemonSet adds (`securityContext.capabilities.add`), as `setpriv`
/// names them (`bpf`, `net_admin`, ...).
pub fn daemonset_capabilities() -> anyhow::Result<Vec<String>> {
    let context = agent_security_context()?;
    let add = context["capabilities"]["add"]
        .as_array()
        .context("the agent container adds no capabilities")?;
    add.iter()
        .map(|c| {
            c.as_str()
                .map(str::to_lowercase)
                .context("a capability that is not a string")
        })
        .collect()
}

/// A script in `dir` that runs `bin` as the DaemonSet's container would run it: root, with the
/// DaemonSet's capabilities as its whole bounding set (`setpriv`), so nothing else is granted.
pub fn agent_with_daemonset_capabilities(bin: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let caps: Vec<String> = daemonset_capabilities()?
        .iter()
        .map(|c| format!("+{c}"))
        .collect();
    let script = dir.join("rampart-with-daemonset-capabilities");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{} {} \"$@\"\n",
            caps.join(","),
            bin.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}
