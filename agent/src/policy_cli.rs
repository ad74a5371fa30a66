//! `rampart policy check` (offline validation and compile) and `rampart policy push` (send
//! objects to a running agent and wait until they are in force).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;

use crate::admin::{PUSH_PATH, PushFile, PushRequest, PushResponse};
use crate::admin_client;
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
                "ok: {} file(s), {objects} object(s), {} namespace(s), {} pod(s), {} policies, {} identities, {} rules, {} mTLS destination port(s)",
                files.len(),
                checked.model.namespaces.len(),
                checked.model.pods.len(),
                checked.model.policies.len() + checked.model.mesh_policies.len(),
                compiled.identities.len(),
                compiled.rules.len(),
                compiled.mesh.len(),
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
        let push = admin_client::request(args.metrics_addr, Method::POST, PUSH_PATH, Some(body));
        tokio::time::timeout(PUSH_TIMEOUT, push)
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
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
