//! Browser login by OpenID Connect, on a real kernel with a real provider and a real browser:
//! a client outside the cluster runs headless Chromium against `https://api.shop.test:8086`
//! (ingress to pod b on node 2), whose MeshPolicy logs users in at an `oidc-provider` outside
//! the cluster too, beside the browser (authorization code flow, PKCE, state, nonce). Pod c on
//! node 1 serves the same policy.
//!
//! - the browser is sent to the provider, logs in on its page, lands back on the page it asked
//!   for with a session cookie (`Secure`, `HttpOnly`, `SameSite=Lax`), and the pod sees the
//!   user's claims, never the cookie;
//! - the session holds on the other node (pod c), east-west from pod c to pod b through the
//!   tunnel (an app forwarding its user's cookie), and after node 2's agent restarts;
//! - past the ID token's lifetime the refresh token renews it (a new cookie);
//! - an API call without a session gets 401, not a redirect; a tampered cookie 401; an answer
//!   at the callback whose state is replayed or foreign 400; a session past its lifetime 401;
//! - logout ends the session here and at the provider: the old cookie is refused, and the
//!   browser is asked to log in again.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rampart_tests::http_server::HttpServer;
use rampart_tests::https::https_request;
use rampart_tests::mesh::{MeshAgents, pod_object, self_signed, tls_secret};
use rampart_tests::netns::TEST_PREFIX;
use rampart_tests::oidc::{Client, Idp, browse, cookie};
use rampart_tests::probe::HttpReply;
use rampart_tests::topology::OUTSIDE_IP;
use rampart_tests::{Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(8);
const HOST: &str = "api.shop.test";
const APP: u16 = 8086;
/// The same login with a 5-second session.
const SHORT: u16 = 8087;
const IDP_PORT: u16 = 8088;
const TOKEN_TTL_S: u64 = 8;

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn policy(issuer: &str, ingress: &(String, String)) -> String {
    let mesh_policy = |port: u16, extra: &str| {
        format!(
            r#"---
apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: shop-login-{port}}}
spec:
  appliesTo: {{podSelector: {{matchExpressions: [{{key: app, operator: In, values: [b, c]}}]}}}}
  ports: [{{port: {port}}}]
  ingress:
    tls:
      certificates: [{{secretRef: {{namespace: shop, name: api-tls}}}}]
  http:
    authentication:
      providers:
      - name: shop-login
        oidc:
          issuer: '{issuer}'
          clientId: shop
          secretRef: {{namespace: shop, name: shop-login}}
          scopes: [profile, email, groups]
          postLogoutRedirectUri: 'https://{HOST}:{APP}/bye'
          claimsToHeaders:
          - {{claim: sub, header: x-user}}
          - {{claim: groups, header: x-groups}}{extra}
"#
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{b}{c}{tls}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: shop-login, namespace: shop}}\nstringData: {{client-secret: shop-client-secret-41d7, cookie-secret: 'a4c1f0e9b27d4e55a0c3f1b8d6e2a7c94f1e0b3d'}}\n{app}{short}",
        b = pod_object("shop", "b", 2, ip(2, 10)),
        c = pod_object("shop", "c", 1, ip(1, 20)),
        tls = tls_secret("shop", "api-tls", ingress),
        app = mesh_policy(APP, ""),
        short = mesh_policy(SHORT, "\n          sessionSeconds: 5"),
    )
}

/// Fields drop in order: the agents, then the servers, the topology last.
struct World {
    mesh: MeshAgents,
    idp: Idp,
    _origins: Vec<HttpServer>,
    ingress: (String, String),
    topo: Topology,
}

impl World {
    fn start() -> World {
        require_root();
        let topo = Topology::builder(TEST_PREFIX)
            .node("node-1")
            .node("node-2")
            .pod("node-2", "shop/b", ip(2, 10))
            .pod("node-1", "shop/c", ip(1, 20))
            .outside()
            .build()
            .expect("topology");
        let redirect_uris = [APP, SHORT].map(|p| format!("https://{HOST}:{p}/oauth2/callback"));
        let idp = Idp::start(
            topo.outside(),
            IpAddr::V4(OUTSIDE_IP),
            IDP_PORT,
            &Client {
                id: "shop",
                secret: "shop-client-secret-41d7",
                redirect_uris: &redirect_uris,
                post_logout_redirect_uris: &[format!("https://{HOST}:{APP}/bye")],
                hosts: &[HOST],
                token_ttl_s: TOKEN_TTL_S,
            },
        )
        .expect("the OpenID provider");
        let mut origins = Vec::new();
        for pod in ["shop/b", "shop/c"] {
            for port in [APP, SHORT] {
                origins.push(HttpServer::start(&topo.pod(pod).ns, port).expect("origin"));
            }
        }
        let ingress = self_signed(&[HOST]).expect("certificate");
        let mesh = MeshAgents::start(
            &topo,
            &["node-1", "node-2"],
            &policy(&idp.issuer, &ingress),
            None,
            &["--interface", "uplink"],
        )
        .expect("agents");
        World {
            mesh,
            idp,
            _origins: origins,
            ingress,
            topo,
        }
    }

