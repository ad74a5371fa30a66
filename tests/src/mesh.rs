//! Nodes running agents with the trust domain's CA, for the mTLS and L7 tests, the conformance
//! samples and the proxy benchmark: the pod objects their policies describe, and the agents
//! started on a topology's nodes with a fresh CA and one policy file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::ca_service::CaServer;
use crate::{Agent, AgentOptions, Topology};

/// A `v1 Pod` object for a pod of a node named `node-<node>`: labels `app: <name>`, service
/// account `<name>`, `spec.nodeName` and `status.hostIP` as the topology's underlay gives them
/// (`192.168.200.<node>`), as a YAML document starting with `---`.
pub fn pod_object(namespace: &str, name: &str, node: u8, ip: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}, nodeName: node-{node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {ip}, hostIP: 192.168.200.{node}}}\n"
    )
}

/// Like [`pod_object`], dual-stack: `podIPs` lists the IPv4 address and its IPv6 twin
/// ([`crate::topology::ipv6_of`], the address the topology gives the pod).
pub fn dual_stack_pod_object(namespace: &str, name: &str, node: u8, ip: Ipv4Addr) -> String {
    let ip6 = crate::topology::ipv6_of(ip);
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}, nodeName: node-{node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}, {{ip: '{ip6}'}}], hostIP: 192.168.200.{node}}}\n"
    )
}

/// The two-node shop of the L7 tests: pod `shop/a` on node 1 calls pod `shop/b` on node 2
/// through the tunnel, where b's MeshPolicies put each port's requests through the chain.
pub mod shop {
    use std::net::Ipv4Addr;

    use super::pod_object;
    use crate::Topology;

    /// Pod `n`'s address (`10.244.<n>.10`, on node `n`).
    pub fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, n, 10)
    }

    /// A MeshPolicy on pod b's `port` whose `http` section is `http`: YAML lines indented by
    /// four spaces, each ending in a newline.
    pub fn b_policy(name: &str, port: u16, http: &str) -> String {
        format!(
            "---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: {name}}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {port}}}]\n  http:\n{http}"
        )
    }

    /// The namespace, pods a and b, and `policies`.
    pub fn world(policies: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}{policies}",
            pod_object("shop", "a", 1, ip(1)),
            pod_object("shop", "b", 2, ip(2)),
        )
    }

    /// Pod a on node 1, pod b on node 2.
    pub fn two_nodes() -> anyhow::Result<Topology> {
        Topology::builder(crate::netns::TEST_PREFIX)
            .node("node-1")
            .node("node-2")
            .pod("node-1", "shop/a", ip(1))
            .pod("node-2", "shop/b", ip(2))
            .build()
    }
}

/// One agent per node, all with the same CA (`rampart ca init`) and policy; the work directory
/// is removed on drop, after the agents stop.
#[derive(Debug)]
pub struct MeshAgents {
    agents: Vec<(String, Agent)>,
    /// With [`MeshAgents::start_with_ca_service`]: the CA service (stopped after the agents).
    ca: Option<CaServer>,
    work: PathBuf,
}

