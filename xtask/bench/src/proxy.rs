//! Suite `proxy`: what Rampart's mTLS hop costs a pod-to-pod TCP flow between two nodes, against
//! the same flow without Rampart and against a peer proxy doing the same hop, in one run and one
//! topology (two node namespaces on an underlay bridge, pod a on node 1, pod b on node 2 running
//! an echo server).
//!
//! Systems: `none` (no agent: the baseline of every latency and throughput ratio), then
//! `rampart-l4` (agents running, the port governed by kernel policy only), `rampart-mtls` (a
//! MeshPolicy on the port: redirect, TLS 1.3 tunnel between the agents, transparent delivery)
//! and `haproxy-mtls` (Debian's HAProxy on both nodes, TLS 1.3 with client certificates from the
//! same CA; see `haproxy`). Metrics: those of `traffic` (raw TCP), those of `http` (HTTP/1.1
//! GETs on 8 keep-alive connections to a hyper server in pod b; not for `rampart-l4`), and
//! `cpu_s_per_10k_rr`, the CPU seconds both nodes' proxies spend on 10,000 round trips (ratio to
//! HAProxy). `rampart-mtls-vs-haproxy` rows give Rampart's median over HAProxy's. The L7 rows put
//! the HTTP server behind one filter each (JWT, API key, rate limit, the WAF on a benign and on
//! a blocked request; Basic users from htpasswd and from LDAP (a remembered login), an OIDC
//! session cookie, a Rego policy, an external authorizer over HTTP and over gRPC), as ratios to
//! the tunnel without L7 rules; `agent_cpu_us_per_request` is
//! the destination agent's CPU per HTTP request with the WAF off and on, and `waf-engine-*` the
//! engine's own time per request in this process (the floor under the WAF rows). A 64 KiB JSON
//! response is measured in the tunnel alone, behind DLP masking, and behind the WAF with
//! response inspection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rampart_tests::{Agent, AgentOptions, EchoServer, Topology};

use crate::http::{Get, HttpSample};
use crate::record::{Record, summarize};
use crate::traffic::{Load, METRICS, Metric, Sample, cpu_seconds, measure, records, round_trips};

const BENCH_PREFIX: &str = "rpx";
const MESH_PORT: u16 = 5432;
const L4_PORT: u16 = 8080;
/// The HTTP server's port; under the MeshPolicy like `MESH_PORT`.
const HTTP_PORT: u16 = 8081;
/// The same server behind L7 rules: a JWT (RS256), an API key, a rate limit (never reached).
const JWT_PORT: u16 = 8082;
const API_KEY_PORT: u16 = 8083;
const RATE_LIMIT_PORT: u16 = 8084;
/// The same server behind the WAF (the Core Rule Set at its defaults).
const WAF_PORT: u16 = 8085;
/// A server answering 64 KiB (JSON with card numbers and order ids), in the tunnel without L7
/// rules, and behind the DLP filter masking the cards.
const BIG_PORT: u16 = 8086;
const DLP_PORT: u16 = 8087;
/// The 64 KiB server behind the WAF with response inspection (the body held and judged by
/// CRS's response rules).
const WAF_RESPONSE_PORT: u16 = 8088;
/// The same server behind the other authentication and authorization providers: Basic users
/// from htpasswd (bcrypt), an LDAP directory (slapd in a pod of node 2), an OIDC session
/// cookie, a Rego policy, and an external authorizer over HTTP and gRPC (grpcio with Envoy's
/// protos, in another pod of node 2).
const BASIC_PORT: u16 = 8089;
const LDAP_PORT: u16 = 8090;
const OIDC_PORT: u16 = 8091;
const REGO_PORT: u16 = 8092;
const EXT_AUTHZ_HTTP_PORT: u16 = 8093;
const EXT_AUTHZ_GRPC_PORT: u16 = 8094;
const LDAP_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 20);
const AUTHZ_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 30);
const HTTP_CONCURRENCY: usize = 8;
/// A benign request with a query the rules read, and a SQL injection they block (403).
pub const WAF_BENIGN: &str = "/orders?id=42&sort=asc";
pub const WAF_ATTACK: &str = "/orders?id=1%27%20OR%20%271%27=%271";

