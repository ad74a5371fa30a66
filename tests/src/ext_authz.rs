//! An external authorizer in Envoy's ext_authz protocol for the proxy's tests:
//! `tests/ext_authz/server.py`, built on grpcio and Envoy's own compiled API protos
//! (`xds-protos` from PyPI), so the agent's hand-numbered messages meet an independent
//! implementation. It serves gRPC `envoy.service.auth.v3.Authorization/Check` and the HTTP
//! protocol in one process inside a namespace, decides by the `x-user` header (alice allowed,
//! mallory refused with a reason, none: 401, `/slow…`: an answer after 2 s), and logs every
//! check it receives as a JSON line.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::netns::Netns;

pub const HTTP_PORT: u16 = 8181;
pub const GRPC_PORT: u16 = 9191;
/// The same services with TLS (when started with a certificate).
pub const HTTPS_PORT: u16 = 8443;
pub const GRPCS_PORT: u16 = 9443;
/// The HTTP service's path prefix (the proxy puts it before the request's path).
pub const HTTP_PREFIX: &str = "/authz";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ext_authz")
}

/// A virtualenv with the authorizer's pinned packages (created once, under `target/`).
pub fn venv() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ext-authz-venv");
    let marker = venv.join(".installed");
    let requirements = fixture_dir().join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).context("requirements.txt")?;
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .context("python3 -m venv (Debian package python3-venv)")?;
    if !made.status.success() {
        bail!("python3 -m venv: {}", String::from_utf8_lossy(&made.stderr));
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
        ])
        .arg(&requirements)
        .output()
        .context("pip install")?;
    if !installed.status.success() {
        bail!(
            "pip install: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    std::fs::write(&marker, wanted)?;
    Ok(venv)
}

#[derive(Debug)]
pub struct Authorizer {
    child: Option<Child>,
    log: PathBuf,
    /// The TLS listeners' certificate and key files.
    tls_files: Vec<PathBuf>,
}

impl Authorizer {
    /// Starts the authorizer in `ns` on `address` (the namespace's own); returns once it
    /// listens on both ports.
    pub fn start(ns: &Netns, address: IpAddr) -> anyhow::Result<Authorizer> {
        Authorizer::start_with(ns, address, None)
    }

    /// [`Authorizer::start`], also listening with TLS on [`HTTPS_PORT`] and [`GRPCS_PORT`]
    /// with `tls` (a certificate and its key, PEM).
    pub fn start_with(
        ns: &Netns,
        address: IpAddr,
        tls: Option<&(String, String)>,
    ) -> anyhow::Result<Authorizer> {
        let venv = venv()?;
        let log = std::env::temp_dir().join(format!(
            "{}-ext-authz-{}-{}.jsonl",
            crate::netns::TEST_PREFIX,
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_file(&log);
        let mut tls_args: Vec<String> = Vec::new();
        let mut tls_files = Vec::new();
        if let Some((cert, key)) = tls {
            let stem = log.with_extension("");
            let (cert_file, key_file) = (stem.with_extension("crt"), stem.with_extension("key"));
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            tls_args.extend([
                "--tls-cert".to_owned(),
                cert_file.display().to_string(),
                "--tls-key".to_owned(),
                key_file.display().to_string(),
                "--https-port".to_owned(),
                HTTPS_PORT.to_string(),
                "--grpcs-port".to_owned(),
                GRPCS_PORT.to_string(),
            ]);
            tls_files = vec![cert_file, key_file];
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(venv.join("bin/python"))
            .arg(fixture_dir().join("server.py"))
            .args(["--address", &address.to_string()])
            .args(["--grpc-port", &GRPC_PORT.to_string()])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--http-path-prefix", HTTP_PREFIX])
            .arg("--log")
            .arg(&log)
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the authorizer")?;
        let stdout = child.stdout.take().context("the authorizer's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut authorizer = Authorizer {
            child: Some(child),
            log,
            tls_files,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.trim() == "READY" => Ok(authorizer),
            other => {
                authorizer.stop();
                bail!("the authorizer did not start: {other:?}")
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every check received so far, as the authorizer logged it.
    pub fn checks(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
        for file in &self.tls_files {
            let _ = std::fs::remove_file(file);
        }
    }
}
