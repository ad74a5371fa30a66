//! The certificates of a node's proxy: the node's own, and one per local workload identity
//! (taken on first use, renewed past half-life by the upkeep, off the flows' path), shared by
//! the outbound side (the source workload's client certificate) and the tunnel's inbound side
//! (the destination workload's server certificate); and the roots they are checked against (`ca.crt`, reloaded when it
//! changes: the new root is trusted beside the previous one).
//!
//! They come from a [`Signer`]: the CA service (`--ca-url`: this node holds only its own keys,
//! and the CA signs only for pods the cluster places on this node), or, for development, the
//! trust domain's key in `--ca-dir` (whoever holds it can sign for any workload).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use super::ca::{Ca, Root, WorkloadCert};
use super::carried_certs::{CarriedCert, CarriedCerts};
use super::table::TableView;
use super::tls::{RotatingCert, TrustBundle, server_config};
use super::tunnel::{DestinationIdentity, IdentityFuture};
use crate::ca_service::client::CaClient;
use crate::config::MeshSettings;
use crate::spiffe::SpiffeId;

/// How long the agent keeps asking an unreachable CA for its node certificate at start.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// The longest wait between two renewal attempts of a failing CA.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after the `failures`-th failure in a row: 1 s doubling to [`MAX_BACKOFF`], times a
/// random factor in [0.5, 1.5) so a fleet of nodes does not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + random_unit())
}

/// A renewal that keeps failing: when it is tried again, and how many failed in a row.
#[derive(Debug, Clone, Copy, Default)]
struct Retry {
    at: Option<std::time::Instant>,
    failures: u32,
}

impl Retry {
    fn ready(&self) -> bool {
        self.at.is_none_or(|at| std::time::Instant::now() >= at)
    }

    /// Records one more failure; returns the wait before the next try ([`backoff`]).
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures);
        self.at = Some(std::time::Instant::now() + wait);
        wait
    }
}

/// When to renew `cert`: its half-life plus up to a tenth of its lifetime, at random (spreads
/// the fleet's renewals after a mass start; chosen once per certificate from its serial bytes,
/// so it does not move between checks).
fn jittered(renew_at: SystemTime, cert: &WorkloadCert) -> SystemTime {
    let life = cert
        .not_after
        .duration_since(cert.issued_at)
        .unwrap_or_default();
    let seed = cert
        .chain
        .first()
        .map(|der| {
            der.as_ref()
                .iter()
                .rev()
                .take(8)
                .fold(0u64, |a, b| a << 8 | u64::from(*b))
        })
        .unwrap_or(0);
    renew_at + (life / 10).mul_f64((seed % 1000) as f64 / 1000.0)
}

/// A random number in [0, 1).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if crate::ca_service::node_tokens::fill_random(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Where certificates come from.
#[derive(Clone)]
enum Signer {
    /// The trust domain's key, here.
    Local(Arc<Ca>),
    /// The CA service.
    Remote(CaClient),
}

struct Certs {
    signer: Signer,
    /// Roots trusted: the current root, and the previous one while a rotation rolls out.
    bundle: TrustBundle,
    root: Root,
    node: WorkloadCert,
    workloads: HashMap<SpiffeId, WorkloadCert>,
    /// The last root rotation: certificates issued before it are renewed by the next upkeep
    /// (and serve meanwhile, also if the CA cannot renew them).
    rotated_at: Option<SystemTime>,
    /// Tunnel server configurations presenting a local workload's certificate, until it
    /// expires (a renewal or a root rotation removes it sooner).
    servers: HashMap<SpiffeId, (SystemTime, Arc<rustls::ServerConfig>)>,
    /// Workloads whose renewal failed.
    workload_retry: HashMap<SpiffeId, Retry>,
}

/// What [`CertStore::upkeep`] changed, for the tunnel's default configuration.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// The node certificate was renewed (present it from now on).
    pub node: Option<WorkloadCert>,
    /// The roots changed (rebuild every configuration with them).
    pub bundle: Option<TrustBundle>,
}

