//! `http_head`: an HTTP/1.1 request head through what the proxy does to it before the pod:
//! normalisation, then the chain's `authn`, `authz` and `ratelimit` filters, and request DLP
//! on the path and query.

use std::path::Path;
use std::sync::OnceLock;

use hyper::Request;
use hyper::http::request::Parts;

use crate::l7::chain;
use crate::l7::context::Peer;
use crate::l7::normalize;
use crate::l7::{HttpRoute, L7Stats};
use crate::policy::http::EscapedSlashes;
use crate::spiffe::SpiffeId;

/// A MeshPolicy with every kind of filter the chain runs on heads: API keys and a JWT provider
/// (any of them; none is anonymous), rules on methods, hosts, paths of each kind and headers, a
/// keyed rate limit, request DLP.
const POLICY: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: MeshPolicy
metadata: {name: fuzz}
spec:
  ports: [{port: 8080}]
  http:
    authentication:
      require: AnyOf
      allowMissing: true
      providers:
      - name: partners
        apiKeys:
          secretRef: {namespace: shop, name: partner-keys}
          keyFrom: [{header: x-api-key}, {query: api_key}, {cookie: key}]
          clientHeader: x-client
      - name: idp
        jwt:
          issuer: https://idp
          audiences: [api]
          algorithms: [HS256]
          tokenFrom: [{header: authorization, prefix: "Bearer "}, {query: access_token}, {cookie: session}]
          jwks: {inline: '{"keys":[{"kty":"oct","alg":"HS256","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}'}
          claimsToHeaders: [{claim: sub, header: x-user}]
    rules:
    - action: Deny
      paths: [{prefix: /internal/}]
    - action: Allow
      methods: [GET, HEAD]
      hosts: [shop.example.com, "*.shop.example.com"]
      paths: [{exact: /}, {prefix: /api/}, {glob: "/files/*/raw"}, {regex: "/v[0-9]+/.*"}]
      headers: [{name: x-tenant, exact: acme}, {name: x-debug, present: false}]
    - action: Allow
      methods: [POST]
      apiKeyClients: [acme]
    rateLimits:
      buckets:
      - {name: per-tenant, key: "header:x-tenant", maxTokens: 1000000, tokensPerFill: 1000000, fillInterval: 1s}
    dlp:
      requests:
        detectors: [{type: cardNumber, action: Block}, {type: email, action: Mask}]
---
apiVersion: v1
kind: Secret
metadata: {name: partner-keys, namespace: shop}
stringData: {acme: key-acme-123}
"#;

/// The chain's filters are async (a provider may ask a directory); the ones this policy has
/// finish at once, on a runtime kept for every input.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the chain: {e}"))
    })
}

fn route() -> &'static HttpRoute {
    static ROUTE: OnceLock<HttpRoute> = OnceLock::new();
    ROUTE.get_or_init(|| {
        let read = crate::policy::source::parse_str(Path::new("fuzz.yaml"), POLICY);
        let checked = crate::policy::check(read)
            .unwrap_or_else(|d| panic!("the fuzz policy does not check: {d:?}"));
        let model = checked
            .model
            .mesh_policies
            .first()
            .and_then(|p| p.http.clone())
            .unwrap_or_else(|| panic!("the fuzz policy has no http section"));
        HttpRoute::new(
            "fuzz".into(),
            model,
            &crate::l7::jwks::JwksRegistry::default(),
            None,
            None,
        )
    })
}

fn peer() -> Peer {
    Peer {
        spiffe_id: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").ok(),
        source: std::net::SocketAddr::from(([10, 0, 0, 1], 40000)),
        destination: std::net::SocketAddr::from(([10, 0, 0, 2], 8080)),
        destination_spiffe_id: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").ok(),
        server_name: None,
    }
}

/// The head as hyper would hand it over, or `None` where hyper refuses it first.
fn parse(data: &[u8]) -> Option<Parts> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = head.parse(data).ok()? else {
        return None;
    };
    let mut builder = Request::builder()
        .method(head.method?)
        .uri(head.path?)
        .version(if head.version? == 0 {
            hyper::Version::HTTP_10
        } else {
            hyper::Version::HTTP_11
        });
    for h in head.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

/// Input: an HTTP/1.1 request head. What normalisation lets through has a path that starts with
/// `/` (or is `OPTIONS *`), holds no `\`, no `//` and no dot segment, and normalises to itself;
/// the filters then judge it without panicking, and request DLP on its path and query either
/// leaves a valid target or refuses.
pub fn http_head(data: &[u8]) {
    let Some(parts) = parse(data) else {
        return;
    };
    for escaped in [EscapedSlashes::Reject, EscapedSlashes::KeepUnchanged] {
        let mut normalized = parts.clone();
        if normalize::request(&mut normalized, escaped).is_err() {
            continue;
        }
        let path = normalized.uri.path().to_owned();
        if path == "*" {
            assert_eq!(normalized.method, hyper::Method::OPTIONS);
            continue;
        }
        assert!(path.starts_with('/'), "{path:?}");
        assert!(!path.contains('\\') && !path.contains("//"), "{path:?}");
        assert!(
            !path.split('/').any(|s| s == "." || s == ".."),
            "a dot segment left in {path:?}"
        );
        let mut again = normalized.clone();
        assert!(
            normalize::request(&mut again, escaped).is_ok(),
            "{path:?} normalised, then refused"
        );
        assert_eq!(again.uri.path(), path, "normalising twice changed it");
        let _ = normalize::rule_path(&path);
        if escaped == EscapedSlashes::Reject {
            let _ = runtime().block_on(chain::run(
                route(),
                &normalized,
                &peer(),
                &L7Stats::default(),
            ));
            if let Some(requests) = route()
                .model
                .dlp
                .as_ref()
                .and_then(|dlp| dlp.requests.as_ref())
                && let Some(pq) = normalized.uri.path_and_query()
            {
                let (_, rewritten) =
                    crate::l7::dlp_request::judge_target(&requests.set, pq.as_str());
                if let Some(text) = rewritten {
                    assert!(
                        hyper::http::uri::PathAndQuery::try_from(text.as_slice()).is_ok(),
                        "masked into a target no request can carry: {:?}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
    }
}
