//! What the proxy answers itself: a refusal (plain, or the WAF's block page) and the plain
//! status responses (`502` when the pod cannot be reached, ...).

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use rampart_common::reason::{ProxyReason, WafReason};

use super::HttpRoute;
use super::body::BoxError;
use super::context::Denial;

/// The body of a response to the client.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty_body() -> Body {
    full_body(Bytes::new())
}

pub fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The answer to a refusal: the WAF's block page when its rules refused (and the policy has
/// one), else the plain status with the denial's headers.
pub fn refusal(denial: &Denial, route: &HttpRoute) -> Response<Body> {
    let page = match denial.reason {
        ProxyReason::Waf(reason) if by_rules(reason) => route
            .waf
            .as_ref()
            .and_then(|waf| waf.model.block_page.as_ref()),
        _ => None,
    };
    let Some(page) = page else {
        return local_response(denial);
    };
    let mut response = Response::new(full_body(page.body.clone()));
    *response.status_mut() = page.status.unwrap_or(denial.status);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, page.content_type.clone());
    response
}

/// Whether a WAF reason is a rule group (the rules blocked), not a body or engine failure.
fn by_rules(reason: WafReason) -> bool {
    !matches!(
        reason,
        WafReason::BodyUnreadable
            | WafReason::BodyTooLarge
            | WafReason::BodyEncoding
            | WafReason::EngineError
            | WafReason::ResponseTooLarge
            | WafReason::ResponseUnreadable
            | WafReason::ResponseEncoding
    )
}

pub fn local_response(denial: &Denial) -> Response<Body> {
    let mut response = match &denial.body {
        Some(body) => {
            let mut response = Response::new(full_body(body.clone()));
            *response.status_mut() = denial.status;
            response
        }
        None => status_response(denial.status),
    };
    for (name, value) in &denial.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

pub fn status_response(status: StatusCode) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(full_body(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}
