//! Agents fed only from the Kubernetes API (the stand-in of `rampart_tests::kube_api`, which
//! speaks the list/watch protocol over HTTPS; CI runs against it, not a cluster): pods created,
//! relabelled, moved and deleted; a policy edited into an invalid state while another change
//! still applies; the API server stopped (enforcement unchanged) and back (resync); an expired
//! watch relisted; readiness only after the first complete list.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use rampart_tests::kube_api::ApiServer;
use rampart_tests::mesh::{MeshAgents, shop};
use rampart_tests::metrics::sample;
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::http_request;
use rampart_tests::{Agent, AgentOptions, EchoServer, Topology, eventually, probe, require_root};
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(700);
const CHANGE: Duration = Duration::from_secs(15);

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// Where pod `x/a` runs after it moves to node 2.
const A_MOVED: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);

fn pod(name: &str, app: &str, node: u8, ip: Ipv4Addr) -> Value {
    pod_in("x", name, app, node, ip)
}

fn pod_in(namespace: &str, name: &str, app: &str, node: u8, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": format!("node-{node}"), "serviceAccountName": name,
                 "containers": [{"name": "c", "image": "c"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "hostIP": format!("192.168.200.{node}")},
    })
}

/// b takes `port` from pods labelled `app: a` (and so is isolated for ingress).
fn b_from_a(name: &str, port: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                         "ports": [{"port": port}]}],
        },
    })
}

/// Two nodes, the stand-in on their underlay, an agent on each fed only from it.
struct Cluster {
    // Field order is drop order: agents stop before the API server and the namespaces go.
    agents: Vec<Agent>,
    _servers: Vec<EchoServer>,
    api: ApiServer,
    topo: Topology,
    work: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for agent in &self.agents {
                eprintln!("--- agent log ---\n{}", agent.log());
                let metrics = agent.metrics().unwrap_or_default();
                for line in metrics.lines().filter(|l| l.starts_with("rampart_kube")) {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Cluster {
    /// The topology and the stand-in, holding namespace `x`, pod a on node 1, pod b on node 2,
    /// and the policy letting a reach b on 8080; agents started with `start_agents`.
    fn new() -> Cluster {
        require_root();
        let topo = Topology::builder(TEST_PREFIX)
            .node("node-1")
            .node("node-2")
            .pod("node-1", "x/a", A)
            .pod("node-2", "x/b", B)
            .pod("node-2", "x/a-moved", A_MOVED)
            .build()
            .expect("topology");
        let api = ApiServer::start_on_underlay(&topo).expect("API server stand-in");
        for object in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "x"}}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "192.168.200.1"}]}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "192.168.200.2"}]}}),
            pod("a", "a", 1, A),
            pod("b", "b", 2, B),
            b_from_a("b-from-a", json!(8080)),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "x"},
                   "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}],
                            "selector": {"app": "b"}}}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "b-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "b"}},
                   "addressType": "IPv4", "ports": [{"port": 8080}],
                   "endpoints": [{"addresses": [B.to_string()], "conditions": {"ready": true},
                                  "targetRef": {"kind": "Pod", "namespace": "x", "name": "b"}}]}),
        ] {
            api.apply(&object).expect("object");
        }
        let servers =
            vec![EchoServer::start(&topo.pod("x/b").ns, &[8080, 9090], &[]).expect("echo")];
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = std::env::temp_dir().join(format!("rampart-kube-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("work dir");
        api.write_kubeconfig(&work.join("kubeconfig"))
            .expect("kubeconfig");
        Cluster {
            agents: Vec::new(),
            _servers: servers,
            api,
            topo,
            work,
        }
    }

    fn options(&self, node: &str) -> AgentOptions {
        let mut opts = AgentOptions::new(Vec::new());
        opts.extra_args = vec![
            "--kubeconfig".into(),
            self.work.join("kubeconfig").display().to_string(),
            "--node-name".into(),
            node.into(),
        ];
        opts
    }

    fn start_agents(&mut self) {
        for node in ["node-1", "node-2"] {
            let agent = Agent::start(&self.topo.node(node).ns, &self.options(node))
                .unwrap_or_else(|e| panic!("agent on {node}: {e:#}"));
            self.agents.push(agent);
        }
    }

    fn reaches(&self, from: &str, port: u16) -> bool {
        probe::tcp(
            &self.topo.pod(from).ns,
            SocketAddr::new(IpAddr::V4(B), port),
            PROBE,
        )
        .reached()
    }

    /// Waits until `from` reaching b's `port` is `want`.
    fn until(&self, what: &str, from: &str, port: u16, want: bool) {
        eventually(what, CHANGE, || {
            (self.reaches(from, port) == want).then_some(())
        });
    }

    fn metric(&self, node: usize, name: &str, labels: &str) -> f64 {
        let text = self.agents[node].metrics().expect("metrics");
        sample(&text, name, labels).unwrap_or(-1.0)
    }
}

