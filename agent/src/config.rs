//! The agent's validated configuration. Built from the command line (and later a config file),
//! checked once, dumped at start-up, then passed by value to `app::run`. Nothing else reads flags
//! or the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{AfterHandoverArg, ModeArg, ProxyLimitArgs, RunArgs, XdpModeArg};
use crate::limits::ProxyLimits;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--interface {name:?}: {reason}")]
    Interface { name: String, reason: &'static str },
    #[error("--interface {0:?} is given twice")]
    DuplicateInterface(String),
    #[error("--policy-dir {path}: {reason}")]
    PolicyDir { path: String, reason: String },
    #[error("--bpffs-root {path}: must be an absolute path")]
    BpffsRoot { path: String },
    #[error("--trust-domain {0:?}: must be a lowercase DNS name (letters, digits, '-', '.')")]
    TrustDomain(String),
    #[error("--node-name {0:?}: must be a lowercase DNS name")]
    NodeName(String),
    #[error("--ca-dir {path}: {reason}")]
    CaDir { path: String, reason: String },
    #[error("--admin-socket {path}: {reason}")]
    AdminSocket { path: String, reason: &'static str },
    #[error("--kube-lease-namespace {0:?}: must be a namespace name (an RFC 1123 label)")]
    LeaseNamespace(String),
    #[error("--kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("--proxy-port and --tunnel-port must differ")]
    SamePorts,
    #[error("--handover-socket {path}: {reason}")]
    HandoverSocket { path: String, reason: &'static str },
    #[error("--handover-socket must differ from --admin-socket")]
    SameSockets,
}

/// Whether kernel verdicts drop packets (enforce) or are only counted (audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// The kernel picks native XDP where the driver has it, else generic.
    Auto,
    Native,
    Generic,
}

/// The mTLS proxy's settings (with `--ca-dir`).
#[derive(Debug, Clone, Serialize)]
pub struct MeshSettings {
    pub ca_dir: PathBuf,
    /// The CA service and the node token's file; `None`: the agent signs with `ca_dir`'s key.
    pub ca_service: Option<CaServiceSettings>,
    pub node_name: String,
    pub cert_ttl: Duration,
    pub proxy_port: u16,
    pub tunnel_port: u16,
    /// The Core Rule Set of the WAF.
    pub crs_dir: PathBuf,
    /// What one client of the proxy may hold.
    pub limits: ProxyLimits,
}

/// `--ca-url`, `--node-token-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaServiceSettings {
    pub url: String,
    pub node_token_file: PathBuf,
}

