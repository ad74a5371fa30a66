//! The controller's reload, rejection, keep-last-good and rollback, against a node that records
//! what it is given (no kernel, no root).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::generation::{Generations, SourceDoc};
use crate::l7::jwks::JwksRegistry;
use crate::l7::waf::WafEngines;
use crate::policy::source::parse_str;

const WORKLOADS: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec: {serviceAccountName: backend, nodeName: node-1}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {serviceAccountName: db, nodeName: node-1}
status: {podIP: 10.244.1.12}
";

const DB_ISOLATED: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-backend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 5432}]
";

const DB_REQUIRES_MTLS: &str = r"
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {name: db-requires-mtls}
spec:
  appliesTo:
    namespaceSelector: {matchLabels: {team: shop}}
    podSelector: {matchLabels: {app: db}}
  ports: [{port: 5432}]
  mtls: Required
";

/// A policy source whose text the test changes (a directory with one file).
#[derive(Clone, Default)]
struct TextSource(Arc<Mutex<String>>);

impl TextSource {
    fn set(&self, text: &str) {
        *self.0.lock().expect("test lock") = text.to_owned();
    }
}

impl PolicySource for TextSource {
    fn read(&self) -> SourceRead {
        let text = self.0.lock().expect("test lock").clone();
        SourceRead {
            read: parse_str(Path::new("dir/policy.yaml"), &text),
            documents: vec![SourceDoc {
                file: "dir/policy.yaml".into(),
                sha256: crate::policy::source::sha256_hex(text.as_bytes()),
            }],
            ..SourceRead::default()
        }
    }
}

/// A per-object source, as the Kubernetes source is: documents by name, each with its current
/// and last accepted text; what the controller reported last.
/// By name: the current text and the last accepted one.
type Documents = BTreeMap<String, (String, Option<String>)>;

#[derive(Clone, Default)]
struct ObjectSource {
    documents: Arc<Mutex<Documents>>,
    unsynced: Arc<AtomicBool>,
    outcomes: Arc<Mutex<BTreeMap<String, crate::sources::Outcome>>>,
}

impl ObjectSource {
    fn set(&self, file: &str, text: &str) {
        let mut docs = self.documents.lock().expect("test lock");
        let last_good = docs.get(file).and_then(|(_, g)| g.clone());
        docs.insert(file.to_owned(), (text.to_owned(), last_good));
    }
}

impl PolicySource for ObjectSource {
    fn read(&self) -> SourceRead {
        let mut out = SourceRead::default();
        for (file, (text, _)) in self.documents.lock().expect("test lock").iter() {
            let r = parse_str(Path::new(file), text);
            out.read.objects.extend(r.objects);
            out.documents.push(SourceDoc {
                file: file.clone(),
                sha256: crate::policy::source::sha256_hex(text.as_bytes()),
            });
        }
        out
    }

    fn synced(&self) -> bool {
        !self.unsynced.load(Ordering::SeqCst)
    }

    fn last_good(&self, file: &str) -> Option<crate::policy::source::Read> {
        let docs = self.documents.lock().expect("test lock");
        let (_, last_good) = docs.get(file)?;
        Some(match last_good {
            Some(text) => parse_str(Path::new(file), text),
            None => crate::policy::source::Read::default(),
        })
    }

    fn in_force(
        &self,
        _generation: u64,
        _read: &[SourceDoc],
        rejected: &BTreeMap<String, crate::sources::Outcome>,
    ) {
        for (file, (text, last_good)) in self.documents.lock().expect("test lock").iter_mut() {
            if !rejected.contains_key(file) {
                *last_good = Some(text.clone());
            }
        }
        *self.outcomes.lock().expect("test lock") = rejected.clone();
    }
}

/// What the node was asked, and what the proxy's tables showed when the kernel was.
#[derive(Default)]
struct Recorded {
    applied: Vec<PolicyState>,
    /// At each `apply`: mTLS destinations in the staged table (`None`: nothing staged) and in
    /// the table in force.
    tables_at_apply: Vec<(Option<usize>, usize)>,
    attached: Vec<String>,
    /// Interfaces whose attachments were dropped as gone.
    forgotten: Vec<String>,
    /// How often the node was asked to prepare for the next state.
    prepared: usize,
}

struct FakeNode {
    refuse: Arc<AtomicBool>,
    interfaces: BTreeMap<IpAddr, PodInterface>,
    generations: Generations,
    recorded: Arc<Mutex<Recorded>>,
}

