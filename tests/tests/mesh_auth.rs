//! End-user authentication by Basic credentials, on a real kernel and a real directory: two
//! nodes, pod a (node 1) calling pod b (node 2) through the mTLS tunnel, and a client outside
//! the cluster calling pod b through ingress (TLS by SNI), with a real OpenLDAP (`slapd`) in a
//! pod of its own on node 2.
//!
//! - `ldap` (8080, `ldaps://`; 8082, StartTLS): the user's entry found by the search account,
//!   the password checked by a bind as it, the groups read; the pod gets `x-user` and
//!   `x-groups`, never the credential; a wrong password 401, a user outside the required group
//!   403, filter injection in the user name refused; the directory stopped: a login it
//!   confirmed lately still passes, a new one gets 503 (counted), and after it comes back the
//!   new one passes;
//! - `basicAuth` (8081): users from an htpasswd Secret (bcrypt and SHA-512-crypt);
//! - both at ingress too, with the `Basic` challenge on a refusal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use rampart_tests::http_server::HttpServer;
use rampart_tests::https::https_request;
use rampart_tests::ldap::{LdapServer, Person, SEARCH_DN, SEARCH_PASSWORD, SUFFIX};
use rampart_tests::mesh::{MeshAgents, indent, pod_object, self_signed, tls_secret};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::probe::{HttpReply, http_request};
use rampart_tests::{Agent, Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(8);
const SNI: &str = "api.shop.test";
/// Pod b's origins: LDAP over ldaps://, htpasswd, LDAP with StartTLS, Rego.
const PORTS: [u16; 4] = [8080, 8081, 8082, 8083];

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

const PEOPLE: [Person; 3] = [
    Person {
        uid: "alice",
        password: "alice-pw-81c2",
        groups: &["order-admins", "staff"],
    },
    Person {
        uid: "bob",
        password: "bob-pw-02fe",
        groups: &["staff"],
    },
    Person {
        uid: "carol",
        password: "carol-pw-6b3a",
        groups: &["order-admins"],
    },
];

fn policy(ldap_ca: &str, ingress: &(String, String)) -> String {
    let ldap_ip = ip(2, 20);
    let ldap = |port: u16, url: &str, extra: &str| {
        format!(
            r#"---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: orders-{port}}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: {port}}}]
  ingress:
    tls:
      certificates: [{{secretRef: {{namespace: shop, name: api-tls}}}}]
  http:
    authentication:
      providers:
      - name: corp
        ldap:
          url: '{url}'{extra}
          caSecretRef: {{namespace: shop, name: ldap-ca}}
          bindSecretRef: {{namespace: shop, name: ldap-search}}
          userBase: 'ou=people,{SUFFIX}'
          groupBase: 'ou=groups,{SUFFIX}'
          realm: corp
          userHeader: x-user
          groupsHeader: x-groups
          cacheSeconds: 300
          timeout: 2s
    rules:
    - action: Allow
      paths: [{{prefix: /orders}}]
      claims: [{{name: groups, contains: order-admins}}]
    - action: Allow
      paths: [{{prefix: /me}}]
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
{a}{b}---
apiVersion: v1
kind: Secret
metadata: {{name: ldap-ca, namespace: shop}}
stringData:
  ca.crt: |
{ca}---
apiVersion: v1
kind: Secret
metadata: {{name: ldap-search, namespace: shop}}
stringData: {{bindDN: '{SEARCH_DN}', password: '{SEARCH_PASSWORD}'}}
{tls}---
apiVersion: v1
kind: Secret
metadata: {{name: staff, namespace: shop}}
stringData:
  htpasswd: |
    # bcrypt (wonderland) and SHA-512-crypt (hunter2), made by libxcrypt
    dora:$2b$05$abcdefghijklmnopqrstuuA0vov2GDneHB3.8.cv9UF9g.RdvScIW
    erin:$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj.
---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: staff}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8081}}]
  ingress:
    tls:
      certificates: [{{secretRef: {{namespace: shop, name: api-tls}}}}]
  http:
    authentication:
      providers:
      - name: staff
        basicAuth:
          secretRef: {{namespace: shop, name: staff}}
          realm: staff
          userHeader: x-user
{ldaps}{starttls}---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: productpage}}
spec:
  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}
  ports: [{{port: 8083}}]
  ingress:
    tls:
      certificates: [{{secretRef: {{namespace: shop, name: api-tls}}}}]
  http:
    rego:
      query: data.istio.authz.allow
      configMapRef: {{namespace: shop, name: productpage-authz}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: productpage-authz, namespace: shop, labels: {{rampart.dev/policy: rego}}}}
