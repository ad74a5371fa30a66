//! Kubernetes Services on a real kernel, with kube-proxy's own rules on the nodes: two nodes,
//! Services and EndpointSlices from the Kubernetes API (the stand-in), and each node namespace
//! carrying the chains kube-proxy writes in iptables mode (`KUBE-SERVICES`, `KUBE-SVC-*` with
//! random backend choice, `KUBE-SEP-*` DNAT, `KUBE-NODEPORTS`, `KUBE-MARK-MASQ` and masquerade).
//!
//! - A ClusterIP Service with a backend on each node (and its IPv6 twin): a pod that an egress
//!   policy allows to the backends (by their labels) reaches both through the Service address; a
//!   pod without that allow is denied at its own interface, judged on the backend (not as
//!   `world`);
//! - DNS through the kube-dns Service under the shipped zero-trust baseline (UDP and TCP);
//! - a Service without ready backends drops new flows as `no_service_backend`;
//! - a MeshPolicy port reached through its Service crosses the underlay inside the mTLS tunnel;
//! - kube-proxy's rules never see the pods' Service traffic (Rampart translated it first), while
//!   the node's own connection to the Service still goes through them;
//! - a client outside the cluster reaches a NodePort Service whose pod's port has a MeshPolicy
//!   `ingress` section through the node's proxy (the pod sees the client's own address);
//! - the same client through a NodePort kube-proxy serves (masquerading it to the node's
//!   address) is judged by the backend's policy, not waved through as the node's own traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::capture::{Capture, contains};
use rampart_tests::http_server::HttpServer;
use rampart_tests::kube_api::ApiServer;
use rampart_tests::mesh::MeshAgents;
use rampart_tests::metrics::sample;
use rampart_tests::netns::{Netns, TEST_PREFIX};
use rampart_tests::topology::ipv6_of;
use rampart_tests::{Agent, EchoServer, Topology, cmd, eventually, probe, require_root};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(2);
const CHANGE: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"RAMPART-SERVICE-MTLS-SECRET-4c1d";

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const WEB_1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const WEB_2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const DB: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 12);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 53);
const FRONT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 30);

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WEB_VIP6: &str = "fd00:96::20";
const DB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_NODE_PORT: u16 = 30080;
const FRONT_NODE_PORT: u16 = 30090;

fn pod(namespace: &str, name: &str, labels: Value, node: u8, ip: Ipv4Addr) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"serviceAccountName": name, "nodeName": format!("node-{node}"),
                    "containers": [{"name": "c", "image": "c"}]},
           "status": {"phase": "Running", "podIP": ip.to_string(),
                      "podIPs": [{"ip": ip.to_string()}, {"ip": ipv6_of(ip).to_string()}],
                      "hostIP": format!("192.168.200.{node}")}})
}

/// A Service with one port (`port` → `target`, named `name`), and its EndpointSlice of `backends`
/// (pod name and address).
fn service(
    namespace: &str,
    service: &str,
    vip: Ipv4Addr,
    (name, protocol, port, target): (&str, &str, u16, u16),
    node_port: Option<u16>,
    backends: &[(&str, Ipv4Addr)],
) -> [Value; 2] {
    let mut port_spec =
        json!({"name": name, "protocol": protocol, "port": port, "targetPort": target});
    if let Some(n) = node_port {
        port_spec["nodePort"] = json!(n);
    }
    let kind = if node_port.is_some() {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|(pod, ip)| {
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod}})
        })
        .collect();
    [
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": service, "namespace": namespace},
               "spec": {"type": kind, "clusterIP": vip.to_string(), "ports": [port_spec]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": name, "protocol": protocol, "port": target}],
               "endpoints": endpoints}),
    ]
}