#[test]
fn pods_created_relabelled_moved_and_deleted_in_the_api_change_enforcement() {
    let mut c = Cluster::new();
    c.start_agents();
    assert!(
        c.reaches("x/a", 8080),
        "a -> b:8080 is allowed by the API's policy"
    );
    assert!(
        !c.reaches("x/a", 9090),
        "b is isolated: a -> b:9090 is denied"
    );

    // A status change the agent keeps nothing of (a kubelet's conditions) reloads nothing.
    let generation = c.metric(1, "rampart_policy_generation", "");
    let events = c.metric(1, "rampart_kube_watch_events_total", "kind=\"Pod\"");
    let mut probed = pod("b", "b", 2, B);
    probed["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    c.api.apply(&probed).expect("conditions");
    eventually("the pod event to arrive", CHANGE, || {
        (c.metric(1, "rampart_kube_watch_events_total", "kind=\"Pod\"") > events).then_some(())
    });
    // A reload would start within the controller's 50 ms debounce.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.metric(1, "rampart_policy_generation", ""), generation);

    c.api.apply(&pod("a", "other", 1, A)).expect("relabel");
    c.until(
        "a relabelled away from app=a to be denied",
        "x/a",
        8080,
        false,
    );
    c.api.apply(&pod("a", "a", 1, A)).expect("relabel back");
    c.until("a relabelled back to be allowed", "x/a", 8080, true);

    // The pod moves: deleted on node 1, created again on node 2 at another address.
    c.api.delete("v1", "Pod", "x", "a").expect("delete");
    c.until(
        "a's old address, now no pod's, to be denied",
        "x/a",
        8080,
        false,
    );
    c.api
        .apply(&pod("a", "a", 2, A_MOVED))
        .expect("recreate on node 2");
    c.until(
        "a at its new address on node 2 to be allowed",
        "x/a-moved",
        8080,
        true,
    );
    assert!(!c.reaches("x/a", 8080), "the old address stays denied");
    for node in 0..2 {
        for kind in ["Pod", "Service", "EndpointSlice"] {
            let labels = format!("kind=\"{kind}\"");
            assert_eq!(
                c.metric(node, "rampart_kube_synced", &labels),
                1.0,
                "every agent reports its {kind} watch synced"
            );
        }
        assert_eq!(
            c.metric(
                node,
                "rampart_kube_watch_events_total",
                "kind=\"EndpointSlice\""
            ),
            1.0
        );
    }
}

#[test]
fn an_invalid_edit_keeps_the_last_good_version_while_other_changes_apply() {
    let mut c = Cluster::new();
    c.start_agents();
    assert!(c.reaches("x/a", 8080));
    // Edited into an invalid state: the port's protocol does not exist.
    let mut bad = b_from_a("b-from-a", json!(8080));
    bad["spec"]["ingress"][0]["ports"][0]["protocol"] = json!("TCPX");
    c.api.apply(&bad).expect("invalid edit");
    eventually(
        "the invalid version to be counted as rejected",
        CHANGE,
        || {
            (c.metric(
                1,
                "rampart_kube_objects_rejected_total",
                "kind=\"NetworkPolicy\"",
            ) >= 1.0)
                .then_some(())
        },
    );
    assert!(
        c.reaches("x/a", 8080),
        "the last good version stays in force"
    );
    // `rampart status` names the rejected object and why.
    let status = c.agents[1].cli(&["status"]).expect("status");
    assert!(
        status.contains("rejected kube:NetworkPolicy/x/b-from-a") && status.contains("TCPX"),
        "{status}"
    );
    // Another object's change still goes into force beside the rejected one.
    c.api
        .apply(&b_from_a("b-9090", json!(9090)))
        .expect("second policy");
    c.until("the second policy to open 9090", "x/a", 9090, true);
    assert!(
        c.reaches("x/a", 8080),
        "still the last good version of the first"
    );
    // Fixed: the new version replaces the last good one (8080 is no longer named: denied).
    c.api
        .apply(&b_from_a("b-from-a", json!(7070)))
        .expect("fixed edit");
    c.until("the fixed version to be in force", "x/a", 8080, false);
    assert!(
        c.agents[1].log().contains("kube:NetworkPolicy/x/b-from-a"),
        "the rejection names the object:\n{}",
        c.agents[1].log()
    );
}

fn cluster_policy(port: Value) -> Value {
    json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "ClusterPolicy",
        "metadata": {"name": "b-baseline"},
        "spec": {
            "appliesTo": {"podSelector": {"matchLabels": {"app": "b"}}},
            "ingress": [{"action": "Deny", "ports": [{"port": port}]}],
        },
    })
}

