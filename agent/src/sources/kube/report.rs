//! Reports back on the objects: each ClusterPolicy's and MeshPolicy's `status` (an `Accepted`
//! condition with the same message `rampart policy check` prints, `observedGeneration`, and the
//! generation in force), and a Warning Event on each NetworkPolicy version that is rejected.
//!
//! Exactly one agent writes: the holder of a `coordination.k8s.io` Lease (taken when absent or
//! expired, renewed every few seconds, with optimistic concurrency on its `resourceVersion`,
//! as client-go's leader election does), so N nodes never fight over a status. Every agent
//! validates the same objects the same way, so whichever leads writes what all of them enforce.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::health::KubeHealth;
use super::store::{Document, Objects};
use crate::policy::crd::{Condition, GROUP, ObjectStatus, VERSION};

/// The Lease's name; it lives in the namespace `--kube-lease-namespace` names.
pub const LEASE_NAME: &str = "rampart-status-writer";
/// A holder that has not renewed for this long has lost the Lease.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and others check), and statuses are compared and written.
const TICK: Duration = Duration::from_secs(2);

pub(super) struct Reporting {
    pub client: kube::Client,
    pub objects: Arc<Mutex<Objects>>,
    pub health: Arc<KubeHealth>,
    /// This agent's name in the Lease (its node's name).
    pub identity: String,
    pub lease_namespace: String,
}

/// What was last written for an object (so unchanged statuses are not written again).
type Written = BTreeMap<String, ObjectStatus>;

impl Reporting {
    /// Runs for as long as the agent does.
    pub async fn run(self) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.lease_namespace);
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "rampart-agent".into(),
                instance: Some(self.identity.clone()),
            },
        );
        let mut written = Written::new();
        let mut evented: BTreeMap<String, String> = BTreeMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let leading = match lead(&leases, &self.identity).await {
                Ok(leading) => leading,
                Err(e) => {
                    tracing::warn!("status writer's Lease: {e}");
                    false
                }
            };
            if leading != self.health.leading.swap(leading, Ordering::Relaxed) {
                tracing::info!(leading, "status writer: leadership changed");
                // A new leader writes everything once: another may have written meanwhile.
                written.clear();
            }
            if !leading {
                continue;
            }
            // Only what is reported on: at 100k rules, copying every document each tick cost
            // more than the reloads.
            let documents: Vec<Document> = {
                let objects = self
                    .objects
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut documents = Vec::new();
                for doc in objects.documents.values().flat_map(|k| k.live().values()) {
                    let reported = match doc.kind {
                        "ClusterPolicy" | "MeshPolicy" => true,
                        // A NetworkPolicy has no status: only a rejected one (an Event) or one
                        // that was (to forget its Event) is looked at.
                        "NetworkPolicy" => {
                            !doc.errors.is_empty() || evented.contains_key(&event_key(doc))
                        }
                        _ => false,
                    };
                    if reported {
                        documents.push(doc.clone());
                    }
                }
                documents
            };
            for doc in &documents {
                match doc.kind {
                    "ClusterPolicy" | "MeshPolicy" => self.write_status(doc, &mut written).await,
                    "NetworkPolicy" => self.event(doc, &recorder, &mut evented).await,
                    _ => {}
                }
            }
        }
    }

    async fn write_status(&self, doc: &Document, written: &mut Written) {
        let key = format!("{}/{}", doc.kind, doc.name);
        let previous = written.get(&key);
        let status = status_of(doc, previous);
        if previous == Some(&status) {
            return;
        }
        let Some(plural) = super::plural_of(doc.kind) else {
            return;
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, VERSION, doc.kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let patch = serde_json::json!({"status": status});
        match api
            .patch_status(&doc.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.health.status_writes.fetch_add(1, Ordering::Relaxed);
                written.insert(key, status);
            }
            Err(e) => {
                self.health.status_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(object = %key, "writing status: {e}");
            }
        }
    }

    /// A Warning Event on a NetworkPolicy whose current version is rejected, once per version.
    async fn event(
        &self,
        doc: &Document,
        recorder: &Recorder,
        evented: &mut BTreeMap<String, String>,
    ) {
        let key = event_key(doc);
        if doc.errors.is_empty() {
            evented.remove(&key);
            return;
        }
        let Some(version) = doc.rejected_sha.clone() else {
            return;
        };
        if evented.get(&key) == Some(&version) {
            return;
        }
        let note = message(doc);
        let event = Event {
            type_: EventType::Warning,
            reason: "Rejected".into(),
            note: Some(truncate(&note, 1000)),
            action: "Validate".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            name: Some(doc.name.clone()),
            namespace: doc.namespace.clone(),
            uid: doc.uid.clone(),
            ..ObjectReference::default()
        };
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                evented.insert(key, version);
            }
            Err(e) => tracing::warn!(object = %key, "publishing an event: {e}"),
        }
    }
}

