//! The agent as a real process inside a node namespace: started with `ip netns exec`, awaited on
//! `/readyz`, stopped with SIGTERM (and killed if it does not stop), its log kept for failures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Netns;
use crate::probe;

/// How long the agent may take to load, attach and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub interfaces: Vec<String>,
    pub metrics_addr: SocketAddr,
    pub policy_dir: Option<PathBuf>,
    /// The binary to run; default [`rampart_bin`].
    pub bin: Option<PathBuf>,
    /// `--bpffs-root`; default a directory named after the namespace under [`test_bpffs`].
    pub bpffs_root: Option<PathBuf>,
    /// More `rampart run` arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Run the agent with this limit on open files (soft and hard, so it cannot raise it).
    pub nofile: Option<u64>,
    /// `--drain-seconds`: how long a stopping agent lets proxied connections finish (short by
    /// default, so that a test's leftover idle connections do not slow its teardown).
    pub drain_seconds: u64,
}

impl AgentOptions {
    pub fn new(interfaces: Vec<String>) -> AgentOptions {
        AgentOptions {
            interfaces,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9490)),
            policy_dir: None,
            bin: None,
            bpffs_root: None,
            extra_args: Vec::new(),
            nofile: None,
            drain_seconds: 2,
        }
    }

    /// The drain the agent runs with: `--drain-seconds` in `extra_args` overrides
    /// `drain_seconds`.
    pub fn drain(&self) -> Duration {
        let given = self
            .extra_args
            .iter()
            .position(|a| a == "--drain-seconds")
            .and_then(|at| self.extra_args.get(at + 1))
            .and_then(|v| v.parse().ok());
        Duration::from_secs(given.unwrap_or(self.drain_seconds))
    }
}

/// A running `rampart run`. Dropping it stops the process.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    bin: PathBuf,
    bpffs_root: PathBuf,
    /// Whether dropping the guard removes the pins (and so detaches the programs).
    remove_pins: bool,
    ns_name: String,
    ns_path: String,
    metrics_addr: SocketAddr,
    /// `--admin-socket`: a path named after the namespace under [`TEST_ADMIN_DIR`].
    admin_socket: PathBuf,
    log_path: PathBuf,
    /// What it was started with (a successor starts with the same).
    opts: AgentOptions,
}

/// A hot restart's outcome: how the old agent ended.
#[derive(Debug)]
pub struct HandedOver {
    pub old_status: ExitStatus,
    pub old_log: String,
    /// From the new process's start until it answered `/readyz` (it had taken over).
    pub takeover: Duration,
}

/// Where tests' agents put their admin sockets (one per node namespace).
pub const TEST_ADMIN_DIR: &str = "/run/rampart-tests/admin";

/// The `rampart` binary under test: `$RAMPART_BIN`, else `rampart` next to the test binary's
/// `deps/` directory (`target/<profile>/rampart`, built by `cargo xtask test`).
pub fn rampart_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RAMPART_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .context("test binary has no parent directory")?;
    let bin = profile_dir.join("rampart");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first (`cargo build -p rampart-agent`; `cargo xtask test` does) or set RAMPART_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

impl Agent {
    /// Starts the agent in `ns` and waits until `/readyz` answers 200. If the agent exits or
    /// never gets ready, fails with its log.
    pub fn start(ns: &Netns, opts: &AgentOptions) -> anyhow::Result<Agent> {
        let agent = Agent::spawn(ns, opts)?;
        agent.wait_ready()
    }

