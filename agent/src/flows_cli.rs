//! `rampart flows`: reads a running agent's flow log (`/v1/flows`) and prints it, as text or as
//! the JSON lines the agent sends.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use http_body_util::BodyExt as _;

use crate::cli::FlowsArgs;
use crate::flows::record::FlowRecord;

pub fn run(args: &FlowsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(stream(args))
}

async fn stream(args: &FlowsArgs) -> anyhow::Result<()> {
    let mut path = format!("{}?follow={}", crate::admin::FLOWS_PATH, args.follow);
    if let Some(v) = args.verdict {
        path.push_str("&verdict=");
        path.push_str(v.name());
    }
    let response =
        crate::admin_client::send(&args.admin_socket, hyper::Method::GET, &path, None).await?;
    if !response.status().is_success() {
        bail!("the agent answered {path} with {}", response.status());
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the flow stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(&mut out, &line[..end], args.json)?;
        }
        out.flush()?;
    }
    Ok(())
}

fn print_line(out: &mut impl std::io::Write, line: &[u8], json: bool) -> anyhow::Result<()> {
    if json {
        out.write_all(line)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    match serde_json::from_slice::<FlowRecord>(line) {
        Ok(record) => writeln!(out, "{record}")?,
        // A newer agent's record this client cannot read: show it as it came.
        Err(_) => writeln!(out, "{}", String::from_utf8_lossy(line))?,
    }
    Ok(())
}