pub struct CertStore {
    certs: Mutex<Certs>,
    ttl: Duration,
    tables: TableView,
    node_id: SpiffeId,
    settings: MeshSettings,
    /// Renewals and issuances the CA service failed (the current certificate kept serving).
    pub ca_failures: std::sync::atomic::AtomicU64,
    /// When the node certificate is next tried after a failure, and how many failed in a row.
    retry: Mutex<Retry>,
}

impl CertStore {
    /// Reads the roots and the signer, and gets the node's certificate (from the CA service,
    /// retried for a while if it is not reachable yet).
    /// `carried`: a predecessor's certificates (a hot restart), taken if they were issued under
    /// the same roots and are not due for renewal.
    pub async fn open(
        settings: &MeshSettings,
        trust_domain: &str,
        node_id: SpiffeId,
        tables: TableView,
        carried: Option<&CarriedCerts>,
    ) -> anyhow::Result<CertStore> {
        let root = Root::read(&settings.ca_dir, trust_domain)?;
        let bundle = TrustBundle::new(trust_domain, &root.certs)?;
        let signer = signer_for(settings, trust_domain, &bundle)?;
        let now = SystemTime::now();
        let mut taken: HashMap<SpiffeId, WorkloadCert> = carried
            .filter(|c| c.roots_pem == root.pem)
            .map(|c| {
                c.certs
                    .iter()
                    .filter_map(|cert| cert.usable(now))
                    .map(|cert| (cert.spiffe_id.clone(), cert))
                    .collect()
            })
            .unwrap_or_default();
        if carried.is_some_and(|c| c.roots_pem != root.pem) {
            tracing::info!(
                "certificates: the previous agent's were issued under other roots; asking again"
            );
        }
        let node = match taken.remove(&node_id) {
            Some(node) => node,
            None => node_certificate(&signer, &node_id, settings.cert_ttl, true).await?,
        };
        if !taken.is_empty() || carried.is_some() {
            tracing::info!(
                workloads = taken.len(),
                "certificates: serving with the previous agent's"
            );
        }
        Ok(CertStore {
            certs: Mutex::new(Certs {
                signer,
                bundle,
                root,
                node,
                workloads: taken,
                rotated_at: None,
                servers: HashMap::new(),
                workload_retry: HashMap::new(),
            }),
            ttl: settings.cert_ttl,
            tables,
            node_id,
            settings: settings.clone(),
            ca_failures: std::sync::atomic::AtomicU64::new(0),
            retry: Mutex::new(Retry::default()),
        })
    }

    /// Whether a pod of this node has the identity `id` (in the policy in force, or staged).
    fn runs_here(&self, id: &SpiffeId) -> bool {
        self.tables
            .find(|t| t.runs_locally(id.as_str()).then_some(()))
            .is_some()
    }

