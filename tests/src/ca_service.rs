//! The trust domain's CA service (`rampart ca serve`) as a real process on the underlay (in the
//! fabric's namespace, at [`crate::topology::API_SERVER_IP`]:[`CA_PORT`]), over a directory that
//! holds the signing key and the node tokens' digests, learning the pods from a directory of
//! objects. Killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::Topology;

pub const CA_PORT: u16 = 15012;

/// Where the CA service learns which pods run on which node.
#[derive(Debug, Clone)]
pub enum Placement {
    /// A directory of objects (`--pods-dir`).
    Dir(PathBuf),
    /// The API server a kubeconfig names (`--kubeconfig`).
    Kubeconfig(PathBuf),
}

#[derive(Debug)]
pub struct CaServer {
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
    placement: Placement,
    fabric: String,
    fabric_path: String,
    cert_ttl: u64,
    log_path: PathBuf,
}

impl CaServer {
    /// `rampart ca serve --dir <dir> --cert-ttl <cert_ttl>` learning pods from `placement`, in
    /// the underlay's namespace; returns once it accepts connections.
    pub fn start(
        topo: &Topology,
        bin: &Path,
        dir: &Path,
        placement: Placement,
        cert_ttl: u64,
    ) -> anyhow::Result<CaServer> {
        let fabric_ns = topo
            .fabric()
            .context("the CA service runs on the underlay (two nodes or more)")?;
        let (fabric, fabric_path) = (fabric_ns.name().to_owned(), fabric_ns.path());
        let log_path = dir.with_extension("log");
        let mut server = CaServer {
            child: None,
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            placement,
            fabric,
            fabric_path,
            cert_ttl,
            log_path,
        };
        server.resume()?;
        Ok(server)
    }

    /// The address agents reach it at.
    pub fn addr() -> SocketAddr {
        SocketAddr::from((crate::topology::API_SERVER_IP, CA_PORT))
    }

    pub fn url() -> String {
        format!("https://{}", CaServer::addr())
    }

    /// Starts the process again after [`CaServer::stop`] (appending to the same log).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("creating {}", self.log_path.display()))?;
        let (flag, path) = match &self.placement {
            Placement::Dir(dir) => ("--pods-dir", dir),
            Placement::Kubeconfig(file) => ("--kubeconfig", file),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.fabric])
            .arg(&self.bin)
            .args(["ca", "serve", "--dir"])
            .arg(&self.dir)
            .arg(flag)
            .arg(path)
            .args(["--listen", &CaServer::addr().to_string()])
            .args(["--cert-ttl", &self.cert_ttl.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rampart ca serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = crate::netns::run_in(&self.fabric_path, || {
                std::net::TcpStream::connect_timeout(&CaServer::addr(), Duration::from_millis(200))
                    .is_ok()
            })
            .unwrap_or(false);
            if up {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "rampart ca serve exited with {status}; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "rampart ca serve did not listen in time; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The service's process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where its log is written (it stays readable after the process ends).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.log_path.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Stops (`true`: SIGSTOP) or continues (`false`: SIGCONT) the CA service's process `pid`
/// ([`CaServer::pid`]): stopped, it still takes connections (the kernel completes them) and
/// never answers, as a hung CA or a partition that drops the answers would.
pub fn freeze(pid: u32, frozen: bool) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: a signal to the test's own child.
        unsafe {
            libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}
