//! `cargo xtask image [--crs DIR] [--prove]`: the agent's OCI image, `localhost/rampart:<version>`,
//! built with buildah from `deploy/Containerfile` (`FROM scratch`).
//!
//! The root filesystem is assembled here from Debian packages, not from a base image (no
//! registry is reachable, and a base image would carry a shell, a package manager and more the
//! agent never uses): the runtime libraries of `libmodsecurity3` (the WAF engine, linked by the
//! agent) with their library dependencies, unpacked with `dpkg-deb -x` (no maintainer scripts),
//! documentation removed. The agent runs no other program (its policy routing is netlink). Then the release binary and a Core Rule Set (default: CRS
//! 4.28.0 from `../shared`; any CRS directory with `--crs`).
//!
//! `--prove` runs the image: the two-node Services test (`tests/tests/services.rs`: the
//! Kubernetes source, the kernel programs on pods and uplinks, Service translation, the mTLS
//! tunnel, ingress) and the WAF test (`mesh_waf.rs`, on the image's own Core Rule Set), with
//! every agent (and every CLI call) run by podman from the image, with only the DaemonSet's
//! capabilities. A binary that works on the build host can still miss a
//! library or a file in the image; only running it shows it does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::process::{cargo, exec, output, workspace_root};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The Core Rule Set directory the image carries (default: CRS 4.28.0 in `../shared`).
    #[arg(long, value_name = "DIR")]
    pub crs: Option<PathBuf>,
    /// Then run the two-node Services test with the agents in containers of the image.
    #[arg(long)]
    pub prove: bool,
}

/// The packages whose runtime files the image carries, with their library dependencies.
const ROOTS: &[&str] = &["libmodsecurity3"];
/// containers-storage's driver here (overlay is not available; see `../shared/containers.md`).
const STORAGE: &str = "--storage-driver=vfs";

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/rampart:{version}");
    exec(cargo().args(["build", "--locked", "--release", "-p", "rampart-agent"]))?;
    let context = root.join("target/image/context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("rootfs"))?;
    let debs = root.join("target/image/debs");
    std::fs::create_dir_all(&debs)?;
    let packages = closure()?;
    download(&debs, &packages)?;
    for package in &packages {
        let deb = find_deb(&debs, package)?;
        exec(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(context.join("rootfs")),
        )?;
    }
    for unused in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/lintian",
    ] {
        let _ = std::fs::remove_dir_all(context.join("rootfs").join(unused));
    }
    std::fs::copy(root.join("target/release/rampart"), context.join("rampart"))
        .context("copying the release binary")?;
    let crs = match &args.crs {
        Some(crs) => crs.clone(),
        None => {
            rampart_tests::waf_cases::shared_dir(&root)?.join(rampart_tests::waf_cases::DEFAULT_CRS)
        }
    };
    if !crs.join("rules").is_dir() {
        bail!("{}: not a Core Rule Set (no rules/)", crs.display());
    }
    // The CRS keeps its directory's name in the context; the Containerfile's build argument
    // `CRS` names it.
    let crs_name = crs
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !matches!(*n, "rootfs" | "rampart")
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .unwrap_or("crs")
        .to_owned();
    exec(
        Command::new("cp")
            .arg("-a")
            .arg(&crs)
            .arg(context.join(&crs_name)),
    )?;
    exec(
        Command::new("buildah")
            .args([STORAGE, "bud", "--layers=false", "-t", &tag])
            .arg("--build-arg")
            .arg(format!("CRS={crs_name}"))
            .arg("-f")
            .arg(root.join("deploy/Containerfile"))
            .arg(&context),
    )
    .context("buildah (cargo xtask setup installs it)")?;
    let size = output(Command::new("podman").args([
        STORAGE,
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &tag,
    ]))
    .and_then(|s| s.trim().parse::<u64>().ok())
    .unwrap_or(0);
    println!(
        "image: {tag}, {:.1} MiB ({} packages: {})",
        size as f64 / (1024.0 * 1024.0),
        packages.len(),
        packages.join(" ")
    );
    if args.prove {
        prove(&root, &tag)?;
    }
    Ok(())
}

