//! A trust domain no single node can forge, on a real kernel: two nodes whose agents get their
//! certificates from the CA service (`rampart ca serve` on the underlay), pod a (node 1) calling
//! pod b (node 2) on an mTLS-only port.
//!
//! - the tunnel works, and no agent holds the CA's key (their `--ca-dir` has `ca.crt` alone; no
//!   file an agent has open, and no argument it was given, is the key; nowhere in an agent's
//!   memory are the key's PEM, its PKCS#8 DER or its private scalar, which the same scan finds
//!   in the CA service's);
//! - node 1's credential asking for the identity of node 2's pod is refused, counted and logged
//!   by the CA, from node 1 and from anywhere else (a stolen token is node 1's, nothing more);
//! - with the CA stopped for longer than a renewal period, live and new tunnels keep working on
//!   the certificates the agents hold, and the agents say the renewal failed;
//! - a CA frozen (taking connections, never answering) does not hold up a new tunnel whose
//!   certificates are past their renewal time;
//! - the root rotates (agents trust both roots, then the running CA picks up the new files and
//!   signs with them, no restart) under a live connection, which carries on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::ca_service::{CaServer, Placement};
use rampart_tests::kube_api::ApiServer;
use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::netns::Netns;
use rampart_tests::{EchoServer, require_root};

const TIMEOUT: Duration = Duration::from_secs(3);
const PAYLOAD: &[u8] = b"RAMPART-CA-SERVICE-9d21";
/// The CA's certificates live 10 s: agents renew them every 5 s.
const CA_TTL: u64 = 10;

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn world() -> String {
    let pod = |name: &str, node: u8| pod_object("shop", name, node, ip(node, 10));
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-requires-mtls}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: 5432}}]\n  allowedPrincipals:\n    serviceAccounts: [shop/a]\n",
        pod("a", 1),
        pod("b", 2)
    )
}

/// `rounds` echoes over one connection from `ns` to `dst`, `pause` apart.
fn exchange(ns: &Netns, dst: SocketAddr, rounds: u32, pause: Duration) -> bool {
    rampart_tests::probe::echo_rounds(ns, dst, PAYLOAD, rounds, pause, TIMEOUT)
}

/// `rampart ca request` in `ns` with `node`'s token for `id`: its output, or its error.
fn request(mesh: &MeshAgents, ns: &Netns, token_of: &str, id: &str) -> Result<String, String> {
    request_with(&mesh.trust_dir(), &mesh.token_file(token_of), ns, id)
}

/// `rampart ca request` in `ns` with the roots of `trust` and the token in `token`.
fn request_with(
    trust: &std::path::Path,
    token: &std::path::Path,
    ns: &Netns,
    id: &str,
) -> Result<String, String> {
    let bin = rampart_tests::agent::rampart_bin().expect("binary");
    rampart_tests::cmd::in_ns(
        ns.name(),
        bin.to_str().expect("path"),
        &[
            "ca",
            "request",
            "--ca-url",
            &CaServer::url(),
            "--ca-dir",
            trust.to_str().expect("path"),
            "--node-token-file",
            token.to_str().expect("path"),
            "--id",
            id,
        ],
    )
    .map_err(|e| format!("{e:#}"))
}

/// Whether any file the process has open, or any of its arguments, is `path`.
fn process_holds(pid: u32, path: &std::path::Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let target = path.to_string_lossy();
    if String::from_utf8_lossy(&cmdline).contains(target.as_ref()) {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|link| link == path)
        })
        .unwrap_or(false)
}

/// Seconds `node`'s first workload certificate has left, from `rampart status`.
fn workload_seconds_left(mesh: &MeshAgents, node: &str) -> Option<u64> {
    let status = mesh.node(node).cli(&["status"]).ok()?;
    let (_, tail) = status.split_once("the first expires in ")?;
    tail.split_whitespace().next()?.parse().ok()
}