/// 64 KiB of JSON order records, every eighth with a card number (Luhn-valid), the rest with
/// 16-digit order ids that are not cards: what the DLP rows mask.
fn big_body() -> &'static [u8] {
    static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let mut body = b"[".to_vec();
        let mut i = 0usize;
        while body.len() < 64 * 1024 - 80 {
            let id = if i.is_multiple_of(8) {
                "4111 1111 1111 1111"
            } else {
                "1234567812345678"
            };
            body.extend_from_slice(format!("{{\"n\":{i},\"ref\":\"{id}\"}},").as_bytes());
            i += 1;
        }
        body.resize(64 * 1024 - 1, b' ');
        body.push(b']');
        body
    })
}

/// GETs per connection per HTTP measurement.
fn http_requests(quick: bool) -> usize {
    if quick { 1_000 } else { 5_000 }
}

fn ip(node: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, d)
}

fn policy(jwks: &str, ldap_ca: &str) -> String {
    let pod = |name: &str, node: u8| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}, nodeName: node-{node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: {}, hostIP: 192.168.200.{node}}}\n",
            ip(node, 10)
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-mtls}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {MESH_PORT}}}, {{port: {HTTP_PORT}}}, {{port: {BIG_PORT}}}]\n  allowedPrincipals: {{serviceAccounts: [bench/a]}}\n{}",
        pod("a", 1),
        pod("b", 2),
        l7_policies(jwks, ldap_ca)
    )
}