    /// The browser, from outside: `url`, then `then`, logging in when asked.
    fn browse(&self, url: &str, then: &[&str]) -> serde_json::Value {
        browse(
            self.topo.outside(),
            &[(HOST, IpAddr::V4(ip(2, 10)))],
            &[IpAddr::V4(OUTSIDE_IP)],
            url,
            then,
        )
        .unwrap_or_else(|e| panic!("{e:#}\nnode-2 log:\n{}", self.mesh.node("node-2").log()))
    }

    /// `reply` is a 200 whose pod saw alice's claims (else `node`'s agent log is shown).
    fn assert_alice(&self, reply: &HttpReply, node: &str) {
        assert_eq!(
            reply.status,
            200,
            "{reply:?}\n{node} log:\n{}",
            self.mesh.node(node).log()
        );
        assert!(reply.body.contains("x-user: alice"), "{}", reply.body);
    }

    /// HTTPS from outside to `pod`'s `port` (SNI api.shop.test), with `headers`.
    fn https(&self, pod: Ipv4Addr, port: u16, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        https_request(
            &self.topo.outside().path(),
            SocketAddr::new(IpAddr::V4(pod), port),
            HOST,
            &self.ingress.0,
            path,
            headers,
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }
}

fn session_of(printed: &serde_json::Value) -> String {
    let session = cookie(printed, "rampart_session")
        .unwrap_or_else(|| panic!("no session cookie: {printed:#}"));
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    session["value"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_browser_logs_in_and_its_session_holds_across_nodes_restarts_and_renewals() {
    let mut w = World::start();
    let b = ip(2, 10);
    let json = [("accept", "application/json")];

    // The provider answers the browser's network, and the app's ingress sends a browser to it.
    let discovery = rampart_tests::probe::http_request(
        &w.topo.outside().path(),
        SocketAddr::new(IpAddr::V4(OUTSIDE_IP), IDP_PORT),
        "GET",
        "/.well-known/openid-configuration",
        &[],
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("the provider from outside: {e:#}"));
    assert_eq!(discovery.status, 200, "{discovery:?}");
    let first = w.https(b, APP, "/orders/7", &[("accept", "text/html")]);
    assert_eq!(
        first.status,
        302,
        "{first:?}\n{}",
        w.mesh.node("node-2").log()
    );

    // The browser: sent to the provider, logged in, back where it started.
    let started = Instant::now();
    let printed = w.browse(&format!("https://{HOST}:{APP}/orders/7?view=full"), &[]);
    let logged_in_at = Instant::now();
    assert_eq!(
        printed["final_url"],
        format!("https://{HOST}:{APP}/orders/7?view=full"),
        "{printed:#}\nnode-2 log:\n{}",
        w.mesh.node("node-2").log()
    );
    let text = printed["text"].as_str().unwrap_or_default();
    assert!(text.contains("x-user: alice"), "{text}");
    assert!(text.contains("x-groups: order-admins"), "{text}");
    assert!(
        !text.contains("rampart_session"),
        "the pod never sees the session: {text}"
    );
    let login_ms = printed["steps"][0]["elapsed_ms"].as_u64().unwrap_or(0);
    println!(
        "OIDC login round trip (browser: page → provider's form → back with a session): {login_ms} ms; browser run {:?}",
        started.elapsed()
    );
    let session = session_of(&printed);
    let with_session = format!("rampart_session={session}");
    let cookie_header = [("cookie", with_session.as_str()), json[0]];

    // The session outside the browser, on both nodes.
    w.assert_alice(&w.https(b, APP, "/orders/8", &cookie_header), "node-2");
    w.assert_alice(
        &w.https(ip(1, 20), APP, "/orders/9", &cookie_header),
        "node-1",
    );

    // East-west: pod c (node 1) calls b (node 2) through the tunnel with the user's session,
    // as an app forwarding its user's cookie to a backend would: b's node opens it; without it,
    // the call gets 401.
    let c_ns = w.topo.pod("shop/c").ns.path();
    let east_west = |headers: &[(&str, &str)]| {
        rampart_tests::probe::http_request(
            &c_ns,
            SocketAddr::new(IpAddr::V4(b), APP),
            "GET",
            "/orders/10",
            headers,
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("c to b through the tunnel: {e:#}"))
    };
    let tunnelled = || {
        w.mesh
            .node("node-2")
            .sample("rampart_proxy_flows_total", "direction=\"inbound\"")
    };
    let before = tunnelled();
    w.assert_alice(&east_west(&cookie_header), "node-2");
    assert_eq!(east_west(&json).status, 401);
    assert!(tunnelled() >= before + 2.0, "both calls crossed the tunnel");

    // No session: an API call gets 401, a page navigation a redirect to the provider.
    assert_eq!(w.https(b, APP, "/orders/8", &json).status, 401);
    let redirect = w.https(b, APP, "/orders/8", &[("accept", "text/html")]);
    assert_eq!(redirect.status, 302, "{redirect:?}");
    let location = redirect.header("location").unwrap_or_default().to_owned();
    assert!(
        location.starts_with(&format!("{}/auth?", w.idp.issuer)),
        "{location}"
    );
    for part in [
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
        "client_id=shop",
    ] {
        assert!(location.contains(part), "{part} in {location}");
    }
    // A tampered cookie.
    let mut tampered = session.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = format!(
        "rampart_session={}",
        String::from_utf8(tampered).unwrap_or_default()
    );
    assert_eq!(
        w.https(b, APP, "/orders/8", &[("cookie", &tampered), json[0]])
            .status,
        401
    );

    // The provider's answer: a state taken once, a foreign state refused.
    let login_cookie = redirect
        .head
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .find_map(|c| {
            c.split(';')
                .next()
                .filter(|c| c.starts_with("rampart_session_login="))
        })
        .unwrap_or_else(|| panic!("no login cookie: {redirect:?}"))
        .to_owned();
    let state = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap_or_default()
        .to_owned();
    let callback = |state: &str| {
        w.https(
            b,
            APP,
            &format!("/oauth2/callback?code=not-a-code&state={state}"),
            &[("cookie", &login_cookie)],
        )
    };
    assert_eq!(
        callback(&state).status,
        401,
        "the provider refuses the code"
    );
    assert_eq!(callback(&state).status, 400, "the state again: replayed");
    assert_eq!(callback("another-state").status, 400);

    // Node 2's agent restarts: the session holds.
    w.mesh
        .kill_and_restart(&w.topo, "node-2", || {})
        .expect("restart node 2's agent");
    let reply = w.https(b, APP, "/orders/10", &cookie_header);
    assert_eq!(reply.status, 200, "after the restart: {reply:?}");

    // Past the ID token's lifetime: renewed by the refresh token, with a new cookie.
    let renew_at = logged_in_at + Duration::from_secs(TOKEN_TTL_S + 2);
    std::thread::sleep(renew_at.saturating_duration_since(Instant::now()));
    let renewed = w.https(b, APP, "/orders/11", &cookie_header);
    assert_eq!(
        renewed.status,
        200,
        "renewed: {renewed:?}\n{}",
        w.mesh.node("node-2").log()
    );
    assert!(
        renewed.head.contains("set-cookie: rampart_session="),
        "a renewed session cookie: {renewed:?}"
    );

    // A 5-second session ends.
    let short = w.browse(&format!("https://{HOST}:{SHORT}/"), &[]);
    let short_cookie = format!("rampart_session={}", session_of(&short));
    assert_eq!(
        w.https(b, SHORT, "/", &[("cookie", &short_cookie), json[0]])
            .status,
        200
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        w.https(b, SHORT, "/", &[("cookie", &short_cookie), json[0]])
            .status,
        401,
        "ended"
    );

    // Logout ends the session: the cookie is cleared, the provider asked to end its session,
    // and the old cookie refused from then on.
    let logout = w.https(b, APP, "/oauth2/logout", &cookie_header);
    assert_eq!(logout.status, 302, "{logout:?}");
    let to = logout.header("location").unwrap_or_default();
    assert!(
        to.starts_with(&format!("{}/session/end?", w.idp.issuer)),
        "{to}"
    );
    assert!(to.contains("id_token_hint="), "{to}");
    assert!(
        logout.head.contains("set-cookie: rampart_session=;"),
        "{logout:?}"
    );
    assert_eq!(
        w.https(b, APP, "/orders/12", &cookie_header).status,
        401,
        "logged out"
    );

    // In the browser: logged in, then out (confirmed at the provider), then asked to log in.
    let printed = w.browse(
        &format!("https://{HOST}:{APP}/orders/12"),
        &[&format!("https://{HOST}:{APP}/oauth2/logout")],
    );
    let after = &printed["steps"][1];
    assert_eq!(
        after["login"]["form_seen"], true,
        "asked to log in again: {printed:#}"
    );
    assert!(
        cookie(&printed, "rampart_session").is_none(),
        "cleared: {printed:#}"
    );
}
