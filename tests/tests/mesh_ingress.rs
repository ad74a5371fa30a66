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
use rampart_tests::probe::{HttpReply, http_request};
use rampart_tests::topology::{OUTSIDE_IP, OUTSIDE_IP6};
use rampart_tests::{Agent, Topology, require_root};

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

/// Two nodes, a client outside the cluster, pod b (node 2) with origins on 8443 (TLS ingress
/// with API keys), 9090 (mTLS only) and 8080 (TLS ingress with the WAF and request DLP), and
/// agents on both nodes (node 2's on its uplink). Fields drop in order: agents first.
struct Ingress {
    mesh: MeshAgents,
    origin: HttpServer,
    internal: HttpServer,
    storefront: HttpServer,
    api: (String, String),
    wildcard: (String, String),
    topo: Topology,
}

const KEY: [(&str, &str); 1] = [("x-api-key", API_KEY)];

impl Ingress {
    fn start() -> Ingress {
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
        Ingress {
            mesh,
            origin,
            internal,
            storefront,
            api,
            wildcard,
            topo,
        }
    }

    fn node2(&self) -> &Agent {
        self.mesh.node("node-2")
    }

    fn b(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(ip(2, 10)), port)
    }

    /// HTTPS from outside to 8443 with `sni`, trusting only `roots`.
    fn https(
        &self,
        sni: &str,
        roots: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpReply> {
        let outside = self.topo.outside().path();
        https_request(&outside, Self::b(8443), sni, roots, path, headers, TIMEOUT)
    }

    /// HTTPS from outside to the storefront (8080) at `to`.
    fn shop(&self, to: SocketAddr, path: &str) -> HttpReply {
        let outside = self.topo.outside().path();
        let headers = [("user-agent", "Mozilla/5.0"), ("accept", "text/html")];
        https_request(
            &outside,
            to,
            "api.shop.test",
            &self.api.0,
            path,
            &headers,
            TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "HTTPS {to} {path}: {e:#}\nnode-2 log:\n{}",
                self.node2().log()
            )
        })
    }

    fn denied(&self, labels: &str) -> f64 {
        self.node2().sample("rampart_proxy_denied_total", labels)
    }
}

#[test]
fn an_outside_client_gets_the_certificate_its_sni_names_and_the_l7_chain() {
    let i = Ingress::start();
    let (api, wildcard) = (&i.api.0, &i.wildcard.0);
    // TLS terminated with the certificate the SNI names; the chain runs on every request.
    let reply = i
        .https("api.shop.test", api, "/orders/1", &[])
        .unwrap_or_else(|e| panic!("HTTPS: {e:#}\nnode-2 log:\n{}", i.node2().log()));
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(i.origin.requests(), 0, "a refused request reached the pod");
    let reply = i
        .https("api.shop.test", api, "/orders/1", &KEY)
        .expect("HTTPS with a key");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-client: acme"), "{}", reply.body);
    assert!(!reply.body.contains(API_KEY), "the key reached the pod");
    assert!(
        reply.body.contains(&format!("peer: {OUTSIDE_IP}")),
        "the pod sees the client's own address: {}",
        reply.body
    );
    // Another name: the wildcard certificate (the client trusts only that one).
    let reply = i
        .https("www.shop.test", wildcard, "/orders/2", &KEY)
        .expect("wildcard");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        i.https("www.shop.test", api, "/orders/2", &KEY).is_err(),
        "www.shop.test must not get the api certificate"
    );
    let forbidden = i
        .https("api.shop.test", api, "/admin", &KEY)
        .expect("forbidden");
    assert_eq!(forbidden.status, 403);
    assert_eq!(i.origin.requests(), 2);
    // The bucket has 4 tokens a minute: 2 used, and the refused handshake used none.
    for n in [3, 4] {
        let path = format!("/orders/{n}");
        assert_eq!(
            i.https("api.shop.test", api, &path, &KEY)
                .expect("ok")
                .status,
            200
        );
    }
    let limited = i.https("api.shop.test", api, "/orders/5", &KEY).expect("5");
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(i.origin.requests(), 4);
    // A failed handshake (the client does not trust the certificate) is counted.
    assert!(i.denied("filter=\"ingress\",reason=\"tls_handshake_failed\"") >= 1.0);
    assert_eq!(
        i.node2()
            .sample("rampart_proxy_flows_total", "direction=\"ingress\""),
        4.0,
        "ingress connections that reached the pod: those with a request the chain passed (a refused request never opens one)"
    );
}

