//! `rampart policy check` (offline validation and compile) and `rampart policy push` (send
//! objects to a running agent and wait until they are in force).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::admin::{PUSH_PATH, PushFile, PushRequest, PushResponse};
use crate::cli::{PolicyCheckArgs, PolicyPushArgs};
use crate::policy::identity::Allocator;
use crate::policy::{self, compile, source};

/// How long a push may take to be compiled and installed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Outcome of `check`: printed lines and whether the set is valid.
pub fn check(args: &PolicyCheckArgs) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    let mut read = source::Read::default();
    for path in &args.files {
        if path.is_dir() {
            match source::policy_files(path) {
                Ok(list) => files.extend(list),
                Err(d) => read.diagnostics.push(d),
            }
        } else {
            files.push(path.clone());
        }
    }
    let files_read = source::read_files(&files);
    read.objects.extend(files_read.objects);
    read.diagnostics.extend(files_read.diagnostics);
    let objects = read.objects.len();
    match policy::check(read) {
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            eprintln!("{errors} error(s): nothing would be applied");
            Ok(false)
        }
        Ok(checked) => {
            for w in &checked.warnings {
                println!("{w}");
            }
            // Compiled as a node with no local pods would be: every identity and rule resolved.
            let local = BTreeMap::new();
            let node = compile::Node {
                local: &local,
                trust_domain: &args.trust_domain,
                audit: false,
            };
            let compiled = compile::compile(&checked.model, node, &mut Allocator::new());
            for w in &compiled.warnings {
                println!("warning: {w}");
            }
            println!(
                "ok: {} file(s), {objects} object(s), {} namespace(s), {} pod(s), {} policies, {} identities, {} rules",
                files.len(),
                checked.model.namespaces.len(),
                checked.model.pods.len(),
                checked.model.policies.len(),
                compiled.identities.len(),
                compiled.rules.len(),
            );
            Ok(true)
        }
    }
}

/// Pushes the files; true once they are in force.
pub fn push(args: &PolicyPushArgs) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    for path in &args.files {
        let content =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        files.push(PushFile {
            name: display_name(path),
            content,
        });
    }
    let body = serde_json::to_vec(&PushRequest { files }).context("encoding the push")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (status, answer) = runtime.block_on(async {
        tokio::time::timeout(PUSH_TIMEOUT, post(args.metrics_addr, body))
            .await
            .context("the agent did not answer the push in time")?
    })?;
    let response: PushResponse = serde_json::from_slice(&answer).with_context(|| {
        format!("the agent answered {status} with a body this client cannot read")
    })?;
    match response.generation {
        Some(generation) if status.is_success() => {
            println!("in force: policy generation {generation}");
            Ok(true)
        }
        _ => {
            for e in &response.errors {
                println!("{e}");
            }
            eprintln!("rejected ({status}): the agent's policy is unchanged");
            Ok(false)
        }
    }
}

fn display_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| PathBuf::from(n).display().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

async fn post(addr: SocketAddr, body: Vec<u8>) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("connecting to the agent at {addr} (is `rampart run` running there?)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let req = Request::post(PUSH_PATH)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("building the push request")?;
    let response = sender.send_request(req).await.context("sending the push")?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the agent's answer")?
        .to_bytes();
    if status.is_server_error() && bytes.is_empty() {
        bail!("the agent answered {status}");
    }
    Ok((status, bytes))
}