impl Node for FakeNode {
    fn apply(&mut self, state: &PolicyState) -> Result<(), String> {
        let tables = self.generations.tables();
        let mut recorded = self.recorded.lock().expect("test lock");
        recorded.tables_at_apply.push((
            tables.staged.get().map(|t| t.destinations()),
            tables.current.get().destinations(),
        ));
        if self.refuse.load(Ordering::SeqCst) {
            return Err("map update: no space left on device".into());
        }
        recorded.applied.push(state.clone());
        Ok(())
    }

    fn host_addresses(&self) -> std::io::Result<BTreeSet<IpAddr>> {
        Ok(BTreeSet::new())
    }

    fn pod_interfaces(&self) -> std::io::Result<BTreeMap<IpAddr, PodInterface>> {
        Ok(self.interfaces.clone())
    }

    fn prepare_next(&mut self) -> Result<bool, String> {
        self.recorded.lock().expect("test lock").prepared += 1;
        Ok(true)
    }

    fn ifindex(&self, interface: &str) -> Option<u32> {
        self.interfaces
            .values()
            .find(|t| t.interface == interface)
            .map(|t| t.ifindex)
    }

    fn forget(&mut self, interface: &str) -> Result<(), String> {
        self.recorded
            .lock()
            .expect("test lock")
            .forgotten
            .push(interface.to_owned());
        Ok(())
    }

    fn attach(&mut self, interface: &str) -> Result<(), String> {
        self.recorded
            .lock()
            .expect("test lock")
            .attached
            .push(interface.to_owned());
        Ok(())
    }

    fn attachments(&self) -> Vec<Attachment> {
        Vec::new()
    }
}

struct Harness {
    controller: Controller<FakeNode>,
    source: TextSource,
    refuse: Arc<AtomicBool>,
    generations: Generations,
    recorded: Arc<Mutex<Recorded>>,
    rejections: Arc<Mutex<Rejections>>,
}

impl Harness {
    fn new(text: &str) -> Harness {
        Harness::with(text, Vec::new())
    }

    /// With `more` sources after the text source.
    fn with(text: &str, more: Vec<Box<dyn PolicySource>>) -> Harness {
        let source = TextSource::default();
        source.set(text);
        let (publisher, generations) = Publisher::new();
        let refuse = Arc::new(AtomicBool::new(false));
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let interfaces = [
            ("10.244.1.11", 11, "vethbackend"),
            ("10.244.1.12", 12, "vethdb"),
        ]
        .into_iter()
        .map(|(addr, ifindex, name)| {
            let addr: IpAddr = addr.parse().expect("address");
            (
                addr,
                PodInterface {
                    ifindex,
                    interface: name.into(),
                },
            )
        })
        .collect();
        let node = FakeNode {
            refuse: Arc::clone(&refuse),
            interfaces,
            generations: generations.clone(),
            recorded: Arc::clone(&recorded),
        };
        let rejections = Arc::new(Mutex::new(Rejections::default()));
        let config = ControllerConfig {
            trust_domain: "cluster.local".into(),
            audit: false,
            attached: vec!["eth0".into()],
            sources: std::iter::once(Box::new(source.clone()) as Box<dyn PolicySource>)
                .chain(more)
                .collect(),
            proxy: Some(TableBuilder {
                jwks: Arc::new(JwksRegistry::default()),
                wafs: Arc::new(WafEngines::new(PathBuf::from("/nonexistent-crs"))),
                proxy_port: 15001,
            }),
        };
        let controller = Controller::new(
            node,
            config,
            publisher,
            Arc::clone(&rejections),
            Arc::new(Mutex::new(Vec::new())),
        );
        Harness {
            controller,
            source,
            refuse,
            generations,
            recorded,
            rejections,
        }
    }

    fn in_force(&self) -> Arc<PolicyGeneration> {
        self.generations.current().expect("a generation in force")
    }

    fn rejections(&self) -> Rejections {
        self.rejections.lock().expect("test lock").clone()
    }
}

