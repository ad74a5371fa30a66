//! The Kubernetes API as a policy source (`rampart run --kube` or `--kubeconfig FILE`): a watch
//! per kind keeps a compact copy of what the agent uses; the controller reads it like any
//! source.
//!
//! | kind | kept as | why |
//! | --- | --- | --- |
//! | Pod (all, every node's) | its model: labels, addresses, named ports, service account, node | remote pods' addresses resolve to identities in this node's ipcache |
//! | Namespace | its labels | namespace selectors |
//! | Node | its addresses | `host` / `remote-node` |
//! | Service, EndpointSlice | addresses, ports, backends | Service translation in the kernel (`policy::compile::services`) |
//! | NetworkPolicy, ClusterPolicy, MeshPolicy | a YAML document, read by the policy reader | every check, at a position |
//! | Secret, only those labelled [`SECRET_LABEL`] | a YAML document | API keys, ingress certificates |
//! | ConfigMap, only those labelled [`CONFIG_MAP_LABEL`] | a YAML document | Rego modules and data |
//!
//! Per-object: an object whose current version fails validation is rejected on its own, and
//! its last accepted version stays in force (Pods, Namespaces and Nodes are checked on arrival;
//! documents when the controller validates the set, see [`PolicySource::last_good`]).
//!
//! Fail static: while the API server is unreachable or a watch is broken, the objects stay as
//! they are (and so does enforcement); the watches retry with backoff, resume or relist, and
//! count it ([`KubeHealth`]). Nothing goes into force before every kind's first complete list.

mod convert;
pub mod health;
mod intern;
pub mod report;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;

pub use health::{KindHealth, KubeHealth};
use store::{Checked, Document, Objects};
use watch::{Watch, key_of};

use super::{Outcome, PolicySource, SourceRead};
use crate::config::KubeConnection as Connection;
use crate::generation::SourceDoc;
use crate::policy::source::{self, Read};

pub use crate::policy::config_map::CONFIG_MAP_LABEL;
pub use crate::policy::secret::SECRET_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A policy document kind watched as such.
struct DocumentKind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    label_selector: Option<&'static str>,
}

const DOCUMENT_KINDS: &[DocumentKind] = &[
    DocumentKind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        label_selector: None,
    },
    DocumentKind {
        group: "rampart.dev",
        version: "v1alpha1",
        kind: "ClusterPolicy",
        plural: "clusterpolicies",
        label_selector: None,
    },
    DocumentKind {
        group: "rampart.dev",
        version: "v1alpha1",
        kind: "MeshPolicy",
        plural: "meshpolicies",
        label_selector: None,
    },
    DocumentKind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        label_selector: Some(SECRET_LABEL),
    },
    DocumentKind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        label_selector: Some(CONFIG_MAP_LABEL),
    },
];

/// The resource name of a document kind (`MeshPolicy` → `meshpolicies`).
fn plural_of(kind: &str) -> Option<&'static str> {
    DOCUMENT_KINDS
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.plural)
}

/// Every kind watched, as the health counters name them.
pub const WATCHED: &[&str] = &[
    "Pod",
    "Namespace",
    "Node",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
    "ClusterPolicy",
    "MeshPolicy",
    "Secret",
    "ConfigMap",
];

/// The Kubernetes source (see the module's documentation).
pub struct KubeSource {
    objects: Arc<Mutex<Objects>>,
    health: Arc<KubeHealth>,
}

