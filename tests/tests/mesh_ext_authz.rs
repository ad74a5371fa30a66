//! External authorization in Envoy's protocol, on a real kernel: pod a (node 1) calls pod b
//! (node 2) through the mTLS tunnel, and a client outside the cluster calls pod b through
//! ingress; before either reaches the pod, node 2's proxy asks an authorizer (grpcio with
//! Envoy's compiled protos, in a pod of its own on node 2) over HTTP (8084) or gRPC (8085), and
//! the same over TLS (8086, 8087) trusting the policy's CA Secret:
//!
//! - allowed: the pod gets the request with the authorizer's header;
//! - refused: the client gets the authorizer's status, body and passed headers, the pod
//!   nothing;
//! - the authorizer too slow, or stopped: refused (403, `ext_authz_error`), never let through;
//! - the gRPC check carries the source's SPIFFE ID and address, the destination, the method,
//!   path and headers;
//! - an authorizer whose certificate the policy does not trust (another CA, or the public
//!   roots only) is never asked: refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rampart_tests::ext_authz::{
    Authorizer, GRPC_PORT, GRPCS_PORT, HTTP_PORT, HTTP_PREFIX, HTTPS_PORT,
};
use rampart_tests::http_server::HttpServer;
use rampart_tests::https::https_request;
use rampart_tests::mesh::{MeshAgents, indent, pod_object, self_signed, tls_secret};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::{HttpReply, http_request};
use rampart_tests::{Agent, Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(8);
const SNI: &str = "api.shop.test";
const HTTP_AUTHZ: u16 = 8084;
const GRPC_AUTHZ: u16 = 8085;
/// The same authorizer over TLS, trusted by the policy's CA Secret.
const HTTPS_AUTHZ: u16 = 8086;
const GRPCS_AUTHZ: u16 = 8087;
/// Over TLS, trusting another CA, and trusting only the public roots: never reached.
const HTTPS_OTHER_CA: u16 = 8088;
const GRPCS_PUBLIC_ROOTS: u16 = 8089;
const PORTS: [u16; 6] = [
    HTTP_AUTHZ,
    GRPC_AUTHZ,
    HTTPS_AUTHZ,
    GRPCS_AUTHZ,
    HTTPS_OTHER_CA,
    GRPCS_PUBLIC_ROOTS,
];

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

/// A Secret whose `ca.crt` is `cert`.
fn ca_secret(name: &str, cert: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: auth}}\nstringData:\n  ca.crt: |\n{}",
        indent(cert, 4)
    )
}

fn policy(ingress: &(String, String), authz_tls: &(String, String)) -> String {
    let authz = ip(2, 30);
    let mesh_policy = |port: u16, authorizer: &str| {
        format!(
            r#"---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: authz-{port}}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: {port}}}]
  ingress:
    tls:
      certificates: [{{secretRef: {{namespace: shop, name: api-tls}}}}]
  http:
    extAuthz:
      {authorizer}
      timeout: 500ms
      headersToSend: [x-user]
      headersToUpstream: [x-authz-user]
      headersToClient: [x-authz-reason]
"#
        )
    };
    let other = self_signed(&["10.244.2.30"]).expect("another CA");
    let trusting = |ca: &str| format!("\n      caSecretRef: {{namespace: auth, name: {ca}}}");
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{a}{b}{tls}{ca}{other_ca}{http}{grpc}{https}{grpcs}{https_other}{grpcs_public}",
        a = pod_object("shop", "a", 1, ip(1, 10)),
        b = pod_object("shop", "b", 2, ip(2, 10)),
        tls = tls_secret("shop", "api-tls", ingress),
        ca = ca_secret("authz-ca", &authz_tls.0),
        other_ca = ca_secret("other-ca", &other.0),
        http = mesh_policy(
            HTTP_AUTHZ,
            &format!("http: 'http://{authz}:{HTTP_PORT}{HTTP_PREFIX}'")
        ),
        grpc = mesh_policy(GRPC_AUTHZ, &format!("grpc: 'http://{authz}:{GRPC_PORT}'")),
        https = mesh_policy(
            HTTPS_AUTHZ,
            &format!(
                "http: 'https://{authz}:{HTTPS_PORT}{HTTP_PREFIX}'{}",
                trusting("authz-ca")
            )
        ),
        grpcs = mesh_policy(
            GRPCS_AUTHZ,
            &format!(
                "grpc: 'https://{authz}:{GRPCS_PORT}'{}",
                trusting("authz-ca")
            )
        ),
        https_other = mesh_policy(
            HTTPS_OTHER_CA,
            &format!(
                "http: 'https://{authz}:{HTTPS_PORT}{HTTP_PREFIX}'{}",
                trusting("other-ca")
            )
        ),
        grpcs_public = mesh_policy(
            GRPCS_PUBLIC_ROOTS,
            &format!("grpc: 'https://{authz}:{GRPCS_PORT}'")
        ),
    )
}

