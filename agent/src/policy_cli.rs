//! `rampart policy check` (offline validation and compile), `rampart policy push` (send
//! objects to a running agent and wait until they are in force) and `rampart policy explain`
//! (one flow's verdict and the rules behind it, from the running agent or offline).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;

use crate::admin::{EXPLAIN_PATH, PUSH_PATH, PushFile, PushRequest, PushResponse};
use crate::admin_client;
use crate::cli::{PolicyCheckArgs, PolicyExplainArgs, PolicyPushArgs};
use crate::explain::{ExplainQuery, Explanation};
use crate::policy::{self, compile, source};

/// How long a push may take to be compiled and installed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads files and the policy files of directories; returns the files read and what they hold.
fn read_paths(paths: &[PathBuf]) -> (Vec<PathBuf>, source::Read) {
    let mut files = Vec::new();
    let mut read = source::Read::default();
    for path in paths {
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
    (files, read)
}

/// `policy explain`: prints the explanation of one flow.
pub fn explain(args: &PolicyExplainArgs) -> anyhow::Result<()> {
    let query = ExplainQuery {
        from: args.from.clone(),
        to: args.to.clone(),
        protocol: args.protocol.number(),
        port: args.port,
    };
    let explanation = if args.files.is_empty() {
        explain_remote(&args.admin_socket, &query)?
    } else {
        explain_offline(&args.files, &args.trust_domain, &query)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", crate::explain::render(&explanation));
    }
    Ok(())
}

/// Compiles the files as a node where every pod is local (both ends of a flow enforced here).
fn explain_offline(
    paths: &[PathBuf],
    trust_domain: &str,
    query: &ExplainQuery,
) -> anyhow::Result<Explanation> {
    let (_, read) = read_paths(paths);
    let checked = policy::check(read).map_err(|diags| {
        let lines: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        anyhow::anyhow!("the policy set has errors:\n{}", lines.join("\n"))
    })?;
    let compiled = policy::compile::compile_all_local(&checked.model, trust_domain);
    Ok(crate::explain::explain(&compiled, query)?)
}

fn explain_remote(socket: &std::path::Path, query: &ExplainQuery) -> anyhow::Result<Explanation> {
    let body = serde_json::to_vec(query).context("encoding the query")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (status, answer) = runtime.block_on(admin_client::request(
        socket,
        Method::POST,
        EXPLAIN_PATH,
        Some(body),
    ))?;
    if !status.is_success() {
        anyhow::bail!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    serde_json::from_slice(&answer).with_context(|| {
        format!("the agent answered {EXPLAIN_PATH} with a body this client cannot read")
    })
}

/// Outcome of `check`: printed lines and whether the set is valid.
pub fn check(args: &PolicyCheckArgs) -> anyhow::Result<bool> {
    let (files, read) = read_paths(&args.files);
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
                host: &BTreeSet::new(),
                trust_domain: &args.trust_domain,
                audit: false,
            };
            let compiled = compile::compile(&checked.model, node, &mut compile::Memory::new());
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
    let request = PushRequest {
        files,
        delete: args.delete.clone(),
        replace_all: args.replace_all,
    };
    let body = serde_json::to_vec(&request).context("encoding the push")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (status, answer) = runtime.block_on(async {
        let push = admin_client::request(&args.admin_socket, Method::POST, PUSH_PATH, Some(body));
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