/// One MeshPolicy per L7 port, each with only the filter it measures.
fn l7_policies(jwks: &str, ldap_ca: &str) -> String {
    let mesh = |name: &str, port: u16, http: &str| {
        format!(
            "---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: {name}}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {port}}}]\n  allowedPrincipals: {{serviceAccounts: [bench/a]}}\n  http:\n{http}"
        )
    };
    let (issuer, audience, key) = (
        crate::l7_creds::ISSUER,
        crate::l7_creds::AUDIENCE,
        crate::l7_creds::API_KEY,
    );
    [
        mesh(
            "b-jwt",
            JWT_PORT,
            &format!("    authentication:\n      providers:\n      - name: idp\n        jwt: {{issuer: '{issuer}', audiences: ['{audience}'], algorithms: [RS256], jwks: {{inline: '{jwks}'}}}}\n"),
        ),
        mesh(
            "b-api-key",
            API_KEY_PORT,
            "    authentication:\n      providers:\n      - name: keys\n        apiKeys: {secretRef: {namespace: bench, name: keys}}\n",
        ),
        format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: bench}}\nstringData: {{client: {key}}}\n"),
        mesh(
            "b-rate-limit",
            RATE_LIMIT_PORT,
            "    rateLimits:\n      buckets:\n      - {name: all, maxTokens: 4000000000, tokensPerFill: 1000000, fillInterval: 50ms}\n",
        ),
        mesh("b-waf", WAF_PORT, "    waf: {}\n"),
        mesh(
            "b-waf-response",
            WAF_RESPONSE_PORT,
            "    waf: {responseBody: {inspect: true}}\n",
        ),
        mesh(
            "b-dlp",
            DLP_PORT,
            "    dlp:\n      detectors: [{type: cardNumber, action: Mask, keepLast: 4}]\n",
        ),
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: bench}}\nstringData:\n  htpasswd: |\n    dora:{}\n",
            crate::l7_creds::HTPASSWD_DORA
        ),
        mesh(
            "b-basic",
            BASIC_PORT,
            "    authentication:\n      providers:\n      - name: users\n        basicAuth: {secretRef: {namespace: bench, name: users}}\n",
        ),
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ldap, namespace: bench}}\nstringData:\n  bindDN: '{}'\n  password: '{}'\n  ca.crt: |\n{}",
            rampart_tests::ldap::SEARCH_DN,
            rampart_tests::ldap::SEARCH_PASSWORD,
            ldap_ca.lines().map(|l| format!("    {l}\n")).collect::<String>()
        ),
        mesh(
            "b-ldap",
            LDAP_PORT,
            &format!(
                "    authentication:\n      providers:\n      - name: corp\n        ldap: {{url: 'ldaps://{LDAP_IP}', caSecretRef: {{namespace: bench, name: ldap}}, bindSecretRef: {{namespace: bench, name: ldap}}, userBase: 'ou=people,{}', groupBase: 'ou=groups,{}'}}\n",
                rampart_tests::ldap::SUFFIX,
                rampart_tests::ldap::SUFFIX
            ),
        ),
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: login, namespace: bench}}\nstringData: {{client-secret: bench, cookie-secret: '{}'}}\n",
            crate::l7_creds::COOKIE_SECRET
        ),
        mesh(
            "b-oidc",
            OIDC_PORT,
            // Sessions are opened in the agent: the provider is never asked (a loopback
            // address of the node, where nothing listens).
            "    authentication:\n      providers:\n      - name: login\n        oidc: {issuer: 'http://127.0.0.1:9', clientId: bench, secretRef: {namespace: bench, name: login}}\n",
        ),
        mesh(
            "b-rego",
            REGO_PORT,
            "    rego:\n      inline: |\n        package envoy.authz\n        default allow := false\n        allow if {\n          input.attributes.request.http.method == \"GET\"\n          startswith(input.attributes.source.principal, \"spiffe://\")\n        }\n",
        ),
        mesh(
            "b-ext-authz-http",
            EXT_AUTHZ_HTTP_PORT,
            &format!(
                "    extAuthz: {{http: 'http://{AUTHZ_IP}:{}{}', headersToSend: [x-user], timeout: 1s}}\n",
                rampart_tests::ext_authz::HTTP_PORT,
                rampart_tests::ext_authz::HTTP_PREFIX
            ),
        ),
        mesh(
            "b-ext-authz-grpc",
            EXT_AUTHZ_GRPC_PORT,
            &format!(
                "    extAuthz: {{grpc: 'http://{AUTHZ_IP}:{}', timeout: 1s}}\n",
                rampart_tests::ext_authz::GRPC_PORT
            ),
        ),
    ]
    .concat()
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Record>> {
    let (runs, load) = (Load::runs(quick), Load::new(quick));
    rampart_tests::sweep_stale(BENCH_PREFIX)?;
    let topo = Topology::builder(BENCH_PREFIX)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "bench/a", ip(1, 10))
        .pod("node-2", "bench/b", ip(2, 10))
        .pod("node-2", "bench/ldap", LDAP_IP)
        .pod("node-2", "bench/authz", AUTHZ_IP)
        .build()?;
    let ldap = rampart_tests::ldap::LdapServer::start(
        &topo.pod("bench/ldap").ns,
        IpAddr::V4(LDAP_IP),
        &[rampart_tests::ldap::Person {
            uid: "alice",
            password: "alice-pw",
            groups: &["staff"],
        }],
    )?;
    let _authorizer = rampart_tests::ext_authz::Authorizer::start(
        &topo.pod("bench/authz").ns,
        IpAddr::V4(AUTHZ_IP),
    )?;
    let _echo = EchoServer::start(&topo.pod("bench/b").ns, &[MESH_PORT, L4_PORT], &[])?;
    let a = &topo.pod("bench/a").ns;
    let _http = [
        HTTP_PORT,
        JWT_PORT,
        API_KEY_PORT,
        RATE_LIMIT_PORT,
        WAF_PORT,
        BASIC_PORT,
        LDAP_PORT,
        OIDC_PORT,
        REGO_PORT,
        EXT_AUTHZ_HTTP_PORT,
        EXT_AUTHZ_GRPC_PORT,
    ]
    .into_iter()
    .map(|port| crate::http::serve(&topo.pod("bench/b").ns, port))
    .chain(
        [BIG_PORT, DLP_PORT, WAF_RESPONSE_PORT]
            .map(|port| crate::http::serve_body(&topo.pod("bench/b").ns, port, big_body())),
    )
    .collect::<anyhow::Result<Vec<_>>>()?;
    let dst = |port| SocketAddr::new(IpAddr::V4(ip(2, 10)), port);
    let http_with = |to: SocketAddr, get: &Get| {
        crate::http::measure(a, to, HTTP_CONCURRENCY, http_requests(quick), get)
    };
    let http = |to: SocketAddr| http_with(to, &Get::root());
    let (jwks, token) = crate::l7_creds::jwt()?;

    let mut samples: Vec<(String, Vec<Sample>)> = Vec::new();
    let mut http_samples: Vec<(String, Vec<HttpSample>)> = Vec::new();
    let (mut none, mut none_http) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        none.push(measure(a, dst(MESH_PORT), &load)?);
        none_http.push(http(dst(HTTP_PORT))?);
    }
    samples.push(("none".into(), none));
    http_samples.push(("none".into(), none_http));

    let work = std::env::temp_dir().join(format!("rampart-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (ca_dir, policy_dir) = (work.join("ca"), work.join("policy"));
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::write(policy_dir.join("bench.yaml"), policy(&jwks, &ldap.ca_pem))?;
    rampart_tests::agent::ca_init(&ca_dir)?;
    let crs = crate::waf_floor::crs_dir()?;
    let start = |node: &str| {
        let mut opts = AgentOptions::new(Vec::new());
        opts.policy_dir = Some(policy_dir.clone());
        opts.extra_args = vec![
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--node-name".into(),
            node.into(),
            "--crs-dir".into(),
            crs.display().to_string(),
        ];
        Agent::start(&topo.node(node).ns, &opts)
    };
    let agents = [start("node-1")?, start("node-2")?];
    let (mut l4, mut mtls, mut mtls_http) = (Vec::new(), Vec::new(), Vec::new());
    let (mut jwt, mut api_key, mut rate_limit) = (Vec::new(), Vec::new(), Vec::new());
    let (mut waf, mut waf_attack) = (Vec::new(), Vec::new());
    let (mut big, mut dlp, mut waf_response) = (Vec::new(), Vec::new(), Vec::new());
    let (mut basic, mut ldap_rows, mut oidc) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rego, mut ext_http, mut ext_grpc) = (Vec::new(), Vec::new(), Vec::new());
    let session = crate::l7_creds::oidc_session()?;
    let node2_pid: Vec<u32> = agents[1].pid().into_iter().collect();
    // Agent CPU per request on the destination node, WAF off vs on.
    let (mut cpu_plain, mut cpu_waf, mut cpu_waf_attack) = (Vec::new(), Vec::new(), Vec::new());
    let per_request = (HTTP_CONCURRENCY * http_requests(quick)) as f64;
    let with_cpu = |cpu: &mut Vec<f64>, f: &dyn Fn() -> anyhow::Result<HttpSample>| {
        let before = cpu_seconds(&node2_pid)?;
        let sample = f()?;
        cpu.push((cpu_seconds(&node2_pid)? - before) * 1e6 / per_request);
        anyhow::Ok(sample)
    };
    for _ in 0..runs {
        // Side by side: the Rampart variants alternate within each run.
        l4.push(measure(a, dst(L4_PORT), &load)?);
        mtls.push(measure(a, dst(MESH_PORT), &load)?);
        mtls_http.push(with_cpu(&mut cpu_plain, &|| http(dst(HTTP_PORT)))?);
        jwt.push(http_with(
            dst(JWT_PORT),
            &Get::with_header(format!("authorization: Bearer {token}")),
        )?);
        let key = crate::l7_creds::API_KEY;
        api_key.push(http_with(
            dst(API_KEY_PORT),
            &Get::with_header(format!("x-api-key: {key}")),
        )?);
        rate_limit.push(http(dst(RATE_LIMIT_PORT))?);
        let benign = Get {
            path: WAF_BENIGN,
            header: None,
            expect: 200,
        };
        waf.push(with_cpu(&mut cpu_waf, &|| {
            http_with(dst(WAF_PORT), &benign)
        })?);
        let attack = Get {
            path: WAF_ATTACK,
            header: None,
            expect: 403,
        };
        waf_attack.push(with_cpu(&mut cpu_waf_attack, &|| {
            http_with(dst(WAF_PORT), &attack)
        })?);
        big.push(http(dst(BIG_PORT))?);
        dlp.push(http(dst(DLP_PORT))?);
        waf_response.push(http(dst(WAF_RESPONSE_PORT))?);
        basic.push(http_with(
            dst(BASIC_PORT),
            &Get::with_header(crate::l7_creds::basic("dora", "wonderland")),
        )?);
        ldap_rows.push(http_with(
            dst(LDAP_PORT),
            &Get::with_header(crate::l7_creds::basic("alice", "alice-pw")),
        )?);
        oidc.push(http_with(
            dst(OIDC_PORT),
            &Get::with_header(format!("cookie: rampart_session={session}")),
        )?);
        rego.push(http(dst(REGO_PORT))?);
        ext_http.push(http_with(
            dst(EXT_AUTHZ_HTTP_PORT),
            &Get::with_header("x-user: alice".into()),
        )?);
        ext_grpc.push(http_with(
            dst(EXT_AUTHZ_GRPC_PORT),
            &Get::with_header("x-user: alice".into()),
        )?);
    }
    let pids: Vec<u32> = agents.iter().filter_map(Agent::pid).collect();
    let rampart_cpu = cpu_per_10k(&pids, runs, || round_trips(a, dst(MESH_PORT), CPU_ROUNDS))?;
    samples.push(("rampart-l4".into(), l4));
    samples.push(("rampart-mtls".into(), mtls));
    http_samples.push(("rampart-mtls".into(), mtls_http));
    http_samples.push(("rampart-mtls-jwt".into(), jwt));
    http_samples.push(("rampart-mtls-api-key".into(), api_key));
    http_samples.push(("rampart-mtls-rate-limit".into(), rate_limit));
    http_samples.push(("rampart-mtls-waf".into(), waf));
    http_samples.push(("rampart-mtls-waf-attack".into(), waf_attack));
    http_samples.push(("rampart-mtls-64k".into(), big));
    http_samples.push(("rampart-mtls-64k-dlp".into(), dlp));
    http_samples.push(("rampart-mtls-64k-waf-response".into(), waf_response));
    http_samples.push(("rampart-mtls-basic".into(), basic));
    http_samples.push(("rampart-mtls-ldap".into(), ldap_rows));
    http_samples.push(("rampart-mtls-oidc-session".into(), oidc));
    http_samples.push(("rampart-mtls-rego".into(), rego));
    http_samples.push(("rampart-mtls-ext-authz-http".into(), ext_http));
    http_samples.push(("rampart-mtls-ext-authz-grpc".into(), ext_grpc));
    drop(agents);

    let peers = crate::haproxy::start_pair(
        &work,
        &ca_dir,
        &topo.node("node-1").ns,
        &topo.node("node-2").ns,
        Ipv4Addr::new(192, 168, 200, 2),
        &[dst(L4_PORT), dst(HTTP_PORT)],
    )?;
    let (tcp_front, http_front) = (crate::haproxy::front(0), crate::haproxy::front(1));
    let (mut haproxy, mut haproxy_http) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        haproxy.push(measure(a, tcp_front, &load)?);
        haproxy_http.push(http(http_front)?);
    }
    let pids: Vec<u32> = peers.iter().map(|p| p.pid()).collect();
    let haproxy_cpu = cpu_per_10k(&pids, runs, || round_trips(a, tcp_front, CPU_ROUNDS))?;
    samples.push(("haproxy-mtls".into(), haproxy));
    http_samples.push(("haproxy-mtls".into(), haproxy_http));
    drop(peers);
    let _ = std::fs::remove_dir_all(&work);

    let mut out = records("proxy", &samples, 0, &METRICS);
    out.extend(records("proxy", &http_samples, 0, &crate::http::METRICS));
    out.extend(versus_haproxy(&samples, &METRICS, runs));
    out.extend(versus_haproxy(&http_samples, &crate::http::METRICS, runs));
    for l7 in [
        "rampart-mtls-jwt",
        "rampart-mtls-api-key",
        "rampart-mtls-rate-limit",
        "rampart-mtls-waf",
        "rampart-mtls-waf-attack",
        "rampart-mtls-basic",
        "rampart-mtls-ldap",
        "rampart-mtls-oidc-session",
        "rampart-mtls-rego",
        "rampart-mtls-ext-authz-http",
        "rampart-mtls-ext-authz-grpc",
    ] {
        out.extend(versus(
            &http_samples,
            &crate::http::METRICS,
            runs,
            l7,
            "rampart-mtls",
        ));
    }
    for on_64k in ["rampart-mtls-64k-dlp", "rampart-mtls-64k-waf-response"] {
        out.extend(versus(
            &http_samples,
            &crate::http::METRICS,
            runs,
            on_64k,
            "rampart-mtls-64k",
        ));
    }
    let mut cpu = |system: &str, values: &mut Vec<f64>, base: f64| {
        let (value, min, max) = summarize(values);
        out.push(Record {
            suite: "proxy".into(),
            system: system.into(),
            rules: 0,
            metric: "cpu_s_per_10k_rr".into(),
            value,
            unit: "s".into(),
            ratio_to_baseline: if base > 0.0 { value / base } else { f64::NAN },
            runs: values.len(),
            min,
            max,
        });
    };
    let (mut rampart_cpu, mut haproxy_cpu) = (rampart_cpu, haproxy_cpu);
    let base = summarize(&mut haproxy_cpu.clone()).0;
    cpu("haproxy-mtls", &mut haproxy_cpu, base);
    cpu("rampart-mtls", &mut rampart_cpu, base);
    // The destination agent's CPU per HTTP request, WAF off (the baseline) vs on.
    let base = summarize(&mut cpu_plain.clone()).0;
    for (system, values) in [
        ("rampart-mtls", &mut cpu_plain),
        ("rampart-mtls-waf", &mut cpu_waf),
        ("rampart-mtls-waf-attack", &mut cpu_waf_attack),
    ] {
        let (value, min, max) = summarize(values);
        out.push(Record {
            suite: "proxy".into(),
            system: system.into(),
            rules: 0,
            metric: "agent_cpu_us_per_request".into(),
            value,
            unit: "us".into(),
            ratio_to_baseline: if base > 0.0 { value / base } else { f64::NAN },
            runs: values.len(),
            min,
            max,
        });
    }
    // The engine alone, in this process: the floor under the WAF's cost in the proxy.
    let floor = crate::waf_floor::records(&crs, quick)?;
    // The agent's CPU per WAF request over the engine's own at the same parallelism.
    for (agent, engine) in [
        ("rampart-mtls-waf", "waf-engine-benign-parallel"),
        ("rampart-mtls-waf-attack", "waf-engine-attack-parallel"),
    ] {
        let of = |records: &[Record], system: &str, metric: &str| {
            records
                .iter()
                .find(|r| r.system == system && r.metric == metric)
                .map(|r| (r.value, r.runs))
        };
        if let (Some((agent_cpu, runs)), Some((engine_cpu, _))) = (
            of(&out, agent, "agent_cpu_us_per_request"),
            of(&floor, engine, "engine_cpu_us_per_request"),
        ) {
            out.push(ratio_record(
                &format!("{agent}-vs-engine"),
                "agent_cpu_us_per_request",
                agent_cpu / engine_cpu,
                runs,
            ));
        }
    }
    out.extend(floor);
    Ok(out)
}