/// Fields drop in order: the agents, then the servers, the topology last.
struct World {
    mesh: MeshAgents,
    authorizer: Authorizer,
    origins: Vec<(u16, HttpServer)>,
    ingress: (String, String),
    topo: Topology,
}

impl World {
    fn start() -> World {
        require_root();
        let topo = Topology::builder(TEST_PREFIX)
            .node("node-1")
            .node("node-2")
            .pod("node-1", "shop/a", ip(1, 10))
            .pod("node-2", "shop/b", ip(2, 10))
            .pod("node-2", "auth/authz", ip(2, 30))
            .outside()
            .build()
            .expect("topology");
        // The authorizer's certificate names its address; the policy trusts it as its CA.
        let authz_tls = self_signed(&["10.244.2.30"]).expect("certificate");
        let authorizer = Authorizer::start_with(
            &topo.pod("auth/authz").ns,
            IpAddr::V4(ip(2, 30)),
            Some(&authz_tls),
        )
        .expect("authorizer");
        let b = &topo.pod("shop/b").ns;
        let origins = PORTS
            .iter()
            .map(|port| (*port, HttpServer::start(b, *port).expect("origin")))
            .collect();
        let ingress = self_signed(&[SNI]).expect("certificate");
        let mesh = MeshAgents::start(
            &topo,
            &["node-1", "node-2"],
            &policy(&ingress, &authz_tls),
            None,
            &["--interface", "uplink"],
        )
        .expect("agents");
        World {
            mesh,
            authorizer,
            origins,
            ingress,
            topo,
        }
    }

    fn node2(&self) -> &Agent {
        self.mesh.node("node-2")
    }

    fn reached(&self, port: u16) -> u64 {
        self.origins
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, origin)| origin.requests())
    }

    fn east_west(&self, port: u16, path: &str, user: Option<&str>) -> HttpReply {
        let a = self.topo.pod("shop/a").ns.path();
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        http_request(
            &a,
            SocketAddr::new(IpAddr::V4(ip(2, 10)), port),
            "GET",
            path,
            &headers,
            TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "GET {path} on {port}: {e:#}\nnode-2 log:\n{}",
                self.node2().log()
            )
        })
    }

    fn ingress(&self, port: u16, path: &str, user: Option<&str>) -> HttpReply {
        let outside = self.topo.outside().path();
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        https_request(
            &outside,
            SocketAddr::new(IpAddr::V4(ip(2, 10)), port),
            SNI,
            &self.ingress.0,
            path,
            &headers,
            TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "ingress GET {path} on {port}: {e:#}\nnode-2 log:\n{}",
                self.node2().log()
            )
        })
    }

    fn refused(&self, reason: &str) -> f64 {
        self.node2().sample(
            "rampart_proxy_denied_total",
            &format!(r#"filter="authz",reason="{reason}""#),
        )
    }
}

