//! The L7 filter chain, in the shape of pingora's: one [`Filter`] trait with a request and a
//! response phase over one context per exchange, and the chain a fixed list ([`CHAIN`]):
//!
//! | stage | request phase | response phase |
//! | --- | --- | --- |
//! | `http` | normalise the request (or refuse it) | refuse a transfer coding, drop hop-by-hop headers |
//! | `authn` | JWT / API key / Basic from htpasswd or LDAP (a `kid` no key has re-fetches the remote JWKS once) | |
//! | `authz` | the rules, then the Rego policy, then the external authorizer (Envoy's ext_authz) | |
//! | `ratelimit` | the buckets | the `x-ratelimit-*` headers |
//! | `waf` | the Core Rule Set on the head and the body | the response rules |
//! | `dlp` | detectors on the path, headers and body | detectors on the headers and body |
//!
//! The request body is held once ([`RequestBody`]): the WAF and request DLP read the same held
//! bytes, and the decoded form of a compressed body is made once for both. A filter that refuses
//! returns a [`Denial`]; every refusal, of either phase, goes through [`refuse`] (counted, logged
//! and answered there; the access log records it from the outcome).

use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::http::request::Parts;
use hyper::http::response::Parts as ResponseParts;
use rampart_common::reason::{AuthnReason, DlpReason, ProxyReason, WafReason};

use super::body::{RequestBody, UpstreamBody};
use super::context::{Denial, Passed, Peer};
use super::respond::Body;
use super::waf::WafReport;
use super::{HttpRoute, L7Stats};

/// One request as the filters see it, from the client to the pod.
pub struct RequestContext<'a> {
    pub route: &'a HttpRoute,
    pub peer: &'a Peer,
    pub stats: &'a Arc<L7Stats>,
    pub parts: Parts,
    pub body: RequestBody,
    /// What the filters that passed the request established.
    pub passed: Passed,
    /// What the WAF found (for the counters and the access log).
    pub waf: Option<WafReport>,
    /// The WAF's transaction, kept open for the response phase.
    pub exchange: Option<rampart_waf::Exchange>,
}

/// The pod's response as the filters see it, on its way to the client.
pub struct ResponseContext<'a> {
    pub route: &'a HttpRoute,
    pub stats: &'a Arc<L7Stats>,
    pub passed: &'a Passed,
    pub head: ResponseParts,
    pub body: ResponseBody,
    /// Whether a body may follow the head (not for `HEAD`, `204` or `304`).
    pub has_body: bool,
    pub waf: &'a mut Option<WafReport>,
    pub exchange: Option<rampart_waf::Exchange>,
}

/// The pod's response body: as the pod sends it until a filter changes it.
pub enum ResponseBody {
    Upstream(UpstreamBody),
    Filtered(Body),
}

impl ResponseBody {
    /// The body as the client gets it.
    pub fn into_client(self) -> Body {
        match self {
            ResponseBody::Upstream(body) => body.map_err(Into::into).boxed(),
            ResponseBody::Filtered(body) => body,
        }
    }

    /// The body as the pod sent it, for a filter that reads it first; `None` once another
    /// filter changed it (the chain's order rules that out).
    fn take_upstream(&mut self) -> Option<UpstreamBody> {
        match std::mem::replace(self, ResponseBody::Filtered(super::respond::empty_body())) {
            ResponseBody::Upstream(body) => Some(body),
            ResponseBody::Filtered(body) => {
                *self = ResponseBody::Filtered(body);
                None
            }
        }
    }
}

/// A filter: what it does to a request and to its response. `Err` refuses.
pub(crate) trait Filter {
    async fn request(&self, ctx: &mut RequestContext<'_>) -> Result<(), Denial>;
    async fn response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), Denial>;
}

/// The filters, one per namespace of the proxy's refusal reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Http,
    Authn,
    Authz,
    RateLimit,
    Waf,
    Dlp,
}

/// The chain, in its fixed order (both phases run it front to back).
pub(crate) const CHAIN: [Stage; 6] = [
    Stage::Http,
    Stage::Authn,
    Stage::Authz,
    Stage::RateLimit,
    Stage::Waf,
    Stage::Dlp,
];

