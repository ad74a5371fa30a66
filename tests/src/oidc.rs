//! A real OpenID provider and a real browser for the OIDC login tests: `tests/oidc/idp.js`
//! (the certified `oidc-provider` package for Node.js, with a small login page of our own) in a
//! namespace, and `tests/oidc/login.js` (puppeteer-core driving Debian's headless Chromium),
//! which opens a page, logs in on the provider's form when it shows, and prints what it saw and
//! the browser's cookies as JSON. The packages are pinned in `tests/oidc/package-lock.json`
//! and installed with `npm ci` on first use; the browser resolves only the names a test maps to
//! addresses of its own namespaces.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::netns::Netns;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-pw";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// `npm ci` in `tests/oidc` once per lockfile.
pub fn install() -> anyhow::Result<()> {
    let dir = fixture_dir();
    let lock = std::fs::read(dir.join("package-lock.json")).context("package-lock.json")?;
    let marker = dir.join("node_modules/.rampart-installed");
    if std::fs::read(&marker).ok().as_deref() == Some(lock.as_slice()) {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .context("npm ci (Node.js and npm)")?;
    if !out.status.success() {
        bail!("npm ci: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&marker, lock)?;
    Ok(())
}

/// The provider, in a namespace; stopped on drop.
#[derive(Debug)]
pub struct Idp {
    child: Option<Child>,
    pub issuer: String,
}

/// What the provider knows of the one client.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub redirect_uris: &'a [String],
    pub post_logout_redirect_uris: &'a [String],
    /// Hosts the redirect URIs use.
    pub hosts: &'a [&'a str],
    /// ID and access tokens' lifetime.
    pub token_ttl_s: u64,
}

impl Idp {
    pub fn start(ns: &Netns, address: IpAddr, port: u16, client: &Client) -> anyhow::Result<Idp> {
        install()?;
        let issuer = format!("http://{address}:{port}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "node"])
            .arg(fixture_dir().join("idp.js"))
            .env("IDP_HOST", address.to_string())
            .env("IDP_PORT", port.to_string())
            .env("IDP_ISSUER", &issuer)
            .env("IDP_CLIENT_ID", client.id)
            .env("IDP_CLIENT_SECRET", client.secret)
            .env("IDP_REDIRECT_URIS", client.redirect_uris.join(","))
            .env(
                "IDP_POST_LOGOUT_REDIRECT_URIS",
                client.post_logout_redirect_uris.join(","),
            )
            .env("IDP_ALLOWED_HOSTS", client.hosts.join(","))
            .env("IDP_TOKEN_TTL", client.token_ttl_s.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the OpenID provider (node)")?;
        let stdout = child.stdout.take().context("its stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut idp = Idp {
            child: Some(child),
            issuer,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("READY ") => Ok(idp),
            other => {
                idp.stop();
                bail!("the OpenID provider did not start: {other:?}")
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A browser session: `url` opened (logging in as `USER` when the provider's form shows),
/// then each of `then` in the same browser; what the driver printed.
pub fn browse(
    ns: &Netns,
    host_map: &[(&str, IpAddr)],
    allowed: &[IpAddr],
    url: &str,
    then: &[&str],
) -> anyhow::Result<serde_json::Value> {
    install()?;
    let map = host_map
        .iter()
        .map(|(name, ip)| format!("{name}={ip}"))
        .collect::<Vec<_>>()
        .join(",");
    let allowed = allowed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns.name(), "node"])
        .arg(fixture_dir().join("login.js"))
        .args([
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--timeout",
            "40",
        ]);
    for next in then {
        command.args(["--then", next]);
    }
    let out = command
        .arg(url)
        .env("LOGIN_HOST_MAP", map)
        .env("LOGIN_ALLOWED_HOSTS", allowed)
        .env("LOGIN_INSECURE_TLS", "1")
        .output()
        .context("running the browser (node login.js, Debian's chromium)")?;
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "login.js printed no JSON (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() {
        bail!("login.js failed (exit {}): {printed:#}", out.status);
    }
    Ok(printed)
}

/// The browser's cookie `name` (its JSON as login.js prints it).
pub fn cookie<'a>(printed: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    printed["cookies"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}