fn objects() -> Vec<Value> {
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.200.1"}]}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2"},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.200.2"}]}}),
        pod("shop", "client", json!({"app": "client"}), 1, CLIENT),
        pod("shop", "stranger", json!({"app": "stranger"}), 1, STRANGER),
        pod("shop", "web-1", json!({"app": "web"}), 1, WEB_1),
        pod("shop", "web-2", json!({"app": "web"}), 2, WEB_2),
        pod("shop", "db", json!({"app": "db"}), 2, DB),
        pod(
            "kube-system",
            "coredns",
            json!({"k8s-app": "kube-dns"}),
            2,
            DNS,
        ),
        pod("shop", "front", json!({"app": "front"}), 1, FRONT),
    ];
    out.extend(service(
        "shop",
        "front",
        Ipv4Addr::new(10, 96, 0, 50),
        ("http", "TCP", 80, 8080),
        Some(FRONT_NODE_PORT),
        &[("front", FRONT)],
    ));
    out.extend(service(
        "shop",
        "web",
        WEB_VIP,
        ("http", "TCP", 80, 8080),
        Some(WEB_NODE_PORT),
        &[("web-1", WEB_1), ("web-2", WEB_2)],
    ));
    // The web pods' IPv6 twins behind an IPv6 Service.
    let [mut web6, mut web6_slice] = service(
        "shop",
        "web6",
        WEB_VIP,
        ("http", "TCP", 80, 8080),
        None,
        &[("web-1", WEB_1), ("web-2", WEB_2)],
    );
    web6["spec"]["clusterIP"] = json!(WEB_VIP6);
    web6["spec"]["ipFamilies"] = json!(["IPv6"]);
    web6_slice["addressType"] = json!("IPv6");
    for (i, ip) in [WEB_1, WEB_2].into_iter().enumerate() {
        web6_slice["endpoints"][i]["addresses"] = json!([ipv6_of(ip).to_string()]);
    }
    out.extend([web6, web6_slice]);
    out.extend(service(
        "shop",
        "db",
        DB_VIP,
        ("postgres", "TCP", 5432, 5432),
        None,
        &[("db", DB)],
    ));
    out.extend(service(
        "shop",
        "empty",
        EMPTY_VIP,
        ("http", "TCP", 80, 8080),
        None,
        &[],
    ));
    for protocol in ["UDP", "TCP"] {
        let name = if protocol == "UDP" { "dns" } else { "dns-tcp" };
        let [mut svc, slice] = service(
            "kube-system",
            &format!("kube-dns-{}", protocol.to_lowercase()),
            DNS_VIP,
            (name, protocol, 53, 53),
            None,
            &[("coredns", DNS)],
        );
        // One Service with two ports is what clusters run; two Services on one address are not
        // allowed, so the TCP one gets its own address here.
        if protocol == "TCP" {
            svc["spec"]["clusterIP"] = json!("10.96.0.11");
        }
        out.push(svc);
        out.push(slice);
    }
    out
}

/// The shipped baseline (default deny both ways, DNS to kube-dns allowed), the client's allows
/// (to the web and db pods, by label), and the db's MeshPolicy.
fn policies() -> String {
    format!(
        "{}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-out, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: web}}}}}}]
    ports: [{{port: 8080}}]
  - to: [{{podSelector: {{matchLabels: {{app: db}}}}}}]
    ports: [{{port: 5432}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-in, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{podSelector: {{}}}}]
    ports: [{{port: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-in, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{port: 5432}}]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: db-mtls}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: db}}}}}}
  ports: [{{port: 5432}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: front-in, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: front}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 0.0.0.0/0}}}}]
    ports: [{{port: 8080}}]
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: front-ingress}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: front}}}}}}
  ports: [{{port: 8080}}]
  ingress: {{}}
",
        include_str!("../../policies/00-baseline.yaml")
    )
}

/// kube-proxy's iptables-mode rules for the web Service (ClusterIP and NodePort), as
/// `iptables-save` prints them on a node running it.
fn kube_proxy_rules() -> String {
    format!(
        "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-EXT-WEB - [0:0]
:KUBE-SEP-WEB1 - [0:0]
:KUBE-SEP-WEB2 - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d {WEB_VIP}/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment \"shop/web:http\" -m tcp --dport {WEB_NODE_PORT} -j KUBE-EXT-WEB
-A KUBE-EXT-WEB -m comment --comment \"masquerade traffic for shop/web:http external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-WEB -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s 10.244.0.0/16 -d {WEB_VIP}/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m comment --comment \"shop/web:http -> {WEB_1}:8080\" -m statistic --mode random --probability 0.5 -j KUBE-SEP-WEB1
-A KUBE-SVC-WEB -m comment --comment \"shop/web:http -> {WEB_2}:8080\" -j KUBE-SEP-WEB2
-A KUBE-SEP-WEB1 -s {WEB_1}/32 -m comment --comment \"shop/web:http\" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEB1 -p tcp -m comment --comment \"shop/web:http\" -m tcp -j DNAT --to-destination {WEB_1}:8080
-A KUBE-SEP-WEB2 -s {WEB_2}/32 -m comment --comment \"shop/web:http\" -j KUBE-MARK-MASQ
-A KUBE-SEP-WEB2 -p tcp -m comment --comment \"shop/web:http\" -m tcp -j DNAT --to-destination {WEB_2}:8080
COMMIT
"
    )
}

