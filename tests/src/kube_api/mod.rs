//! A Kubernetes API server stand-in for the tests and benchmarks: no `kube-apiserver` can be
//! installed on these machines, and no maintained mock speaks enough of the protocol (the one
//! Python package that comes close serves no resource versions, no `410 Gone`, no pagination,
//! no selectors and no status subresource). This one speaks what the agent's client uses, over
//! HTTPS with a bearer token:
//!
//! - get, list (`limit`/`continue`, `labelSelector`, `fieldSelector` on name and namespace),
//!   create, update (optimistic concurrency on `resourceVersion`), merge patch, delete;
//! - watch streams of JSON lines from a `resourceVersion`, with bookmarks, `sendInitialEvents`,
//!   `timeoutSeconds`, and `410 Gone` (an ERROR event) once the history no longer reaches back;
//! - the status subresource for Rampart's kinds; Leases and Events as plain resources.
//!
//! It is not a Kubernetes: no admission, no defaulting, no schema validation, no RBAC (one
//! token may do everything), and apply and strategic patches are merge patches. Tests control
//! it directly: write objects as kubectl would, drop every connection, stop and restart it,
//! compact its history.

mod selector;
mod serve;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

pub use store::{Event, EventType, RESOURCES, Resource, resource_of_kind};

/// Binds the server's listening socket (again, after a stop); tests bind inside a namespace.
pub type Bind = Box<dyn Fn() -> std::io::Result<std::net::TcpListener> + Send + Sync>;

pub(crate) struct Shared {
    store: Mutex<store::Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped to close every connection and stream.
    epoch: watch::Sender<u64>,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    bookmark_interval: Duration,
    token: String,
    /// Service-account tokens a TokenReview authenticates: token → (audiences, user info).
    reviewed: Mutex<BTreeMap<String, (Vec<String>, Value)>>,
}