    fn lock(&self) -> anyhow::Result<MutexGuard<'_, Certs>> {
        self.certs
            .lock()
            .map_err(|_| anyhow::anyhow!("certificate store poisoned"))
    }

    /// Every certificate held, for a successor.
    pub fn carried(&self) -> anyhow::Result<CarriedCerts> {
        let certs = self.lock()?;
        Ok(CarriedCerts {
            roots_pem: certs.root.pem.clone(),
            certs: std::iter::once(&certs.node)
                .chain(certs.workloads.values())
                .map(CarriedCert::of)
                .collect(),
        })
    }

    pub fn node(&self) -> anyhow::Result<WorkloadCert> {
        Ok(self.lock()?.node.clone())
    }

    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        Ok(self.lock()?.bundle.clone())
    }

    /// A workload's certificate: the one held while it is valid (the upkeep renews it past
    /// half-life, so a slow or unreachable CA never holds up a flow), else a new one from the
    /// signer (first use, or the CA stayed away until it expired).
    pub async fn workload_cert(
        &self,
        id: &SpiffeId,
    ) -> anyhow::Result<(WorkloadCert, TrustBundle)> {
        let now = SystemTime::now();
        let (signer, node) = {
            let certs = self.lock()?;
            if let Some(c) = certs.workloads.get(id).filter(|c| now < c.not_after) {
                return Ok((c.clone(), certs.bundle.clone()));
            }
            (certs.signer.clone(), certs.node.clone())
        };
        let issued = self.issue(&signer, node, id, now).await;
        let mut certs = self.lock()?;
        match issued {
            Ok(cert) => {
                tracing::debug!(workload = %id, "certificates: issued");
                certs.workloads.insert(id.clone(), cert.clone());
                Ok((cert, certs.bundle.clone()))
            }
            Err(e) => {
                self.ca_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e.context(format!("a certificate for {id}")))
            }
        }
    }

    async fn issue(
        &self,
        signer: &Signer,
        node: WorkloadCert,
        id: &SpiffeId,
        now: SystemTime,
    ) -> anyhow::Result<WorkloadCert> {
        match signer {
            Signer::Local(ca) => ca.issue(id, self.ttl, now).map_err(anyhow::Error::from),
            Signer::Remote(client) => self.ask_service(client, node, id).await,
        }
    }

    /// Renews the workloads' certificates that are due (past their jittered half-life, or issued
    /// before a root rotation) while a pod of this node has the identity; drops an expired one no
    /// local pod has (taken again on first use if one comes back). Before the first generation
    /// is in force no pod is known, so a successor's carried certificates are kept, not renewed.
    /// A failed renewal is counted, logged with the time the current certificate has left (it
    /// serves until then), and tried again after a backoff; the other due ones wait for the next
    /// round rather than each wait for an absent CA.
    pub async fn renew_workloads(&self) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let (signer, due) = {
            let mut certs = self.lock()?;
            let gone: Vec<SpiffeId> = certs
                .workloads
                .iter()
                .filter(|(id, c)| now >= c.not_after && !self.runs_here(id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                tracing::debug!(workload = %id, "certificates: expired, and no local pod has it; dropped");
                certs.workloads.remove(&id);
                certs.servers.remove(&id);
                certs.workload_retry.remove(&id);
            }
            let due: Vec<SpiffeId> = certs
                .workloads
                .iter()
                .filter(|(id, c)| {
                    let renew = now >= jittered(c.renew_at(), c)
                        || certs.rotated_at.is_some_and(|at| c.issued_at < at);
                    renew
                        && certs.workload_retry.get(*id).is_none_or(Retry::ready)
                        && self.runs_here(id)
                })
                .map(|(id, _)| id.clone())
                .collect();
            (certs.signer.clone(), due)
        };
        for id in due {
            let node = self.node()?;
            match self.issue(&signer, node, &id, SystemTime::now()).await {
                Ok(cert) => {
                    let mut certs = self.lock()?;
                    certs.workloads.insert(id.clone(), cert);
                    certs.servers.remove(&id);
                    certs.workload_retry.remove(&id);
                    tracing::debug!(workload = %id, "certificates: renewed");
                }
                Err(e) => {
                    self.ca_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut certs = self.lock()?;
                    let wait = certs.workload_retry.entry(id.clone()).or_default().failed();
                    let left = certs
                        .workloads
                        .get(&id)
                        .and_then(|c| c.not_after.duration_since(SystemTime::now()).ok())
                        .unwrap_or_default();
                    tracing::warn!(
                        workload = %id,
                        left_s = left.as_secs(),
                        retry_in_ms = wait.as_millis(),
                        "certificates: renewal failed, the current certificate serves until it expires: {e:#}"
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// `id`'s certificate from the CA service, asked with the node certificate; if the CA no
    /// longer takes that (it was issued under a root the CA has rotated away from), the node
    /// bootstraps again with its token and asks once more.
    async fn ask_service(
        &self,
        client: &CaClient,
        node: WorkloadCert,
        id: &SpiffeId,
    ) -> anyhow::Result<WorkloadCert> {
        match client.workload_certificate(&node, id).await {
            Ok(cert) => Ok(cert),
            Err(e) if e.is_refusal() => Err(e.into()),
            Err(first) => {
                let Ok(node) = client.node_certificate().await else {
                    return Err(first.into());
                };
                tracing::info!(node = %self.node_id, "certificates: node certificate taken again with the token");
                self.lock()?.node = node.clone();
                Ok(client.workload_certificate(&node, id).await?)
            }
        }
    }

    /// The tunnel server configuration presenting `id`'s certificate.
    async fn server_config_of(&self, id: &SpiffeId) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let now = SystemTime::now();
        if let Some((renew_at, config)) = self.lock()?.servers.get(id)
            && now < *renew_at
        {
            return Ok(Arc::clone(config));
        }
        let (cert, bundle) = self.workload_cert(id).await?;
        let config = server_config(&bundle, Arc::new(RotatingCert::new(&cert)?))?;
        let mut certs = self.lock()?;
        // Kept only while it is still the workload's certificate: a renewal that landed
        // meanwhile must not be masked until this one expires.
        if certs
            .workloads
            .get(id)
            .is_some_and(|held| held.chain.first() == cert.chain.first())
        {
            certs
                .servers
                .insert(id.clone(), (cert.not_after, Arc::clone(&config)));
        }
        Ok(config)
    }

    /// Picks up a rotated root (trusted beside the previous one; every certificate is taken
    /// again from the new one) and renews the node certificate past half-life; the caller puts
    /// what changed in force, then calls [`CertStore::renew_workloads`].
    pub async fn upkeep(&self) -> anyhow::Result<Upkeep> {
        let mut out = Upkeep::default();
        let trust_domain = self.node_id.trust_domain().to_owned();
        // An unreadable file (being replaced, or broken) changes nothing: the roots in force stay.
        let root = Root::read(&self.settings.ca_dir, &trust_domain)
            .map_err(|e| tracing::warn!("certificates: the roots are unreadable, kept: {e}"))
            .ok();
        let (signer, renew) = {
            let mut certs = self.lock()?;
            if let Some(root) = root.and_then(|r| r.into_changed(&certs.root)) {
                let both: Vec<_> = root
                    .certs
                    .iter()
                    .chain(certs.root.certs.iter())
                    .cloned()
                    .collect();
                let bundle = TrustBundle::new(&trust_domain, &both)?;
                certs.signer = signer_for(&self.settings, &trust_domain, &bundle)?;
                certs.root = root;
                certs.bundle = bundle.clone();
                certs.rotated_at = Some(SystemTime::now());
                certs.servers.clear();
                out.bundle = Some(bundle);
                tracing::info!(
                    "certificates: rotated root loaded (the previous root stays trusted)"
                );
            }
            let due = SystemTime::now() >= jittered(certs.node.renew_at(), &certs.node);
            let retry_ok = self.retry.lock().map(|r| r.ready()).unwrap_or(true);
            (
                certs.signer.clone(),
                out.bundle.is_some() || (due && retry_ok),
            )
        };
        if renew {
            match node_certificate(&signer, &self.node_id, self.ttl, false).await {
                Ok(node) => {
                    if let Ok(mut retry) = self.retry.lock() {
                        *retry = Retry::default();
                    }
                    self.lock()?.node = node.clone();
                    tracing::info!(node = %self.node_id, "certificates: node certificate renewed");
                    out.node = Some(node);
                }
                Err(e) => {
                    self.ca_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = self.retry.lock().map_or(MAX_BACKOFF, |mut r| r.failed());
                    let left = self
                        .lock()?
                        .node
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::warn!(
                        left_s = left.as_secs(),
                        retry_in_ms = wait.as_millis(),
                        "certificates: the node certificate could not be renewed; the current one serves until it expires: {e:#}"
                    );
                }
            }
        }
        Ok(out)
    }

    /// How many certificates this node holds for identities its pods have, and how long the
    /// one that expires first has left (those of pods that left, kept until they expire, do not
    /// count).
    pub fn workloads_time_left(&self) -> (usize, Option<Duration>) {
        let now = SystemTime::now();
        self.lock().map_or((0, None), |c| {
            let held: Vec<Duration> = c
                .workloads
                .iter()
                .filter(|(id, _)| self.runs_here(id))
                .map(|(_, w)| w.not_after.duration_since(now).unwrap_or_default())
                .collect();
            (held.len(), held.iter().min().copied())
        })
    }

    /// How long the node certificate has left.
    pub fn node_time_left(&self) -> Duration {
        self.lock()
            .ok()
            .and_then(|c| c.node.not_after.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }
}

impl DestinationIdentity for CertStore {
    fn identity_of(&self, addr: IpAddr) -> Option<SpiffeId> {
        self.tables.find(|t| {
            t.workload(addr)
                .filter(|w| w.local)
                .and_then(|w| SpiffeId::parse(&w.spiffe_id).ok())
        })
    }

    fn config_for(&self, addr: IpAddr) -> IdentityFuture<'_> {
        Box::pin(async move {
            let id = self.identity_of(addr)?;
            match self.server_config_of(&id).await {
                Ok(config) => Some((id, config)),
                Err(e) => {
                    tracing::warn!(workload = %id, "tunnel: no certificate to present: {e:#}");
                    None
                }
            }
        })
    }
}

fn signer_for(
    settings: &MeshSettings,
    trust_domain: &str,
    bundle: &TrustBundle,
) -> anyhow::Result<Signer> {
    match &settings.ca_service {
        None => {
            tracing::warn!(
                ca_dir = %settings.ca_dir.display(),
                "certificates: this agent signs with the trust domain's key (development only: a node that holds it can sign for any workload; use --ca-url)"
            );
            Ok(Signer::Local(Arc::new(Ca::load_for(
                &settings.ca_dir,
                trust_domain,
            )?)))
        }
        Some(service) => {
            anyhow::ensure!(
                service.node_token_file.is_file(),
                "--node-token-file {}: no such file",
                service.node_token_file.display()
            );
            Ok(Signer::Remote(CaClient::with_token_file(
                &service.url,
                bundle.clone(),
                &service.node_token_file,
            )?))
        }
    }
}

/// The node's certificate from `signer`; at start (`patient`), an unreachable CA service is
/// asked again for [`START_PATIENCE`] (a refusal ends it at once).
async fn node_certificate(
    signer: &Signer,
    node_id: &SpiffeId,
    ttl: Duration,
    patient: bool,
) -> anyhow::Result<WorkloadCert> {
    match signer {
        Signer::Local(ca) => Ok(ca.issue(node_id, ttl, SystemTime::now())?),
        Signer::Remote(client) => {
            let deadline = tokio::time::Instant::now() + START_PATIENCE;
            let mut wait = Duration::from_millis(200);
            loop {
                match client.node_certificate().await {
                    Ok(cert) if cert.spiffe_id == *node_id => return Ok(cert),
                    Ok(cert) => anyhow::bail!(
                        "the CA issued {} for this node's token, but this node is {node_id} (--node-name must match the token's node)",
                        cert.spiffe_id
                    ),
                    Err(e) if e.is_refusal() || !patient => {
                        return Err(e).context("the node certificate from the CA service");
                    }
                    Err(e) if tokio::time::Instant::now() + wait > deadline => {
                        return Err(e).context("the CA service stayed unreachable");
                    }
                    Err(e) => {
                        tracing::info!("certificates: the CA service is not reachable yet: {e}");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_up_to_a_minute() {
        for failures in 1..=20 {
            let base = Duration::from_secs(1 << (failures - 1).min(6)).min(MAX_BACKOFF);
            let wait = backoff(failures);
            assert!(
                wait >= base / 2 && wait < base.mul_f64(1.5),
                "{failures}: {wait:?}"
            );
        }
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff(3)).collect();
        assert!(waits.len() > 1, "the waits are spread");
    }

    #[test]
    fn renewal_falls_between_half_and_six_tenths_of_the_lifetime() {
        let ca = Ca::generate(
            "example.org",
            Duration::from_secs(86_400),
            SystemTime::now(),
        )
        .expect("ca");
        let id = SpiffeId::node("example.org", "node-1").expect("id");
        let now = SystemTime::now();
        let mut spread = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let cert = ca
                .issue(&id, Duration::from_secs(1000), now)
                .expect("issue");
            let at = jittered(cert.renew_at(), &cert);
            let after = at.duration_since(now).expect("later");
            assert!(
                after >= Duration::from_secs(500) && after <= Duration::from_secs(600),
                "{after:?}"
            );
            spread.insert(after);
        }
        assert!(spread.len() > 1, "renewals are spread");
    }
}
