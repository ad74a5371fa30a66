//! The command line: `rampart run` (the agent) and the tools that talk to a running agent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::kernel_log_level::KernelLogLevel;

/// Default address of the metrics HTTP server (loopback: exposing it is a choice).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9490";
/// Default path of the admin socket (`rampart run` serves it; the tools use it).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/rampart/admin.sock";
/// Default path of the hot restart's socket.
pub const DEFAULT_HANDOVER_SOCKET: &str = "/run/rampart/handover.sock";

#[derive(Debug, Parser)]
#[command(
    name = "rampart",
    version,
    about = "Zero-trust segmentation agent: eBPF L3/L4 enforcement and an L7 proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the kernel programs, attach them, serve /metrics and /readyz.
    Run(Box<RunArgs>),
    /// Show what a running agent has loaded and counted.
    Status(StatusArgs),
    /// Stream a running agent's flow log: kernel verdicts and proxy refusals, with the
    /// workloads and the policy rule that decided.
    Flows(FlowsArgs),
    /// Detach every program and remove every pinned map under --bpffs-root (the agent leaves
    /// them in place when it stops, so that a restart has no enforcement gap).
    Cleanup(CleanupArgs),
    /// Validate policy files offline, or push them to a running agent.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the CustomResourceDefinitions of Rampart's kinds (ClusterPolicy, MeshPolicy) as
    /// YAML, for `kubectl apply -f -` (the same as `deploy/crds.yaml`).
    Crds,
    /// Manage the trust domain's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Show or change a running agent's kernel program log levels.
    KernelLog(KernelLogArgs),
}

#[derive(Debug, Args)]
pub struct KernelLogArgs {
    /// The running agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Only this program (`rp_xdp`, `rp_tc_ingress`, `rp_tc_egress`, `rp_tc_bridge`); every
    /// program when omitted.
    #[arg(long, value_name = "PROGRAM")]
    pub program: Option<String>,

    /// The level to set; without it, the levels in force are printed.
    #[arg(value_enum)]
    pub level: Option<KernelLogLevel>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the trust domain's root: `ca.crt` and `ca.key` (mode 0600) in --dir. Give the
    /// directory to `rampart ca serve` only; agents get `ca.crt` alone and a node token.
    Init(CaInitArgs),
    /// Create node NAME's bootstrap token (printed once; the CA keeps only its SHA-256, under
    /// --dir/nodes/). A new token replaces the node's old one.
    NodeToken(CaNodeTokenArgs),
    /// Run the trust domain's CA as a service: node certificates for nodes with a token,
    /// workload certificates for a node's own pods only.
    Serve(CaServeArgs),
    /// Ask the CA service for a workload certificate as a node would (for operators checking
    /// what a node may get): prints the identity and its validity, or the CA's refusal.
    Request(CaRequestArgs),
}

#[derive(Debug, Args)]
pub struct CaNodeTokenArgs {
    /// The CA's directory (`rampart ca init`'s).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The node's name (`spec.nodeName` of its pods).
    #[arg(long, value_name = "NAME")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct CaServeArgs {
    /// The CA's directory: `ca.crt` and `ca.key` (a root, or an intermediate of your PKI), and
    /// the node tokens' digests.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15012")]
    pub listen: std::net::SocketAddr,
    /// Where the CA learns which pods run on which node: a directory of Kubernetes objects
    /// (their Pods), re-read at most once a second ...
    #[arg(long, value_name = "DIR", required_unless_present_any = ["kube", "kubeconfig"], conflicts_with_all = ["kube", "kubeconfig"])]
    pub pods_dir: Option<PathBuf>,
    /// ... or the Kubernetes API, with the pod's service account (list and watch on pods) ...
    #[arg(long, conflicts_with = "kubeconfig")]
    pub kube: bool,
    /// ... or the API a kubeconfig file's current context names.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kube or --kubeconfig, nodes also authenticate with their agent's projected
    /// service-account token (audience `rampart-ca`), checked by a TokenReview: the token
    /// must be this service account's and bound to a pod the API places on the node.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        default_value = "rampart-system/rampart"
    )]
    pub agent_service_account: String,
    /// Lifetime of the certificates it signs, in seconds (agents renew at half-life).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..=31_536_000))]
    pub cert_ttl: u64,
    /// The trust domain (default: the one `ca.crt` names). Required when --dir holds an
    /// intermediate of your PKI: `tls.crt` (the intermediate, then those above it), `tls.key`
    /// and `ca.crt` (your root), as cert-manager and Vault write them.
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
}