fn set(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

#[test]
fn a_good_set_goes_to_the_kernel_and_is_published_whole() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED, DB_REQUIRES_MTLS]));
    assert_eq!(h.controller.start(), Ok(1));
    let generation = h.in_force();
    assert_eq!(generation.number, 1);
    assert_eq!(generation.summary.endpoints, 2);
    assert_eq!(generation.summary.sources.len(), 1);
    assert_eq!(
        generation.table.destinations(),
        1,
        "db:5432 takes only mTLS"
    );
    assert!(
        generation.names.policy(1).is_some(),
        "flow names come with it"
    );
    let recorded = h.recorded.lock().expect("test lock");
    assert_eq!(recorded.applied.len(), 1);
    let kernel = &recorded.applied[0];
    assert_eq!(kernel.proxy_port, 15001);
    assert_eq!(kernel.mesh.len(), 1);
    assert_eq!(
        kernel.endpoints.len(),
        2,
        "both pods are local (their interfaces are on this node)"
    );
    assert_eq!(recorded.attached, ["vethbackend", "vethdb"]);
    drop(recorded);
    assert_eq!(h.rejections(), Rejections::default());
}

#[test]
fn the_proxy_sees_new_destinations_before_the_kernel_redirects_by_them() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.start(), Ok(1));
    h.source
        .set(&set(&[WORKLOADS, DB_ISOLATED, DB_REQUIRES_MTLS]));
    assert_eq!(h.controller.reload(None, None), Ok(2));
    let recorded = h.recorded.lock().expect("test lock");
    // When the kernel took generation 2, the staged table already had db:5432 (generation 1's
    // had nothing); once published, nothing stays staged.
    assert_eq!(recorded.tables_at_apply, [(Some(0), 0), (Some(1), 0)]);
    drop(recorded);
    assert!(h.generations.tables().staged.get().is_none());
    assert_eq!(h.in_force().table.destinations(), 1);
}

#[test]
fn a_set_with_errors_is_rejected_with_file_and_line_and_the_last_good_stays() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.start(), Ok(1));
    let good = h.in_force();
    h.source.set(&set(&[
        WORKLOADS,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
    ]));
    let errors = h.controller.reload(None, None).expect_err("rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("dir/policy.yaml:") && e.contains("10.0.0.0/33")),
        "{errors:?}"
    );
    // Nothing changed: the kernel was not asked, the same generation is in force.
    assert_eq!(h.recorded.lock().expect("test lock").applied.len(), 1);
    assert!(Arc::ptr_eq(&h.in_force(), &good));
    let rejections = h.rejections();
    assert_eq!(rejections.total, 1);
    assert!(
        rejections
            .last_error
            .is_some_and(|e| e.contains("10.0.0.0/33"))
    );
    // Fixed: the next reload goes through.
    h.source.set(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.reload(None, None), Ok(2));
}

#[test]
fn a_kernel_that_refuses_the_state_rolls_back_to_the_last_good_generation() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.start(), Ok(1));
    let good = h.in_force();
    let identities = good.summary.identities;
    h.refuse.store(true, Ordering::SeqCst);
    h.source
        .set(&set(&[WORKLOADS, DB_ISOLATED, DB_REQUIRES_MTLS]));
    let errors = h.controller.reload(None, None).expect_err("refused");
    assert!(
        errors[0].contains("installing the compiled policy: map update"),
        "{errors:?}"
    );
    // The staged table is withdrawn and the published generation is the old one.
    assert!(h.generations.tables().staged.get().is_none());
    assert!(Arc::ptr_eq(&h.in_force(), &good));
    assert_eq!(h.in_force().table.destinations(), 0);
    assert_eq!(h.rejections().total, 1);
    // Once the kernel takes it, the identities allocated for the refused set are not leaked.
    h.refuse.store(false, Ordering::SeqCst);
    assert_eq!(h.controller.reload(None, None), Ok(2));
    assert_eq!(h.in_force().summary.identities, identities);
}

