//! Where the CA learns which pods run on which node (built at most once a second): a directory
//! of objects (its `Pod`s), or the Kubernetes API server (a watch of every Pod, kept in memory
//! by kube-rs's reflector: the CA needs `list` and `watch` on pods, and `create` on tokenreviews for the agents' tokens).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::authority::Placement;

/// How long a placement is reused: building it reads every pod (a directory's files, or the
/// whole reflector store), too much for every request.
const PLACEMENT_TTL: Duration = Duration::from_secs(1);
/// How long the API's first list may take before the CA serves anyway (refusing until it is in).
const FIRST_LIST: Duration = Duration::from_secs(30);

/// How to reach the API server.
#[derive(Debug, Clone)]
pub enum KubeAccess {
    /// The pod's service account.
    InCluster,
    Kubeconfig(PathBuf),
}

pub enum PlacementSource {
    /// A directory of Kubernetes objects.
    Dir {
        dir: PathBuf,
        cached: Mutex<Option<(Instant, Arc<Placement>)>>,
    },
    /// Pods from the API server, as the reflector holds them (and the client that also reviews
    /// the agents' service-account tokens).
    Kube {
        store: Store<Pod>,
        client: kube::Client,
        cached: Mutex<Option<(Instant, Arc<Placement>)>>,
    },
}

/// The audience agents' projected service-account tokens must carry for the CA.
pub const TOKEN_AUDIENCE: &str = "rampart-ca";

/// Why a service-account token does not authenticate a node (the refusal counter's reason).
pub const TOKEN_REFUSALS: [&str; 5] = [
    "unauthenticated",
    "not_an_agent",
    "not_a_pod_token",
    "unknown_pod",
    "token_review_failed",
];

impl std::fmt::Debug for PlacementSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementSource::Dir { dir, .. } => f.debug_tuple("Dir").field(dir).finish(),
            PlacementSource::Kube { .. } => f.write_str("Kube"),
        }
    }
}

impl PlacementSource {
    pub fn dir(dir: &Path) -> PlacementSource {
        PlacementSource::Dir {
            dir: dir.to_owned(),
            cached: Mutex::new(None),
        }
    }

    /// Starts a watch of every Pod on the current runtime; returns once the first list is in
    /// (or after [`FIRST_LIST`], when requests are refused until it is).
    pub async fn kube(access: &KubeAccess) -> anyhow::Result<PlacementSource> {
        let config = match access {
            KubeAccess::InCluster => kube::Config::incluster()?,
            KubeAccess::Kubeconfig(path) => {
                let file = kube::config::Kubeconfig::read_from(path)?;
                kube::Config::from_custom_kubeconfig(
                    file,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?
            }
        };
        let client = kube::Client::try_from(config)?;
        let (store, writer) = reflector::store();
        let pods = kube::Api::<Pod>::all(client.clone());
        let stream = reflector::reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!("ca: watching pods: {e}");
                }
            }
        });
        if tokio::time::timeout(FIRST_LIST, store.wait_until_ready())
            .await
            .is_err()
        {
            tracing::warn!(
                "ca: the API server's first list of pods is late; refusing until it is in"
            );
        }
        Ok(PlacementSource::Kube {
            store,
            client,
            cached: Mutex::new(None),
        })
    }

    /// The placement now.
    pub fn current(&self) -> anyhow::Result<Arc<Placement>> {
        let cache = match self {
            PlacementSource::Dir { cached, .. } | PlacementSource::Kube { cached, .. } => cached,
        };
        if let Ok(cached) = cache.lock()
            && let Some((at, placement)) = cached.as_ref()
            && at.elapsed() < PLACEMENT_TTL
        {
            return Ok(Arc::clone(placement));
        }
        let placement = Arc::new(match self {
            PlacementSource::Dir { dir, .. } => {
                let checked =
                    crate::policy::check(crate::policy::source::read_dir(dir)).map_err(|d| {
                        anyhow::anyhow!(
                            "{}: {}",
                            dir.display(),
                            d.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })?;
                Placement::from_pods(checked.model.pods.iter().map(AsRef::as_ref))
            }
            PlacementSource::Kube { store, .. } => {
                Placement::from_assignments(store.state().iter().filter_map(|pod| assignment(pod)))
            }
        });
        if let Ok(mut cached) = cache.lock() {
            *cached = Some((Instant::now(), Arc::clone(&placement)));
        }
        Ok(placement)
    }
}

