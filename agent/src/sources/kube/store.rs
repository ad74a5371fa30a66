//! What the Kubernetes source holds: per kind, each object's compact form by key, replaced
//! whole by a relist only once the relist is complete (until then readers see the previous
//! complete view: fail static).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::model::{EndpointSliceModel, PodModel, ServiceModel};
use crate::policy::selector::Labels;

/// One kind's objects by key (`namespace/name`, or `name` for cluster-scoped kinds; shared
/// with the entry where it names the object too, as a pod's full name does).
#[derive(Debug, Clone)]
pub struct Kind<V> {
    live: BTreeMap<Arc<str>, V>,
    /// The relist in progress: entries collected so far (a copy of each earlier entry's state
    /// carries over, e.g. a last good version).
    relisting: Option<BTreeMap<Arc<str>, V>>,
}

impl<V> Default for Kind<V> {
    fn default() -> Kind<V> {
        Kind {
            live: BTreeMap::new(),
            relisting: None,
        }
    }
}

impl<V: Clone> Kind<V> {
    pub fn live(&self) -> &BTreeMap<Arc<str>, V> {
        &self.live
    }

    pub fn begin_relist(&mut self) {
        self.relisting = Some(BTreeMap::new());
    }

    /// Ends a relist: objects it did not list are gone.
    pub fn end_relist(&mut self) {
        if let Some(listed) = self.relisting.take() {
            self.live = listed;
        }
    }

    /// Sets `key` to what `f` makes of its previous entry.
    pub fn upsert(&mut self, key: Arc<str>, f: impl FnOnce(Option<&V>) -> V) {
        match &mut self.relisting {
            Some(listed) => {
                let value = f(listed.get(&key).or_else(|| self.live.get(&key)));
                listed.insert(key, value);
            }
            None => {
                let value = f(self.live.get(&key));
                self.live.insert(key, value);
            }
        }
    }

    /// Changes every entry in place (of the view and of a relist in progress).
    pub fn update_each(&mut self, mut f: impl FnMut(&str, &mut V)) {
        for (k, v) in self.live.iter_mut() {
            f(k, v);
        }
        for (k, v) in self.relisting.iter_mut().flatten() {
            f(k, v);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.live.remove(key);
        if let Some(listed) = &mut self.relisting {
            listed.remove(key);
        }
    }
}

/// An object validated on arrival: the version in use (the last valid one) and the current
/// version's error, if it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    pub in_use: Option<T>,
    pub error: Option<String>,
}

impl<T: Clone> Checked<T> {
    /// The entry after a new version: a valid one replaces the one in use (`None`: nothing to
    /// model); an invalid one keeps it and records the error.
    pub fn next(previous: Option<&Checked<T>>, version: Result<Option<T>, String>) -> Checked<T> {
        match version {
            Ok(in_use) => Checked {
                in_use,
                error: None,
            },
            Err(error) => Checked {
                in_use: previous.and_then(|p| p.in_use.clone()),
                error: Some(error),
            },
        }
    }
}

/// A policy object or Secret: its current document and the last one that went into force.
#[derive(Clone)]
pub struct Document {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub text: String,
    /// `text` as the policy reader read it (once per version, not on every reload).
    pub parsed: crate::policy::source::Read,
    /// The SHA-256 (hex) of `text`, computed once per version.
    pub sha256: String,
    pub last_good: Option<String>,
    /// `metadata.generation` of the current version (Secrets have none).
    pub generation: Option<i64>,
    /// The generation the last good document had.
    pub last_good_generation: Option<i64>,
    /// The current version's errors, if the last reload rejected it.
    pub errors: Vec<String>,
    /// The SHA-256 of the last version rejected (each rejected version is counted once).
    pub rejected_sha: Option<String>,
}

/// Two documents are the same when their text is (what else they hold follows from it, or from
/// the controller's verdict on it).
impl PartialEq for Document {
    fn eq(&self, other: &Document) -> bool {
        self.kind == other.kind && self.text == other.text && self.generation == other.generation
    }
}

impl std::fmt::Debug for Document {
    // A Secret's document holds its values: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

/// Everything the source holds.
#[derive(Debug, Default)]
pub struct Objects {
    pub pods: Kind<Checked<Arc<PodModel>>>,
    pub namespaces: Kind<Checked<Labels>>,
    pub nodes: Kind<Checked<Vec<IpAddr>>>,
    /// For the datapath's Service translation.
    pub services: Kind<Checked<Arc<ServiceModel>>>,
    pub endpoint_slices: Kind<Checked<Arc<EndpointSliceModel>>>,
    /// Documents by kind (each kind relists on its own), then by the file name they are read
    /// as (`kube:Kind/namespace/name`).
    pub documents: BTreeMap<&'static str, Kind<Document>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_replaces_the_view_only_when_complete() {
        let mut k: Kind<u32> = Kind::default();
        k.upsert("a".into(), |_| 1);
        k.upsert("b".into(), |_| 2);
        k.begin_relist();
        k.upsert("a".into(), |prev| prev.copied().unwrap_or(0) + 10);
        assert_eq!(k.live().len(), 2, "the old view stays during the relist");
        k.end_relist();
        assert_eq!(k.live().get("a"), Some(&11));
        assert!(!k.live().contains_key("b"), "not relisted: gone");
    }

    #[test]
    fn an_invalid_version_keeps_the_last_valid_one() {
        let first = Checked::next(None, Ok(Some(1)));
        let bad = Checked::next(Some(&first), Err::<Option<i32>, _>("bad".into()));
        assert_eq!((bad.in_use, bad.error.as_deref()), (Some(1), Some("bad")));
        let gone = Checked::next(Some(&first), Ok::<Option<i32>, String>(None));
        assert_eq!(gone.in_use, None);
    }
}