#[derive(Debug, Args)]
pub struct CaRequestArgs {
    /// The CA service, `https://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub ca_url: String,
    /// Directory holding the trust domain's `ca.crt`.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// The node's credential file (a node token, or a service-account token).
    #[arg(long, value_name = "FILE")]
    pub node_token_file: PathBuf,
    /// The SPIFFE ID to ask for.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: String,
    /// The trust domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Directory to write `ca.crt` and `ca.key` to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// SPIFFE trust domain the root signs for.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// How long the root is valid, in days.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub validity_days: u32,

    /// Replace an existing root (every certificate it issued stops being trusted).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Read, validate and compile policy files (or directories of them) without an agent. Exits
    /// 0, or prints every error as `file:line:col: message` and exits 1.
    Check(PolicyCheckArgs),
    /// Send objects to a running agent; exits 0 once they are in force. Rejected as a whole on
    /// any error (the agent's policy stays as it was). Pushed objects replace the agent's objects
    /// of the same kind, namespace and name.
    Push(PolicyPushArgs),
    /// Explain a flow: the verdict at the source's egress and the destination's ingress, the
    /// policy rule that decides each and its mode, and whether the port takes only mTLS. Asks the
    /// running agent, or with FILEs compiles them offline (every pod as if on this node).
    Explain(PolicyExplainArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Sctp,
}

impl ProtocolArg {
    pub fn number(self) -> u8 {
        match self {
            ProtocolArg::Tcp => 6,
            ProtocolArg::Udp => 17,
            ProtocolArg::Sctp => 132,
        }
    }
}

#[derive(Debug, Args)]
pub struct PolicyExplainArgs {
    /// Source: a pod (`namespace/name`), an IP address or a CIDR.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: String,

    /// Destination: a pod (`namespace/name`), an IP address or a CIDR.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: String,

    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,

    /// Policy files or directories to compile offline instead of asking the running agent.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The running agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// SPIFFE trust domain of workload identities (offline).
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// Policy files (YAML or JSON), or directories of them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

#[derive(Debug, Args)]
pub struct PolicyPushArgs {
    /// Policy files (YAML or JSON); each replaces the pushed file of the same name.
    #[arg(required_unless_present_any = ["delete", "replace_all"], value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Remove a pushed file (by the name it was pushed under) and the objects it brought;
    /// repeatable.
    #[arg(long, value_name = "NAME")]
    pub delete: Vec<String>,

    /// Make the pushed set exactly FILEs (none: remove every pushed file).
    #[arg(long)]
    pub replace_all: bool,

    /// The running agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The pin root the agent ran with.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/rampart")]
    pub bpffs_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of policy files (Kubernetes objects, YAML or JSON) the agent watches.
    #[arg(long, value_name = "DIR", env = "RAMPART_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,

    /// Learn the cluster from the Kubernetes API with the pod's service account (as a
    /// DaemonSet runs): Pods, Namespaces, Nodes, NetworkPolicies, Rampart's kinds and Secrets
    /// labelled `rampart.dev/secret`. The policy directory, if given, still applies beneath it.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub kube: bool,

    /// As --kube, with the current context of this kubeconfig file.
    #[arg(long, value_name = "FILE", env = "RAMPART_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the Lease that elects the one agent writing Rampart objects' status (the
    /// DaemonSet's own namespace).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "RAMPART_KUBE_LEASE_NAMESPACE",
        default_value = "kube-system"
    )]
    pub kube_lease_namespace: String,

    /// Interface to attach the XDP and TC programs to (an uplink, or a pod interface the routes
    /// do not show); repeat for several. Pod interfaces are found from the node's routes.
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// SPIFFE trust domain of workload identities (`spiffe://DOMAIN/ns/NS/sa/SA`).
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Root directory on a bpffs mount under which the agent pins its maps and links.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/rampart")]
    pub bpffs_root: PathBuf,

    /// Address of the HTTP server for /metrics, /readyz and /healthz (nothing else is served
    /// there).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Unix socket of the admin API (status, flows, explain, policy push), mode 0600: only root
    /// and the agent's user may use it. Its directory is created if missing.
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Enforce verdicts, or only count what would be dropped.
    #[arg(long, value_enum, default_value_t = ModeArg::Enforce)]
    pub mode: ModeArg,

