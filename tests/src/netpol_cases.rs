//! The NetworkPolicy conformance format (`netpol-reachability/v1`, see
//! `tests/conformance/README` in the shared suite): cases of namespaces, pods, policies and
//! probes; and the Kubernetes objects a case stands for, as the agent reads them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// The cases file kept in this repository (a copy of the shared suite's, unedited).
pub const DEFAULT_CASES: &str = "tests/conformance/netpol_cases.yaml";

#[derive(Debug, Clone, Deserialize)]
pub struct CaseFile {
    pub format: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub sequence: Option<Sequence>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    pub container_ports: Vec<ContainerPortSpec>,
    #[serde(default)]
    pub policies: Vec<Value>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sequence {
    pub id: String,
    pub step: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl PodSpec {
    /// `namespace/name`, as probes name pods.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContainerPortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: String,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

/// Reads a cases file.
pub fn load(path: &Path) -> anyhow::Result<CaseFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // YAML 1.2 booleans only: namespace `y` is a name, not `true` (the policies are kept as
    // untyped values).
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: CaseFile = serde_saphyr::from_str_with_options(&text, options)
        .with_context(|| format!("parsing {}", path.display()))?;
    if file.format != "netpol-reachability/v1" {
        bail!(
            "{}: format {:?} is not netpol-reachability/v1",
            path.display(),
            file.format
        );
    }
    Ok(file)
}

impl Case {
    /// The case's world as Kubernetes objects (Namespaces, Pods on `node`, the policies), one
    /// YAML stream of JSON documents.
    pub fn objects_yaml(&self, node: &str) -> anyhow::Result<String> {
        let mut docs: Vec<Value> = Vec::new();
        for ns in &self.namespaces {
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": ns.labels},
            }));
        }
        let ports: Vec<Value> = self
            .container_ports
            .iter()
            .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol}))
            .collect();
        for pod in &self.pods {
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "serve", "image": "agnhost", "ports": ports}],
                },
                "status": {"podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}]},
            }));
        }
        docs.extend(self.policies.iter().cloned());
        let mut out = String::new();
        for doc in docs {
            out.push_str("---\n");
            out.push_str(&serde_json::to_string(&doc)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// The pod called `ns/name`.
    pub fn pod(&self, key: &str) -> anyhow::Result<&PodSpec> {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .with_context(|| format!("case {}: no pod {key}", self.name))
    }
}
