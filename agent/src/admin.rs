//! The agent's two HTTP servers.
//!
//! - The **admin socket** (`--admin-socket`, a Unix socket, mode 0600, and only peers running as
//!   root or as the agent's own user are served): everything, `/metrics`, `/readyz`,
//!   `/healthz`, `/status` (the JSON document `rampart status` prints), `GET /v1/flows`
//!   (`rampart flows`), `POST /v1/explain` (`rampart policy explain`) and `POST /v1/policy`
//!   (`rampart policy push`). Nothing that changes policy or reveals workloads is reachable
//!   over the network: a pod that can reach the node reaches only the metrics address.
//! - The **metrics address** (`--metrics-addr`, TCP): `/metrics`, `/readyz` (200 once the
//!   programs are attached and the first policy set is in force, else 503) and `/healthz`, for
//!   Prometheus and the kubelet's probes.
//!
//! Both bound their connections and time out request heads and idle keep-alive connections
//! ([`crate::listen`]); neither can stop the agent.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::listen::{self, ConnectionCap};
use crate::metrics::Metrics;
use crate::state::AgentState;
use crate::status::StatusDoc;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections the metrics address serves at once (Prometheus and the kubelet need a few).
const METRICS_CONNECTIONS: usize = 64;
/// Connections one address may hold on the metrics address: a pod's idle connections never
/// leave the kubelet's probes or Prometheus waiting.
const METRICS_CONNECTIONS_PER_PEER: usize = 8;
/// Connections the admin socket serves at once (`rampart flows --follow` holds one).
const ADMIN_CONNECTIONS: usize = 32;

fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Serves `/metrics`, `/readyz` and `/healthz` on the metrics address while `gate` is open.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    gate: listen::Gate,
) {
    let cap = ConnectionCap::new(METRICS_CONNECTIONS).per_peer(METRICS_CONNECTIONS_PER_PEER);
    listen::serve_while("metrics", listener, cap, gate, move |stream, peer| {
        let (state, metrics) = (Arc::clone(&state), Arc::clone(&metrics));
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = public(&req, &state, &metrics);
                std::future::ready(Ok::<_, Infallible>(response))
            });
            serve_connection(stream, service, &format!("{peer}")).await;
        }
    })
    .await;
}

/// Binds the admin socket at `path`: its directory is created (mode 0700) if missing and must
/// otherwise be the agent's user's and writable by nobody else (else someone could swap the
/// socket); a stale socket left by a previous agent is replaced, anything else at the path is
/// an error; the socket is created mode 0600. Fails if another agent is serving it.
pub fn bind_admin_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()))?;
        }
        let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        let owner_ok = meta.uid() == own_uid || meta.uid() == 0;
        // Writable by others only with the sticky bit (as /tmp): then nobody else can remove
        // or replace the socket.
        let writable_ok = meta.mode() & 0o022 == 0 || meta.mode() & 0o1000 != 0;
        if !(owner_ok && writable_ok) {
            anyhow::bail!(
                "its directory {} must belong to root or the agent's user and be writable by \
                 nobody else (or be sticky, as /tmp is)",
                dir.display()
            );
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another agent is serving it (stop it first)");
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("something that is not a socket is at that path"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    listen::bind_private_unix(path).with_context(|| format!("binding {}", path.display()))
}

/// Serves everything on the admin socket while `gate` is open, to peers running as root or as
/// the agent's own user (the socket's mode already says so; the peer's credentials are checked
/// as well, in case the file's mode or directory is loosened).
pub async fn serve_admin(
    listener: UnixListener,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    gate: listen::Gate,
) {
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    let cap = ConnectionCap::new(ADMIN_CONNECTIONS);
    listen::serve_while("admin", listener, cap, gate, move |stream, _| {
        let (state, metrics) = (Arc::clone(&state), Arc::clone(&metrics));
        async move {
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            if !uid.is_some_and(|uid| uid == 0 || uid == own_uid) {
                tracing::warn!(
                    ?uid,
                    "admin socket: refused a peer that is neither root nor the agent's user"
                );
                return;
            }
            let service = service_fn(move |req: Request<Incoming>| {
                let state = Arc::clone(&state);
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(admin(req, &state, &metrics).await) }
            });
            serve_connection(stream, service, "admin socket").await;
        }
    })
    .await;
}

/// One HTTP/1.1 connection with the agent's limits: a request head must arrive within
/// [`listen::HEADER_READ_TIMEOUT`], and so must the next request on a kept-alive connection.
async fn serve_connection<S, B>(
    stream: S,
    service: impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static,
    peer: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(listen::HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, "admin connection: {e}");
    }
}