impl PlacementSource {
    /// The node whose agent `token` (a projected service-account token for [`TOKEN_AUDIENCE`])
    /// belongs to, by a TokenReview: the token must be `agent`'s (namespace, service account)
    /// and bound to a pod that the API says runs, with that uid, on the node. Err: the reason.
    pub async fn node_of_token(
        &self,
        token: &str,
        agent: &(String, String),
    ) -> Result<String, &'static str> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let PlacementSource::Kube { store, client, .. } = self else {
            return Err("malformed_token");
        };
        // Only what can be a service-account token (a JWT, a few KiB) goes to the API server:
        // anyone who reaches the CA can send a credential, and each review is an API request.
        if !looks_like_a_jwt(token) {
            return Err("malformed_token");
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = kube::Api::<TokenReview>::all(client.clone())
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!("ca: TokenReview failed: {e}");
                "token_review_failed"
            })?;
        let status = reviewed.status.ok_or("unauthenticated")?;
        if status.authenticated != Some(true) {
            return Err("unauthenticated");
        }
        let user = status.user.ok_or("unauthenticated")?;
        let expected = format!("system:serviceaccount:{}:{}", agent.0, agent.1);
        if user.username.as_deref() != Some(expected.as_str()) {
            return Err("not_an_agent");
        }
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (
            one("authentication.kubernetes.io/pod-name"),
            one("authentication.kubernetes.io/pod-uid"),
        ) else {
            return Err("not_a_pod_token");
        };
        let pod = store
            .get(&reflector::ObjectRef::new(&pod_name).within(&agent.0))
            .ok_or("unknown_pod")?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err("unknown_pod");
        }
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or("unknown_pod")
    }
}

/// The longest token sent for review (service-account tokens are about 1 KiB).
const MAX_TOKEN: usize = 8 * 1024;

/// Three base64url segments, within [`MAX_TOKEN`].
fn looks_like_a_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN
        && token.split('.').count() == 3
        && token.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A pod's (node, namespace, service account), once it is scheduled and not finished.
fn assignment(pod: &Pod) -> Option<(String, String, String)> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let namespace = pod.metadata.namespace.clone()?;
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Some((node, namespace, sa))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    /// Only what can be a service-account token is sent to the API server for review.
    #[test]
    fn only_jwt_shaped_tokens_go_to_a_review() {
        assert!(looks_like_a_jwt(
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_"
        ));
        for bad in [
            "", "a.b", "a.b.c.d", "a..c", "a.b.c d", "a.b.c\n", "a.b/c.d",
        ] {
            assert!(!looks_like_a_jwt(bad), "{bad:?}");
        }
        let huge = format!("a.{}.c", "b".repeat(MAX_TOKEN));
        assert!(!looks_like_a_jwt(&huge));
    }

    #[test]
    fn scheduled_live_pods_place_their_service_account_on_their_node() {
        let running = pod(serde_json::json!({
            "metadata": {"name": "api-0", "namespace": "shop"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "api", "containers": []},
            "status": {"phase": "Running"}
        }));
        assert_eq!(
            assignment(&running),
            Some(("node-1".into(), "shop".into(), "api".into()))
        );
        let default_sa = pod(serde_json::json!({
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"nodeName": "node-2", "containers": []}
        }));
        assert_eq!(
            assignment(&default_sa).map(|a| a.2),
            Some("default".to_owned())
        );
        let pending = pod(serde_json::json!({
            "metadata": {"name": "y", "namespace": "shop"},
            "spec": {"containers": []}
        }));
        assert_eq!(assignment(&pending), None);
        let done = pod(serde_json::json!({
            "metadata": {"name": "z", "namespace": "shop"},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Succeeded"}
        }));
        assert_eq!(assignment(&done), None);
        let placement = Placement::from_assignments(
            [running, default_sa, pending, done]
                .iter()
                .filter_map(assignment),
        );
        assert!(placement.runs("node-1", "shop", "api"));
        assert!(!placement.runs("node-2", "shop", "api"));
    }
}