#[test]
fn a_refused_push_leaves_the_pushed_files_as_they_were() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.start(), Ok(1));
    let push = |name: &str, text: &str| PushChange {
        files: vec![(name.into(), text.into())],
        ..PushChange::default()
    };
    assert_eq!(
        h.controller
            .reload(Some(&push("mtls.yaml", DB_REQUIRES_MTLS)), None),
        Ok(2)
    );
    assert_eq!(h.in_force().summary.pushed_files, 1);
    assert!(
        h.in_force()
            .summary
            .sources
            .iter()
            .any(|s| s.file == "push:mtls.yaml")
    );
    // A bad push and a kernel refusal both leave the pushed set (and the generation) alone.
    let errors = h
        .controller
        .reload(Some(&push("bad.yaml", "kind: Nonsense\n")), None)
        .expect_err("rejected");
    assert!(errors[0].starts_with("push:bad.yaml:"), "{errors:?}");
    h.refuse.store(true, Ordering::SeqCst);
    assert!(
        h.controller
            .reload(Some(&push("other.yaml", DB_ISOLATED)), None)
            .is_err()
    );
    h.refuse.store(false, Ordering::SeqCst);
    assert_eq!(h.in_force().number, 2);
    assert_eq!(h.controller.reload(None, None), Ok(3));
    let names: Vec<String> = h
        .in_force()
        .summary
        .sources
        .iter()
        .map(|s| s.file.clone())
        .collect();
    assert_eq!(names, ["dir/policy.yaml", "push:mtls.yaml"]);
}

/// Whether the generation in force lets a new TCP flow from `src` reach the db on 5432.
fn reaches_db(h: &Harness, src: &str) -> bool {
    let state = &h.in_force().compiled.state;
    let src: IpAddr = src.parse().expect("address");
    let db: IpAddr = "10.244.1.12".parse().expect("address");
    crate::policy::verdict::decide(state, src, db, 6, 5432).allowed()
}

#[test]
fn a_pushed_object_replaces_the_source_object_of_the_same_name() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    assert_eq!(h.controller.start(), Ok(1));
    assert!(reaches_db(&h, "10.244.1.11"));
    assert!(!reaches_db(&h, "192.0.2.7"), "only the backend may");
    let allow_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-backend, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - {}\n";
    let change = PushChange {
        files: vec![("override.yaml".into(), allow_all.into())],
        ..PushChange::default()
    };
    // Not a duplicate (an error within one source): the pushed object replaces the other.
    assert_eq!(h.controller.reload(Some(&change), None), Ok(2));
    assert!(reaches_db(&h, "192.0.2.7"));
    // Deleting the pushed file brings the directory's object back.
    let delete = PushChange {
        delete: vec!["override.yaml".into()],
        ..PushChange::default()
    };
    assert_eq!(h.controller.reload(Some(&delete), None), Ok(3));
    assert!(!reaches_db(&h, "192.0.2.7"));
}

#[test]
fn a_new_pod_interface_recompiles_and_attaches() {
    let mut h = Harness::new(&set(&[WORKLOADS, DB_ISOLATED]));
    h.controller
        .node
        .interfaces
        .remove(&"10.244.1.12".parse::<IpAddr>().expect("address"));
    assert_eq!(h.controller.start(), Ok(1));
    assert_eq!(h.in_force().summary.endpoints, 1);
    h.controller.rescan();
    assert_eq!(h.in_force().number, 1, "nothing changed: no reload");
    h.controller.node.interfaces.insert(
        "10.244.1.12".parse().expect("address"),
        PodInterface {
            ifindex: 12,
            interface: "vethdb".into(),
        },
    );
    h.controller.rescan();
    assert_eq!(h.in_force().number, 2);
    assert_eq!(h.in_force().summary.endpoints, 2);
    assert_eq!(
        h.recorded.lock().expect("test lock").attached,
        ["vethbackend", "vethdb"]
    );
}

fn policies_in_force(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = h
        .in_force()
        .compiled
        .rules
        .iter()
        .map(|(_, r)| r.policy.to_string())
        .collect();
    names.dedup();
    names
}

const BACKEND_ISOLATED: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-isolated, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports: [{port: 8080}]
";

#[test]
fn a_per_object_source_rejects_a_bad_object_alone_and_keeps_its_last_good_version() {
    let objects = ObjectSource::default();
    objects.set("kube:NetworkPolicy/shop/db", DB_ISOLATED);
    let mut h = Harness::with(WORKLOADS, vec![Box::new(objects.clone())]);
    assert_eq!(h.controller.start(), Ok(1));
    // The db policy edited into an invalid state, and another object added at the same time.
    objects.set(
        "kube:NetworkPolicy/shop/db",
        &DB_ISOLATED.replace("{port: 5432}", "{port: 5432, protocol: TCPX}"),
    );
    objects.set("kube:NetworkPolicy/shop/backend", BACKEND_ISOLATED);
    assert_eq!(
        h.controller.reload(None, None),
        Ok(2),
        "the set goes into force"
    );
    let mut in_force = policies_in_force(&h);
    in_force.sort();
    assert_eq!(
        in_force,
        [
            "NetworkPolicy shop/backend-isolated",
            "NetworkPolicy shop/db-from-backend"
        ],
        "the new object, and the last good version of the rejected one"
    );
    let outcomes = objects.outcomes.lock().expect("test lock").clone();
    match outcomes.get("kube:NetworkPolicy/shop/db") {
        Some(crate::sources::Outcome::Rejected {
            errors,
            kept_last_good: true,
        }) => assert!(errors[0].contains("TCPX"), "{errors:?}"),
        other => panic!("expected a rejection keeping the last good version, got {other:?}"),
    }
    assert_eq!(outcomes.len(), 1, "only the bad object is rejected");
    assert_eq!(h.rejections().total, 0, "no set was rejected");
}