/// What of a P-256 key in PKCS#8 PEM could sit in a process's memory: the base64 of its PEM
/// body, its DER, and its private scalar (the ECPrivateKey's OCTET STRING after version 1).
fn key_forms(pem: &str) -> Vec<Vec<u8>> {
    let der = rcgen::KeyPair::from_pem(pem)
        .expect("the CA's key")
        .serialize_der();
    let at = memchr::memmem::find(&der, &[0x02, 0x01, 0x01, 0x04, 0x20]).expect("an EC key");
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(1)
        .collect();
    vec![
        body.into_bytes(),
        der.clone(),
        der[at + 5..at + 37].to_vec(),
    ]
}

/// Whether any of `needles` is anywhere in the readable memory of `pid` (`/proc/PID/mem`,
/// region by region from `/proc/PID/maps`, in overlapping chunks).
fn memory_holds(pid: u32, needles: &[Vec<u8>]) -> bool {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: u64 = 8 << 20;
    const OVERLAP: u64 = 1024;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    let mut buf = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(CHUNK);
            buf.resize(len as usize, 0);
            // Regions the kernel does not let a reader see ([vvar]) end the region.
            let Ok(n) = mem.read_at(&mut buf, offset) else {
                break;
            };
            if finders.iter().any(|f| f.find(&buf[..n]).is_some()) {
                return true;
            }
            if offset + len >= end {
                break;
            }
            offset += len - OVERLAP;
        }
    }
    false
}

