//! JWKS that live outside the policy set: a file, a URL, or the `jwks_uri` of an OIDC issuer's
//! discovery document (`<issuer>/.well-known/openid-configuration`). One [`RemoteJwks`] per
//! location, shared by every route and policy generation that names it, each kept fresh by a
//! task of its own:
//!
//! - refreshed when the document's `cache-control: max-age` runs out (clamped to 30 s .. 24 h;
//!   5 min without one), and after a failure with backoff (1 s doubling to 60 s);
//! - re-fetched early when a token names a `kid` the set lacks, at most once per 10 s
//!   ([`UNKNOWN_KID_INTERVAL`]), the request waiting up to 2 s for it;
//! - while the source is unreachable the last good set stays in force for [`MAX_STALE`] (24 h),
//!   counted; after that it is dropped and tokens are refused (`jwks_unavailable`): fail closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rampart_l7::jwt::KeySet;
use tokio::sync::{Notify, watch};

use super::fetch;
use crate::policy::http::JwksLocation;

pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// How long the last good set is used while every refresh fails.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a request waits for a re-fetch its unknown `kid` asked for.
pub const KID_REFRESH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading {0}: {1}")]
    File(String, std::io::Error),
    #[error("fetching {0}: {1}")]
    Fetch(String, fetch::FetchError),
    #[error("{0}: not a JWKS: {1}")]
    Document(String, rampart_l7::jwt::KeyError),
    #[error("{0}: no usable key")]
    Empty(String),
    #[error("discovery document of {0}: {1}")]
    Discovery(String, String),
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// The document `keys` came from (a hot restart hands it to the next agent).
    document: Option<Arc<str>>,
    last_success: Option<Instant>,
    /// When the current set should have been refreshed.
    due: Option<Instant>,
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct JwksStats {
    pub fetched: AtomicU64,
    pub failed: AtomicU64,
    /// Verifications that used a set older than its refresh time because refreshes failed.
    pub stale_served: AtomicU64,
}

/// One JWKS source and its current set.
#[derive(Debug)]
pub struct RemoteJwks {
    pub location: JwksLocation,
    state: RwLock<State>,
    wake: Notify,
    /// Bumped after every fetch attempt (success or not); requests wait on it.
    attempts: watch::Sender<u64>,
    last_kid_refresh: Mutex<Option<Instant>>,
    pub stats: JwksStats,
}

impl RemoteJwks {
    fn new(location: JwksLocation) -> RemoteJwks {
        RemoteJwks {
            location,
            state: RwLock::new(State::default()),
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            last_kid_refresh: Mutex::new(None),
            stats: JwksStats::default(),
        }
    }

    /// The set in force: `None` before the first fetch, or once it is older than [`MAX_STALE`]
    /// without a successful refresh.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let fresh_enough = state
            .last_success
            .is_some_and(|at| at.elapsed() <= MAX_STALE);
        if !fresh_enough {
            return None;
        }
        let overdue = state
            .due
            .is_some_and(|due| Instant::now() > due + MAX_RETRY);
        if overdue {
            self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
        }
        state.keys.clone()
    }

    /// Seconds since the last successful fetch.
    pub fn age(&self) -> Option<Duration> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.last_success.map(|at| at.elapsed())
    }

    /// Asks for a re-fetch because a token named a `kid` this set lacks, unless one was asked for
    /// less than [`UNKNOWN_KID_INTERVAL`] ago; waits up to `wait` for the attempt. True if an
    /// attempt finished (the caller then tries the token again).
    pub async fn refresh_for_unknown_kid(&self, wait: Duration) -> bool {
        {
            let mut last = self
                .last_kid_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.wake.notify_one();
        matches!(
            tokio::time::timeout(wait, attempts.changed()).await,
            Ok(Ok(()))
        )
    }

    async fn run(self: Arc<Self>) {
        let mut retry = FIRST_RETRY;
        loop {
            let next = match self.fetch().await {
                Ok((keys, document, max_age)) => {
                    retry = FIRST_RETRY;
                    self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(source = %self.location, keys = keys.len(), "jwks: fetched");
                    let refresh = max_age
                        .unwrap_or(DEFAULT_REFRESH)
                        .clamp(MIN_REFRESH, MAX_REFRESH);
                    {
                        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                        state.keys = Some(Arc::new(keys));
                        state.document = Some(document);
                        state.last_success = Some(Instant::now());
                        state.due = Some(Instant::now() + refresh);
                    }
                    refresh
                }
                Err(error) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %self.location, %error, "jwks: fetch failed; the last good set stays in force");
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            };
            self.attempts.send_modify(|n| *n += 1);
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// The set in force as a carried-over document: the JWKS text and its age.
    pub fn carried(&self) -> Option<CarriedJwks> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Some(CarriedJwks {
            location: self.location.clone(),
            document: state.document.as_deref()?.to_owned(),
            age: state.last_success?.elapsed(),
        })
    }

    /// Takes `carried` (a previous agent's set) as the set in force, as old as it was there,
    /// until this agent's first fetch replaces it; a refresh is due at once.
    fn seed(&self, carried: &CarriedJwks) -> Result<(), JwksError> {
        let name = self.location.to_string();
        let keys = KeySet::from_jwks(carried.document.as_bytes())
            .map_err(|e| JwksError::Document(name.clone(), e))?;
        if keys.is_empty() {
            return Err(JwksError::Empty(name));
        }
        let now = Instant::now();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.keys.is_none() {
            state.keys = Some(Arc::new(keys));
            state.document = Some(Arc::from(carried.document.as_str()));
            state.last_success = Some(now.checked_sub(carried.age).unwrap_or(now));
            state.due = Some(now);
        }
        Ok(())
    }

    async fn fetch(&self) -> Result<(KeySet, Arc<str>, Option<Duration>), JwksError> {
        let (document, max_age) = match &self.location {
            JwksLocation::File(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|e| JwksError::File(path.display().to_string(), e))?;
                (text, None)
            }
            JwksLocation::Url(url) => {
                let fetched = fetch::get(url)
                    .await
                    .map_err(|e| JwksError::Fetch(url.clone(), e))?;
                (fetched.body.to_vec(), fetched.max_age)
            }
            JwksLocation::Discovery { issuer } => {
                let jwks_uri = discover(issuer).await?;
                let fetched = fetch::get(&jwks_uri)
                    .await
                    .map_err(|e| JwksError::Fetch(jwks_uri.clone(), e))?;
                (fetched.body.to_vec(), fetched.max_age)
            }
        };
        let name = self.location.to_string();
        let keys =
            KeySet::from_jwks(&document).map_err(|e| JwksError::Document(name.clone(), e))?;
        if keys.is_empty() {
            return Err(JwksError::Empty(name));
        }
        let document = Arc::from(String::from_utf8_lossy(&document).as_ref());
        Ok((keys, document, max_age))
    }
}

