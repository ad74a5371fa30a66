//! The stand-in's storage, as etcd and the API server's watch cache hold it: every object by
//! resource, namespace and name, one cluster-wide revision counter that becomes each write's
//! `resourceVersion`, and a bounded history of events from which watches resume. A watch from a
//! revision older than the history holds gets `410 Gone`, as from a compacted etcd.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

/// A resource the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Writes to the object leave `status` alone; `/status` writes change only `status` (as
    /// for a CustomResourceDefinition with the status subresource).
    pub status_subresource: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn resource(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

/// Every resource the stand-in serves.
pub const RESOURCES: &[Resource] = &[
    resource("", "v1", "pods", "Pod", true, false),
    resource("", "v1", "namespaces", "Namespace", false, false),
    resource("", "v1", "nodes", "Node", false, false),
    resource("", "v1", "services", "Service", true, false),
    resource("", "v1", "secrets", "Secret", true, false),
    resource("", "v1", "configmaps", "ConfigMap", true, false),
    resource("", "v1", "events", "Event", true, false),
    resource(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    resource(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        false,
    ),
    resource("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    resource("events.k8s.io", "v1", "events", "Event", true, false),
    resource(
        "rampart.dev",
        "v1alpha1",
        "clusterpolicies",
        "ClusterPolicy",
        false,
        true,
    ),
    resource(
        "rampart.dev",
        "v1alpha1",
        "meshpolicies",
        "MeshPolicy",
        false,
        true,
    ),
];

/// The resource of an `apiVersion` and `kind`.
pub fn resource_of_kind(api_version: &str, kind: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .copied()
}

/// The resource at `group`/`version`/`plural`.
pub fn resource_at(group: &str, version: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .copied()
}

/// (resource, namespace or `""`, name).
pub type Key = (Resource, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: u64,
    pub resource: Resource,
    pub kind: EventType,
    /// The object after the write (before it, for a deletion, with the deletion's revision).
    pub object: Value,
    /// The object before the write (none for a creation): a watch with a selector turns a write
    /// that moves an object in or out of its set into ADDED or DELETED.
    pub previous: Option<Value>,
}

/// Why a write failed, as the API server's `Status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// How many events the history keeps (older resource versions are `410 Gone`).
pub const HISTORY: usize = 20_000;

#[derive(Debug, Default)]
pub struct Store {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// Watches from a revision below this are `410 Gone`.
    oldest_watchable: u64,
    uids: u64,
}

impl Store {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// The objects of `resource` (in `namespace`, if given), in key order, after `after`.
    pub fn list<'a>(
        &'a self,
        resource: Resource,
        namespace: Option<&'a str>,
        after: Option<&'a (String, String)>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let start = match after {
            Some((ns, name)) => std::ops::Bound::Excluded((resource, ns.clone(), name.clone())),
            None => std::ops::Bound::Included((resource, String::new(), String::new())),
        };
        self.objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.0 == resource)
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.1 == ns))
    }

    /// The events after `revision` (of any resource), or `None` if the history no longer
    /// reaches back that far.
    pub fn events_since(&self, revision: u64) -> Option<Vec<Event>> {
        if revision < self.oldest_watchable {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|e| e.revision > revision)
                .cloned()
                .collect(),
        )
    }

    /// Forgets the history: every watch that resumes from any version given out so far gets
    /// `410 Gone` (the revision moves on by one, as etcd's does with its compaction record).
    pub fn compact(&mut self) {
        self.revision += 1;
        self.history.clear();
        self.oldest_watchable = self.revision;
    }

    /// Creates an object. The server sets `uid`, `resourceVersion`, `generation` and
    /// `creationTimestamp`.
    pub fn create(&mut self, key: Key, mut object: Value) -> Result<Event, Refusal> {
        if self.objects.contains_key(&key) {
            return Err(Refusal::new(
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", key.0.plural, key.2),
            ));
        }
        if key.0.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
        let meta = metadata_mut(&mut object);
        meta.insert("uid".into(), json!(uid));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
        Ok(self.commit(key, EventType::Added, object, None))
    }

    /// Replaces an object (`PUT`): `metadata.resourceVersion`, if given, must be the current
    /// one (optimistic concurrency, 409 otherwise). With `status_only`, only `status` changes.
    pub fn replace(
        &mut self,
        key: Key,
        object: Value,
        status_only: bool,
    ) -> Result<Event, Refusal> {
        let Some(current) = self.objects.get(&key).cloned() else {
            return Err(not_found(&key));
        };
        if let Some(rv) = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && rv != resource_version(&current)
        {
            return Err(Refusal::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    key.0.plural, key.2
                ),
            ));
        }
        let next = merge_write(&key, &current, object, status_only);
        Ok(self.commit(key, EventType::Modified, next, Some(current)))
    }

    /// Applies an RFC 7386 merge patch (also used for apply and strategic patches, which
    /// the stand-in does not distinguish).
    pub fn patch(&mut self, key: Key, patch: &Value, status_only: bool) -> Result<Event, Refusal> {
        let Some(current) = self.objects.get(&key).cloned() else {
            return Err(not_found(&key));
        };
        let mut patched = current.clone();
        merge_patch(&mut patched, patch);
        let next = merge_write(&key, &current, patched, status_only);
        Ok(self.commit(key, EventType::Modified, next, Some(current)))
    }

    pub fn delete(&mut self, key: Key) -> Result<Event, Refusal> {
        let Some(current) = self.objects.remove(&key) else {
            return Err(not_found(&key));
        };
        self.revision += 1;
        let mut object = current.clone();
        metadata_mut(&mut object)
            .insert("resourceVersion".into(), json!(self.revision.to_string()));
        let event = Event {
            revision: self.revision,
            resource: key.0,
            kind: EventType::Deleted,
            object,
            previous: Some(current),
        };
        self.remember(event.clone());
        Ok(event)
    }

    fn commit(
        &mut self,
        key: Key,
        kind: EventType,
        mut object: Value,
        previous: Option<Value>,
    ) -> Event {
        self.revision += 1;
        let resource = key.0;
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), json!(resource.api_version()));
            map.insert("kind".into(), json!(resource.kind));
        }
        let meta = metadata_mut(&mut object);
        meta.insert("resourceVersion".into(), json!(self.revision.to_string()));
        meta.insert("name".into(), json!(key.2));
        if resource.namespaced {
            meta.insert("namespace".into(), json!(key.1));
        }
        self.objects.insert(key, object.clone());
        let event = Event {
            revision: self.revision,
            resource,
            kind,
            object,
            previous,
        };
        self.remember(event.clone());
        event
    }

    fn remember(&mut self, event: Event) {
        self.history.push_back(event);
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.oldest_watchable = old.revision;
            }
        }
    }
}