data:
  policy.rego: |
{rego}"#,
        a = pod_object("shop", "a", 1, ip(1, 10)),
        b = pod_object("shop", "b", 2, ip(2, 10)),
        ca = indent(ldap_ca, 4),
        tls = tls_secret("shop", "api-tls", ingress),
        ldaps = ldap(8080, &format!("ldaps://{ldap_ip}"), ""),
        starttls = ldap(
            8082,
            &format!("ldap://{ldap_ip}:389"),
            "\n          startTls: true"
        ),
        rego = opa_istio_example()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
    )
}

/// OPA's Istio tutorial policy for its Envoy plugin (the quick start's `opa-policy`), as
/// `policies/auth/rego.yaml` carries it: users from the Basic credential, their roles, and the
/// paths each role may GET.
fn opa_istio_example() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/auth/rego.yaml");
    let text = std::fs::read_to_string(&path).expect("policies/auth/rego.yaml");
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("rego.yaml");
    doc["spec"]["http"]["rego"]["inline"]
        .as_str()
        .expect("an inline policy")
        .to_owned()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Fields drop in order: the agents, then the servers, the topology last.
struct World {
    mesh: MeshAgents,
    ldap: LdapServer,
    origins: Vec<HttpServer>,
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
            .pod("node-2", "auth/ldap", ip(2, 20))
            .outside()
            .build()
            .expect("topology");
        let ldap = LdapServer::start(&topo.pod("auth/ldap").ns, IpAddr::V4(ip(2, 20)), &PEOPLE)
            .expect("slapd");
        let origins = PORTS
            .into_iter()
            .map(|port| HttpServer::start(&topo.pod("shop/b").ns, port).expect("origin"))
            .collect();
        let ingress = self_signed(&[SNI]).expect("certificate");
        let mesh = MeshAgents::start(
            &topo,
            &["node-1", "node-2"],
            &policy(&ldap.ca_pem, &ingress),
            None,
            &["--interface", "uplink"],
        )
        .expect("agents");
        World {
            mesh,
            ldap,
            origins,
            ingress,
            topo,
        }
    }

    fn node2(&self) -> &Agent {
        self.mesh.node("node-2")
    }

    /// `GET path` from pod a to pod b's `port` through the tunnel, with `authorization`.
    fn east_west(&self, port: u16, path: &str, authorization: Option<&str>) -> HttpReply {
        let a = self.topo.pod("shop/a").ns.path();
        let headers: Vec<(&str, &str)> = authorization
            .map(|v| ("authorization", v))
            .into_iter()
            .collect();
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

    /// `GET path` from outside the cluster through ingress (TLS with SNI).
    fn ingress(&self, port: u16, path: &str, authorization: Option<&str>) -> HttpReply {
        let outside = self.topo.outside().path();
        let headers: Vec<(&str, &str)> = authorization
            .map(|v| ("authorization", v))
            .into_iter()
            .collect();
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

    fn denied(&self, reason: &str) -> f64 {
        self.node2().sample(
            "rampart_proxy_denied_total",
            &format!(r#"filter="authn",reason="{reason}""#),
        )
    }

    fn reached(&self, port: u16) -> u64 {
        let index = PORTS.iter().position(|p| *p == port).unwrap_or(0);
        self.origins[index].requests()
    }
}

#[test]
fn ldap_and_htpasswd_users_through_the_tunnel_and_ingress() {
    let w = World::start();
    let alice = basic("alice", "alice-pw-81c2");

    // ldaps://: the pod sees the user and the groups, never the credential.
    let reply = w.east_west(8080, "/orders/7", Some(&alice));
    assert_eq!(reply.status, 200, "{reply:?}\n{}", w.node2().log());
    assert!(reply.body.contains("x-user: alice"), "{}", reply.body);
    assert!(
        reply.body.contains("x-groups: order-admins,staff"),
        "{}",
        reply.body
    );
    assert!(
        !reply.body.to_ascii_lowercase().contains("authorization"),
        "{}",
        reply.body
    );

    // Refusals never reach the pod.
    let before = w.reached(8080);
    let wrong = w.east_west(8080, "/orders/7", Some(&basic("alice", "guess")));
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(
        wrong.header("www-authenticate"),
        Some(r#"Basic realm="corp", charset="UTF-8""#)
    );
    assert_eq!(w.east_west(8080, "/orders/7", None).status, 401);
    let bob = basic("bob", "bob-pw-02fe");
    assert_eq!(
        w.east_west(8080, "/orders/7", Some(&bob)).status,
        403,
        "bob is not an order admin"
    );
    // Filter injection in the user name: each would match alice's entry if pasted into the
    // filter unescaped.
    for user in ["alic*", "*", "alice)(uid=*", "a*e", "alice\\"] {
        let reply = w.east_west(8080, "/orders/7", Some(&basic(user, "alice-pw-81c2")));
        assert_eq!(reply.status, 401, "user {user:?}: {reply:?}");
    }
    // An empty password would be an unauthenticated bind, which the server accepts.
    assert_eq!(
        w.east_west(8080, "/me", Some(&basic("alice", ""))).status,
        401
    );
    assert_eq!(w.reached(8080), before, "a refused request reached the pod");
    assert_eq!(
        w.east_west(8080, "/me", Some(&bob)).status,
        200,
        "any authenticated user"
    );
    // The directory's spelling names the user, whatever case the client typed.
    let shouted = w.east_west(8080, "/me", Some(&basic("BOB", "bob-pw-02fe")));
    assert_eq!(shouted.status, 200, "{shouted:?}");
    assert!(shouted.body.contains("x-user: bob\n"), "{}", shouted.body);
    assert!(w.denied("invalid_credentials") >= 7.0);

    // StartTLS on ldap://.
    let reply = w.east_west(8082, "/orders/1", Some(&alice));
    assert_eq!(
        reply.status,
        200,
        "StartTLS: {reply:?}\n{}",
        w.node2().log()
    );

    // htpasswd users.
    for (user, password) in [("dora", "wonderland"), ("erin", "hunter2")] {
        let reply = w.east_west(8081, "/", Some(&basic(user, password)));
        assert_eq!(reply.status, 200, "{user}: {reply:?}");
        assert!(
            reply.body.contains(&format!("x-user: {user}")),
            "{}",
            reply.body
        );
    }
    let reply = w.east_west(8081, "/", Some(&basic("dora", "hunter2")));
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Basic realm="staff", charset="UTF-8""#)
    );

    // Ingress: the same providers for a client outside the cluster.
    let reply = w.ingress(8080, "/orders/7", Some(&alice));
    assert_eq!(reply.status, 200, "ingress: {reply:?}\n{}", w.node2().log());
    assert!(
        reply.body.contains("x-groups: order-admins,staff"),
        "{}",
        reply.body
    );
    let refused = w.ingress(8080, "/orders/7", None);
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Basic realm="corp", charset="UTF-8""#)
    );
    assert_eq!(w.ingress(8080, "/orders/7", Some(&bob)).status, 403);
    assert_eq!(
        w.ingress(8081, "/", Some(&basic("erin", "hunter2"))).status,
        200
    );
    assert_eq!(
        w.ingress(8081, "/", Some(&basic("erin", "wonderland")))
            .status,
        401
    );
}

#[test]
fn a_directory_that_is_down_refuses_new_logins_and_keeps_recent_ones() {
    let mut w = World::start();
    let alice = basic("alice", "alice-pw-81c2");
    let carol = basic("carol", "carol-pw-6b3a");
    assert_eq!(w.east_west(8080, "/orders/1", Some(&alice)).status, 200);

    w.ldap.stop();
    let remembered = w.east_west(8080, "/orders/2", Some(&alice));
    assert_eq!(
        remembered.status, 200,
        "a login the directory confirmed lately: {remembered:?}"
    );
    let before = w.reached(8080);
    let refused = w.east_west(8080, "/orders/3", Some(&carol));
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        w.reached(8080),
        before,
        "never let through while the directory is down"
    );
    // A wrong password for a remembered user is not remembered: it asks the directory.
    assert_eq!(
        w.east_west(8080, "/orders/4", Some(&basic("alice", "guess")))
            .status,
        503
    );
    assert!(w.denied("directory_unavailable") >= 2.0);

    w.ldap.start_again().expect("slapd again");
    let reply = w.east_west(8080, "/orders/5", Some(&carol));
    assert_eq!(
        reply.status,
        200,
        "after the directory is back: {reply:?}\n{}",
        w.node2().log()
    );
}

