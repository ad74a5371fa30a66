//! `rampart kernel-log`: shows or changes a running agent's kernel program log levels
//! (`/v1/kernel-log` on the admin socket).

use anyhow::{Context as _, bail};
use hyper::Method;

use crate::admin::{KERNEL_LOG_PATH, KernelLogChange, KernelLogDoc};
use crate::cli::KernelLogArgs;

pub fn run(args: &KernelLogArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (method, body) = match args.level {
        Some(level) => {
            let change = KernelLogChange {
                program: args.program.clone(),
                level,
            };
            (Method::POST, Some(serde_json::to_vec(&change)?))
        }
        None => (Method::GET, None),
    };
    let (status, bytes) = runtime.block_on(crate::admin_client::request(
        &args.admin_socket,
        method,
        KERNEL_LOG_PATH,
        body,
    ))?;
    if !status.is_success() {
        bail!(
            "the agent refused: {} {}",
            status,
            String::from_utf8_lossy(&bytes).trim()
        );
    }
    let doc: KernelLogDoc = serde_json::from_slice(&bytes).context("reading the agent's answer")?;
    for (program, level) in &doc.programs {
        println!("{program:<14} {}", level.name());
    }
    let records: Vec<String> = doc
        .records
        .iter()
        .map(|(level, n)| format!("{level} {n}"))
        .collect();
    println!("records read: {}", records.join(", "));
    Ok(())
}
