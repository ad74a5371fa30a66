//! `cargo xtask manifests`: renders `deploy/` with kubectl's built-in kustomize and validates
//! every object against the Kubernetes OpenAPI schemas of the oldest and newest supported
//! release (`kubernetes-validate`, strict: unknown fields are errors), then the example policies'
//! custom resources against the CRDs' own schemas (`validate_custom_resources.py`), and the
//! examples' Kubernetes kinds against the Kubernetes schemas. Run by `cargo xtask test`.
//!
//! The validator runs from a virtualenv of its own under `target/` (pinned version; created on
//! first use from the Python package registry).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::process::{exec, workspace_root};

/// The Kubernetes releases the manifests must validate against: the oldest and the newest
/// supported (README.md, "Install on a cluster").
pub const SUPPORTED: [&str; 2] = ["1.29.0", "1.37.0"];
/// `kubernetes-validate` (it ships the schemas of each release).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
const CUSTOM_RESOURCES_CHECK: &str = include_str!("validate_custom_resources.py");

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let work = root.join("target/manifests");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let venv = venv(&work)?;
    let rendered = work.join("rendered.yaml");
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/"])
        .current_dir(&root)
        .output()
        .context("running `kubectl kustomize` (kubectl must be installed)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize deploy/ failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&rendered, &out.stdout)?;
    let examples = example_policies(&root)?;
    for version in SUPPORTED {
        let mut validate = Command::new(venv.join("bin/kubernetes-validate"));
        validate
            .args(["--strict", "--quiet", "--no-warn", "-k", version])
            .arg(&rendered)
            .args(&examples);
        exec(&mut validate)
            .with_context(|| format!("the manifests against Kubernetes {version}'s schemas"))?;
    }
    let script = work.join("validate_custom_resources.py");
    std::fs::write(&script, CUSTOM_RESOURCES_CHECK)?;
    exec(
        Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg(root.join("deploy/crds.yaml"))
            .args(&examples),
    )
    .context("the example policies against the CRDs' schemas")?;
    println!(
        "manifests: deploy/ rendered and valid for Kubernetes {}; example policies valid",
        SUPPORTED.join(" and ")
    );
    Ok(())
}

/// Every YAML file under `policies/`.
fn example_policies(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("policies")];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The validator's virtualenv, created (and the validator installed) if it is not there.
fn venv(work: &Path) -> anyhow::Result<PathBuf> {
    let venv = work.join("venv");
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|v| v == VALIDATOR) {
        return Ok(venv);
    }
    let _ = std::fs::remove_dir_all(&venv);
    exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating the validator's virtualenv (python3-venv)")?;
    exec(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VALIDATOR,
    ]))
    .context("installing kubernetes-validate from the Python package registry")?;
    std::fs::write(&marker, VALIDATOR)?;
    Ok(venv)
}