/// OPA's own Istio example policy, from a ConfigMap, decides through the real proxy, east-west
/// and at ingress.
#[test]
fn a_rego_policy_from_opas_envoy_examples_decides() {
    let w = World::start();
    let cases = [
        ("/health", None, 200),
        ("/productpage", Some(basic("alice", "x")), 200),
        ("/api/v1/products", Some(basic("alice", "x")), 403),
        ("/api/v1/products", Some(basic("bob", "x")), 200),
        ("/productpage", None, 403),
    ];
    for (path, authorization, status) in &cases {
        let reply = w.east_west(8083, path, authorization.as_deref());
        assert_eq!(
            reply.status,
            *status,
            "{path} {authorization:?}: {reply:?}\n{}",
            w.node2().log()
        );
        let reply = w.ingress(8083, path, authorization.as_deref());
        assert_eq!(
            reply.status, *status,
            "ingress {path} {authorization:?}: {reply:?}"
        );
    }
    let counts: Vec<u64> = PORTS.iter().map(|p| w.reached(*p)).collect();
    assert_eq!(
        w.reached(8083),
        6,
        "only the allowed requests reach the pod: {counts:?}"
    );
    let denied = w.node2().sample(
        "rampart_proxy_denied_total",
        r#"filter="authz",reason="rego_denied""#,
    );
    assert_eq!(denied, 4.0);
}