/// `--flow-log`: the flow log's file and its rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowLogSettings {
    pub path: PathBuf,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` .. `FILE.N`), at least 1.
    pub max_files: u32,
}

/// How to reach the Kubernetes API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeConnection {
    /// The service account a pod is given (`--kube`).
    InCluster,
    /// A kubeconfig file's current context (`--kubeconfig FILE`).
    Kubeconfig(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub interfaces: Vec<String>,
    pub policy_dir: Option<PathBuf>,
    /// The Kubernetes API as a source (`--kube`, `--kubeconfig`).
    pub kube: Option<KubeConnection>,
    /// Where the status writer's Lease lives (`--kube-lease-namespace`).
    pub kube_lease_namespace: String,
    pub bpffs_root: PathBuf,
    pub metrics_addr: SocketAddr,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    pub mode: Mode,
    pub xdp_mode: XdpAttachMode,
    /// The kernel programs' log level at start (`--kernel-log-level`).
    #[serde(skip)]
    pub kernel_log_level: crate::kernel_log_level::KernelLogLevel,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// The mTLS proxy's settings, when `--ca-dir` is given.
    pub mesh: Option<MeshSettings>,
    /// This node's name (`--node-name`, default the host name): in flow records, and the
    /// proxy's node identity.
    pub node_name: String,
    /// `--flow-log`.
    pub flow_log: Option<FlowLogSettings>,
    /// The hot restart's socket, the drain's grace period and what follows a handover.
    pub handover: HandoverSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandoverSettings {
    pub socket: PathBuf,
    pub drain: Duration,
    /// After a handover has drained: wait for SIGTERM instead of exiting.
    pub wait_for_signal: bool,
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<RunConfig, ConfigError> {
        let mut interfaces: Vec<String> = Vec::with_capacity(args.interfaces.len());
        for name in args.interfaces {
            validate_interface_name(&name)?;
            if interfaces.contains(&name) {
                return Err(ConfigError::DuplicateInterface(name));
            }
            interfaces.push(name);
        }
        if let Some(dir) = &args.policy_dir {
            validate_policy_dir(dir)?;
        }
        if !crate::dns_name::is_dns_label(&args.kube_lease_namespace) {
            return Err(ConfigError::LeaseNamespace(args.kube_lease_namespace));
        }
        let kube = match (&args.kubeconfig, args.kube) {
            (Some(path), _) => {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(ConfigError::Kubeconfig {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
                Some(KubeConnection::Kubeconfig(path.clone()))
            }
            (None, true) => Some(KubeConnection::InCluster),
            (None, false) => None,
        };
        if !crate::dns_name::is_dns_subdomain(&args.trust_domain) {
            return Err(ConfigError::TrustDomain(args.trust_domain));
        }
        validate_admin_socket(&args.admin_socket)?;
        if let Err(ConfigError::AdminSocket { path, reason }) =
            validate_admin_socket(&args.handover_socket)
        {
            return Err(ConfigError::HandoverSocket { path, reason });
        }
        if args.handover_socket == args.admin_socket {
            return Err(ConfigError::SameSockets);
        }
        if !args.bpffs_root.is_absolute() {
            return Err(ConfigError::BpffsRoot {
                path: args.bpffs_root.display().to_string(),
            });
        }
        let node_name = match args.node_name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_ascii_lowercase())
                .unwrap_or_default(),
        };
        if !crate::dns_name::is_dns_subdomain(&node_name) {
            return Err(ConfigError::NodeName(node_name));
        }
        let mesh = match args.ca_dir {
            None => None,
            Some(ca_dir) => {
                if !ca_dir.is_dir() {
                    return Err(ConfigError::CaDir {
                        path: ca_dir.display().to_string(),
                        reason: "not a directory".into(),
                    });
                }
                if args.proxy_port == args.tunnel_port {
                    return Err(ConfigError::SamePorts);
                }
                let ca_service = match (args.ca_url, args.node_token_file) {
                    (Some(url), Some(node_token_file)) => Some(CaServiceSettings {
                        url,
                        node_token_file,
                    }),
                    _ => None,
                };
                Some(MeshSettings {
                    ca_dir,
                    ca_service,
                    node_name: node_name.clone(),
                    cert_ttl: std::time::Duration::from_secs(args.cert_ttl),
                    proxy_port: args.proxy_port,
                    tunnel_port: args.tunnel_port,
                    crs_dir: args.crs_dir.clone(),
                    limits: proxy_limits(&args.limits),
                })
            }
        };
        Ok(RunConfig {
            mesh,
            node_name,
            flow_log: args.flow_log.map(|path| FlowLogSettings {
                path,
                max_bytes: args.flow_log_max_bytes,
                max_files: args.flow_log_max_files,
            }),
            interfaces,
            kube,
            kube_lease_namespace: args.kube_lease_namespace,
            policy_dir: args.policy_dir,
            bpffs_root: args.bpffs_root,
            metrics_addr: args.metrics_addr,
            admin_socket: args.admin_socket,
            mode: match args.mode {
                ModeArg::Enforce => Mode::Enforce,
                ModeArg::Audit => Mode::Audit,
            },
            xdp_mode: match args.xdp_mode {
                XdpModeArg::Auto => XdpAttachMode::Auto,
                XdpModeArg::Native => XdpAttachMode::Native,
                XdpModeArg::Generic => XdpAttachMode::Generic,
            },
            kernel_log_level: args.kernel_log_level,
            trust_domain: args.trust_domain,
            handover: HandoverSettings {
                socket: args.handover_socket,
                drain: Duration::from_secs(args.drain_seconds),
                wait_for_signal: args.after_handover == AfterHandoverArg::WaitForSignal,
            },
        })
    }
}

/// The rules of the kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:`,
/// whitespace or NUL.
fn validate_interface_name(name: &str) -> Result<(), ConfigError> {
    let bad = |reason| {
        Err(ConfigError::Interface {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("is not a valid interface name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return bad("contains '/', ':', whitespace or NUL");
    }
    Ok(())
}

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

fn validate_admin_socket(path: &Path) -> Result<(), ConfigError> {
    let reason = if !path.is_absolute() {
        "must be an absolute path"
    } else if path.as_os_str().len() > MAX_SOCKET_PATH {
        "longer than the 107 bytes a Unix socket path may have"
    } else if path.file_name().is_none() {
        "names no file"
    } else {
        return Ok(());
    };
    Err(ConfigError::AdminSocket {
        path: path.display().to_string(),
        reason,
    })
}

fn validate_policy_dir(dir: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::PolicyDir {
            path: dir.display().to_string(),
            reason: "is not a directory".into(),
        }),
        Err(e) => Err(ConfigError::PolicyDir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The proxy's limits from their flags (ranges checked by the parser).
fn proxy_limits(args: &ProxyLimitArgs) -> ProxyLimits {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    ProxyLimits {
        request_head_timeout: Duration::from_secs(args.request_head_timeout),
        request_body_timeout: Duration::from_secs(args.request_body_timeout),
        request_body_min_rate: args.request_body_min_rate,
        http_idle_timeout: Duration::from_secs(args.http_idle_timeout),
        tunnel_idle_timeout: Duration::from_secs(args.tunnel_idle_timeout),
        max_connections: args.max_connections.map(count),
        max_connections_per_source: args.max_connections_per_source.map(count),
        max_flows_per_identity: args.max_flows_per_identity.map(count),
        h2_max_concurrent_streams: args.h2_max_concurrent_streams,
        h2_max_pending_reset_streams: count(args.h2_max_pending_reset_streams),
        h2_max_local_error_resets: count(args.h2_max_local_error_resets),
        tls_handshake_timeout: Duration::from_secs(args.tls_handshake_timeout),
        max_tls_handshakes: count(args.max_tls_handshakes),
        max_tls_handshakes_per_source: count(args.max_tls_handshakes_per_source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(extra: &[&str]) -> Result<RunConfig, ConfigError> {
        let mut argv = vec!["rampart", "run"];
        argv.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        RunConfig::from_args(*args)
    }

    #[test]
    fn accepts_a_plain_configuration() {
        let cfg = parse(&["--interface", "eth0", "--interface", "rp-a1"]).expect("valid");
        assert_eq!(cfg.interfaces, ["eth0", "rp-a1"]);
        assert_eq!(cfg.mode, Mode::Enforce);
    }

    #[test]
    fn rejects_bad_interface_names_naming_the_flag() {
        for bad in ["", "a/b", "a b", "abcdefghijklmnop", "..", "eth0:1"] {
            let err = parse(&["--interface", bad]).expect_err(bad);
            assert!(err.to_string().starts_with("--interface"), "{err}");
        }
    }

    #[test]
    fn the_handover_socket_is_checked_like_the_admin_socket_and_is_another_file() {
        let err = parse(&["--handover-socket", "relative.sock"]).expect_err("relative");
        assert!(
            err.to_string()
                .starts_with("--handover-socket relative.sock"),
            "{err}"
        );
        let err = parse(&[
            "--handover-socket",
            "/run/a.sock",
            "--admin-socket",
            "/run/a.sock",
        ])
        .expect_err("same");
        assert_eq!(err, ConfigError::SameSockets);
        let cfg = parse(&[
            "--drain-seconds",
            "5",
            "--after-handover",
            "wait-for-signal",
        ])
        .expect("valid");
        assert_eq!(cfg.handover.drain, Duration::from_secs(5));
        assert!(cfg.handover.wait_for_signal);
    }

    #[test]
    fn rejects_a_duplicate_interface() {
        let err = parse(&["--interface", "eth0", "--interface", "eth0"]).expect_err("dup");
        assert_eq!(err, ConfigError::DuplicateInterface("eth0".into()));
    }

    #[test]
    fn rejects_a_missing_policy_dir() {
        let err = parse(&[
            "--interface",
            "eth0",
            "--policy-dir",
            "/nonexistent/rampart-policies",
        ])
        .expect_err("missing dir");
        assert!(
            err.to_string()
                .starts_with("--policy-dir /nonexistent/rampart-policies"),
            "{err}"
        );
    }

    #[test]
    fn rejects_a_relative_bpffs_root() {
        let err = parse(&["--interface", "eth0", "--bpffs-root", "bpf"]).expect_err("relative");
        assert!(matches!(err, ConfigError::BpffsRoot { .. }));
    }

    #[test]
    fn rejects_a_relative_or_overlong_admin_socket() {
        let err = parse(&["--admin-socket", "admin.sock"]).expect_err("relative");
        assert!(
            err.to_string().starts_with("--admin-socket admin.sock"),
            "{err}"
        );
        let long = format!("/run/{}/admin.sock", "x".repeat(120));
        let err = parse(&["--admin-socket", &long]).expect_err("too long");
        assert!(matches!(err, ConfigError::AdminSocket { .. }), "{err}");
        let cfg = parse(&[]).expect("default");
        assert_eq!(
            cfg.admin_socket,
            Path::new(crate::cli::DEFAULT_ADMIN_SOCKET)
        );
    }
}
