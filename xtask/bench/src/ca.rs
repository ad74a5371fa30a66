//! `ca`: the CA service (`rampart ca serve`'s server, in this process on loopback): the round
//! trip of one workload certificate as an agent takes it (a new key, a PKCS#10 request, a TLS 1.3
//! connection with the node certificate, node authorization, the signature, the chain back),
//! sequential, and the CA's capacity with concurrent agents. The baseline is the same work
//! without the service: the key, the request and the authority's signature, in-process; the
//! ratio is what the service's TLS and HTTP cost.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rampart_agent::ca_service::authority::{Authority, Placement};
use rampart_agent::ca_service::client::CaClient;
use rampart_agent::ca_service::node_tokens;
use rampart_agent::ca_service::server::{CaService, PlacementSource, serve};
use rampart_agent::mesh::ca::Ca;
use rampart_agent::mesh::tls::TrustBundle;
use rampart_agent::spiffe::SpiffeId;
use rcgen::{CertificateParams, KeyPair};

use crate::record::{Record, summarize};

const TD: &str = "bench.local";
/// Concurrent agents in the capacity row.
const CLIENTS: usize = 16;

/// A CA directory with a node token, and a cluster of one pod on `node-1`.
struct Fixture {
    dir: std::path::PathBuf,
    token: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture() -> anyhow::Result<Fixture> {
    let dir = std::env::temp_dir().join(format!("rampart-bench-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::generate(TD, Duration::from_secs(86_400), SystemTime::now())?;
    ca.write(&dir.join("ca"), false)?;
    let token = node_tokens::create(&dir.join("ca"), "node-1")?;
    std::fs::create_dir_all(dir.join("pods"))?;
    std::fs::write(
        dir.join("pods/pods.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: api-0, namespace: shop}\nspec: {serviceAccountName: api, nodeName: node-1, containers: [{name: c, image: c}]}\nstatus: {podIP: 10.0.0.1}\n",
    )?;
    Ok(Fixture { dir, token })
}

fn workload() -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::workload(TD, "shop", "api")?)
}

/// Per-operation times (µs) of `ops` in-process signatures, and their rate over `threads`.
fn in_process(
    authority: &Authority,
    placement: &Placement,
    ops: usize,
) -> anyhow::Result<Vec<f64>> {
    let id = workload()?;
    let mut times = Vec::with_capacity(ops);
    for _ in 0..ops {
        let start = Instant::now();
        let key = KeyPair::generate()?;
        let csr = CertificateParams::default().serialize_request(&key)?;
        authority
            .sign_workload("node-1", &id, csr.der(), placement, SystemTime::now())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let f = fixture()?;
    let (rounds, ops) = if quick { (3, 100) } else { (5, 400) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ca_dir = f.dir.join("ca");
    let service = Arc::new(CaService::new(
        Authority::new(Ca::load(&ca_dir)?, Duration::from_secs(3600)),
        &ca_dir,
        PlacementSource::dir(&f.dir.join("pods")),
    ));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("https://{}", listener.local_addr()?);
    let served = Arc::clone(&service);
    runtime.spawn(async move {
        let _ = serve(listener, served).await;
    });
    let ca = Ca::load(&ca_dir)?;
    let bundle = TrustBundle::new(TD, std::slice::from_ref(ca.cert_der()))?;
    let client = CaClient::new(&url, bundle, f.token.clone())?;
    let node = runtime.block_on(client.node_certificate())?;
    let id = workload()?;

    // The baseline, in-process: the same key, request and signature.
    let authority = Authority::new(ca, Duration::from_secs(3600));
    let checked =
        rampart_agent::policy::check(rampart_agent::policy::source::read_dir(&f.dir.join("pods")))
            .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let placement = Placement::from_pods(checked.model.pods.iter().map(AsRef::as_ref));

    let mut records = Vec::new();
    let (mut p50s, mut p99s, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_p50s, mut base_p99s, mut base_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut times = in_process(&authority, &placement, ops)?;
        let total: f64 = times.iter().sum();
        base_rates.push(ops as f64 / (total / 1e6));
        base_p50s.push(percentile(&mut times, 0.50));
        base_p99s.push(percentile(&mut times, 0.99));

        // Sequential round trips over the service.
        let mut times = Vec::with_capacity(ops);
        for _ in 0..ops {
            let start = Instant::now();
            runtime.block_on(client.workload_certificate(&node, &id))?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        p50s.push(percentile(&mut times, 0.50));
        p99s.push(percentile(&mut times, 0.99));

        // Capacity: CLIENTS agents asking at once, `ops` certificates in all.
        let start = Instant::now();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..CLIENTS {
                let (client, node, id) = (client.clone(), node.clone(), id.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..ops / CLIENTS {
                        client.workload_certificate(&node, &id).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        rates.push((ops / CLIENTS * CLIENTS) as f64 / start.elapsed().as_secs_f64());
    }
    for (metric, unit, base, measured) in [
        (
            "certificate round trip p50",
            "us",
            &mut base_p50s,
            &mut p50s,
        ),
        (
            "certificate round trip p99",
            "us",
            &mut base_p99s,
            &mut p99s,
        ),
        (
            "certificates per second (16 concurrent agents; baseline: one thread in-process)",
            "1/s",
            &mut base_rates,
            &mut rates,
        ),
    ] {
        let mut baseline = None;
        records.push(Record::of_samples(
            "ca",
            "in-process signing (baseline)".into(),
            0,
            metric,
            unit,
            base,
            &mut baseline,
        ));
        records.push(Record::of_samples(
            "ca",
            "rampart ca serve over HTTPS".into(),
            0,
            metric,
            unit,
            measured,
            &mut baseline,
        ));
    }
    drop(runtime);
    Ok(records)
}

/// The `q` quantile of `samples` (sorted in place).
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    let _ = summarize(samples);
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[index.min(samples.len() - 1)]
}