    /// XDP attach mode: let the kernel choose, or force native (driver) or generic (skb).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,

    /// The kernel programs' log level at start, for every program (`rampart kernel-log`
    /// changes it on a running agent). Only rare paths log: failed map updates, lookups that
    /// cannot fail, malformed packets (debug), failed rewrites; records appear in the agent's
    /// log with target `rampart::kernel`.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = KernelLogLevel::Off)]
    pub kernel_log_level: KernelLogLevel,

    /// The trust domain's CA: `ca.crt` (the roots the agent trusts), and `ca.key` unless
    /// --ca-url is given. Given, the agent runs the mTLS proxy: flows MeshPolicies select are
    /// tunnelled between nodes.
    #[arg(long, value_name = "DIR", env = "RAMPART_CA_DIR")]
    pub ca_dir: Option<PathBuf>,

    /// The trust domain's CA service (`rampart ca serve`), `https://HOST:PORT`: the agent gets
    /// its node's and its pods' certificates there, and --ca-dir needs only `ca.crt`. Without
    /// it, the agent signs them itself with --ca-dir's `ca.key` (one trust domain per node:
    /// for development; a node holding the key can sign for any workload).
    #[arg(
        long,
        value_name = "URL",
        env = "RAMPART_CA_URL",
        requires = "node_token_file"
    )]
    pub ca_url: Option<String>,

    /// The node's credential for --ca-url, read at every bootstrap: its token (`rampart ca
    /// node-token`), or the agent's projected service-account token (audience `rampart-ca`)
    /// when the CA runs with --kube.
    #[arg(
        long,
        value_name = "FILE",
        env = "RAMPART_NODE_TOKEN_FILE",
        requires = "ca_url"
    )]
    pub node_token_file: Option<PathBuf>,

    /// This node's name, as pods' `spec.nodeName` gives it (default: the host name).
    #[arg(long, value_name = "NAME", env = "RAMPART_NODE_NAME")]
    pub node_name: Option<String>,

    /// Lifetime of the workload and node certificates the agent issues, in seconds (renewed at
    /// half-life).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..=31_536_000))]
    pub cert_ttl: u64,

    /// Port of the proxy's transparent listener (redirected flows; never reached directly).
    #[arg(long, value_name = "PORT", default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_port: u16,

    /// Port agents take tunnels on (HTTP/2 CONNECT over mutual TLS 1.3).
    #[arg(long, value_name = "PORT", default_value_t = 15008, value_parser = clap::value_parser!(u16).range(1..))]
    pub tunnel_port: u16,

    /// The OWASP Core Rule Set the proxy's WAF loads for MeshPolicies with `http.waf`: a
    /// directory with `rules/*.conf` and `crs-setup.conf` (or `.example`); CRS 3.3 and 4 layouts.
    #[arg(long, value_name = "DIR", env = "RAMPART_CRS_DIR", default_value = rampart_waf::DEBIAN_CRS_DIR)]
    pub crs_dir: PathBuf,

    /// Also write every flow record to this file, as JSON lines (rotated by size).
    #[arg(long, value_name = "FILE", env = "RAMPART_FLOW_LOG")]
    pub flow_log: Option<PathBuf>,

    /// Size in bytes at which the flow log is rotated.
    #[arg(long, value_name = "BYTES", default_value_t = 100 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    pub flow_log_max_bytes: u64,

    /// Rotated flow log files kept (FILE.1 .. FILE.N).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flow_log_max_files: u32,

    /// Unix socket of the hot restart (mode 0600): a new `rampart run` connects to it, and if
    /// an agent of this node answers, takes over its listening sockets and pushed policy files
    /// without a gap; then the old agent drains and exits. Each agent serves it once it is in
    /// force.
    #[arg(long, value_name = "PATH", env = "RAMPART_HANDOVER_SOCKET", default_value = DEFAULT_HANDOVER_SOCKET)]
    pub handover_socket: PathBuf,

    /// After a handover or SIGTERM, how long open proxied connections may take to finish
    /// before the agent exits (the DaemonSet's terminationGracePeriodSeconds must be longer).
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_seconds: u64,

    /// What the old agent does once a handover has drained: exit, or wait for SIGTERM (under
    /// a DaemonSet, whose pods' containers are restarted when they exit on their own).
    #[arg(long, value_enum, default_value_t = AfterHandoverArg::Exit)]
    pub after_handover: AfterHandoverArg,

    #[command(flatten)]
    pub limits: ProxyLimitArgs,
}