/// Everything the admin socket answers.
async fn admin(
    req: Request<Incoming>,
    state: &AgentState,
    metrics: &Metrics,
) -> Response<AdminBody> {
    let path = req.uri().path();
    if req.method() == Method::POST && path == PUSH_PATH {
        push(req, state).await.map(BodyExt::boxed)
    } else if req.method() == Method::POST && path == EXPLAIN_PATH {
        explain(req, state).await.map(BodyExt::boxed)
    } else if req.method() == Method::GET && path == FLOWS_PATH {
        flows(&req, state)
    } else if path == KERNEL_LOG_PATH {
        kernel_log(req, state).await.map(BodyExt::boxed)
    } else if path == "/status" {
        status(&req, state).map(BodyExt::boxed)
    } else {
        public(&req, state, metrics).map(BodyExt::boxed)
    }
}

fn status(req: &Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match serde_json::to_string_pretty(&StatusDoc::from_state(state)) {
        Ok(body) => with_type(StatusCode::OK, body, "application/json"),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding status failed\n",
        ),
    }
}

/// What the metrics address answers (the admin socket too).
fn public(req: &Request<Incoming>, state: &AgentState, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        // OpenMetrics for scrapers that ask for it (Prometheus does), else the 0.0.4 text format.
        "/metrics" if wants_openmetrics(req) => match metrics.encode() {
            Ok(body) => with_type(StatusCode::OK, body, OPENMETRICS),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            ),
        },
        "/metrics" => match metrics.encode_prometheus_text() {
            Ok(body) => with_type(StatusCode::OK, body, PROMETHEUS_TEXT),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            ),
        },
        "/readyz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this address serves /metrics, /readyz and /healthz; status, flows, \
             explain and policy push are on the agent's admin socket (--admin-socket)\n",
        ),
    }
}

/// Where `rampart flows` reads the flow log: `?follow=true` keeps the stream open,
/// `?verdict=deny` filters. The body is JSON lines, one record each.
pub const FLOWS_PATH: &str = "/v1/flows";

type AdminBody = BoxBody<Bytes, Infallible>;

/// The flow log as a stream: the recent records, then (with `follow`) every new one. A slow
/// client loses records (counted), never holds up the hub.
fn flows(req: &Request<Incoming>, state: &AgentState) -> Response<AdminBody> {
    let mut follow = false;
    let mut verdict: Option<String> = None;
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("", _) => {}
            ("follow", v) => follow = matches!(v, "" | "1" | "true"),
            ("verdict", v @ ("allow" | "deny" | "audit" | "redirect")) => {
                verdict = Some(v.to_owned());
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "query: follow=true|false, verdict=allow|deny|audit|redirect\n",
                )
                .map(BodyExt::boxed);
            }
        }
    }
    let (recent, mut live) = state.flows.subscribe();
    let hub = Arc::clone(&state.flows);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
    let line = move |r: &crate::flows::FlowRecord| -> Option<Bytes> {
        if verdict.as_deref().is_some_and(|v| !r.has_verdict(v)) {
            return None;
        }
        let mut bytes = serde_json::to_vec(r).ok()?;
        bytes.push(b'\n');
        Some(Bytes::from(bytes))
    };
    tokio::spawn(async move {
        for record in &recent {
            if let Some(bytes) = line(record)
                && tx.send_data(bytes).await.is_err()
            {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(record) => {
                    if let Some(bytes) = line(&record)
                        && tx.send_data(bytes).await.is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => hub.count_lost(n),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The kernel programs' log levels: GET reads them, POST a [`KernelLogChange`] sets them; both
/// answer a [`KernelLogDoc`]. Admin socket only (root): it changes what the kernel writes.
pub const KERNEL_LOG_PATH: &str = "/v1/kernel-log";

/// A change of log level: one program's (`rp_xdp`, …), or every program's when `program` is
/// absent.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelLogChange {
    #[serde(default)]
    pub program: Option<String>,
    pub level: crate::kernel_log_level::KernelLogLevel,
}

/// The levels in force, and the records read since the agent started, by kernel level.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KernelLogDoc {
    pub programs: std::collections::BTreeMap<String, crate::kernel_log_level::KernelLogLevel>,
    pub records: std::collections::BTreeMap<String, u64>,
}

async fn kernel_log(req: Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    use rampart_common::kernel_log::Program;
    let log = &state.kernel_log;
    if req.method() == Method::POST {
        let limited = http_body_util::Limited::new(req.into_body(), 4 * 1024);
        let change: KernelLogChange = match limited.collect().await {
            Ok(b) => match serde_json::from_slice(&b.to_bytes()) {
                Ok(c) => c,
                Err(e) => return with_type(StatusCode::BAD_REQUEST, format!("body: {e}\n"), PLAIN),
            },
            Err(e) => return with_type(StatusCode::BAD_REQUEST, format!("body: {e}\n"), PLAIN),
        };
        let program = match change
            .program
            .as_deref()
            .map(|name| (name, Program::from_name(name)))
        {
            None => None,
            Some((_, Some(p))) => Some(p),
            Some((name, None)) => {
                let known: Vec<&str> = Program::ALL.iter().map(|p| p.name()).collect();
                return with_type(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "program: no program {name:?} (one of {})\n",
                        known.join(", ")
                    ),
                    PLAIN,
                );
            }
        };
        if let Err(e) = log.set(program, change.level) {
            return with_type(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), PLAIN);
        }
        tracing::info!(
            program = program.map_or("every program", Program::name),
            level = change.level.name(),
            "kernel log level changed"
        );
    } else if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST\n");
    }
    let levels = match log.levels() {
        Ok(levels) => levels,
        Err(e) => return with_type(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), PLAIN),
    };
    let doc = KernelLogDoc {
        programs: levels
            .into_iter()
            .map(|(p, level)| (p.name().to_owned(), level))
            .collect(),
        records: crate::kernel_log_level::KernelLogLevel::ALL
            .into_iter()
            .skip(1)
            .map(|level| (level.name().to_owned(), log.records(level)))
            .collect(),
    };
    with_type(
        StatusCode::OK,
        serde_json::to_string(&doc).unwrap_or_default(),
        "application/json",
    )
}