#[test]
fn an_envoy_authorizer_decides_over_http_and_grpc_through_the_tunnel_and_ingress() {
    let mut w = World::start();
    for port in [HTTP_AUTHZ, GRPC_AUTHZ, HTTPS_AUTHZ, GRPCS_AUTHZ] {
        type Call<'a> = Box<dyn Fn(&str, Option<&str>) -> HttpReply + 'a>;
        let calls: [(&str, Call); 2] = [
            (
                "east-west",
                Box::new(|path: &str, user: Option<&str>| w.east_west(port, path, user)),
            ),
            (
                "ingress",
                Box::new(|path: &str, user: Option<&str>| w.ingress(port, path, user)),
            ),
        ];
        for (how, call) in &calls {
            let what = format!("{how} on {port}");
            let before = w.reached(port);
            let allowed = call("/orders?id=7", Some("alice"));
            assert_eq!(
                allowed.status,
                200,
                "{what}: {allowed:?}\n{}",
                w.node2().log()
            );
            assert!(
                allowed.body.contains("x-authz-user: alice"),
                "{what}: {}",
                allowed.body
            );
            assert_eq!(w.reached(port), before + 1);

            let blocked = call("/orders", Some("mallory"));
            assert_eq!(blocked.status, 403, "{what}: {blocked:?}");
            assert_eq!(blocked.body, "mallory is blocked", "{what}");
            assert_eq!(
                blocked.header("x-authz-reason"),
                Some("blocked-user"),
                "{what}: {blocked:?}"
            );
            let anonymous = call("/orders", None);
            assert_eq!(anonymous.status, 401, "{what}: {anonymous:?}");
            assert_eq!(
                anonymous.header("www-authenticate"),
                Some(r#"Bearer realm="authz""#),
                "{what}"
            );
            assert_eq!(call("/orders", Some("eve")).status, 403, "{what}");
            // Past the timeout: refused, not let through.
            let slow = call("/slow", Some("alice"));
            assert_eq!(slow.status, 403, "{what}: {slow:?}");
            assert_eq!(
                w.reached(port),
                before + 1,
                "{what}: a refused request reached the pod"
            );
        }
    }
    assert_eq!(w.refused("ext_authz_denied"), 24.0);
    assert_eq!(w.refused("ext_authz_error"), 8.0);

    // TLS to an authorizer whose certificate the policy does not trust (another CA, or only
    // the public roots): refused as a failure, never let through, and never asked.
    let asked = w.authorizer.checks().len();
    for port in [HTTPS_OTHER_CA, GRPCS_PUBLIC_ROOTS] {
        let reply = w.east_west(port, "/orders", Some("alice"));
        assert_eq!(reply.status, 403, "{port}: {reply:?}");
        assert_eq!(w.reached(port), 0, "{port}");
    }
    assert_eq!(w.refused("ext_authz_error"), 10.0);
    assert_eq!(
        w.authorizer.checks().len(),
        asked,
        "no check reached the untrusted-certificate ports' authorizer"
    );
    let log = w.node2().log();
    assert!(
        log.lines()
            .any(|l| l.contains("ext_authz: the authorizer failed") && l.contains("UnknownIssuer")),
        "the failure names the untrusted certificate:\n{log}"
    );

    // What the gRPC check carried for pod a's request.
    let checks = w.authorizer.checks();
    let grpc = checks
        .iter()
        .find(|c| {
            c["protocol"] == "grpc"
                && c["source_address"] == "10.244.1.10"
                && c["destination_port"] == u64::from(GRPC_AUTHZ)
        })
        .unwrap_or_else(|| panic!("no gRPC check from pod a: {checks:#?}"));
    assert_eq!(
        grpc["source_principal"],
        "spiffe://cluster.local/ns/shop/sa/a"
    );
    assert_eq!(grpc["destination_address"], "10.244.2.10");
    assert_eq!(grpc["destination_port"], u64::from(GRPC_AUTHZ));
    assert_eq!(grpc["method"], "GET");
    assert_eq!(grpc["path"], "/orders?id=7");
    assert_eq!(grpc["headers"]["x-user"], "alice");
    let http = checks
        .iter()
        .find(|c| c["protocol"] == "http")
        .unwrap_or_else(|| panic!("no HTTP check: {checks:#?}"));
    assert_eq!(http["path"], "/authz/orders?id=7");
    assert_eq!(http["headers"]["x-user"], "alice");

    // The authorizer stopped: refused.
    w.authorizer.stop();
    for port in [HTTP_AUTHZ, GRPC_AUTHZ, HTTPS_AUTHZ, GRPCS_AUTHZ] {
        let reply = w.east_west(port, "/orders", Some("alice"));
        assert_eq!(
            reply.status, 403,
            "{port} with the authorizer down: {reply:?}"
        );
    }
}