impl Filter for Stage {
    async fn request(&self, ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
        match self {
            Stage::Http => {
                super::normalize::request(&mut ctx.parts, ctx.route.model.escaped_slashes)
            }
            Stage::Authn => authenticate(ctx).await,
            Stage::Authz => authorize(ctx).await,
            Stage::RateLimit => super::chain::rate_limit(
                ctx.route,
                &ctx.parts,
                ctx.peer,
                &mut ctx.passed,
                ctx.stats,
            ),
            Stage::Waf => waf_request(ctx).await,
            Stage::Dlp => dlp_request(ctx).await,
        }
    }

    async fn response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), Denial> {
        match self {
            Stage::Http => super::normalize::response(&mut ctx.head.headers),
            Stage::Authn | Stage::Authz => Ok(()),
            Stage::RateLimit => {
                for (name, value) in &ctx.passed.set_response {
                    // A renewed session's cookie goes beside the pod's own cookies.
                    if name == hyper::header::SET_COOKIE {
                        ctx.head.headers.append(name.clone(), value.clone());
                    } else {
                        ctx.head.headers.insert(name.clone(), value.clone());
                    }
                }
                Ok(())
            }
            Stage::Waf => waf_response(ctx).await,
            Stage::Dlp => dlp_response(ctx).await,
        }
    }
}

/// Runs the request phase of every filter; the first refusal ends it.
pub async fn request_phase(ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
    for stage in CHAIN {
        stage.request(ctx).await?;
    }
    // Headers the proxy sets from authentication are never taken from the client; credentials
    // the policy does not forward are removed (after the WAF and DLP judged the request as the
    // client sent it).
    for header in &ctx.route.upstream_headers {
        ctx.parts.headers.remove(header);
    }
    super::chain::strip_credentials(&mut ctx.parts, &ctx.passed.strip);
    for (name, value) in &ctx.passed.set_upstream {
        ctx.parts.headers.insert(name.clone(), value.clone());
    }
    Ok(())
}

/// Runs the response phase of every filter; the first refusal ends it.
pub async fn response_phase(ctx: &mut ResponseContext<'_>) -> Result<(), Denial> {
    for stage in CHAIN {
        stage.response(ctx).await?;
    }
    Ok(())
}

/// Which phase refused, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Request,
    Response,
}

/// The one refusal path: counts the denial, logs it with what is known of the exchange, and
/// returns the answer that replaces the request's (or the pod's) response.
pub fn refuse(
    denial: &Denial,
    phase: Phase,
    route: &HttpRoute,
    stats: &L7Stats,
    peer: &Peer,
    request: Option<&Parts>,
    waf: Option<&WafReport>,
) -> hyper::Response<Body> {
    stats.deny(denial.reason);
    tracing::info!(
        policy = %route.policy,
        filter = denial.reason.filter(),
        reason = denial.reason.name(),
        ?phase,
        source = %peer.source,
        destination = %peer.destination,
        method = request.map(|p| p.method.as_str()),
        path = request.map(|p| p.uri.path()),
        waf_rules = ?waf.map(|w| &w.rule_ids),
        waf_score = ?waf.and_then(|w| w.anomaly_score),
        "l7: refused"
    );
    super::respond::refusal(denial, route)
}

/// `authn`; a token whose `kid` no key has may have been signed with a key the IdP just
/// published: the remote sets are re-fetched (rate-limited per source) and the request judged
/// once more.
async fn authenticate(ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
    let judged =
        super::chain::authenticate_request(ctx.route, &ctx.parts, ctx.peer, &mut ctx.passed).await;
    let Err(denial) = &judged else {
        return judged;
    };
    if denial.reason != ProxyReason::Authn(AuthnReason::KeySelection) {
        return judged;
    }
    let mut refreshed = false;
    for remote in ctx.route.remote_sources() {
        refreshed |= remote
            .refresh_for_unknown_kid(super::jwks::KID_REFRESH_WAIT)
            .await;
    }
    if !refreshed {
        return judged;
    }
    ctx.passed = Passed::default();
    super::chain::authenticate_request(ctx.route, &ctx.parts, ctx.peer, &mut ctx.passed).await
}