/// A NetworkPolicy's key in the Events written.
fn event_key(doc: &Document) -> String {
    format!("{}/{}", doc.namespace.as_deref().unwrap_or(""), doc.name)
}

/// The status a document's state calls for (a condition keeps its transition time while its
/// status does not change).
fn status_of(doc: &Document, previous: Option<&ObjectStatus>) -> ObjectStatus {
    let current_in_force = doc.last_good.as_deref() == Some(doc.text.as_str());
    let (status, reason, message) = if doc.errors.is_empty() {
        if current_in_force {
            ("True", "Valid", "in force".to_owned())
        } else {
            ("Unknown", "Pending", "not yet validated".to_owned())
        }
    } else if doc.last_good.is_some() {
        ("False", "InvalidKeptLastGood", message(doc))
    } else {
        ("False", "Invalid", message(doc))
    };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Accepted"))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Timestamp::now().to_string());
    ObjectStatus {
        observed_generation: doc.generation,
        enforced_generation: if current_in_force {
            doc.generation
        } else {
            doc.last_good_generation
        },
        conditions: vec![Condition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: reason.into(),
            message: truncate(&message, 4000),
            observed_generation: doc.generation,
            last_transition_time: since,
        }],
    }
}

fn message(doc: &Document) -> String {
    let kept = if doc.last_good.is_some() {
        match doc.last_good_generation {
            Some(g) => format!("; generation {g} stays in force"),
            None => "; the last good version stays in force".to_owned(),
        }
    } else {
        "; not in force".to_owned()
    };
    format!("{}{kept}", doc.errors.join("; "))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Takes or renews the Lease; whether this agent holds it now.
async fn lead(leases: &Api<Lease>, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration =
        SignedDuration::try_from(LEASE_DURATION).unwrap_or(SignedDuration::from_secs(15));
    let spec = |acquired: Timestamp, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(mut lease) = leases.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..Default::default()
            },
            spec: Some(spec(now, 0)),
        };
        return conflict_is_false(leases.create(&PostParams::default(), &lease).await);
    };
    let current = lease.spec.clone().unwrap_or_default();
    let mine = current.holder_identity.as_deref() == Some(me);
    let expired = current
        .renew_time
        .as_ref()
        .and_then(|t| t.0.checked_add(duration).ok())
        .is_none_or(|until| until < now);
    if !mine && !expired && current.holder_identity.is_some() {
        return Ok(false);
    }
    let (acquired, transitions) = if mine {
        (
            current.acquire_time.map_or(now, |t| t.0),
            current.lease_transitions.unwrap_or(0),
        )
    } else {
        (now, current.lease_transitions.unwrap_or(0) + 1)
    };
    lease.spec = Some(spec(acquired, transitions));
    // The replace carries the resourceVersion read: of two agents taking an expired Lease at
    // once, one gets a conflict.
    conflict_is_false(
        leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await,
    )
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(errors: &[&str], last_good: bool) -> Document {
        Document {
            kind: "ClusterPolicy",
            namespace: None,
            name: "p".into(),
            uid: None,
            text: "t".into(),
            parsed: crate::policy::source::Read::default(),
            sha256: String::new(),
            last_good: last_good.then(|| "old".to_owned()),
            generation: Some(3),
            last_good_generation: last_good.then_some(2),
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
            rejected_sha: None,
        }
    }

    #[test]
    fn a_rejected_version_says_why_and_which_generation_stays() {
        let s = status_of(&doc(&["kube:ClusterPolicy/p:7:9: bad port"], true), None);
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidKeptLastGood")
        );
        assert!(c.message.contains("7:9: bad port") && c.message.contains("generation 2"));
        assert_eq!(
            (s.observed_generation, s.enforced_generation),
            (Some(3), Some(2))
        );
        let mut fixed = doc(&[], true);
        fixed.last_good = Some(fixed.text.clone());
        fixed.last_good_generation = Some(3);
        let accepted = status_of(&fixed, Some(&s));
        assert_eq!(accepted.conditions[0].status, "True");
        assert_eq!(accepted.enforced_generation, Some(3));
        let pending = status_of(&doc(&[], true), None);
        assert_eq!(
            pending.conditions[0].status, "Unknown",
            "a version not yet validated"
        );
        assert_eq!(pending.enforced_generation, Some(2));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let first = status_of(&doc(&["e"], false), None);
        let mut earlier = first.clone();
        earlier.conditions[0].last_transition_time = "2026-01-01T00:00:00Z".into();
        let again = status_of(&doc(&["e"], false), Some(&earlier));
        assert_eq!(
            again.conditions[0].last_transition_time,
            "2026-01-01T00:00:00Z"
        );
    }
}