impl MeshAgents {
    /// Starts an agent on each of `nodes` of `topo` with `policy` as its only policy file (in
    /// one directory they all watch, `<work dir>/policy`), run as `--ca-dir <ca> --node-name
    /// <node>` plus `extra_args`, from `bin` (default: the harness's agent binary).
    pub fn start(
        topo: &Topology,
        nodes: &[&str],
        policy: &str,
        bin: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<MeshAgents> {
        let mut mesh = MeshAgents::new()?;
        let dir = mesh.policy_dir("policy", policy)?;
        mesh.launch_shared(topo, nodes, &dir, bin, extra_args)?;
        Ok(mesh)
    }

    /// [`MeshAgents::launch`] with every node on `policy_dir`.
    fn launch_shared(
        &mut self,
        topo: &Topology,
        nodes: &[&str],
        policy_dir: &Path,
        bin: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        let each: Vec<(&str, PathBuf)> =
            nodes.iter().map(|n| (*n, policy_dir.to_owned())).collect();
        self.launch(topo, &each, bin, extra_args)
    }

    /// Like [`MeshAgents::start`], each node with a policy of its own (`(node, policy)`, in
    /// `<work dir>/policy-<node>`): nodes that see the cluster differently, as one that lies
    /// would.
    pub fn start_each(
        topo: &Topology,
        nodes: &[(&str, &str)],
        bin: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<MeshAgents> {
        let mut mesh = MeshAgents::new()?;
        let mut each = Vec::new();
        for (node, policy) in nodes {
            each.push((*node, mesh.policy_dir(&format!("policy-{node}"), policy)?));
        }
        mesh.launch(topo, &each, bin, extra_args)?;
        Ok(mesh)
    }

    /// Like [`MeshAgents::start`], with the trust domain's CA as a service of its own (`rampart
    /// ca serve` on the underlay, signing certificates of `ca_ttl` seconds and learning the
    /// pods from `policy`): each agent gets a `--ca-dir` with `ca.crt` alone, `--ca-url` and its
    /// node's token; no node holds the CA's key.
    pub fn start_with_ca_service(
        topo: &Topology,
        nodes: &[&str],
        policy: &str,
        ca_ttl: u64,
        extra_args: &[&str],
    ) -> anyhow::Result<MeshAgents> {
        let mut mesh = MeshAgents::new()?;
        let policy_dir = mesh.policy_dir("policy", policy)?;
        mesh.launch_with_ca_service(topo, nodes, &policy_dir, None, ca_ttl, extra_args)?;
        Ok(mesh)
    }

    /// Like [`MeshAgents::start_with_ca_service`], all watching `policy_dir` (which the caller
    /// fills; the CA reads its Pods), run from `bin` (default: the harness's agent binary).
    pub fn start_in_dir_with_ca_service(
        topo: &Topology,
        nodes: &[&str],
        policy_dir: &Path,
        bin: Option<&Path>,
        ca_ttl: u64,
        extra_args: &[&str],
    ) -> anyhow::Result<MeshAgents> {
        let mut mesh = MeshAgents::new()?;
        mesh.launch_with_ca_service(topo, nodes, policy_dir, bin, ca_ttl, extra_args)?;
        Ok(mesh)
    }

    fn launch_with_ca_service(
        &mut self,
        topo: &Topology,
        nodes: &[&str],
        policy_dir: &Path,
        bin: Option<&Path>,
        ca_ttl: u64,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        let mesh = self;
        let bin = match bin {
            Some(bin) => bin.to_owned(),
            None => crate::agent::rampart_bin()?,
        };
        let service_dir = mesh.ca_service_dir();
        crate::agent::ca_init_with(&bin, &service_dir)?;
        let trust = mesh.trust_dir();
        std::fs::create_dir_all(&trust)?;
        std::fs::copy(service_dir.join("ca.crt"), trust.join("ca.crt")).context("ca.crt")?;
        std::fs::create_dir_all(mesh.work.join("tokens"))?;
        for node in nodes {
            let token = crate::cmd::run(
                bin.to_str().context("binary path")?,
                &[
                    "ca",
                    "node-token",
                    "--dir",
                    service_dir.to_str().context("path")?,
                    "--node",
                    node,
                ],
            )?;
            std::fs::write(mesh.token_file(node), token.trim())?;
        }
        mesh.ca = Some(CaServer::start(
            topo,
            &bin,
            &service_dir,
            crate::ca_service::Placement::Dir(policy_dir.to_owned()),
            ca_ttl,
        )?);
        for node in nodes {
            let ca_args = vec![
                "--ca-dir".to_owned(),
                trust.display().to_string(),
                "--ca-url".to_owned(),
                CaServer::url(),
                "--node-token-file".to_owned(),
                mesh.token_file(node).display().to_string(),
            ];
            let opts = agent_options(&bin, policy_dir, node, &ca_args, extra_args);
            let agent = Agent::start(&topo.node(node).ns, &opts)?;
            mesh.agents.push(((*node).to_owned(), agent));
        }
        Ok(())
    }

    /// The CA service's directory (its key, the node tokens' digests).
    pub fn ca_service_dir(&self) -> PathBuf {
        self.work.join("ca-service")
    }

    /// What the agents of [`MeshAgents::start_with_ca_service`] get as `--ca-dir`.
    pub fn trust_dir(&self) -> PathBuf {
        self.work.join("trust")
    }

    /// Node `node`'s token file.
    pub fn token_file(&self, node: &str) -> PathBuf {
        self.work.join("tokens").join(node)
    }

    /// The CA service, if the agents use one.
    pub fn ca_server(&mut self) -> Option<&mut CaServer> {
        self.ca.as_mut()
    }

    fn new() -> anyhow::Result<MeshAgents> {
        let work =
            std::env::temp_dir().join(format!("rampart-mesh-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(MeshAgents {
            agents: Vec::new(),
            ca: None,
            work,
        })
    }

    /// `<work dir>/<name>/world.yaml` holding `policy`.
    fn policy_dir(&self, name: &str, policy: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("world.yaml"), policy).context("writing the policy")?;
        Ok(dir)
    }

    /// A fresh CA (`rampart ca init`), then an agent per `(node, policy directory)`.
    fn launch(
        &mut self,
        topo: &Topology,
        nodes: &[(&str, PathBuf)],
        bin: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        let bin = match bin {
            Some(bin) => bin.to_owned(),
            None => crate::agent::rampart_bin()?,
        };
        let ca_dir = self.work.join("ca");
        crate::agent::ca_init_with(&bin, &ca_dir)?;
        let ca_args = vec!["--ca-dir".to_owned(), ca_dir.display().to_string()];
        for (node, policy_dir) in nodes {
            let opts = agent_options(&bin, policy_dir, node, &ca_args, extra_args);
            let agent = Agent::start(&topo.node(node).ns, &opts)?;
            self.agents.push(((*node).to_owned(), agent));
        }
        Ok(())
    }

    /// The agent of `node`.
    pub fn node(&self, node: &str) -> &Agent {
        match self.agents.iter().find(|(name, _)| name == node) {
            Some((_, agent)) => agent,
            None => panic!("no agent on {node}"),
        }
    }

    /// A hot restart of `node`'s agent (from `bin`, if given: an upgrade); see
    /// [`Agent::hand_over`].
    pub fn hand_over(
        &mut self,
        topo: &Topology,
        node: &str,
        bin: Option<&Path>,
    ) -> anyhow::Result<crate::agent::HandedOver> {
        let (at, name, old) = self.take(node)?;
        // On failure the old agent's guard stops it (the pins stay for the new one's guard).
        let (agent, handed) = old.hand_over(&topo.node(node).ns, bin)?;
        self.agents.insert(at, (name, agent));
        Ok(handed)
    }

    /// SIGKILLs `node`'s agent, runs `meanwhile`, then starts a new agent with the same
    /// options, which adopts the pinned state.
    pub fn kill_and_restart(
        &mut self,
        topo: &Topology,
        node: &str,
        meanwhile: impl FnOnce(),
    ) -> anyhow::Result<()> {
        let (at, name, old) = self.take(node)?;
        let (_, opts) = old.kill()?;
        meanwhile();
        let agent = Agent::start(&topo.node(node).ns, &opts)?;
        self.agents.insert(at, (name, agent));
        Ok(())
    }

    /// A restart without a handover: SIGTERM (the agent drains and exits, its pins stay), then
    /// a new agent with the same options; returns the time from the signal until the new agent
    /// is ready.
    pub fn stop_and_restart(
        &mut self,
        topo: &Topology,
        node: &str,
    ) -> anyhow::Result<std::time::Duration> {
        let (at, name, old) = self.take(node)?;
        let started = std::time::Instant::now();
        let opts = old.stop_for_restart()?;
        let agent = Agent::start(&topo.node(node).ns, &opts)?;
        let took = started.elapsed();
        self.agents.insert(at, (name, agent));
        Ok(took)
    }

    /// `node`'s agent, out of the list (with its place and name, to put its successor back).
    fn take(&mut self, node: &str) -> anyhow::Result<(usize, String, Agent)> {
        let at = self
            .agents
            .iter()
            .position(|(name, _)| name == node)
            .with_context(|| format!("no agent on {node}"))?;
        let (name, agent) = self.agents.remove(at);
        Ok((at, name, agent))
    }

    /// A directory for the test's own files, removed with the agents.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().map(|(_, agent)| agent)
    }
}