/// Installs [`kube_proxy_rules`] in a node namespace (and the route kube-proxy's nodes have for
/// the Service range, for the node's own connections).
fn install_kube_proxy(node: &Netns) {
    let file = std::env::temp_dir().join(format!(
        "rampart-kube-proxy-{}-{}.rules",
        std::process::id(),
        node.name()
    ));
    std::fs::write(&file, kube_proxy_rules()).expect("rules file");
    let path = file.display().to_string();
    cmd::in_ns(node.name(), "iptables-restore", &["--noflush", &path]).expect("iptables-restore");
    let _ = std::fs::remove_file(&file);
    cmd::ip(&[
        "-n",
        node.name(),
        "route",
        "add",
        "10.96.0.0/12",
        "dev",
        "uplink",
    ])
    .expect("service route");
}

/// Packets kube-proxy's cluster-IP rule for the web Service has matched on `node`.
fn kube_proxy_matched(node: &Netns) -> u64 {
    let out = cmd::in_ns(
        node.name(),
        "iptables",
        &["-t", "nat", "-L", "KUBE-SERVICES", "-v", "-x", "-n"],
    )
    .expect("iptables -L");
    out.lines()
        .find(|l| l.contains("KUBE-SVC-WEB"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no KUBE-SVC-WEB rule in:\n{out}"))
}

fn metric(agent: &Agent, name: &str, labels: &str) -> f64 {
    let text = agent.metrics().unwrap_or_default();
    sample(&text, name, labels).unwrap_or(0.0)
}

fn get(ns: &Netns, addr: SocketAddr) -> bool {
    probe::http_get(&ns.path(), addr, "/", TIMEOUT).is_ok_and(|(status, _)| status == 200)
}

#[test]
fn services_are_judged_on_their_backends_and_kube_proxy_never_sees_pods_traffic() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/client", CLIENT)
        .pod("node-1", "shop/stranger", STRANGER)
        .pod("node-1", "shop/web-1", WEB_1)
        .pod("node-2", "shop/web-2", WEB_2)
        .pod("node-2", "shop/db", DB)
        .pod("node-2", "kube-system/coredns", DNS)
        .pod("node-1", "shop/front", FRONT)
        .outside()
        .build()
        .expect("topology");
    for node in ["node-1", "node-2"] {
        install_kube_proxy(&topo.node(node).ns);
    }
    let web_1 = HttpServer::start(&topo.pod("shop/web-1").ns, 8080).expect("web-1");
    let web_2 = HttpServer::start(&topo.pod("shop/web-2").ns, 8080).expect("web-2");
    let _db = EchoServer::start(&topo.pod("shop/db").ns, &[5432], &[]).expect("db");
    let _dns = EchoServer::start(&topo.pod("kube-system/coredns").ns, &[53], &[53]).expect("dns");
    let front = HttpServer::start(&topo.pod("shop/front").ns, 8080).expect("front");
    let api = ApiServer::start_on_underlay(&topo).expect("API server stand-in");
    for object in objects() {
        api.apply(&object).expect("object");
    }
    let kubeconfig = std::env::temp_dir().join(format!(
        "rampart-services-kubeconfig-{}",
        std::process::id()
    ));
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubeconfig_arg = kubeconfig.display().to_string();
    let mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &policies(),
        None,
        &["--kubeconfig", &kubeconfig_arg, "--interface", "uplink"],
    )
    .expect("agents");
    let _ = std::fs::remove_file(&kubeconfig);
    let node1 = mesh.node("node-1");
    let client = &topo.pod("shop/client").ns;
    let stranger = &topo.pod("shop/stranger").ns;
    let web = SocketAddr::new(IpAddr::V4(WEB_VIP), 80);

    // A ClusterIP Service with a backend on each node: both are reached through its address.
    eventually("the web Service to answer", CHANGE, || {
        get(client, web).then_some(())
    });
    for _ in 0..20 {
        assert!(get(client, web), "client -> web Service");
    }
    assert!(
        web_1.requests() >= 1 && web_2.requests() >= 1,
        "both backends served ({} and {}): the kernel chose among them",
        web_1.requests(),
        web_2.requests()
    );
    // The same over IPv6.
    let web6: SocketAddr = format!("[{WEB_VIP6}]:80").parse().expect("address");
    let served = web_1.requests() + web_2.requests();
    for _ in 0..4 {
        assert!(get(client, web6), "client -> web Service over IPv6");
    }
    assert_eq!(web_1.requests() + web_2.requests(), served + 4);
    // The stranger has no egress allow to the web pods: denied at its own interface, judged on
    // the backend pod.
    let denied_before = metric(
        node1,
        "rampart_drops_total",
        r#"reason="policy_denied",direction="egress""#,
    );
    assert!(!get(stranger, web), "stranger -> web Service is denied");
    assert!(
        metric(
            node1,
            "rampart_drops_total",
            r#"reason="policy_denied",direction="egress""#
        ) > denied_before,
        "the stranger's flow dropped at its egress"
    );
    let flows = node1.cli(&["flows"]).expect("flows");
    assert!(
        flows
            .lines()
            .any(|l| l.contains("shop/stranger") && l.contains("shop/web-") && l.contains("deny")),
        "the denied flow names the backend pod:\n{flows}"
    );

    // DNS through the kube-dns Services under the zero-trust baseline: UDP and TCP, from
    // every pod.
    for ns in [client, stranger] {
        let udp = probe::udp(ns, SocketAddr::new(IpAddr::V4(DNS_VIP), 53), TIMEOUT);
        assert!(udp.reached(), "DNS over UDP through kube-dns: {udp:?}");
        let tcp = probe::tcp(
            ns,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)), 53),
            TIMEOUT,
        );
        assert!(tcp.reached(), "DNS over TCP through kube-dns: {tcp:?}");
    }

    // A Service without backends: new flows drop, counted.
    let empty = SocketAddr::new(IpAddr::V4(EMPTY_VIP), 80);
    assert!(!probe::tcp(client, empty, Duration::from_millis(500)).reached());
    assert!(
        metric(
            node1,
            "rampart_drops_total",
            r#"reason="no_service_backend",direction="egress""#
        ) >= 1.0
    );

    // A MeshPolicy port reached through its Service: through the tunnel, encrypted on the
    // underlay.
    let fabric = topo.fabric().expect("two nodes have an underlay");
    let capture = Capture::start(fabric, &mesh.work_dir().join("underlay.pcap"));
    assert!(
        probe::echo_exchange(
            client,
            SocketAddr::new(IpAddr::V4(DB_VIP), 5432),
            SECRET,
            TIMEOUT
        ),
        "client -> db Service through mTLS; node-1 log:\n{}",
        node1.log()
    );
    let (raw, text) = capture.finish();
    assert!(
        !contains(&raw, SECRET),
        "the db flow's payload crossed the underlay in plaintext"
    );
    assert!(
        text.contains("192.168.200.2.15008"),
        "the db flow crossed as a tunnel to node-2:\n{text}"
    );
    assert!(
        metric(
            node1,
            "rampart_proxy_flows_total",
            r#"direction="outbound""#
        ) >= 1.0
    );

    // kube-proxy's rules saw none of it; the node's own connection still goes through them.
    let node1_ns = &topo.node("node-1").ns;
    assert_eq!(
        kube_proxy_matched(node1_ns),
        0,
        "kube-proxy's cluster-IP rule matched a pod's packet Rampart should have translated"
    );
    let _ = get(node1_ns, web);
    assert!(
        kube_proxy_matched(node1_ns) >= 1,
        "the node's own connection goes through kube-proxy's rules"
    );

    // From outside, through a NodePort whose pod's port takes ingress: the node's proxy.
    let outside = topo.outside();
    let node_port = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1)), port);
    let ingress_before = metric(node1, "rampart_proxy_flows_total", r#"direction="ingress""#);
    let reply = probe::http_get(&outside.path(), node_port(FRONT_NODE_PORT), "/", TIMEOUT);
    let body = match reply {
        Ok((200, body)) => body,
        other => panic!(
            "outside -> front's node port: {other:?}; node-1 log:\n{}",
            node1.log()
        ),
    };
    assert!(front.requests() >= 1);
    assert!(
        body.contains(&format!("peer: {}", rampart_tests::topology::OUTSIDE_IP)),
        "the pod sees the outside client's own address:\n{body}"
    );
    assert!(
        metric(node1, "rampart_proxy_flows_total", r#"direction="ingress""#) > ingress_before,
        "the flow went through node-1's proxy"
    );

    // Through kube-proxy's NodePort, masqueraded to node-1's address: the web pods' policy
    // (pods of shop only) decides, whichever backend kube-proxy picks.
    for _ in 0..6 {
        assert!(
            !get(outside, node_port(WEB_NODE_PORT)),
            "a masqueraded client passed as the node's own traffic"
        );
    }
    let out = cmd::in_ns(
        node1_ns.name(),
        "iptables",
        &["-t", "nat", "-L", "KUBE-NODEPORTS", "-v", "-x", "-n"],
    )
    .expect("iptables -L");
    let matched: u64 = out
        .lines()
        .find(|l| l.contains("KUBE-EXT-WEB"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(matched >= 1, "kube-proxy served the node port:\n{out}");
}