/// A fetched JWKS as one agent hands it to the next in a hot restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CarriedJwks {
    pub location: JwksLocation,
    pub document: String,
    /// Since it was fetched.
    #[serde(with = "seconds")]
    pub age: Duration,
}

/// A `Duration` as whole seconds.
mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_secs)
    }
}

/// The `jwks_uri` of `issuer`'s discovery document, which must name the same issuer (OpenID
/// Connect Discovery §4.3).
async fn discover(issuer: &str) -> Result<String, JwksError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let fetched = fetch::get(&url)
        .await
        .map_err(|e| JwksError::Fetch(url.clone(), e))?;
    let document: serde_json::Value = serde_json::from_slice(&fetched.body)
        .map_err(|e| JwksError::Discovery(issuer.into(), format!("not JSON: {e}")))?;
    if document.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err(JwksError::Discovery(
            issuer.into(),
            "its `issuer` is not the configured issuer".into(),
        ));
    }
    document
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| JwksError::Discovery(issuer.into(), "no `jwks_uri`".into()))
}

/// A source and its refresh task (none before the registry starts).
type Running = (Arc<RemoteJwks>, Option<tokio::task::AbortHandle>);

/// Every JWKS source in use, each with its refresh task on the proxy's runtime.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    runtime: OnceLock<tokio::runtime::Handle>,
    sources: Mutex<HashMap<JwksLocation, Running>>,
}

impl JwksRegistry {
    /// Tasks start on `runtime` from now on (sources asked for before start begin then).
    pub fn start(&self, runtime: tokio::runtime::Handle) {
        if self.runtime.set(runtime).is_err() {
            return;
        }
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        for (remote, task) in sources.values_mut() {
            if task.is_none() {
                *task = self.spawn(remote);
            }
        }
    }

    fn spawn(&self, remote: &Arc<RemoteJwks>) -> Option<tokio::task::AbortHandle> {
        let runtime = self.runtime.get()?;
        Some(runtime.spawn(Arc::clone(remote).run()).abort_handle())
    }

    /// The source at `location`, started if new.
    pub fn get(&self, location: &JwksLocation) -> Arc<RemoteJwks> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((remote, _)) = sources.get(location) {
            return Arc::clone(remote);
        }
        let remote = Arc::new(RemoteJwks::new(location.clone()));
        let task = self.spawn(&remote);
        sources.insert(location.clone(), (Arc::clone(&remote), task));
        remote
    }

    /// Every set in force, for a successor.
    pub fn carried(&self) -> Vec<CarriedJwks> {
        self.sources()
            .iter()
            .filter_map(|remote| remote.carried())
            .collect()
    }

    /// Takes a predecessor's sets as the sets in force until this agent fetches its own (a
    /// request carrying a token is not refused meanwhile); one that does not parse is skipped.
    pub fn seed(&self, carried: &[CarriedJwks]) {
        for set in carried {
            if set.age > MAX_STALE {
                continue;
            }
            match self.get(&set.location).seed(set) {
                Ok(()) => {
                    tracing::info!(source = %set.location, age_seconds = set.age.as_secs(), "jwks: the previous agent's set is in force until the first fetch")
                }
                Err(e) => tracing::warn!("jwks: the previous agent's set: {e}"),
            }
        }
    }

    /// Stops the sources no policy names any more.
    pub fn retain(&self, in_use: &std::collections::HashSet<JwksLocation>) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.retain(|location, (_, task)| {
            let keep = in_use.contains(location);
            if !keep && let Some(task) = task {
                task.abort();
            }
            keep
        });
    }

    /// Every source, for metrics.
    pub fn sources(&self) -> Vec<Arc<RemoteJwks>> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<_> = sources.values().map(|(r, _)| Arc::clone(r)).collect();
        list.sort_by(|a, b| a.location.cmp(&b.location));
        list
    }
}

#[cfg(test)]
mod tests;