impl Drop for MeshAgents {
    fn drop(&mut self) {
        self.agents.clear();
        self.ca = None;
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// `rampart run` on `node`, watching `policy_dir`, with the CA's flags `ca_args`, then
/// `extra_args`.
fn agent_options(
    bin: &Path,
    policy_dir: &Path,
    node: &str,
    ca_args: &[String],
    extra_args: &[&str],
) -> AgentOptions {
    let mut opts = AgentOptions::new(Vec::new());
    opts.bin = Some(bin.to_owned());
    opts.policy_dir = Some(policy_dir.to_owned());
    opts.extra_args = ca_args.to_vec();
    opts.extra_args
        .extend(["--node-name".to_owned(), node.to_owned()]);
    opts.extra_args
        .extend(extra_args.iter().map(|a| (*a).to_owned()));
    opts
}

/// Distinguishes several worlds of one process.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A self-signed certificate for `names`, as an ingress presents it: (certificate PEM, key
/// PEM).
pub fn self_signed(names: &[&str]) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `text`'s lines, each indented by `spaces` (the lines of a YAML block scalar).
pub fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret document (with its leading `---`) holding `cert`.
pub fn tls_secret(namespace: &str, name: &str, (cert, key): &(String, String)) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert, 4),
        indent(key, 4)
    )
}