#[test]
fn a_new_object_that_is_invalid_is_not_enforced_at_all() {
    let objects = ObjectSource::default();
    objects.set(
        "kube:NetworkPolicy/shop/db",
        &DB_ISOLATED.replace("{port: 5432}", "{port: 5432, protocol: TCPX}"),
    );
    let mut h = Harness::with(WORKLOADS, vec![Box::new(objects.clone())]);
    assert_eq!(h.controller.start(), Ok(1));
    assert!(policies_in_force(&h).is_empty());
    let outcomes = objects.outcomes.lock().expect("test lock").clone();
    assert!(matches!(
        outcomes.get("kube:NetworkPolicy/shop/db"),
        Some(crate::sources::Outcome::Rejected {
            kept_last_good: false,
            ..
        })
    ));
}

#[test]
fn an_error_in_a_whole_set_source_still_rejects_the_set() {
    let objects = ObjectSource::default();
    objects.set("kube:NetworkPolicy/shop/db", DB_ISOLATED);
    let mut h = Harness::with(WORKLOADS, vec![Box::new(objects.clone())]);
    assert_eq!(h.controller.start(), Ok(1));
    let bad = DB_ISOLATED
        .replace("db-from-backend", "db-2")
        .replace("{port: 5432}", "{port: 5432, protocol: TCPX}");
    h.source.set(&set(&[WORKLOADS, &bad]));
    objects.set("kube:NetworkPolicy/shop/backend", BACKEND_ISOLATED);
    assert!(h.controller.reload(None, None).is_err());
    assert_eq!(h.in_force().number, 1, "nothing changed");
    assert_eq!(h.rejections().total, 1);
}

#[test]
fn nothing_goes_into_force_before_every_source_has_its_first_complete_view() {
    let objects = ObjectSource::default();
    objects.unsynced.store(true, Ordering::SeqCst);
    let mut h = Harness::with(WORKLOADS, vec![Box::new(objects.clone())]);
    assert_eq!(h.controller.start(), Err(vec![WAITING.to_owned()]));
    assert!(h.generations.current().is_none());
    assert!(h.recorded.lock().expect("test lock").applied.is_empty());
    assert_eq!(h.rejections().total, 0, "waiting is not a rejection");
    objects.unsynced.store(false, Ordering::SeqCst);
    assert_eq!(h.controller.reload(None, None), Ok(1));
}

/// The command loop: once idle after a state went into force, the node is asked, once, to
/// prepare for the next one.
#[test]
fn the_loop_prepares_the_node_once_per_state_when_idle() {
    let mut h = Harness::new(WORKLOADS);
    assert_eq!(h.controller.start(), Ok(1));
    let (tx, rx) = std::sync::mpsc::channel();
    let recorded = Arc::clone(&h.recorded);
    let generations = h.generations.clone();
    let source = h.source.clone();
    let controller = h.controller;
    let running = std::thread::spawn(move || controller.run(rx));
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let prepared = || recorded.lock().expect("test lock").prepared;
    wait_for("prepared after start", &|| prepared() == 1);
    source.set(&set(&[WORKLOADS, DB_ISOLATED]));
    tx.send(ControllerCommand::SourceChanged(Settle::Now))
        .expect("send");
    wait_for("generation 2", &|| {
        generations.current().is_some_and(|g| g.number == 2)
    });
    wait_for("prepared after the reload", &|| prepared() == 2);
    std::thread::sleep(IDLE_TRIM * 3);
    assert_eq!(prepared(), 2, "prepared once per state in force");
    tx.send(ControllerCommand::Shutdown).expect("send");
    running.join().expect("the loop ends");
}
