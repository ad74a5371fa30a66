//! The access log: one flow record per HTTP request the L7 filters judged, passed or refused,
//! sent to the flow log. It keeps the method, host and path (masked by the route's DLP
//! detectors), never the query or another header's value.

use std::time::Instant;

use hyper::{Request, Response};

use super::HttpRoute;
use super::context::{Denial, Passed, Peer};
use super::respond::Body;
use super::waf::WafReport;
use crate::flows::event::{ProxyEvent, ProxyEventSink, ProxySide};
use crate::flows::record::HttpAccess;

/// What the chain decided, for the access log.
pub enum Outcome {
    Passed(Passed),
    Denied(Denial),
}

/// The parts of a request the access log keeps: never the query, never a header value but the
/// host.
pub struct RequestHead {
    method: String,
    host: String,
    path: String,
}

impl RequestHead {
    pub fn of<B>(req: &Request<B>) -> RequestHead {
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                req.headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        RequestHead {
            method: req.method().to_string(),
            host,
            path: req.uri().path().to_owned(),
        }
    }
}

/// What the proxy saw of a request and decided, for the access log.
pub struct Seen<'a> {
    pub head: RequestHead,
    pub outcome: &'a Outcome,
    pub waf: Option<&'a WafReport>,
}

pub fn log_access(
    sink: &ProxyEventSink,
    route: &HttpRoute,
    peer: &Peer,
    seen: Seen<'_>,
    response: &Response<Body>,
    started: Instant,
) {
    let Seen { head, outcome, waf } = seen;
    // The route's DLP detectors (of both directions) apply to what the access log keeps of
    // the request too.
    let path = match &route.model.dlp {
        Some(dlp) => {
            let mut path = head.path.into_bytes();
            for set in std::iter::once(&dlp.set).chain(dlp.requests.as_ref().map(|r| &r.set)) {
                let found = set.find(&path);
                if !found.is_empty() {
                    path = set.apply(&path, &found);
                }
            }
            String::from_utf8_lossy(&path).into_owned()
        }
        None => head.path,
    };
    let mut access = HttpAccess {
        method: head.method,
        host: head.host,
        path,
        status: response.status().as_u16(),
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        policy: route.policy.clone(),
        authn_method: None,
        principal: None,
        api_key_client: None,
        rate_limit_bucket: None,
        rate_limit_remaining: None,
        denied_by: None,
        tls_server_name: peer.server_name.clone(),
        waf_rule_ids: waf.map(|w| w.rule_ids.clone()).unwrap_or_default(),
        waf_anomaly_score: waf.and_then(|w| w.anomaly_score),
        waf_body: waf.and_then(|w| w.body).map(str::to_owned),
        waf_response_body: waf.and_then(|w| w.response_body).map(str::to_owned),
        waf_outbound_anomaly_score: waf.and_then(|w| w.outbound_score),
    };
    let refused = match outcome {
        Outcome::Passed(passed) => {
            if let Some(principal) = &passed.principal {
                access.authn_method = Some(principal.method.into());
                access.principal = Some(
                    principal
                        .claims
                        .subject()
                        .map_or_else(|| principal.provider.clone(), str::to_owned),
                );
            }
            if let Some(client) = &passed.api_key_client {
                access.authn_method.get_or_insert_with(|| "api_key".into());
                access.api_key_client = Some(client.clone());
            }
            if let Some((bucket, remaining)) = &passed.rate_limit {
                access.rate_limit_bucket = Some(bucket.clone());
                access.rate_limit_remaining = Some(*remaining);
            }
            None
        }
        Outcome::Denied(denial) => {
            let reason = denial.reason;
            access.denied_by = Some(format!("{}:{}", reason.filter(), reason.name()));
            Some(reason)
        }
    };
    sink(&ProxyEvent {
        side: ProxySide::Inbound,
        refused,
        http: Some(Box::new(access)),
        peer: peer.spiffe_id.as_ref().map(|id| id.as_str().to_owned()),
        source: Some(peer.source),
        destination: Some(peer.destination),
    });
}