fn accepted(api: &ApiServer) -> Option<(String, String, i64, i64)> {
    let p = api.get("rampart.dev/v1alpha1", "ClusterPolicy", "", "b-baseline")?;
    let c = p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        p["status"]["observedGeneration"].as_i64()?,
        p["status"]["enforcedGeneration"].as_i64().unwrap_or(-1),
    ))
}

#[test]
fn one_elected_agent_writes_each_policy_status() {
    let mut c = Cluster::new();
    c.api.apply(&cluster_policy(json!(9090))).expect("policy");
    c.start_agents();
    let accepted_now = |want: (&str, &str, i64, i64)| {
        eventually(&format!("status {want:?}"), CHANGE, || {
            accepted(&c.api)
                .filter(|(s, r, o, e)| (s.as_str(), r.as_str(), *o, *e) == want)
                .map(|_| ())
        })
    };
    accepted_now(("True", "Valid", 1, 1));
    c.api
        .apply(&cluster_policy(json!("no such port name!")))
        .expect("invalid");
    accepted_now(("False", "InvalidKeptLastGood", 2, 1));
    let policy = c
        .api
        .get("rampart.dev/v1alpha1", "ClusterPolicy", "", "b-baseline")
        .expect("policy");
    let message = policy["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        message.contains("kube:ClusterPolicy/b-baseline:")
            && message.contains("generation 1 stays in force"),
        "{message}"
    );
    // One writer: one agent holds the Lease, the other never writes.
    let lease = c
        .api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "kube-system",
            "rampart-status-writer",
        )
        .expect("the Lease");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let (leader, other) = if holder == "node-1" { (0, 1) } else { (1, 0) };
    assert!(holder == "node-1" || holder == "node-2", "{lease:#}");
    assert_eq!(c.metric(leader, "rampart_kube_status_writer", ""), 1.0);
    assert_eq!(c.metric(other, "rampart_kube_status_writer", ""), 0.0);
    assert_eq!(c.metric(other, "rampart_kube_status_writes_total", ""), 0.0);
    // The leader stops: the other takes the Lease once it expires, and writes.
    let stopped = c.agents.remove(leader);
    drop(stopped);
    let other = 0;
    eventually(
        "the other agent to take the Lease",
        Duration::from_secs(30),
        || (c.metric(other, "rampart_kube_status_writer", "") == 1.0).then_some(()),
    );
    c.api.apply(&cluster_policy(json!(7070))).expect("fixed");
    accepted_now(("True", "Valid", 3, 3));
}