#[test]
fn plaintext_to_a_tls_ingress_port_is_refused_and_counted() {
    let i = Ingress::start();
    let to = Ingress::b(8443);
    let plaintext = i
        .topo
        .outside()
        .run(move || -> std::io::Result<usize> {
            let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
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
    assert_eq!(i.origin.requests(), 0);
    assert_eq!(
        i.denied("filter=\"ingress\",reason=\"plaintext\""),
        1.0,
        "{}",
        i.node2().metrics().unwrap_or_default()
    );
}

#[test]
fn an_mtls_only_port_drops_outside_clients_and_pods_reach_ingress_ports_through_the_tunnel() {
    let i = Ingress::start();
    // A port that takes mTLS only: the outside client's SYN drops in the kernel.
    let to = Ingress::b(9090);
    let connected = i
        .topo
        .outside()
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
        .expect("netns");
    assert!(
        !connected,
        "plaintext from outside reached an mTLS-only port"
    );
    assert_eq!(i.internal.requests(), 0);
    assert!(
        i.node2().sample(
            "rampart_drops_total",
            "reason=\"mtls_required\",direction=\"ingress\""
        ) >= 1.0
    );
    // Inside the cluster the ingress port is reached through the tunnel, with the same chain.
    let a = i.topo.pod("shop/a").ns.path();
    let reply =
        http_request(&a, Ingress::b(8443), "GET", "/orders/6", &KEY, TIMEOUT).expect("east-west");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-client: acme"), "{}", reply.body);
    let anonymous =
        http_request(&a, Ingress::b(8443), "GET", "/orders/6", &[], TIMEOUT).expect("east-west");
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        i.node2()
            .sample("rampart_proxy_flows_total", "direction=\"ingress\""),
        0.0,
        "east-west flows are not ingress"
    );
}

#[test]
fn the_access_log_names_the_sni_and_the_world_source_and_never_the_key() {
    let i = Ingress::start();
    let reply = i
        .https("www.shop.test", &i.wildcard.0, "/orders/2", &KEY)
        .expect("wildcard");
    assert_eq!(reply.status, 200, "{reply:?}");
    let flows = i.node2().cli(&["flows", "--json"]).expect("rampart flows");
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
}

#[test]
fn the_waf_and_request_dlp_judge_ingress_over_ipv4_and_ipv6() {
    let i = Ingress::start();
    let b4 = Ingress::b(8080);
    assert_eq!(i.shop(b4, "/shop?q=shoes").status, 200);
    assert_eq!(i.shop(b4, "/shop?id=1%27%20OR%20%271%27=%271").status, 403);
    assert_eq!(i.shop(b4, "/shop?card=4111111111111111").status, 403);
    assert_eq!(
        i.storefront.requests(),
        1,
        "a refused request reached the pod"
    );
    // The same port over IPv6: redirected at the uplink, TLS, the chain, the client's own
    // address at the pod.
    let b6 = SocketAddr::new(IpAddr::V6(i.topo.pod("shop/b").ip6), 8080);
    let reply = i.shop(b6, "/shop?q=boots");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains(&format!("peer: {OUTSIDE_IP6}")),
        "the pod sees the client's own IPv6 address: {}",
        reply.body
    );
    assert_eq!(i.shop(b6, "/shop?id=1%27%20OR%20%271%27=%271").status, 403);
    assert_eq!(
        i.storefront.requests(),
        2,
        "a refused request reached the pod"
    );
    assert_eq!(
        i.node2().sample(
            "rampart_waf_blocked_total",
            "policy=\"storefront\",rule_group=\"sqli\""
        ),
        2.0,
        "the attack over IPv4 and over IPv6"
    );
    assert_eq!(i.denied("filter=\"dlp\",reason=\"blocked\""), 1.0);
}