impl KubeSource {
    /// Connects and starts a watch per kind on the current tokio runtime (`notify` is called
    /// after every change), and the status writer, which writes while this agent (`identity`,
    /// its node's name) holds the Lease in `lease_namespace`.
    pub async fn start(
        connection: &Connection,
        identity: &str,
        lease_namespace: &str,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<KubeSource, KubeError> {
        let config = match connection {
            Connection::InCluster => kube::Config::incluster()?,
            Connection::Kubeconfig(path) => kubeconfig(path).await?,
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        let objects = Arc::new(Mutex::new(Objects::default()));
        let health = Arc::new(KubeHealth::new(server, WATCHED));
        let watch = |kind: &'static str| Watch {
            kind,
            objects: Arc::clone(&objects),
            health: Arc::clone(&health),
            notify: Arc::clone(&notify),
        };
        let all = watcher::Config::default();
        let labels = intern::Interner::default();
        let strings = intern::Interner::<str>::default();
        tokio::spawn(watch_checked(
            watch("Pod"),
            client.clone(),
            |o| &mut o.pods,
            move |pod, key| {
                convert::pod(pod).map(|p| {
                    p.map(|mut p| {
                        // The store's key is the same `namespace/name`: one string for both.
                        if **key == *p.full_name {
                            p.full_name = Arc::clone(key);
                        }
                        p.labels = labels.intern(p.labels);
                        p.namespace = strings.intern(p.namespace);
                        p.service_account = strings.intern(p.service_account);
                        p.node_name = p.node_name.map(|n| strings.intern(n));
                        Arc::new(p)
                    })
                })
            },
        ));
        tokio::spawn(watch_checked(
            watch("Namespace"),
            client.clone(),
            |o| &mut o.namespaces,
            |ns, _| convert::namespace(ns).map(|(_, labels)| Some(labels)),
        ));
        tokio::spawn(watch_checked(
            watch("Node"),
            client.clone(),
            |o| &mut o.nodes,
            |node, _| convert::node(node).map(|(_, addrs)| Some(addrs)),
        ));
        tokio::spawn(watch_checked(
            watch("Service"),
            client.clone(),
            |o| &mut o.services,
            |service, _| convert::service(service).map(|s| s.map(Arc::new)),
        ));
        tokio::spawn(watch_checked(
            watch("EndpointSlice"),
            client.clone(),
            |o| &mut o.endpoint_slices,
            |slice, _| convert::endpoint_slice(slice).map(|s| s.map(Arc::new)),
        ));
        for kind in DOCUMENT_KINDS {
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(kind.group, kind.version, kind.kind),
                kind.plural,
            );
            let api_version = resource.api_version.clone();
            let config = match kind.label_selector {
                Some(selector) => all.clone().labels(selector),
                None => all.clone(),
            };
            let name = kind.kind;
            tokio::spawn(watch(name).run(
                kube::Api::<DynamicObject>::all_with(client.clone(), &resource),
                config,
                move |o| o.documents.entry(name).or_default(),
                move |o| document_file(name, &key_of(o)).into(),
                move |o, _, previous| document(o, &api_version, name, previous),
            ));
        }
        tokio::spawn(
            report::Reporting {
                client,
                objects: Arc::clone(&objects),
                health: Arc::clone(&health),
                identity: identity.to_owned(),
                lease_namespace: lease_namespace.to_owned(),
            }
            .run(),
        );
        Ok(KubeSource { objects, health })
    }