#[test]
fn enforcement_stays_while_the_api_is_down_and_resyncs_when_it_returns() {
    let mut c = Cluster::new();
    // Not ready before the first complete list: the API is down when the agent starts.
    c.api.stop();
    let agent = Agent::spawn(&c.topo.node("node-2").ns, &c.options("node-2")).expect("spawn");
    c.agents.push(agent);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !matches!(c.agents[0].get("/readyz"), Ok((200, _))),
        "ready before the API was ever listed"
    );
    c.api.resume().expect("resume");
    eventually(
        "ready after the first complete list",
        Duration::from_secs(30),
        || matches!(c.agents[0].get("/readyz"), Ok((200, _))).then_some(()),
    );
    assert!(c.reaches("x/a", 8080));

    c.api.stop();
    eventually("the broken watches to be counted", CHANGE, || {
        (c.metric(0, "rampart_kube_watch_errors_total", "kind=\"Pod\"") >= 1.0).then_some(())
    });
    assert!(
        c.reaches("x/a", 8080),
        "enforcement unchanged while the API is down"
    );
    assert!(!c.reaches("x/a", 9090));
    assert!(
        matches!(c.agents[0].get("/readyz"), Ok((200, _))),
        "still ready: what is in force is the last complete view"
    );
    // Changes made while the agent could not see them arrive when it reconnects.
    c.api
        .apply(&b_from_a("b-9090", json!(9090)))
        .expect("policy");
    c.api.resume().expect("resume");
    c.until(
        "the change made during the outage to apply",
        "x/a",
        9090,
        true,
    );

    // Expired watches (the history compacted, every stream cut) are relisted. (A kind whose
    // list was in flight at the compaction resumes from that list instead: the relists are
    // counted over every kind.)
    let relists = |c: &Cluster| -> f64 {
        let text = c.agents[0].metrics().expect("metrics");
        text.lines()
            .filter(|l| l.starts_with("rampart_kube_relists_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = relists(&c);
    c.api.compact();
    c.api.drop_connections();
    c.api
        .delete("networking.k8s.io/v1", "NetworkPolicy", "x", "b-9090")
        .expect("delete");
    // The watchers relist after their backoff, which may have grown during the outage above
    // (kube-runtime's default: up to 30 s, reset after two quiet minutes).
    eventually(
        "the expired watches to relist",
        Duration::from_secs(45),
        || (relists(&c) > before).then_some(()),
    );
    eventually("the deletion to apply", Duration::from_secs(45), || {
        (!c.reaches("x/a", 9090)).then_some(())
    });
}

/// `{key: value}` as an object's labels, or none unless `labelled`.
fn label_if(labelled: bool, key: &str, value: &str) -> Value {
    if labelled {
        json!({ key: value })
    } else {
        json!({})
    }
}

/// A Secret of API keys, as the API server holds it (`data`, base64), labelled for the agents
/// to read it unless `labelled` is false.
fn keys_secret(name: &str, key: &str, labelled: bool) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let labels = label_if(labelled, "rampart.dev/secret", "true");
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "data": {"acme": b64},
    })
}

fn keys_policy(name: &str, port: u16, secret: &str) -> Value {
    json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "MeshPolicy",
        "metadata": {"name": name},
        "spec": {
            "appliesTo": {"podSelector": {"matchLabels": {"app": "b"}}},
            "ports": [{"port": port}],
            "http": {"authentication": {"providers": [{
                "name": "partners",
                "apiKeys": {"secretRef": {"namespace": "shop", "name": secret}, "clientHeader": "x-client"},
            }]}},
        },
    })
}

/// A ConfigMap carrying a Rego module that allows user `user` (header `x-user`), labelled for
/// the agents to read it unless `labelled` is false; `module` replaces the module when given.
fn rego_config_map(name: &str, user: &str, labelled: bool, module: Option<&str>) -> Value {
    let labels = label_if(labelled, "rampart.dev/policy", "rego");
    let allowed = "package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.headers[\"x-user\"] == data.allowed.user\n";
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "data": {
            "policy.rego": module.unwrap_or(allowed),
            "allowed.json": json!({"allowed": {"user": user}}).to_string(),
        },
    })
}

fn rego_policy(name: &str, port: u16, config_map: &str) -> Value {
    json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "MeshPolicy",
        "metadata": {"name": name},
        "spec": {
            "appliesTo": {"podSelector": {"matchLabels": {"app": "b"}}},
            "ports": [{"port": port}],
            "http": {"rego": {"configMapRef": {"namespace": "shop", "name": config_map}}},
        },
    })
}

