//! Ingress through the proxy, on a real kernel: a client outside the cluster (on the underlay,
//! `world` to the agents) calls pod b on node 2, whose agent runs XDP and TC on its uplink.
//!
//! - port 8443 has a MeshPolicy with `ingress.tls` (two `kubernetes.io/tls` Secrets) and an
//!   `http` section (API keys, a rule, a rate limit): the kernel redirects the client's flow at
//!   the uplink to the proxy, which terminates TLS with the certificate the SNI names (checked by
//!   the client against that certificate alone), runs the chain (401 without a key, 403 off the
//!   allowed path, 429 past the bucket, never at the pod), and connects to the pod from the
//!   client's own address;
//! - plaintext to that port from outside is refused by the proxy and counted;
//! - port 9090 requires mTLS without ingress: the outside client's SYN drops `mtls_required`;
//! - pod a (node 1) still reaches port 8443 through the mTLS tunnel, with the same chain;
//! - the access log names the SNI and the `world` source;
//! - port 8080 takes TLS from outside through the Core Rule Set and request DLP: an attack and a
//!   card number are refused before the pod, over IPv4 and IPv6 (pod b is dual-stack).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use rampart_tests::http_server::HttpServer;
use rampart_tests::https::https_request;
use rampart_tests::mesh::{MeshAgents, dual_stack_pod_object, pod_object};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::http_request;
use rampart_tests::topology::{OUTSIDE_IP, OUTSIDE_IP6};
use rampart_tests::{Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(5);
const API_KEY: &str = "key-acme-7c1d";

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

/// A self-signed certificate for `names`: (certificate PEM, key PEM).
fn certificate(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

fn tls_secret(name: &str, (cert, key): &(String, String)) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: shop}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

fn policy(api: &(String, String), wildcard: &(String, String)) -> String {
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
{}{}{}{}---
apiVersion: v1
kind: Secret
metadata: {{name: partner-keys, namespace: shop}}
stringData: {{acme: {API_KEY}}}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: api-gateway}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8443}}]
  ingress:
    tls:
      certificates:
      - secretRef: {{namespace: shop, name: api-tls}}
      - secretRef: {{namespace: shop, name: wildcard-tls}}
  http:
    authentication:
      providers:
      - name: partners
        apiKeys:
          secretRef: {{namespace: shop, name: partner-keys}}
          clientHeader: x-client
    rules:
    - action: Allow
      paths: [{{prefix: /orders}}]
    rateLimits:
      buckets:
      - {{name: per-client, key: apiKeyClient, maxTokens: 4, tokensPerFill: 4, fillInterval: 1m}}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: storefront}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8080}}]
  ingress:
    tls:
      certificates:
      - secretRef: {{namespace: shop, name: api-tls}}
  http:
    waf: {{}}
    dlp: {{requests: {{detectors: [{{type: cardNumber, action: Block}}]}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: internal-only}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 9090}}]
"#,
        pod("a", 1, 10),
        dual_stack_pod_object("shop", "b", 2, ip(2, 10)),
        tls_secret("api-tls", api),
        tls_secret("wildcard-tls", wildcard),
    )
}