    pub fn health(&self) -> Arc<KubeHealth> {
        Arc::clone(&self.health)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn kubeconfig(path: &Path) -> Result<kube::Config, KubeError> {
    let error = |source| KubeError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(path).map_err(error)?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(error)
}

/// The watch of a typed kind whose objects are validated on arrival by `convert`.
fn watch_checked<K, T>(
    watch: Watch,
    client: kube::Client,
    store: impl for<'a> Fn(&'a mut Objects) -> &'a mut store::Kind<Checked<T>> + Send + 'static,
    convert: impl Fn(&K, &Arc<str>) -> Result<Option<T>, String> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    T: Clone + PartialEq + Send + 'static,
{
    let api = kube::Api::<K>::all(client);
    watch.run(
        api,
        watcher::Config::default(),
        store,
        key_of,
        move |o, key, previous| checked(previous, convert(o, key)),
    )
}

/// The entry a version makes, and its error if it is rejected.
fn checked<T: Clone>(
    previous: Option<&Checked<T>>,
    version: Result<Option<T>, String>,
) -> (Checked<T>, Option<String>) {
    let entry = Checked::next(previous, version);
    let error = entry.error.clone();
    (entry, error)
}

/// The name a document is read as: `kube:Kind/namespace/name` or `kube:Kind/name`.
fn document_file(kind: &str, key: &str) -> String {
    format!("kube:{kind}/{key}")
}

fn document(
    object: &DynamicObject,
    api_version: &str,
    kind: &'static str,
    previous: Option<&Document>,
) -> (Document, Option<String>) {
    match convert::document(object, api_version, kind) {
        Ok(text) => match previous {
            // The same document again (a status written back, a label elsewhere): the
            // controller's verdict on it stands, so everything carries over.
            Some(p) if p.text == text => {
                let mut same = p.clone();
                same.generation = object.metadata.generation;
                (same, None)
            }
            _ => (
                Document {
                    parsed: source::parse_str(
                        Path::new(&document_file(kind, &watch::key_of(object))),
                        &text,
                    ),
                    sha256: source::sha256_hex(text.as_bytes()),
                    kind,
                    namespace: object.metadata.namespace.clone(),
                    name: object.metadata.name.clone().unwrap_or_default(),
                    uid: object.metadata.uid.clone(),
                    text,
                    last_good: previous.and_then(|p| p.last_good.clone()),
                    generation: object.metadata.generation,
                    last_good_generation: previous.and_then(|p| p.last_good_generation),
                    errors: Vec::new(),
                    rejected_sha: previous.and_then(|p| p.rejected_sha.clone()),
                },
                None,
            ),
        },
        Err(e) => match previous {
            Some(p) => (p.clone(), Some(e)),
            None => (
                Document {
                    kind,
                    namespace: object.metadata.namespace.clone(),
                    name: object.metadata.name.clone().unwrap_or_default(),
                    uid: object.metadata.uid.clone(),
                    text: String::new(),
                    parsed: Read::default(),
                    sha256: source::sha256_hex(b""),
                    last_good: None,
                    generation: object.metadata.generation,
                    last_good_generation: None,
                    errors: vec![e.clone()],
                    rejected_sha: None,
                },
                Some(e),
            ),
        },
    }
}

impl PolicySource for KubeSource {
    fn read(&self) -> SourceRead {
        let objects = self.lock();
        let mut out = SourceRead::default();
        for entry in objects.pods.live().values() {
            if let Some(pod) = &entry.in_use {
                out.validated.pods.push(pod.clone());
            }
        }
        for (name, entry) in objects.namespaces.live() {
            if let Some(labels) = &entry.in_use {
                out.validated
                    .namespaces
                    .insert(name.to_string(), labels.clone());
            }
        }
        for (name, entry) in objects.nodes.live() {
            if let Some(addrs) = &entry.in_use {
                out.validated.nodes.insert(name.to_string(), addrs.clone());
            }
        }
        for entry in objects.services.live().values() {
            if let Some(service) = &entry.in_use {
                out.validated.services.push(Arc::clone(service));
            }
        }
        for entry in objects.endpoint_slices.live().values() {
            if let Some(slice) = &entry.in_use {
                out.validated.endpoint_slices.push(Arc::clone(slice));
            }
        }
        for (file, doc) in objects.documents.values().flat_map(store::Kind::live) {
            out.read.objects.extend(doc.parsed.objects.iter().cloned());
            out.read
                .diagnostics
                .extend(doc.parsed.diagnostics.iter().cloned());
            out.documents.push(SourceDoc {
                file: file.to_string(),
                sha256: doc.sha256.clone(),
            });
        }
        out
    }

    fn synced(&self) -> bool {
        self.health.synced()
    }

    fn last_good(&self, file: &str) -> Option<Read> {
        let objects = self.lock();
        let doc = objects
            .documents
            .values()
            .find_map(|kind| kind.live().get(file))?;
        Some(match &doc.last_good {
            Some(text) => source::parse_str(Path::new(file), text),
            None => Read::default(),
        })
    }

    fn in_force(&self, _generation: u64, read: &[SourceDoc], rejected: &BTreeMap<String, Outcome>) {
        let read: BTreeMap<&str, &str> = read
            .iter()
            .map(|d| (d.file.as_str(), d.sha256.as_str()))
            .collect();
        let mut objects = self.lock();
        let mut newly_rejected: Vec<&'static str> = Vec::new();
        for kind in objects.documents.values_mut() {
            kind.update_each(|file, doc| {
                // Only the version that was read (a newer one waits for its own reload).
                let Some(sha) = read.get(file) else {
                    return;
                };
                if doc.sha256 != *sha {
                    return;
                }
                match rejected.get(file) {
                    Some(Outcome::Rejected { errors, .. }) => {
                        doc.errors = errors.clone();
                        if doc.rejected_sha.as_deref() != Some(*sha) {
                            doc.rejected_sha = Some((*sha).to_owned());
                            newly_rejected.push(doc.kind);
                        }
                    }
                    _ => {
                        doc.last_good = Some(doc.text.clone());
                        doc.last_good_generation = doc.generation;
                        doc.errors.clear();
                    }
                }
            });
        }
        let now_rejected = objects
            .documents
            .values()
            .flat_map(store::Kind::live)
            .filter(|(_, doc)| !doc.errors.is_empty())
            .map(|(file, doc)| (file.to_string(), doc.errors.clone()))
            .collect();
        drop(objects);
        self.health.set_rejected(now_rejected);
        for kind in newly_rejected {
            self.health.update(kind, |h| h.rejected += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/rbac.yaml` grants `list` and `watch` on every document kind the source watches
    /// (a kind added here without its rule would leave a real cluster's agents never synced).
    #[test]
    fn the_cluster_role_lets_the_agent_list_and_watch_every_document_kind() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
        let text = std::fs::read_to_string(&path).expect("deploy/rbac.yaml");
        let role: serde_json::Value = text
            .split("\n---")
            .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
            .find(|doc| doc["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let rules = role["rules"].as_array().expect("rules");
        for kind in DOCUMENT_KINDS {
            let granted = rules.iter().any(|rule| {
                let has = |field: &str, value: &str| {
                    rule[field]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == value))
                };
                has("apiGroups", kind.group)
                    && has("resources", kind.plural)
                    && has("verbs", "list")
                    && has("verbs", "watch")
            });
            assert!(granted, "no list/watch rule for {}", kind.plural);
        }
    }

    fn policy(port: u16, resource_version: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "ClusterPolicy",
            "metadata": {"name": "p", "resourceVersion": resource_version, "generation": 2},
            "spec": {"ingress": [{"action": "Deny", "ports": [{"port": port}]}]},
        }))
        .expect("object")
    }

    #[test]
    fn a_rewrite_of_the_same_document_keeps_the_verdict_on_it() {
        let (mut first, _) = document(
            &policy(80, "1"),
            "rampart.dev/v1alpha1",
            "ClusterPolicy",
            None,
        );
        first.errors = vec!["kube:ClusterPolicy/p:5:3: bad".into()];
        first.last_good = Some("older".into());
        // The status written back bumps only the resourceVersion: nothing the agent reads.
        let (again, _) = document(
            &policy(80, "2"),
            "rampart.dev/v1alpha1",
            "ClusterPolicy",
            Some(&first),
        );
        assert_eq!(again.errors, first.errors, "still rejected");
        assert_eq!(again, first, "and no change to reload for");
        // A real edit is a new version, not yet judged; the last good one carries over.
        let (edited, _) = document(
            &policy(81, "3"),
            "rampart.dev/v1alpha1",
            "ClusterPolicy",
            Some(&first),
        );
        assert!(edited.errors.is_empty());
        assert_eq!(edited.last_good.as_deref(), Some("older"));
        assert_ne!(edited, first);
    }
}