/// What one client of the proxy may hold; every limit hit is counted in
/// `rampart_proxy_limit_hits_total{limit}`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Proxy limits")]
pub struct ProxyLimitArgs {
    /// Seconds a client has to send a whole HTTP/1 request head, from its first byte.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_head_timeout: u64,

    /// Seconds a request body may take, plus one per --request-body-min-rate bytes received;
    /// past it the request is answered 408.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub request_body_timeout: u64,

    /// Bytes per second that earn a request body one more second.
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_body_min_rate: u64,

    /// Seconds an HTTP connection may stay idle (no request in progress, no byte either way).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub http_idle_timeout: u64,

    /// Seconds a tunnelled TCP flow may carry no byte either way before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub tunnel_idle_timeout: u64,

    /// Connections the proxy holds at once (default: sized from the open-files limit); past
    /// it, new ones wait in the kernel's backlog.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_connections: Option<u64>,

    /// Connections from one address (default: a quarter of --max-connections); past it, new
    /// ones are closed at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_connections_per_source: Option<u64>,

    /// Tunnelled flows one workload identity may hold into this node at once (default: a
    /// quarter of --max-connections); past it, new ones are refused.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_flows_per_identity: Option<u64>,

    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub h2_max_concurrent_streams: u32,

    /// HTTP/2 streams a client may open and reset before they are served (rapid reset); past
    /// it, the connection gets a GOAWAY.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub h2_max_pending_reset_streams: u64,

    /// HTTP/2 streams the proxy may reset for a client's errors on one connection; past it, a
    /// GOAWAY.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub h2_max_local_error_resets: u64,

    /// Seconds a TLS handshake (tunnel, ingress) may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub tls_handshake_timeout: u64,

    /// TLS handshakes in progress at once; past it, new connections wait for a slot within
    /// their handshake timeout.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_tls_handshakes: u64,

    /// TLS handshakes in progress from one address.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_tls_handshakes_per_source: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AfterHandoverArg {
    Exit,
    WaitForSignal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    Allow,
    Deny,
    Audit,
    Redirect,
}

impl VerdictArg {
    pub fn name(self) -> &'static str {
        match self {
            VerdictArg::Allow => "allow",
            VerdictArg::Deny => "deny",
            VerdictArg::Audit => "audit",
            VerdictArg::Redirect => "redirect",
        }
    }
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The running agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Keep streaming new records after the recent ones (until interrupted).
    #[arg(long, short)]
    pub follow: bool,

    /// Only records with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,

    /// Print JSON lines (the documented record format) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The running agent's admin socket (root only).
    #[arg(long, value_name = "PATH", env = "RAMPART_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Print the agent's status document as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_accepts_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "rampart",
            "run",
            "--policy-dir",
            "/etc/rampart/policies",
            "--interface",
            "eth0",
            "--interface",
            "veth1",
            "--bpffs-root",
            "/sys/fs/bpf/rp",
            "--metrics-addr",
            "127.0.0.1:9999",
        ])
        .expect("documented flags parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.interfaces, ["eth0", "veth1"]);
        assert_eq!(args.metrics_addr.port(), 9999);
        assert_eq!(args.mode, ModeArg::Enforce);
    }

    #[test]
    fn ca_init_needs_a_dir_and_bounds_validity() {
        assert!(Cli::try_parse_from(["rampart", "ca", "init"]).is_err());
        assert!(
            Cli::try_parse_from([
                "rampart",
                "ca",
                "init",
                "--dir",
                "/x",
                "--validity-days",
                "0"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from(["rampart", "ca", "init", "--dir", "/x"]).expect("parse");
        let Command::Ca(CaCommand::Init(args)) = cli.command else {
            panic!("not ca init");
        };
        assert_eq!(args.trust_domain, "cluster.local");
        assert_eq!(args.validity_days, 3650);
    }

    #[test]
    fn policy_check_needs_a_file() {
        assert!(Cli::try_parse_from(["rampart", "policy", "check"]).is_err());
        assert!(Cli::try_parse_from(["rampart", "policy", "check", "a.yaml"]).is_ok());
    }
}