fn not_found(key: &Key) -> Refusal {
    Refusal::new(
        404,
        "NotFound",
        format!("{} {:?} not found", key.0.plural, key.2),
    )
}

pub fn resource_version(object: &Value) -> &str {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The object a write leaves: server-owned metadata carried over; `status` kept from `current`
/// on a main-resource write of a kind with the status subresource, and only `status` taken on a
/// `/status` write; `generation` bumped when anything but metadata and status changed.
fn merge_write(key: &Key, current: &Value, written: Value, status_only: bool) -> Value {
    let mut next = if status_only {
        let mut next = current.clone();
        if let (Some(map), Some(status)) = (next.as_object_mut(), written.get("status")) {
            map.insert("status".into(), status.clone());
        }
        next
    } else {
        let mut next = written;
        if key.0.status_subresource
            && let Some(map) = next.as_object_mut()
        {
            match current.get("status") {
                Some(status) => map.insert("status".into(), status.clone()),
                None => map.remove("status"),
            };
        }
        next
    };
    let current_meta = current.get("metadata").cloned().unwrap_or_default();
    let generation = current_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let bump = !status_only && without_meta_and_status(current) != without_meta_and_status(&next);
    let meta = metadata_mut(&mut next);
    for owned in ["uid", "creationTimestamp"] {
        if let Some(v) = current_meta.get(owned) {
            meta.insert(owned.into(), v.clone());
        }
    }
    meta.insert(
        "generation".into(),
        json!(if bump { generation + 1 } else { generation }),
    );
    next
}

fn without_meta_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn metadata_mut(object: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let map = object.as_object_mut().expect("an object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("an object")
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Resource {
        resource_of_kind("v1", "Pod").expect("pods")
    }

    #[test]
    fn writes_take_increasing_revisions_and_watches_resume_until_compacted() {
        let mut s = Store::default();
        let key = (pods(), "x".to_owned(), "a".to_owned());
        let e1 = s
            .create(key.clone(), json!({"metadata": {"labels": {"a": "1"}}}))
            .expect("create");
        let e2 = s
            .patch(
                key.clone(),
                &json!({"metadata": {"labels": {"a": "2"}}}),
                false,
            )
            .expect("patch");
        assert!(e2.revision > e1.revision);
        assert_eq!(s.events_since(e1.revision).expect("history").len(), 1);
        s.compact();
        assert!(s.events_since(e1.revision).is_none());
        assert!(
            s.events_since(e2.revision).is_none(),
            "the latest version given out is expired too"
        );
        assert!(s.events_since(s.revision()).is_some());
    }

    #[test]
    fn a_stale_resource_version_conflicts() {
        let mut s = Store::default();
        let key = (pods(), "x".to_owned(), "a".to_owned());
        let e1 = s.create(key.clone(), json!({})).expect("create");
        let rv = resource_version(&e1.object).to_owned();
        s.replace(
            key.clone(),
            json!({"metadata": {"resourceVersion": rv}, "spec": {"a": 1}}),
            false,
        )
        .expect("first replace");
        let stale = s.replace(key, json!({"metadata": {"resourceVersion": rv}}), false);
        assert_eq!(stale.expect_err("conflict").code, 409);
    }

    #[test]
    fn the_status_subresource_separates_spec_and_status_writes() {
        let policies = resource_of_kind("rampart.dev/v1alpha1", "ClusterPolicy").expect("kind");
        let mut s = Store::default();
        let key = (policies, String::new(), "p".to_owned());
        s.create(
            key.clone(),
            json!({"spec": {"x": 1}, "status": {"ignored": true}}),
        )
        .expect("create");
        assert!(s.get(&key).expect("obj").get("status").is_none());
        s.patch(key.clone(), &json!({"status": {"ok": true}}), true)
            .expect("status");
        let o = s.get(&key).expect("obj");
        assert_eq!(o.pointer("/metadata/generation"), Some(&json!(1)));
        s.patch(
            key.clone(),
            &json!({"spec": {"x": 2}, "status": null}),
            false,
        )
        .expect("spec");
        let o = s.get(&key).expect("obj");
        assert_eq!(o.pointer("/metadata/generation"), Some(&json!(2)));
        assert_eq!(o.pointer("/status/ok"), Some(&json!(true)));
    }
}