    /// Starts the agent without waiting for readiness (for tests of start-up failures).
    pub fn spawn(ns: &Netns, opts: &AgentOptions) -> anyhow::Result<Agent> {
        let bin = match &opts.bin {
            Some(bin) => bin.clone(),
            None => rampart_bin()?,
        };
        let log_dir = std::env::temp_dir().join("rampart-test-logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        // A successor in the same namespace gets a log of its own.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = log_dir.join(format!("{}-{n}.log", ns.name()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]);
        if let Some(n) = opts.nofile {
            cmd.arg("prlimit")
                .arg(format!("--nofile={n}:{n}"))
                .arg("--");
        }
        cmd.arg(&bin).arg("run");
        for iface in &opts.interfaces {
            cmd.args(["--interface", iface]);
        }
        cmd.args(["--metrics-addr", &opts.metrics_addr.to_string()]);
        let admin_socket = PathBuf::from(TEST_ADMIN_DIR).join(format!("{}.sock", ns.name()));
        cmd.arg("--admin-socket").arg(&admin_socket);
        // Per namespace: an agent takes over only from its own node's agent.
        let handover_socket =
            PathBuf::from(TEST_ADMIN_DIR).join(format!("{}.handover.sock", ns.name()));
        cmd.arg("--handover-socket").arg(&handover_socket);
        if !opts.extra_args.iter().any(|a| a == "--drain-seconds") {
            cmd.args(["--drain-seconds", &opts.drain_seconds.to_string()]);
        }
        let bpffs_root = match &opts.bpffs_root {
            Some(root) => root.clone(),
            None => test_bpffs()?.join(ns.name()),
        };
        cmd.arg("--bpffs-root").arg(&bpffs_root);
        if let Some(dir) = &opts.policy_dir {
            cmd.arg("--policy-dir").arg(dir);
        }
        cmd.args(&opts.extra_args);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let opts = AgentOptions {
            bpffs_root: Some(bpffs_root.clone()),
            bin: Some(bin.clone()),
            ..opts.clone()
        };
        Ok(Agent {
            child: Some(child),
            bin,
            bpffs_root,
            remove_pins: true,
            ns_name: ns.name().to_owned(),
            ns_path: ns.path(),
            metrics_addr: opts.metrics_addr,
            admin_socket,
            log_path,
            opts,
        })
    }

    fn wait_ready(mut self) -> anyhow::Result<Agent> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "the agent in {} exited with {status} before it was ready; log:\n{}",
                    self.ns_name,
                    self.log()
                );
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(self);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent in {} was not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.ns_name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the agent's metrics/admin address.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        probe::http_get(
            &self.ns_path,
            self.metrics_addr,
            path,
            Duration::from_secs(5),
        )
    }

    /// GET `path` with more request headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        probe::http_get_with(
            &self.ns_path,
            self.metrics_addr,
            path,
            headers,
            Duration::from_secs(5),
        )
    }

    /// `GET path` on the agent's admin socket (`/status`, `/v1/flows`; everything the metrics
    /// address no longer serves).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        crate::probe::unix_http_get(&self.admin_socket, path, Duration::from_secs(5))
    }

    /// The agent's admin socket.
    pub fn admin_socket(&self) -> &std::path::Path {
        &self.admin_socket
    }

    /// The agent's process id while it runs (`ip netns exec` execs it in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident memory (bytes) and open files now (`None` once it has exited).
    pub fn resources(&self) -> Option<(u64, usize)> {
        process_resources(self.pid()?)
    }

    /// Its `--bpffs-root`.
    pub fn bpffs_root(&self) -> &std::path::Path {
        &self.bpffs_root
    }

    /// The binary the agent runs (for CLI commands run by the test itself).
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match self.get("/metrics")? {
            (200, body) => Ok(body),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// The sample `name{labels}` of the agent's metrics (labels as the agent writes them); 0
    /// when there is none or the metrics cannot be read.
    pub fn sample(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .ok()
            .and_then(|m| crate::metrics::sample(&m, name, labels))
            .unwrap_or(0.0)
    }

    /// Runs `rampart <args>` in the agent's namespace (for the CLI tools that talk to it).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = self.bin.to_str().context("binary path is not UTF-8")?;
        let socket = self
            .admin_socket
            .to_str()
            .context("admin socket path is not UTF-8")?;
        let env = format!("RAMPART_ADMIN_SOCKET={socket}");
        let mut full = vec![env.as_str(), bin];
        full.extend_from_slice(args);
        crate::cmd::in_ns(&self.ns_name, "env", &full)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("agent already stopped"),
        }
    }

    /// Waits for the process to exit on its own (for start-up failures).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait; SIGKILL if it does not stop in time. Returns how it exited. The
    /// guard then removes the agent's pins (`rampart cleanup`), which detaches its programs.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    /// A hot restart: starts a new agent in `ns` with the same options (run from `bin`, if
    /// given: an upgrade), which takes over this one's sockets; waits until it is ready and this
    /// one has drained and exited (within its drain time and 15 s). The pins stay.
    pub fn hand_over(
        mut self,
        ns: &Netns,
        bin: Option<&std::path::Path>,
    ) -> anyhow::Result<(Agent, HandedOver)> {
        let mut opts = self.opts.clone();
        if let Some(bin) = bin {
            opts.bin = Some(bin.to_owned());
        }
        let started = Instant::now();
        let mut agent = Agent::spawn(ns, &opts)?;
        // Both processes answer `/readyz` on the shared socket until the handover ends: the new
        // agent's own word says when it has taken over.
        loop {
            if agent
                .log()
                .contains("took over: the previous agent stopped accepting")
            {
                break;
            }
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "the new agent exited with {status} before it took over; log:\n{}",
                    agent.log()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the new agent did not take over within {READY_TIMEOUT:?}; log:\n{}\nthe old agent's log:\n{}",
                    agent.log(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let takeover = started.elapsed();
        let agent = agent.wait_ready()?;
        self.remove_pins = false;
        // The old agent exits once its connections end, at the latest when its drain does.
        let old_status = self.wait_exit(self.opts.drain() + Duration::from_secs(15))?;
        let old_log = self.log();
        Ok((
            agent,
            HandedOver {
                old_status,
                old_log,
                takeover,
            },
        ))
    }

    /// SIGKILL (an OOM kill, a crash): nothing of the agent runs its shutdown. The pins stay
    /// (the guard no longer removes them: a next agent adopts them).
    /// Returns how it ended and the options to start the next agent with.
    pub fn kill(mut self) -> anyhow::Result<(ExitStatus, AgentOptions)> {
        self.remove_pins = false;
        let mut child = self.child.take().context("agent already stopped")?;
        child.kill()?;
        Ok((child.wait()?, self.opts.clone()))
    }

    /// SIGTERM, and the options to start the next agent with (the pins stay).
    pub fn stop_for_restart(mut self) -> anyhow::Result<AgentOptions> {
        self.remove_pins = false;
        self.terminate()?;
        Ok(self.opts.clone())
    }

    /// Like [`Agent::stop`], but leaves the pinned maps and links in place (programs stay
    /// attached), for a next agent on the same `--bpffs-root`. Returns the exit status and root.
    pub fn stop_keeping_pins(mut self) -> anyhow::Result<(ExitStatus, PathBuf)> {
        self.remove_pins = false;
        let status = self.terminate()?;
        Ok((status, self.bpffs_root.clone()))
    }

    /// `rampart cleanup --bpffs-root <root>` in the agent's namespace.
    pub fn cleanup_pins(&self) -> anyhow::Result<String> {
        let root = self
            .bpffs_root
            .to_str()
            .context("bpffs root is not UTF-8")?;
        self.cli(&["cleanup", "--bpffs-root", root])
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // It drains its connections first, for at most its drain.
        let allowed = self.opts.drain() + STOP_TIMEOUT;
        let deadline = Instant::now() + allowed;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        let status = child.wait()?;
        bail!("the agent ignored SIGTERM for {allowed:?} and was killed ({status})")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.terminate()
        {
            eprintln!("cleanup: {e:#}");
        }
        if self.remove_pins
            && self.bpffs_root.exists()
            && let Err(e) = self.cleanup_pins()
        {
            eprintln!("cleanup: {e:#}");
            let _ = std::fs::remove_dir_all(&self.bpffs_root);
        }
    }
}

/// Where tests and the demo pin: a bpf filesystem at `/run/rampart-tests/bpffs`, mounted on
/// first use. Not under `/sys/fs/bpf`: `ip netns exec` remounts `/sys`, which would hide it from
/// the agent.
pub const TEST_BPFFS: &str = "/run/rampart-tests/bpffs";

/// [`TEST_BPFFS`], mounted if it is not a bpffs yet.
/// A process's resident memory (bytes, `VmRSS`) and open files (`/proc/PID/fd`).
pub fn process_resources(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kib * 1024, fds))
}

pub fn test_bpffs() -> anyhow::Result<PathBuf> {
    static MOUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNT
        .lock()
        .map_err(|_| anyhow::anyhow!("bpffs mount lock poisoned"))?;
    let root = PathBuf::from(TEST_BPFFS);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {TEST_BPFFS}"))?;
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next(), f.next(), f.next());
        at == Some(TEST_BPFFS) && fstype == Some("bpf")
    });
    if !mounted {
        crate::cmd::run("mount", &["-t", "bpf", "bpf", TEST_BPFFS])?;
    }
    Ok(root)
}

/// `rampart ca init --dir DIR`: a new trust-domain root (`cluster.local`) for agents run with
/// `--ca-dir DIR`.
pub fn ca_init(dir: &std::path::Path) -> anyhow::Result<()> {
    ca_init_with(&rampart_bin()?, dir)
}

/// [`ca_init`] with the agent binary `bin`.
pub fn ca_init_with(bin: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .output()
        .context("running rampart ca init")?;
    if !out.status.success() {
        bail!(
            "rampart ca init failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
