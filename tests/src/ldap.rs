//! A real OpenLDAP server (`slapd`, Debian's package) inside a namespace for the LDAP provider's
//! tests: a throw-away configuration and database in a temporary directory, a small directory
//! (people, groups, a search account), TLS on `ldaps://` (636) and StartTLS on `ldap://` (389)
//! with a certificate for the pod's address signed by a CA of the test's own. Stopped (and its
//! directory removed) on drop; [`LdapServer::stop`] and [`LdapServer::start_again`] take it down
//! and up under a running test.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The directory's suffix.
pub const SUFFIX: &str = "dc=rampart,dc=test";
/// The search account's DN and password (what a `bindSecretRef` Secret holds).
pub const SEARCH_DN: &str = "cn=search,dc=rampart,dc=test";
pub const SEARCH_PASSWORD: &str = "search-pw-5d1e";

/// A person of the directory: `uid`, password, the groups (`groupOfNames` under `ou=groups`)
/// that list it.
#[derive(Debug, Clone)]
pub struct Person {
    pub uid: &'static str,
    pub password: &'static str,
    pub groups: &'static [&'static str],
}

#[derive(Debug)]
pub struct LdapServer {
    dir: PathBuf,
    ns: String,
    ns_path: String,
    address: IpAddr,
    child: Option<Child>,
    /// The CA that signed the server's certificate (PEM), for the policy's `caSecretRef`.
    pub ca_pem: String,
}

impl LdapServer {
    /// Builds the directory of `people` and starts slapd in `ns`, serving at `address` (one of
    /// the namespace's own); returns once both ports accept connections.
    pub fn start(ns: &Netns, address: IpAddr, people: &[Person]) -> anyhow::Result<LdapServer> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "{}-slapd-{}-{n}",
            crate::netns::TEST_PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db")).context("slapd's directory")?;
        let ca_pem = write_certificates(&dir, address)?;
        std::fs::write(dir.join("slapd.conf"), config(&dir)).context("slapd.conf")?;
        std::fs::write(dir.join("data.ldif"), ldif(people)?).context("data.ldif")?;
        let loaded = Command::new("slapadd")
            .args(["-f"])
            .arg(dir.join("slapd.conf"))
            .arg("-l")
            .arg(dir.join("data.ldif"))
            .output()
            .context("running slapadd (Debian package slapd)")?;
        if !loaded.status.success() {
            bail!("slapadd: {}", String::from_utf8_lossy(&loaded.stderr));
        }
        let mut server = LdapServer {
            dir,
            ns: ns.name().to_owned(),
            ns_path: ns.path(),
            address,
            child: None,
            ca_pem,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts slapd (again) on the same database.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let urls = format!("ldap://{0}:389/ ldaps://{0}:636/", url_host(self.address));
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "slapd", "-d", "0", "-h", &urls, "-f",
            ])
            .arg(self.dir.join("slapd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("slapd.log")).context("slapd.log")?)
            .spawn()
            .context("starting slapd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [389, 636] {
            let target = SocketAddr::new(self.address, port);
            loop {
                let up = crate::netns::run_in(&self.ns_path, move || {
                    TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
                })
                .unwrap_or(false);
                if up {
                    break;
                }
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    self.child = None;
                    bail!("slapd exited ({status}): {}", self.log());
                }
                if Instant::now() > deadline {
                    bail!("slapd does not listen on {target}: {}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Stops slapd (the directory is down until [`LdapServer::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs slapd: the child is slapd itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LdapServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url_host(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A CA and the server's certificate for `address`, written for slapd; returns the CA's PEM.
fn write_certificates(dir: &Path, address: IpAddr) -> anyhow::Result<String> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rampart test directory CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(address)];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ldap.rampart.test");
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(ca.pem())
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {d}/ca.crt
TLSCertificateFile {d}/server.crt
TLSCertificateKeyFile {d}/server.key
database mdb
maxsize 16777216
suffix \"{SUFFIX}\"
rootdn \"cn=admin,{SUFFIX}\"
directory {d}/db
# Passwords: only binds read them. Everything else: the search account only (an anonymous
# search finds nobody).
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact=\"{SEARCH_DN}\" read by * none
"
    )
}

/// `{SSHA}` of `password` (slapd's default scheme), by `slappasswd`.
fn ssha(password: &str) -> anyhow::Result<String> {
    let out = Command::new("slappasswd")
        .args(["-h", "{SSHA}", "-s", password])
        .output()
        .context("slappasswd")?;
    if !out.status.success() {
        bail!("slappasswd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ldif(people: &[Person]) -> anyhow::Result<String> {
    let mut out = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: rampart\ndc: rampart\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: {SEARCH_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: search\nuserPassword: {}\n\n",
        ssha(SEARCH_PASSWORD)?
    );
    let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for person in people {
        out.push_str(&format!(
            "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {}\n\n",
            ssha(person.password)?,
            uid = person.uid,
        ));
        for group in person.groups {
            groups.entry(group).or_default().push(person.uid);
        }
    }
    for (group, members) in groups {
        out.push_str(&format!(
            "dn: cn={group},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {group}\n"
        ));
        for uid in members {
            out.push_str(&format!("member: uid={uid},ou=people,{SUFFIX}\n"));
        }
        out.push('\n');
    }
    Ok(out)
}
