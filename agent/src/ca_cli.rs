//! `rampart ca node-token | serve | request`: the CA service's commands (`rampart ca init` is in
//! `main.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::ca_service::authority::Authority;
use crate::ca_service::client::CaClient;
use crate::ca_service::node_tokens;
use crate::ca_service::placement::{KubeAccess, PlacementSource};
use crate::ca_service::server::{CaService, serve};
use crate::cli::{CaNodeTokenArgs, CaRequestArgs, CaServeArgs};
use crate::mesh::ca::{Ca, Root};
use crate::mesh::tls::TrustBundle;
use crate::spiffe::SpiffeId;

/// Prints a new token for the node (the CA keeps its digest).
pub fn node_token(args: &CaNodeTokenArgs) -> anyhow::Result<()> {
    let token = node_tokens::create(&args.dir, &args.node)?;
    println!("{token}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Serves until killed.
pub fn serve_ca(args: &CaServeArgs) -> anyhow::Result<()> {
    let ca = Ca::load_signing(&args.dir, args.trust_domain.as_deref())?;
    let authority = Authority::new(ca, Duration::from_secs(args.cert_ttl));
    runtime()?.block_on(async move {
        let placement = match (&args.pods_dir, &args.kubeconfig, args.kube) {
            (Some(dir), _, _) => {
                anyhow::ensure!(
                    dir.is_dir(),
                    "--pods-dir {}: not a directory",
                    dir.display()
                );
                PlacementSource::dir(dir)
            }
            (None, Some(path), _) => PlacementSource::kube(&KubeAccess::Kubeconfig(path.clone()))
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?,
            (None, None, _) => PlacementSource::kube(&KubeAccess::InCluster)
                .await
                .context("--kube: the in-cluster service account")?,
        };
        let (namespace, sa) = args
            .agent_service_account
            .split_once('/')
            .context("--agent-service-account: NAMESPACE/NAME")?;
        let service = Arc::new(
            CaService::new(authority, &args.dir, placement)
                .with_agent(namespace, sa)
                .reloading(args.trust_domain.as_deref()),
        );
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        tracing::info!(listen = %args.listen, id = %service.id()?, "ca: serving");
        println!("rampart ca: serving on {}", args.listen);
        serve(listener, service).await
    })
}

/// Bootstraps as the token's node, asks for `--id`, and prints what the CA said.
pub fn request(args: &CaRequestArgs) -> anyhow::Result<()> {
    let root = Root::read(&args.ca_dir, &args.trust_domain)?;
    let bundle = TrustBundle::new(&root.trust_domain, &root.certs)?;
    let id = SpiffeId::parse(&args.id).with_context(|| format!("--id {:?}", args.id))?;
    let client = CaClient::with_token_file(&args.ca_url, bundle, &args.node_token_file)?;
    runtime()?.block_on(async move {
        let node = client
            .node_certificate()
            .await
            .context("the node certificate")?;
        println!("node certificate: {}", node.spiffe_id);
        let cert = client
            .workload_certificate(&node, &id)
            .await
            .with_context(|| format!("a certificate for {id}"))?;
        let left = cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        println!(
            "issued {} (valid for {} s more)",
            cert.spiffe_id,
            left.as_secs()
        );
        Ok(())
    })
}
