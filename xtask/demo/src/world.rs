//! What the demo runs on: two nodes with the pods of `policies/workloads.yaml`, an application in
//! each pod, a trust domain, one agent per node, and the policy directory both agents watch
//! (as both would read the same objects from the API server). Everything is removed on drop,
//! also when the demo fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rampart_tests::http_server::HttpServer;
use rampart_tests::mesh::MeshAgents;
use rampart_tests::netns::DEMO_PREFIX;
use rampart_tests::{Agent, EchoServer, Topology};

/// The pods of `policies/workloads.yaml`: `namespace/name`, node, last octet of `10.244.1.x`.
pub const PODS: [(&str, &str, u8); 4] = [
    ("shop/frontend", "node-1", 10),
    ("shop/backend", "node-2", 11),
    ("shop/db", "node-1", 12),
    ("kube-system/coredns", "node-1", 53),
];

pub const NODES: [&str; 2] = ["node-1", "node-2"];

/// Lifetime of the certificates the demo's CA signs (an hour, as a cluster would).
const CERT_TTL: u64 = 3600;

/// The backend's HTTP API port (`http` in workloads.yaml) and the database's.
pub const HTTP_PORT: u16 = 8080;
pub const DB_PORT: u16 = 5432;

/// What the backend's application answers after its report of the request: an order with the
/// customer's card number, which the example MeshPolicy's DLP masks on the way out.
const ORDER: &str = "order: {\"id\": 1, \"item\": \"tent\", \"card\": \"4111 1111 1111 1111\"}\n";

pub fn pod_ip(name: &str) -> Ipv4Addr {
    let d = PODS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or(0, |(_, _, d)| *d);
    Ipv4Addr::new(10, 244, 1, d)
}

pub fn pod_addr(name: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod_ip(name)), port)
}

/// Removes a directory on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running demo. Fields drop in order: agents, applications, topology, files.
pub struct World {
    agents: Option<MeshAgents>,
    _apps: Vec<EchoServer>,
    _backend_api: HttpServer,
    pub topo: Topology,
    policies: PathBuf,
    dir: TempDir,
}

impl World {
    /// The topology and the pods' applications: an HTTP API in the backend (tcp/8080), echo
    /// servers on tcp/8080, tcp/5432 and udp/53 in the others (and tcp/5432, udp/53 in the
    /// backend).
    pub fn create(policies: &Path) -> anyhow::Result<World> {
        let mut builder = Topology::builder(DEMO_PREFIX);
        for node in NODES {
            builder = builder.node(node);
        }
        for (name, node, _) in PODS {
            builder = builder.pod(node, name, pod_ip(name));
        }
        let topo = builder.build().context("creating the demo topology")?;
        let mut apps = Vec::new();
        for pod in topo.pods() {
            let tcp: &[u16] = if pod.name == "shop/backend" {
                &[DB_PORT]
            } else {
                &[HTTP_PORT, DB_PORT]
            };
            apps.push(EchoServer::start(&pod.ns, tcp, &[53])?);
        }
        let backend_api =
            HttpServer::start_with_body(&topo.pod("shop/backend").ns, HTTP_PORT, ORDER)?;
        let dir =
            TempDir(std::env::temp_dir().join(format!("rampart-demo-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(dir.0.join("policy"))
            .with_context(|| format!("creating {}", dir.0.display()))?;
        Ok(World {
            agents: None,
            _apps: apps,
            _backend_api: backend_api,
            topo,
            policies: policies.to_owned(),
            dir,
        })
    }

    /// The directory both agents watch.
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.0.join("policy")
    }

    /// A scratch file path next to the policy directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// Copies `policies/<name>` into the watched directory (written beside it and renamed in:
    /// an agent never reads half a file).
    pub fn install(&self, name: &str) -> anyhow::Result<()> {
        let tmp = self.scratch("install.tmp");
        std::fs::copy(self.policies.join(name), &tmp).with_context(|| format!("copying {name}"))?;
        let file = Path::new(name).file_name().context("a policy file name")?;
        std::fs::rename(&tmp, self.policy_dir().join(file))?;
        println!("  + policies/{name}");
        Ok(())
    }

    /// The trust domain's CA as a service on the underlay (`rampart ca init`, a token per node,
    /// `rampart ca serve` reading the pods from the policy directory), then `rampart run` on
    /// every node with `ca.crt` alone and its node's token.
    pub fn start_agents(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.agents = Some(MeshAgents::start_in_dir_with_ca_service(
            &self.topo,
            &NODES,
            &self.policy_dir(),
            Some(bin),
            CERT_TTL,
            &[],
        )?);
        Ok(())
    }

    pub fn mesh(&self) -> Option<&MeshAgents> {
        self.agents.as_ref()
    }

    pub fn agent(&self, node: &str) -> &Agent {
        match &self.agents {
            Some(mesh) => mesh.node(node),
            None => panic!("no agents yet"),
        }
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().flat_map(MeshAgents::agents)
    }

    /// Stops every agent (SIGTERM), and runs `rampart cleanup` for each.
    pub fn stop_agents(&mut self) {
        self.agents = None;
    }

    /// The network namespace path of pod `name`.
    pub fn pod_ns(&self, name: &str) -> String {
        self.topo.pod(name).ns.path()
    }
}