impl Shared {
    fn lock_store(&self) -> MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write, published to every watch while the store is still locked (so a watch that
    /// starts sees each write exactly once: in its backlog or live).
    fn write(
        &self,
        f: impl FnOnce(&mut store::Store) -> Result<Event, store::Refusal>,
    ) -> Result<Event, store::Refusal> {
        let mut store = self.lock_store();
        let event = f(&mut store)?;
        let _ = self.events.send(Arc::new(event.clone()));
        Ok(event)
    }

    fn count(&self, plural: &str, verb: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts
            .entry((plural.to_owned(), verb.to_owned()))
            .or_default() += 1;
    }
}

/// A running stand-in (see the module's documentation). Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    bind: Bind,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
    ca_pem: String,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ApiServer {
    /// Starts serving on the socket `bind` gives, with a fresh CA and a server certificate for
    /// the socket's address.
    pub fn start(bind: Bind) -> anyhow::Result<ApiServer> {
        let listener = bind().context("binding the API server stand-in")?;
        let addr = listener.local_addr()?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rampart test kube CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["kubernetes.default.svc".to_owned()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(addr.ip()));
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&server_key, &issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-standin")
            .enable_all()
            .build()?;
        let (events, _) = broadcast::channel(200_000);
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            events,
            epoch: watch::channel(0).0,
            counts: Mutex::default(),
            bookmark_interval: Duration::from_secs(2),
            token: format!("rampart-test-{:x}", std::process::id()),
            reviewed: Mutex::default(),
        });
        let server = ApiServer {
            shared,
            runtime,
            bind,
            accept: Mutex::new(None),
            tls: Arc::new(tls),
            addr,
            ca_pem: ca.pem(),
        };
        server.serve(listener)?;
        Ok(server)
    }

    /// A stand-in on the underlay of `topology` (two nodes or more), at
    /// [`crate::topology::API_SERVER_IP`] port 6443, where every node reaches it.
    pub fn start_on_underlay(topology: &crate::Topology) -> anyhow::Result<ApiServer> {
        let fabric = topology
            .fabric()
            .context("the API server stand-in needs an underlay (two nodes or more)")?
            .path();
        let addr = SocketAddr::from((crate::topology::API_SERVER_IP, 6443));
        ApiServer::start(Box::new(move || {
            crate::netns::run_in(&fabric, move || std::net::TcpListener::bind(addr))
                .map_err(std::io::Error::other)?
        }))
    }

    /// A bound service-account token for pod `pod_name` (of `namespace`, with service account
    /// `sa`, uid `pod_uid`, on `node`), valid for `audience`: what the kubelet projects into a
    /// pod, and what a TokenReview of this stand-in then authenticates (with the pod's name,
    /// uid and node in the user's `extra`, as Kubernetes 1.32 does).
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        sa: &str,
        pod_name: &str,
        pod_uid: &str,
        node: &str,
        audience: &str,
    ) -> String {
        // Shaped like the JWTs the API server issues (three base64url parts); opaque to the CA.
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let token = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"standin"}"#),
            b64(&format!(
                r#"{{"sub":"system:serviceaccount:{namespace}:{sa}","pod":"{pod_name}","pid":{}}}"#,
                std::process::id()
            )),
            b64("stand-in signature")
        );
        let user = serde_json::json!({
            "username": format!("system:serviceaccount:{namespace}:{sa}"),
            "uid": format!("uid-{namespace}-{sa}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/pod-name": [pod_name],
                "authentication.kubernetes.io/pod-uid": [pod_uid],
                "authentication.kubernetes.io/node-name": [node],
            }
        });
        self.shared
            .reviewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), (vec![audience.to_owned()], user));
        token
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for the agent: this server, its CA, the bearer token.
    pub fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: rampart\n  user:\n    token: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: rampart\ncurrent-context: standin\n",
            self.addr, self.shared.token
        )
    }

    fn serve(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let shared = Arc::clone(&self.shared);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.tls));
        let _guard = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = self.runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut epoch = shared.epoch.subscribe();
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        serve::handle(Arc::clone(&shared), request)
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = epoch.changed() => {}
                    }
                });
            }
        });
        *self.accept.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// Closes every connection and watch stream (clients reconnect and resume).
    pub fn drop_connections(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Stops listening and closes every connection: clients see connection refused until
    /// [`ApiServer::resume`]. The objects stay.
    pub fn stop(&self) {
        if let Some(task) = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        self.drop_connections();
    }

    /// Listens again after [`ApiServer::stop`].
    pub fn resume(&self) -> anyhow::Result<()> {
        // The aborted task releases its socket on the runtime; retry the bind briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match (self.bind)() {
                Ok(listener) => return self.serve(listener),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("binding the API server stand-in again: {e}"),
            }
        }
    }

    /// Forgets the event history: watches resuming from before now get `410 Gone`.
    pub fn compact(&self) {
        self.shared.lock_store().compact();
    }

    /// Creates or replaces an object (as `kubectl apply` would), from its JSON; returns its new
    /// `resourceVersion`.
    pub fn apply(&self, object: &Value) -> anyhow::Result<String> {
        let key = key_of(object)?;
        let exists = self.shared.lock_store().get(&key).is_some();
        let event = if exists {
            let mut object = object.clone();
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            self.shared.write(|s| s.replace(key, object, false))
        } else {
            self.shared.write(|s| s.create(key, object.clone()))
        }
        .map_err(|r| anyhow::anyhow!("{}: {}", r.reason, r.message))?;
        Ok(store::resource_version(&event.object).to_owned())
    }

    /// Applies a YAML stream of objects (documents separated by `---` lines).
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        // One document at a time: the parser's node budget is per call, and a large set is
        // many small objects.
        let mut documents = vec![String::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                documents.push(String::new());
            } else if let Some(last) = documents.last_mut() {
                last.push_str(line);
                last.push('\n');
            }
        }
        for (i, doc) in documents.iter().enumerate() {
            if doc.trim().is_empty() {
                continue;
            }
            let options = serde_saphyr::options! { strict_booleans: true };
            let value: Value = serde_saphyr::from_str_with_options(doc, options)
                .with_context(|| format!("reading object {i}"))?;
            if !value.is_null() {
                self.apply(&value)?;
            }
        }
        Ok(())
    }

    /// Sets an object's `status` through the status subresource (as a kubelet or a controller).
    pub fn set_status(&self, object: &Value, status: Value) -> anyhow::Result<()> {
        let key = key_of(object)?;
        self.shared
            .write(|s| s.patch(key, &serde_json::json!({"status": status}), true))
            .map_err(|r| anyhow::anyhow!("{}: {}", r.reason, r.message))?;
        Ok(())
    }

    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let resource = resource_of_kind(api_version, kind)
            .with_context(|| format!("the stand-in does not serve {api_version} {kind}"))?;
        let namespace = if resource.namespaced { namespace } else { "" };
        self.shared
            .write(|s| s.delete((resource, namespace.to_owned(), name.to_owned())))
            .map_err(|r| anyhow::anyhow!("{}: {}", r.reason, r.message))?;
        Ok(())
    }

    /// The object as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_of_kind(api_version, kind)?;
        let namespace = if resource.namespaced { namespace } else { "" };
        self.shared
            .lock_store()
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of a kind, as stored.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(resource) = resource_of_kind(api_version, kind) else {
            return Vec::new();
        };
        self.shared
            .lock_store()
            .list(resource, None, None)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// How many requests of `verb` (`list`, `watch`, `get`, `create`, `update`, `patch`,
    /// `delete`) were made for the resource `plural`.
    pub fn requests(&self, plural: &str, verb: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(plural.to_owned(), verb.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_of(object: &Value) -> anyhow::Result<store::Key> {
    let field = |p: &str| object.pointer(p).and_then(Value::as_str);
    let (Some(api_version), Some(kind), Some(name)) = (
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/name"),
    ) else {
        bail!("an object needs apiVersion, kind and metadata.name");
    };
    let resource = resource_of_kind(api_version, kind)
        .with_context(|| format!("the stand-in does not serve {api_version} {kind}"))?;
    let namespace = if resource.namespaced {
        field("/metadata/namespace").unwrap_or("default")
    } else {
        ""
    };
    Ok((resource, namespace.to_owned(), name.to_owned()))
}