/// Secrets (API keys) and ConfigMaps (Rego) are read from the API, only when labelled, and a
/// change to one is in force on both nodes; a ConfigMap edited into a broken module is
/// rejected on its own, its last good version kept.
#[test]
fn secrets_and_config_maps_changed_in_the_api_take_effect_between_nodes() {
    require_root();
    let topo = shop::two_nodes().expect("topology");
    let api = ApiServer::start_on_underlay(&topo).expect("API server stand-in");
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        pod_in("shop", "a", "a", 1, shop::ip(1)),
        pod_in("shop", "b", "b", 2, shop::ip(2)),
        keys_secret("partner-keys", "key-one", true),
        keys_policy("partners-api", 8081, "partner-keys"),
        // A Secret without the label is never read: the policy naming it is rejected alone.
        keys_secret("unlabelled-keys", "key-hidden", false),
        keys_policy("unlabelled-api", 8082, "unlabelled-keys"),
        rego_config_map("catalog-authz", "alice", true, None),
        rego_policy("catalog-rego", 8083, "catalog-authz"),
        // Nor a ConfigMap without the label.
        rego_config_map("unlabelled-authz", "alice", false, None),
        rego_policy("unlabelled-rego", 8084, "unlabelled-authz"),
    ] {
        api.apply(&object).expect("object");
    }
    let _origin = rampart_tests::http_server::HttpServer::start(&topo.pod("shop/b").ns, 8081)
        .expect("origin");
    let _catalog = rampart_tests::http_server::HttpServer::start(&topo.pod("shop/b").ns, 8083)
        .expect("origin");
    let dir = std::env::temp_dir().join(format!("rampart-kube-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubeconfig = kubeconfig.display().to_string();
    let mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        "",
        None,
        &["--kubeconfig", &kubeconfig],
    )
    .expect("agents");
    let request = |port: u16, header: (&str, &str)| {
        let a = topo.pod("shop/a").ns.path();
        let b = SocketAddr::new(IpAddr::V4(shop::ip(2)), port);
        http_request(&a, b, "GET", "/", &[header], Duration::from_secs(3))
            .map(|r| r.status)
            .unwrap_or(0)
    };
    let get = |key: &str| request(8081, ("x-api-key", key));
    let as_user = |user: &str| request(8083, ("x-user", user));
    assert_eq!(get("key-one"), 200, "{}", mesh.node("node-2").log());
    assert_eq!(get("key-two"), 401);
    api.apply(&keys_secret("partner-keys", "key-two", true))
        .expect("rotate");
    eventually("the rotated key to be in force", CHANGE, || {
        (get("key-two") == 200).then_some(())
    });
    assert_eq!(get("key-one"), 401, "the old key is refused");

    assert_eq!(as_user("alice"), 200, "{}", mesh.node("node-2").log());
    assert_eq!(as_user("bob"), 403);
    api.apply(&rego_config_map("catalog-authz", "bob", true, None))
        .expect("edit");
    eventually("the edited data to be in force", CHANGE, || {
        (as_user("bob") == 200).then_some(())
    });
    assert_eq!(as_user("alice"), 403, "the old decision is gone");
    let rejected = || {
        mesh.node("node-2")
            .sample("rampart_kube_objects_rejected_total", r#"kind="ConfigMap""#)
    };
    let rejected_before = rejected();
    api.apply(&rego_config_map(
        "catalog-authz",
        "carol",
        true,
        Some("package envoy.authz\nallow if {\n"),
    ))
    .expect("broken edit");
    eventually("the broken module to be rejected", CHANGE, || {
        (rejected() > rejected_before).then_some(())
    });
    assert_eq!(as_user("bob"), 200, "the last good module stays in force");
    assert_eq!(as_user("carol"), 403);

    let log = mesh.node("node-2").log();
    assert!(
        log.contains("kube:MeshPolicy/unlabelled-api") && log.contains("rampart.dev/secret"),
        "the policy naming an unlabelled Secret is rejected, saying why:\n{log}"
    );
    assert!(
        log.contains("kube:MeshPolicy/unlabelled-rego") && log.contains("rampart.dev/policy"),
        "the policy naming an unlabelled ConfigMap is rejected, saying why:\n{log}"
    );
    assert!(
        log.contains("kube:ConfigMap/shop/catalog-authz"),
        "the broken module is named at its ConfigMap:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