#[test]
fn no_node_can_sign_for_another_nodes_workloads() {
    require_root();
    let topo = rampart_tests::mesh::shop::two_nodes().expect("topology");
    let _echo = EchoServer::start(&topo.pod("shop/b").ns, &[5432], &[]).expect("echo");
    let mut mesh =
        MeshAgents::start_with_ca_service(&topo, &["node-1", "node-2"], &world(), CA_TTL, &[])
            .expect("agents and the CA service");
    let b = SocketAddr::new(IpAddr::V4(ip(2, 10)), 5432);
    let a_ns = &topo.pod("shop/a").ns;

    // The tunnel works with certificates from the CA service.
    assert!(
        exchange(a_ns, b, 2, Duration::ZERO),
        "a reaches b through mTLS; node-1 log:\n{}\nnode-2 log:\n{}",
        mesh.node("node-1").log(),
        mesh.node("node-2").log()
    );

    // The CA goes away (right after the workloads' certificates were issued) for longer than a
    // renewal period (5 s): the agents keep their certificates until they expire (10 s); a live
    // connection and new ones keep working.
    mesh.ca_server().expect("the CA service").stop();
    assert!(
        exchange(a_ns, b, 7, Duration::from_secs(1)),
        "a live tunnel survives the CA's absence; node-1 log:\n{}",
        mesh.node("node-1").log()
    );
    assert!(
        exchange(a_ns, b, 1, Duration::ZERO),
        "a new tunnel opens while the CA is away"
    );
    let node1_log = mesh.node("node-1").log();
    assert!(
        node1_log.contains("serves until it expires"),
        "node 1 says its renewal failed:\n{node1_log}"
    );
    // ... and counts it, and says how long its certificate has left.
    let node1 = mesh.node("node-1");
    assert!(node1.sample("rampart_certificate_failures_total", "") >= 1.0);
    let status = node1.cli(&["status"]).expect("status");
    assert!(
        status.contains(&format!("certificates: from {}", CaServer::url()))
            && status.contains("node certificate valid")
            && status.contains("workload certificates: 1  the first expires in"),
        "{status}"
    );
    // Back: certificates are renewed, flows go on.
    mesh.ca_server().expect("ca").resume().expect("CA back");
    assert!(exchange(a_ns, b, 1, Duration::ZERO));

    // A CA that takes connections and never answers: certificates past their renewal time but
    // still valid serve a new tunnel at once (renewals run off the flows' path; before, the
    // flow waited for the CA's 10 s timeout). A root added to the agents' ca.crt makes every
    // certificate due at once (those issued before a rotation are taken again): first with the
    // CA up, so both nodes' are fresh together; then with the CA frozen, so both are due and
    // valid for several seconds more.
    let ca_pid = mesh
        .ca_server()
        .and_then(|ca| ca.pid())
        .expect("the CA service runs");
    let rotations = |node: &str| mesh.node(node).log().matches("rotated root loaded").count();
    let add_root = |name: &str| {
        let dir = mesh.trust_dir().with_extension(name);
        let _ = std::fs::remove_dir_all(&dir);
        let bin = rampart_tests::agent::rampart_bin().expect("binary");
        rampart_tests::cmd::run(
            bin.to_str().expect("path"),
            &["ca", "init", "--dir", dir.to_str().expect("path")],
        )
        .expect("another root");
        let trusted = mesh.trust_dir().join("ca.crt");
        let mut roots = std::fs::read_to_string(&trusted).expect("roots");
        roots.push_str(&std::fs::read_to_string(dir.join("ca.crt")).expect("root"));
        std::fs::write(&trusted, roots).expect("roots to the agents");
        let _ = std::fs::remove_dir_all(&dir);
    };
    let rotate = |name: &str| {
        let before = (rotations("node-1"), rotations("node-2"));
        add_root(name);
        rampart_tests::eventually(
            "both agents to load the roots",
            Duration::from_secs(10),
            || (rotations("node-1") > before.0 && rotations("node-2") > before.1).then_some(()),
        );
    };
    rotate("extra-1");
    rampart_tests::eventually(
        "fresh certificates on both nodes",
        Duration::from_secs(10),
        || {
            (workload_seconds_left(&mesh, "node-1")? >= 8
                && workload_seconds_left(&mesh, "node-2")? >= 8)
                .then_some(())
        },
    );
    rampart_tests::ca_service::freeze(ca_pid, true);
    rotate("extra-2");
    let started = std::time::Instant::now();
    assert!(
        exchange(a_ns, b, 1, Duration::ZERO),
        "a new tunnel on certificates due for renewal, the CA hung; node-1 log:\n{}\nnode-2 log:\n{}",
        mesh.node("node-1").log(),
        mesh.node("node-2").log()
    );
    println!("new tunnel with the CA hung: {:?}", started.elapsed());
    rampart_tests::ca_service::freeze(ca_pid, false);

    // No agent holds the key.
    let key = mesh.ca_service_dir().join("ca.key");
    assert!(key.exists());
    assert!(!mesh.trust_dir().join("ca.key").exists());
    let forms = key_forms(&std::fs::read_to_string(&key).expect("the CA's key"));
    let ca_pid = mesh
        .ca_server()
        .and_then(|ca| ca.pid())
        .expect("the CA service runs");
    assert!(
        memory_holds(ca_pid, &forms),
        "the scan finds the key in the CA service's memory (else it proves nothing)"
    );
    for agent in mesh.agents() {
        let pid = agent.pid().expect("running");
        assert!(
            !process_holds(pid, &key),
            "an agent holds {}",
            key.display()
        );
        assert!(
            !memory_holds(pid, &forms),
            "the CA's key is in an agent's memory"
        );
    }

    // Node 1's credential cannot get the identity of node 2's pod, from node 1 or elsewhere.
    let b_id = "spiffe://cluster.local/ns/shop/sa/b";
    for ns in [&topo.node("node-1").ns, &topo.node("node-2").ns] {
        let refused = request(&mesh, ns, "node-1", b_id).expect_err("node 1 asked for b");
        assert!(refused.contains("403"), "{refused}");
        assert!(refused.contains("node-1"), "{refused}");
    }
    let issued = request(
        &mesh,
        &topo.node("node-2").ns,
        "node-1",
        "spiffe://cluster.local/ns/shop/sa/a",
    )
    .expect("node 1's token gets node 1's pods' identities, wherever it is used");
    assert!(
        issued.contains("issued spiffe://cluster.local/ns/shop/sa/a"),
        "{issued}"
    );
    let log = mesh.ca_server().expect("the CA service").log();
    assert_eq!(
        log.matches("reason=\"not_on_node\"").count(),
        2,
        "each refusal is logged:\n{log}"
    );

    // Root rotation under a live connection, with no restart: the agents first trust the new
    // root beside the old one (their ca.crt holds both), then the new root and key replace the
    // CA's files (as a Secret's update would), and the running CA signs with them; the
    // connection opened before carries on, and new ones work.
    std::thread::scope(|scope| {
        let live = scope.spawn(|| exchange(a_ns, b, 20, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(500));
        let service = mesh.ca_service_dir();
        let staged = service.with_extension("next");
        let _ = std::fs::remove_dir_all(&staged);
        let old_root = std::fs::read_to_string(service.join("ca.crt")).expect("old root");
        let bin = rampart_tests::agent::rampart_bin().expect("binary");
        rampart_tests::cmd::run(
            bin.to_str().expect("path"),
            &["ca", "init", "--dir", staged.to_str().expect("path")],
        )
        .expect("a new root");
        let new_root = std::fs::read_to_string(staged.join("ca.crt")).expect("new root");
        assert_ne!(old_root, new_root);
        std::fs::write(
            mesh.trust_dir().join("ca.crt"),
            format!("{new_root}{old_root}"),
        )
        .expect("both roots to the agents");
        for node in ["node-1", "node-2"] {
            rampart_tests::eventually(
                &format!("{node} to trust the new root"),
                Duration::from_secs(10),
                || {
                    mesh.node(node)
                        .log()
                        .contains("rotated root loaded")
                        .then_some(())
                },
            );
        }
        for file in ["ca.key", "ca.crt"] {
            std::fs::copy(staged.join(file), service.join(file)).expect("the new root's files");
        }
        let ca_log_path = mesh.ca_server().expect("the CA service").log_path();
        let ca_log = || std::fs::read_to_string(&ca_log_path).unwrap_or_default();
        rampart_tests::eventually(
            "the running CA to sign with the new root",
            Duration::from_secs(15),
            || ca_log().contains("signing with the new ones").then_some(()),
        );
        assert!(
            exchange(a_ns, b, 1, Duration::ZERO),
            "a new connection after the rotation; node-1 log:\n{}\nnode-2 log:\n{}\nCA log:\n{}",
            mesh.node("node-1").log(),
            mesh.node("node-2").log(),
            ca_log()
        );
        assert!(
            live.join().expect("live thread"),
            "the connection opened before the rotation carried on through it"
        );
        let _ = std::fs::remove_dir_all(&staged);
    });
    assert!(exchange(a_ns, b, 1, Duration::ZERO));
    drop(mesh);
}

/// The CA learns where pods run from the API server (a watch of every Pod): node 1 is refused
/// the identity of a pod the API has not placed on it, and gets it once the API schedules such a
/// pod there; agents authenticate with their pods' service-account tokens (a TokenReview).
#[test]
fn the_ca_learns_placement_from_the_api_server() {
    require_root();
    let topo = rampart_tests::mesh::shop::two_nodes().expect("topology");
    let api = ApiServer::start_on_underlay(&topo).expect("API server stand-in");
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}",
        pod_object("shop", "a", 1, ip(1, 10))
    ))
    .expect("pods");
    let work = std::env::temp_dir().join(format!("rampart-ca-kube-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("trust")).expect("work");
    let bin = rampart_tests::agent::rampart_bin().expect("binary");
    let (service, kubeconfig) = (work.join("ca"), work.join("kubeconfig"));
    rampart_tests::agent::ca_init_with(&bin, &service).expect("ca init");
    std::fs::copy(service.join("ca.crt"), work.join("trust/ca.crt")).expect("ca.crt");
    let token = rampart_tests::cmd::run(
        bin.to_str().expect("path"),
        &[
            "ca",
            "node-token",
            "--dir",
            service.to_str().expect("path"),
            "--node",
            "node-1",
        ],
    )
    .expect("token");
    std::fs::write(work.join("token"), token.trim()).expect("token file");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let ca = CaServer::start(&topo, &bin, &service, Placement::Kubeconfig(kubeconfig), 60)
        .expect("the CA service on the API");
    let (trust, token) = (work.join("trust"), work.join("token"));
    let node1 = &topo.node("node-1").ns;
    let issued = request_with(&trust, &token, node1, "spiffe://cluster.local/ns/shop/sa/a")
        .unwrap_or_else(|e| panic!("a runs on node 1: {e}\nCA log:\n{}", ca.log()));
    assert!(
        issued.contains("issued spiffe://cluster.local/ns/shop/sa/a"),
        "{issued}"
    );
    let c = "spiffe://cluster.local/ns/shop/sa/c";
    let refused = request_with(&trust, &token, node1, c).expect_err("no c on node 1 yet");
    assert!(refused.contains("403"), "{refused}");
    api.apply_yaml(&pod_object("shop", "c", 1, ip(1, 11)))
        .expect("c scheduled on node 1");
    rampart_tests::eventually("the CA to see c on node 1", Duration::from_secs(10), || {
        request_with(&trust, &token, node1, c).ok()
    });

    // In a cluster, an agent authenticates with its pod's projected service-account token
    // (audience rampart-ca): the CA reviews it with the API and takes the node the API places
    // that pod on. A token of a pod the API does not have, or of another service account, is
    // refused.
    api.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: rampart-system}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: rampart-n1, namespace: rampart-system}\nspec: {serviceAccountName: rampart, nodeName: node-1, containers: [{name: agent, image: rampart}]}\n",
    )
    .expect("the agent's pod");
    let sa_token = |name: &str, ns: &str, sa: &str, uid: &str| {
        let file = work.join(format!("sa-{name}"));
        let token = api.issue_service_account_token(ns, sa, name, uid, "node-1", "rampart-ca");
        std::fs::write(&file, token).expect("token file");
        file
    };
    // The API gives the pod its uid; the token is bound to it.
    let uid = api
        .get("v1", "Pod", "rampart-system", "rampart-n1")
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("the pod's uid");
    let agent_token = sa_token("rampart-n1", "rampart-system", "rampart", &uid);
    let issued = rampart_tests::eventually(
        "the CA to see the agent's pod",
        Duration::from_secs(10),
        || {
            request_with(
                &trust,
                &agent_token,
                node1,
                "spiffe://cluster.local/ns/shop/sa/a",
            )
            .ok()
        },
    );
    assert!(
        issued.contains("node certificate: spiffe://cluster.local/rampart/node/node-1"),
        "{issued}"
    );
    let refused = request_with(
        &trust,
        &agent_token,
        node1,
        "spiffe://cluster.local/ns/shop/sa/b",
    )
    .expect_err("b is not on node 1");
    assert!(refused.contains("403"), "{refused}");
    for (what, file) in [
        (
            "a pod the API does not have",
            sa_token("rampart-gone", "rampart-system", "rampart", "no-such-uid"),
        ),
        (
            "another service account",
            sa_token("a", "shop", "a", "uid-a"),
        ),
    ] {
        let refused = request_with(&trust, &file, node1, "spiffe://cluster.local/ns/shop/sa/a")
            .expect_err(what);
        assert!(refused.contains("401"), "{what}: {refused}");
    }
    let log = ca.log();
    assert!(
        log.contains("reason=\"unknown_pod\"") && log.contains("reason=\"not_an_agent\""),
        "{log}"
    );
    drop(ca);
    let _ = std::fs::remove_dir_all(&work);
}