#[test]
fn clients_outside_the_cluster_pass_tls_and_the_l7_chain_at_the_destination_node() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "shop/a", ip(1, 10))
        .pod("node-2", "shop/b", ip(2, 10))
        .outside()
        .build()
        .expect("topology");
    let origin = HttpServer::start(&topo.pod("shop/b").ns, 8443).expect("origin 8443");
    let internal = HttpServer::start(&topo.pod("shop/b").ns, 9090).expect("origin 9090");
    let storefront = HttpServer::start(&topo.pod("shop/b").ns, 8080).expect("origin 8080");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crs = rampart_tests::waf_cases::shared_dir(&workspace)
        .expect("shared/")
        .join(rampart_tests::waf_cases::DEFAULT_CRS)
        .display()
        .to_string();
    let api = certificate(&["api.shop.test"]);
    let wildcard = certificate(&["*.shop.test"]);
    let mesh = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &policy(&api, &wildcard),
        None,
        &["--interface", "uplink", "--crs-dir", &crs],
    )
    .expect("agents");
    let node2 = mesh.node("node-2");
    let outside = topo.outside().path();
    let b = |port| SocketAddr::new(IpAddr::V4(ip(2, 10)), port);
    let https = |sni: &str, roots: &str, path: &str, headers: &[(&str, &str)]| {
        https_request(&outside, b(8443), sni, roots, path, headers, TIMEOUT)
    };
    let key = [("x-api-key", API_KEY)];

    // TLS terminated with the certificate the SNI names; the chain runs on every request.
    let reply = https("api.shop.test", &api.0, "/orders/1", &[])
        .unwrap_or_else(|e| panic!("HTTPS: {e:#}\nnode-2 log:\n{}", node2.log()));
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(origin.requests(), 0, "a refused request reached the pod");
    let reply = https("api.shop.test", &api.0, "/orders/1", &key).expect("HTTPS with a key");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-client: acme"), "{}", reply.body);
    assert!(!reply.body.contains(API_KEY), "the key reached the pod");
    assert!(
        reply.body.contains(&format!("peer: {OUTSIDE_IP}")),
        "the pod sees the client's own address: {}",
        reply.body
    );
    // Another name: the wildcard certificate (the client trusts only that one).
    let reply = https("www.shop.test", &wildcard.0, "/orders/2", &key).expect("wildcard");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        https("www.shop.test", &api.0, "/orders/2", &key).is_err(),
        "www.shop.test must not get the api certificate"
    );
    assert_eq!(
        https("api.shop.test", &api.0, "/admin", &key)
            .expect("forbidden")
            .status,
        403
    );
    assert_eq!(origin.requests(), 2);
    // The bucket has 4 tokens a minute: 2 used, and the refused handshake used none.
    assert_eq!(
        https("api.shop.test", &api.0, "/orders/3", &key)
            .expect("3")
            .status,
        200
    );
    assert_eq!(
        https("api.shop.test", &api.0, "/orders/4", &key)
            .expect("4")
            .status,
        200
    );
    let limited = https("api.shop.test", &api.0, "/orders/5", &key).expect("5");
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(origin.requests(), 4);

    // Plaintext to the TLS port: the proxy closes it, nothing reaches the pod.
    let plaintext = topo
        .outside()
        .run(move || -> std::io::Result<usize> {
            let mut s = TcpStream::connect_timeout(&b(8443), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"GET /orders/1 HTTP/1.0\r\nx-api-key: key-acme-7c1d\r\n\r\n")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            Ok(reply.len())
        })
        .expect("netns");
    // Closed (or reset, the request unread): no byte of an answer either way.
    assert!(
        !matches!(plaintext, Ok(n) if n > 0),
        "plaintext got an answer: {plaintext:?}"
    );
    assert_eq!(origin.requests(), 4);
    assert_eq!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"ingress\",reason=\"plaintext\""
        ),
        1.0,
        "{}",
        node2.metrics().unwrap_or_default()
    );
    // A failed handshake (the client does not trust the certificate) is counted too.
    assert!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"ingress\",reason=\"tls_handshake_failed\""
        ) >= 1.0
    );

    // A port that takes mTLS only: the outside client's SYN drops in the kernel.
    let connected = topo
        .outside()
        .run(move || TcpStream::connect_timeout(&b(9090), Duration::from_secs(1)).is_ok())
        .expect("netns");
    assert!(
        !connected,
        "plaintext from outside reached an mTLS-only port"
    );
    assert_eq!(internal.requests(), 0);
    assert!(
        node2.sample(
            "rampart_drops_total",
            "reason=\"mtls_required\",direction=\"ingress\""
        ) >= 1.0
    );

    // Inside the cluster the same port is reached through the tunnel, with the same chain (the
    // bucket is shared by the API-key client, and it is empty).
    let a = topo.pod("shop/a").ns.path();
    let reply = http_request(&a, b(8443), "GET", "/orders/6", &key, TIMEOUT).expect("east-west");
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(
        http_request(&a, b(8443), "GET", "/orders/6", &[], TIMEOUT)
            .expect("east-west")
            .status,
        401
    );
    assert_eq!(
        node2.sample("rampart_proxy_flows_total", "direction=\"ingress\""),
        4.0,
        "ingress connections that reached the pod: those with a request the chain passed (a refused request never opens one)"
    );

    // The access log: the SNI, the world source, the API-key client; never the key.
    let flows = node2.cli(&["flows", "--json"]).expect("rampart flows");
    let ingress = flows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["http"]["tls_server_name"] == "www.shop.test")
        .unwrap_or_else(|| panic!("no record of the www.shop.test request:\n{flows}"));
    assert_eq!(ingress["verdict"], "allow", "{ingress}");
    assert_eq!(ingress["src"]["ip"], OUTSIDE_IP.to_string(), "{ingress}");
    assert!(ingress["src"]["pod"].is_null(), "{ingress}");
    assert_eq!(ingress["src"]["cidr"], "world", "{ingress}");
    assert_eq!(
        ingress["dst"]["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/b",
        "{ingress}"
    );
    assert_eq!(ingress["dst"]["pod"], "shop/b", "{ingress}");
    assert_eq!(ingress["http"]["api_key_client"], "acme", "{ingress}");
    assert_eq!(ingress["http"]["policy"], "api-gateway", "{ingress}");
    assert!(!flows.contains(API_KEY), "a credential in the flow log");

    // The WAF and request DLP on ingress: only the benign request reaches the pod.
    let shop = |path: &str| {
        https_request(
            &outside,
            b(8080),
            "api.shop.test",
            &api.0,
            path,
            &[("user-agent", "Mozilla/5.0"), ("accept", "text/html")],
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("HTTPS {path}: {e:#}\nnode-2 log:\n{}", node2.log()))
    };
    assert_eq!(shop("/shop?q=shoes").status, 200);
    assert_eq!(shop("/shop?id=1%27%20OR%20%271%27=%271").status, 403);
    assert_eq!(shop("/shop?card=4111111111111111").status, 403);
    assert_eq!(
        storefront.requests(),
        1,
        "a refused request reached the pod"
    );

    // The same port over IPv6: redirected at the uplink, TLS, the chain, the client's own
    // address at the pod.
    let b6 = SocketAddr::new(IpAddr::V6(topo.pod("shop/b").ip6), 8080);
    let shop6 = |path: &str| {
        https_request(
            &outside,
            b6,
            "api.shop.test",
            &api.0,
            path,
            &[("user-agent", "Mozilla/5.0"), ("accept", "text/html")],
            TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "HTTPS over IPv6 {path}: {e:#}\nnode-2 log:\n{}",
                node2.log()
            )
        })
    };
    let reply = shop6("/shop?q=boots");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains(&format!("peer: {OUTSIDE_IP6}")),
        "the pod sees the client's own IPv6 address: {}",
        reply.body
    );
    assert_eq!(shop6("/shop?id=1%27%20OR%20%271%27=%271").status, 403);
    assert_eq!(
        storefront.requests(),
        2,
        "a refused request reached the pod"
    );
    assert_eq!(
        node2.sample(
            "rampart_waf_blocked_total",
            "policy=\"storefront\",rule_group=\"sqli\""
        ),
        2.0,
        "the attack over IPv4 and over IPv6"
    );
    assert_eq!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"dlp\",reason=\"blocked\""
        ),
        1.0
    );
}