/// `authz`: the rules, then the route's Rego policy, then its external authorizer; each must
/// allow.
async fn authorize(ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
    super::chain::authorize(&ctx.route.model.rules, &ctx.parts, ctx.peer, &ctx.passed)?;
    let scheme = if ctx.peer.server_name.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(rego) = &ctx.route.model.rego {
        let input = super::rego::input(&ctx.parts, ctx.peer, &ctx.passed, scheme);
        match super::rego::decide(rego, input).await {
            super::rego::Decision::Allow(headers) => ctx.passed.set_upstream.extend(headers),
            super::rego::Decision::Deny(denial) => return Err(denial),
        }
    }
    if let Some(authorizer) = &ctx.route.model.ext_authz {
        match super::ext_authz::check(authorizer, &ctx.parts, ctx.peer, scheme).await {
            super::ext_authz::Decision::Allow(headers) => ctx.passed.set_upstream.extend(headers),
            super::ext_authz::Decision::Deny(denial) => return Err(denial),
        }
    }
    Ok(())
}

/// `waf` on the request: the rules judge it as the client sent it (before credentials are
/// stripped); the body they read stays held for DLP and the pod.
async fn waf_request(ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
    let Some(waf) = &ctx.route.waf else {
        return Ok(());
    };
    let super::waf::Inspected {
        judged,
        report,
        exchange,
    } = super::waf::inspect(waf, &ctx.parts, &mut ctx.body, ctx.peer).await;
    ctx.stats
        .waf_evaluated(&ctx.route.policy, &report, waf.model.block);
    ctx.waf = Some(report);
    judged?;
    // The response rules read text: ask the pod for an uncompressed response (one that comes
    // compressed anyway is decoded for them).
    if exchange.is_some() {
        ctx.parts.headers.remove(hyper::header::ACCEPT_ENCODING);
    }
    ctx.exchange = exchange;
    Ok(())
}

/// `dlp` on the request, on what the client sent.
async fn dlp_request(ctx: &mut RequestContext<'_>) -> Result<(), Denial> {
    let Some(dlp) = &ctx.route.model.dlp else {
        return Ok(());
    };
    let Some(requests) = &dlp.requests else {
        return Ok(());
    };
    super::dlp_request::inspect(dlp, requests, &mut ctx.parts, &mut ctx.body, ctx.stats).await
}

/// `waf` on the response: the rules judge the pod's answer in the request's transaction.
async fn waf_response(ctx: &mut ResponseContext<'_>) -> Result<(), Denial> {
    let (Some(exchange), Some(route_waf), Some(report)) =
        (ctx.exchange.take(), &ctx.route.waf, ctx.waf.as_mut())
    else {
        return Ok(());
    };
    let Some(body) = ctx.body.take_upstream() else {
        return Err(Denial::new(WafReason::EngineError, StatusCode::BAD_GATEWAY));
    };
    let (judged, verdict) =
        super::waf::inspect_response(route_waf, exchange, &ctx.head, body, ctx.has_body, report)
            .await;
    ctx.stats
        .waf_response(&ctx.route.policy, &verdict, route_waf.model.block);
    ctx.body = ResponseBody::Upstream(judged?);
    Ok(())
}

/// `dlp` on the response: masked or redacted as it streams, or held whole when a detector
/// blocks.
async fn dlp_response(ctx: &mut ResponseContext<'_>) -> Result<(), Denial> {
    let Some(dlp) = &ctx.route.model.dlp else {
        return Ok(());
    };
    if !ctx.has_body || dlp.set.detectors.is_empty() {
        return Ok(());
    }
    let Some(body) = ctx.body.take_upstream() else {
        return Err(Denial::new(DlpReason::Unreadable, StatusCode::BAD_GATEWAY));
    };
    match super::dlp::filter(dlp, &mut ctx.head, body, ctx.stats).await {
        Ok(super::dlp::Filtered::Streamed(body)) => {
            ctx.body = ResponseBody::Filtered((*body).boxed());
            Ok(())
        }
        Ok(super::dlp::Filtered::Whole(bytes, trailers)) => {
            ctx.body = ResponseBody::Upstream(super::body::whole_body(bytes, trailers));
            Ok(())
        }
        Err(refusal) => Err(Denial::new(refusal.reason(), StatusCode::BAD_GATEWAY)),
    }
}