/// Where `rampart policy explain` asks about a flow (an `ExplainQuery` as JSON).
pub const EXPLAIN_PATH: &str = "/v1/explain";

/// Explains a flow against the policy set in force.
async fn explain(req: Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let query: crate::explain::ExplainQuery = match limited.collect().await {
        Ok(b) => match serde_json::from_slice(&b.to_bytes()) {
            Ok(q) => q,
            Err(e) => return with_type(StatusCode::BAD_REQUEST, format!("body: {e}\n"), PLAIN),
        },
        Err(e) => {
            return with_type(StatusCode::BAD_REQUEST, format!("body: {e}\n"), PLAIN);
        }
    };
    let Some(generation) = state.generation() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy set is in force yet\n",
        );
    };
    match crate::explain::explain(&generation.compiled, &query) {
        Ok(e) => with_type(
            StatusCode::OK,
            serde_json::to_string(&e).unwrap_or_default(),
            "application/json",
        ),
        Err(e) => with_type(StatusCode::BAD_REQUEST, format!("{e}\n"), PLAIN),
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Where `rampart policy push` sends objects.
pub const PUSH_PATH: &str = "/v1/policy";
/// Largest push accepted.
const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// The body of a push: files by name and text (each replaces the pushed file of its name),
/// names of pushed files to delete, and whether the pushed set becomes exactly `files`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PushRequest {
    pub files: Vec<PushFile>,
    #[serde(default)]
    pub delete: Vec<String>,
    #[serde(default)]
    pub replace_all: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PushFile {
    pub name: String,
    pub content: String,
}

/// The answer to a push: the generation now in force, or every error.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PushResponse {
    pub generation: Option<u64>,
    pub errors: Vec<String>,
}

async fn push(req: Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_PUSH_BYTES);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &errors(format!("reading the body: {e}")),
            );
        }
    };
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json(StatusCode::BAD_REQUEST, &errors(format!("body: {e}"))),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let change = crate::state::PushChange {
        files: request
            .files
            .into_iter()
            .map(|f| (f.name, f.content))
            .collect(),
        delete: request.delete,
        replace_all: request.replace_all,
    };
    if state
        .commands
        .send(crate::state::ControllerCommand::Push { change, reply })
        .is_err()
    {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &errors("the agent is stopping".into()),
        );
    }
    match answer.await {
        Ok(Ok(generation)) => json(
            StatusCode::OK,
            &PushResponse {
                generation: Some(generation),
                errors: Vec::new(),
            },
        ),
        Ok(Err(list)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &PushResponse {
                generation: None,
                errors: list,
            },
        ),
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &errors("the agent is stopping".into()),
        ),
    }
}

fn errors(message: String) -> PushResponse {
    PushResponse {
        generation: None,
        errors: vec![message],
    }
}

fn json(status: StatusCode, body: &PushResponse) -> Response<Full<Bytes>> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    with_type(status, text, "application/json")
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body.to_owned(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rampart-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    #[tokio::test]
    async fn the_admin_socket_is_private_and_replaces_only_a_stale_socket() {
        let dir = private_dir("bind");
        let path = dir.join("admin.sock");
        let listener = bind_admin_socket(&path).expect("bound");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = bind_admin_socket(&path).expect_err("in use");
        assert!(err.to_string().contains("another agent"), "{err}");
        drop(listener);
        bind_admin_socket(&path).expect("a stale socket is replaced");
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").expect("file");
        let err = bind_admin_socket(&file).expect_err("a file");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&file).ok().as_deref(),
            Some("keep me")
        );
        let open = dir.join("open");
        std::fs::create_dir_all(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = bind_admin_socket(&open.join("admin.sock")).expect_err("a shared directory");
        assert!(err.to_string().contains("writable by"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
