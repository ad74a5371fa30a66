//! JWKS sources against a small IdP stand-in on loopback (hyper, in-process).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;
use crate::test_support::eventually;

struct Idp {
    jwks: Mutex<String>,
    up: Mutex<bool>,
    hits: AtomicU64,
    issuer: Mutex<String>,
}

fn jwks(kid: &str) -> String {
    format!(
        r#"{{"keys":[{{"kty":"oct","kid":"{kid}","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}]}}"#
    )
}

async fn idp() -> (Arc<Idp>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let state = Arc::new(Idp {
        jwks: Mutex::new(jwks("k1")),
        up: Mutex::new(true),
        hits: AtomicU64::new(0),
        issuer: Mutex::new(format!("http://{addr}")),
    });
    let served = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&served);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            state.hits.fetch_add(1, Ordering::SeqCst);
                            let up = *state.up.lock().unwrap_or_else(PoisonError::into_inner);
                            let issuer = state
                                .issuer
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .clone();
                            let body = match req.uri().path() {
                                "/.well-known/openid-configuration" => {
                                    format!(r#"{{"issuer":"{issuer}","jwks_uri":"{issuer}/keys"}}"#)
                                }
                                _ => state
                                    .jwks
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .clone(),
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            if !up {
                                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            response.headers_mut().insert(
                                hyper::header::CACHE_CONTROL,
                                hyper::header::HeaderValue::from_static("max-age=3600"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (state, addr)
}

async fn until_keys(remote: &RemoteJwks) -> Arc<KeySet> {
    let what = format!("keys from {}", remote.location);
    eventually(&what, Duration::from_secs(2), || remote.keys()).await
}

/// Waits until `remote` has failed at least once.
async fn until_failed(remote: &RemoteJwks) {
    eventually("a failed fetch", Duration::from_secs(2), || {
        (remote.stats.failed.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_is_fetched_rotated_on_unknown_kid_and_kept_when_down() {
    let (idp, addr) = idp().await;
    let registry = JwksRegistry::default();
    let location = JwksLocation::Url(format!("http://{addr}/keys"));
    let remote = registry.get(&location);
    assert!(
        remote.keys().is_none(),
        "nothing before the registry starts"
    );
    registry.start(tokio::runtime::Handle::current());
    assert!(until_keys(&remote).await.has_kid("k1"));

    // The IdP rotates: a token's unknown kid triggers one re-fetch, not two within 10 s.
    *idp.jwks.lock().unwrap_or_else(PoisonError::into_inner) = jwks("k2");
    assert!(remote.refresh_for_unknown_kid(Duration::from_secs(2)).await);
    assert!(until_keys(&remote).await.has_kid("k2"));
    let hits = idp.hits.load(Ordering::SeqCst);
    assert!(
        !remote
            .refresh_for_unknown_kid(Duration::from_millis(100))
            .await
    );
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits, "rate limited");

    // The IdP goes down: the last good set stays, the failure is counted.
    *idp.up.lock().unwrap_or_else(PoisonError::into_inner) = false;
    *remote
        .last_kid_refresh
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    assert!(remote.refresh_for_unknown_kid(Duration::from_secs(2)).await);
    assert!(remote.stats.failed.load(Ordering::Relaxed) >= 1);
    assert!(until_keys(&remote).await.has_kid("k2"));

    // A source no policy names any more is stopped and forgotten.
    registry.retain(&std::collections::HashSet::new());
    assert!(registry.sources().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_names_the_jwks_and_must_name_the_issuer() {
    let (idp, addr) = idp().await;
    let registry = JwksRegistry::default();
    registry.start(tokio::runtime::Handle::current());
    let issuer = format!("http://{addr}");
    let remote = registry.get(&JwksLocation::Discovery {
        issuer: issuer.clone(),
    });
    assert!(until_keys(&remote).await.has_kid("k1"));

    *idp.issuer.lock().unwrap_or_else(PoisonError::into_inner) = "https://evil.example".into();
    let other = JwksRegistry::default();
    other.start(tokio::runtime::Handle::current());
    let refused = other.get(&JwksLocation::Discovery {
        issuer: format!("{issuer}/"),
    });
    until_failed(&refused).await;
    assert!(
        refused.keys().is_none(),
        "a discovery document of another issuer is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_leaves_no_keys() {
    let registry = JwksRegistry::default();
    registry.start(tokio::runtime::Handle::current());
    // A port nothing listens on (bound, then closed).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let remote = registry.get(&JwksLocation::Url(format!("http://{addr}/keys")));
    until_failed(&remote).await;
    assert!(remote.keys().is_none());
}

/// A hot restart: the new agent's registry takes the old one's sets, serves them while the
/// source is down (no token refused for want of keys), and replaces them on its first fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predecessors_sets_serve_until_the_first_fetch_and_a_stale_or_bad_one_is_skipped() {
    let (idp, addr) = idp().await;
    let old = JwksRegistry::default();
    old.start(tokio::runtime::Handle::current());
    let location = JwksLocation::Url(format!("http://{addr}/keys"));
    until_keys(&old.get(&location)).await;
    let carried = old.carried();
    assert_eq!(carried.len(), 1);
    // Through the handover's JSON.
    let json = serde_json::to_value(&carried).unwrap_or_else(|e| panic!("{e}"));
    let carried: Vec<CarriedJwks> = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));

    *idp.up.lock().unwrap_or_else(PoisonError::into_inner) = false;
    let stale = CarriedJwks {
        location: JwksLocation::Url("http://stale.invalid/keys".into()),
        document: jwks("old"),
        age: MAX_STALE + Duration::from_secs(1),
    };
    let bad = CarriedJwks {
        location: JwksLocation::Url("http://bad.invalid/keys".into()),
        document: "not json".into(),
        age: Duration::ZERO,
    };
    let new = JwksRegistry::default();
    new.seed(&[carried[0].clone(), stale.clone(), bad.clone()]);
    let remote = new.get(&location);
    assert!(
        remote.keys().is_some_and(|k| k.has_kid("k1")),
        "served before any fetch"
    );
    assert!(
        new.get(&stale.location).keys().is_none(),
        "older than the stale limit"
    );
    assert!(new.get(&bad.location).keys().is_none(), "not a JWKS");
    new.start(tokio::runtime::Handle::current());
    until_failed(&remote).await;
    assert!(
        remote.keys().is_some_and(|k| k.has_kid("k1")),
        "kept while the source is down"
    );

    *idp.jwks.lock().unwrap_or_else(PoisonError::into_inner) = jwks("k2");
    *idp.up.lock().unwrap_or_else(PoisonError::into_inner) = true;
    eventually("the first fetch's set", Duration::from_secs(5), || {
        remote.keys().filter(|k| k.has_kid("k2"))
    })
    .await;
}