/// `ROOTS` and, transitively, the library packages they depend on. Only a kept package's
/// dependencies are followed: debconf, dpkg and their tools (which only maintainer scripts use)
/// are not kept, and neither are their own libraries.
fn closure() -> anyhow::Result<Vec<String>> {
    let keep =
        |p: &str| ROOTS.contains(&p) || p.starts_with("lib") || p == "zlib1g" || p == "gcc-12-base";
    let mut seen: std::collections::BTreeSet<String> =
        ROOTS.iter().map(|p| (*p).to_owned()).collect();
    let mut queue: Vec<String> = seen.iter().cloned().collect();
    while let Some(package) = queue.pop() {
        let out = output(Command::new("apt-cache").args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            &package,
        ]))
        .with_context(|| format!("apt-cache depends {package}"))?;
        for line in out.lines() {
            let Some(dep) = line
                .trim()
                .strip_prefix("Depends: ")
                .or_else(|| line.trim().strip_prefix("PreDepends: "))
            else {
                continue;
            };
            // A virtual package (`<name>`) is provided by a real one listed beside it.
            if dep.starts_with('<') || !keep(dep) {
                continue;
            }
            if seen.insert(dep.to_owned()) {
                queue.push(dep.to_owned());
            }
        }
    }
    Ok(seen.into_iter().collect())
}

/// The packages' `.deb`s into `dir` (those already there are kept).
fn download(dir: &Path, packages: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| find_deb(dir, p).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("apt-get");
    cmd.arg("download").args(&missing).current_dir(dir);
    eprintln!(
        "+ apt-get download ({} packages) in {}",
        missing.len(),
        dir.display()
    );
    let status = cmd.status().context("apt-get download")?;
    if !status.success() {
        bail!("apt-get download failed (run `apt-get update` once on a fresh machine)");
    }
    Ok(())
}

/// `<package>_<version>_<arch>.deb` in `dir`.
fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .with_context(|| format!("no .deb of {package} in {}", dir.display()))
}

/// The agent as the DaemonSet runs it, for the harness (`RAMPART_BIN`): a container of `tag`,
/// host network (the caller's namespace: a test node's), the DaemonSet's capabilities only, the
/// tests' directories mounted, the admin socket's variable passed in.
fn wrapper_script(conf: &Path, caps: &[String], seccomp: &str, tag: &str) -> String {
    format!(
        r#"#!/bin/sh
# `ip netns exec` gave this process a /sys of its own, without the machine's cgroup mounts,
# which runc needs: mount the same hierarchies again (in this private mount namespace only).
if ! mountpoint -q /sys/fs/cgroup/memory 2>/dev/null; then
	mount -t tmpfs cgroup /sys/fs/cgroup
	for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
		mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
	done
	mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
	mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
fi
CONTAINERS_CONF={conf} exec \
	podman {STORAGE} --runtime runc run --rm --network host \
	--cap-drop all --cap-add {caps} {seccomp} \
	-v /run/rampart-tests:/run/rampart-tests -v /tmp:/tmp -e RAMPART_ADMIN_SOCKET -e RUST_LOG \
	{tag} "$@"
"#,
        conf = conf.display(),
        caps = caps.join(","),
    )
}

/// Runs `services.rs` with the agent as a container of `tag` (see the module's docs).
fn prove(root: &Path, tag: &str) -> anyhow::Result<()> {
    let caps: Vec<String> = rampart_tests::deploy::daemonset_capabilities()?;
    // As the DaemonSet says (the runtime's default profile refuses bpf(2) without SYS_ADMIN).
    let seccomp = if rampart_tests::deploy::daemonset_seccomp_unconfined()? {
        "--security-opt seccomp=unconfined"
    } else {
        ""
    };
    let conf = root.join("target/image/containers.conf");
    // podman's default ulimits cannot be set here (see `../shared/containers.md`).
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    let wrapper = root.join("target/image/rampart-in-container");
    std::fs::write(&wrapper, wrapper_script(&conf, &caps, seccomp, tag))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    // The Services test, and the WAF test on the image's own Core Rule Set.
    exec(
        cargo()
            .args([
                "test",
                "--locked",
                "-p",
                "rampart-tests",
                "--test",
                "services",
                "--test",
                "mesh_waf",
                "--",
                "--test-threads=1",
            ])
            .env("RAMPART_BIN", &wrapper)
            .env("RAMPART_TEST_CRS_DIR", "/usr/share/rampart/crs"),
    )
    .context("the namespace tests with the agents in containers of the image")?;
    println!("image: {tag} ran the two-node Services and WAF tests in podman");
    Ok(())
}