/// `rampart-mtls-vs-haproxy` rows: Rampart's median over HAProxy's, for each metric.
fn versus_haproxy<S>(
    samples: &[(String, Vec<S>)],
    metrics: &[Metric<S>],
    runs: usize,
) -> Vec<Record> {
    versus(samples, metrics, runs, "rampart-mtls", "haproxy-mtls")
}

/// `<ours>-vs-<theirs>` rows: the median of `ours` over that of `theirs`, for each metric.
fn versus<S>(
    samples: &[(String, Vec<S>)],
    metrics: &[Metric<S>],
    runs: usize,
    ours: &str,
    theirs: &str,
) -> Vec<Record> {
    let median = |name: &str, pick: fn(&S) -> f64| {
        samples
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, l)| summarize(&mut l.iter().map(pick).collect::<Vec<_>>()).0)
    };
    let system = match (ours, theirs) {
        ("rampart-mtls", "haproxy-mtls") => "rampart-mtls-vs-haproxy".to_owned(),
        _ => format!("{ours}-vs-{theirs}"),
    };
    metrics
        .iter()
        .filter_map(|&(metric, _, pick)| {
            let (a, b) = (median(ours, pick)?, median(theirs, pick)?);
            (b > 0.0).then(|| ratio_record(&system, metric, a / b, runs))
        })
        .collect()
}

/// Round trips per CPU measurement.
const CPU_ROUNDS: usize = 5_000;

/// CPU seconds `pids` spend per 10,000 round trips of `load`, `runs` times.
fn cpu_per_10k(
    pids: &[u32],
    runs: usize,
    load: impl Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = cpu_seconds(pids)?;
        load()?;
        let used = cpu_seconds(pids)? - before;
        out.push(used * 10_000.0 / CPU_ROUNDS as f64);
    }
    Ok(out)
}

fn ratio_record(system: &str, metric: &str, ratio: f64, runs: usize) -> Record {
    Record {
        suite: "proxy".into(),
        system: system.into(),
        rules: 0,
        metric: metric.into(),
        value: ratio,
        unit: "ratio".into(),
        ratio_to_baseline: ratio,
        runs,
        min: ratio,
        max: ratio,
    }
}
