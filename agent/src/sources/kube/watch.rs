//! One watch per kind, with kube-runtime's watcher (list, then watch from the list's version;
//! on a broken stream it resumes, on `410 Gone` it relists, and on errors it backs off
//! exponentially with jitter, 0.8 s up to 30 s). Each event updates the source's objects and
//! tells the controller; a relist replaces a kind's objects only once it is complete.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use kube::Resource;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use super::health::KubeHealth;
use super::store::{Kind, Objects};

/// What the watch of one kind needs.
pub(super) struct Watch {
    pub kind: &'static str,
    pub objects: Arc<Mutex<Objects>>,
    pub health: Arc<KubeHealth>,
    /// Tells the controller the source changed.
    pub notify: Arc<dyn Fn() + Send + Sync>,
}

impl Watch {
    /// Runs until the stream ends (never, while the process runs: errors are retried).
    /// `store` picks the kind's objects; `key` and `value` make an entry of an object and its
    /// previous entry, or say why it is rejected.
    pub async fn run<K, V>(
        self,
        api: kube::Api<K>,
        config: watcher::Config,
        store: impl for<'a> Fn(&'a mut Objects) -> &'a mut Kind<V> + Send,
        key: impl Fn(&K) -> Arc<str> + Send,
        value: impl Fn(&K, &Arc<str>, Option<&V>) -> (V, Option<String>) + Send,
    ) where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        V: Clone + PartialEq,
    {
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(kind = self.kind, "Kubernetes watch: {e}");
                    self.health.update(self.kind, |h| {
                        h.errors += 1;
                        h.last_error = Some(e.to_string());
                    });
                    continue;
                }
            };
            let (changed, rejected) = {
                let mut objects = self
                    .objects
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let kind = store(&mut objects);
                match &event {
                    Event::Init => {
                        kind.begin_relist();
                        (false, None)
                    }
                    Event::InitDone => {
                        kind.end_relist();
                        (true, None)
                    }
                    Event::InitApply(o) | Event::Apply(o) => {
                        let (mut rejected, mut changed) = (None, true);
                        let key = key(o);
                        kind.upsert(Arc::clone(&key), |previous| {
                            let (v, error) = value(o, &key, previous);
                            rejected = error;
                            // A change to what the agent does not keep (a pod's conditions, a
                            // container's restart count) is no change: no reload.
                            changed = previous != Some(&v);
                            v
                        });
                        (matches!(event, Event::Apply(_)) && changed, rejected)
                    }
                    Event::Delete(o) => {
                        kind.remove(&key(o));
                        (true, None)
                    }
                }
            };
            if let Some(error) = &rejected {
                let name = match &event {
                    Event::InitApply(o) | Event::Apply(o) => key(o),
                    _ => Arc::from(""),
                };
                tracing::error!(kind = self.kind, object = %name, "rejected: {error}");
            }
            self.health.update(self.kind, |h| {
                match event {
                    Event::Init => h.relists += 1,
                    Event::InitDone => h.synced = true,
                    _ => {
                        h.events += 1;
                        h.last_event = Some(Instant::now());
                    }
                }
                if rejected.is_some() {
                    h.rejected += 1;
                }
            });
            if changed {
                (self.notify)();
            }
        }
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
pub(super) fn key_of<K: Resource>(object: &K) -> Arc<str> {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}").into(),
        None => name.into(),
    }
}
