//! The `waf` filter, last before the upstream: the route's request (head, and its body up to
//! the profile's limit) evaluated by the Core Rule Set engine on a blocking thread, so the async
//! executor never waits on the engine. Engines are loaded by the controller before a policy set
//! is installed, one per distinct profile ([`WafEngines`]); a set whose rules do not load is
//! rejected and the last good set stays in force.
//!
//! What reaches the pod: with body inspection, the body the engine judged (buffered, at most
//! the limit) and, with `overLimit: InspectPrefix`, the rest streamed after it; without, the
//! body streamed as it comes. The access log says which (`waf_body`).
//!
//! With response inspection, the request's engine transaction stays open ([`Exchange`]) and
//! the pod's response is judged in it (head, and its body up to the response limit, held
//! until then): a leak is answered `403` instead (`waf_response_body`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::{StatusCode, Version};
use rampart_common::reason::WafReason;
use rampart_waf::{CrsLayout, Engine, Evaluation, Exchange, Profile};

use super::body::{
    Holding, PrefixedBody, Read, RequestBody, Undecodable, UpstreamBody, read_up_to, whole_body,
};
use super::context::{Denial, Peer};
use crate::policy::compile::Compiled;
use crate::policy::waf::{OverLimit, WafModel};

/// Engines by profile, over the CRS directory the agent was given (`--crs-dir`).
#[derive(Debug)]
pub struct WafEngines {
    crs_dir: PathBuf,
    engines: Mutex<HashMap<Profile, Arc<Engine>>>,
}

impl WafEngines {
    pub fn new(crs_dir: PathBuf) -> WafEngines {
        WafEngines {
            crs_dir,
            engines: Mutex::new(HashMap::new()),
        }
    }

    /// Loads an engine for every WAF profile `compiled` uses that has none yet (blocking: about
    /// a second per CRS 4 profile) and forgets those no route uses any more. `Err` names the
    /// policy whose rules did not load; nothing changes then.
    pub fn prepare(&self, compiled: &Compiled) -> Result<(), String> {
        let wanted: Vec<(&str, &WafModel)> = compiled
            .mesh
            .iter()
            .filter_map(|r| {
                let waf = r.http.as_ref()?.waf.as_ref()?;
                Some((r.http_policy.as_deref().unwrap_or_default(), waf))
            })
            .collect();
        let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::new();
        for (policy, waf) in wanted {
            if next.contains_key(&waf.profile) {
                continue;
            }
            let engine = match engines.get(&waf.profile) {
                Some(engine) => Arc::clone(engine),
                None => {
                    let started = std::time::Instant::now();
                    let layout = CrsLayout::discover(&self.crs_dir)
                        .map_err(|e| format!("MeshPolicy {policy}: waf: {e} (--crs-dir)"))?;
                    let engine = Engine::load(&layout, &waf.profile)
                        .map_err(|e| format!("MeshPolicy {policy}: waf: {e}"))?;
                    tracing::info!(
                        policy,
                        crs = %layout.dir.display(),
                        paranoia_level = waf.profile.paranoia_level,
                        ms = started.elapsed().as_millis() as u64,
                        "waf: rules loaded"
                    );
                    Arc::new(engine)
                }
            };
            next.insert(waf.profile.clone(), engine);
        }
        // Engines no route uses are freed when the last request using them ends.
        *engines = next;
        Ok(())
    }

    /// The engine of `profile`, if `prepare` loaded it.
    pub fn engine(&self, profile: &Profile) -> Option<Arc<Engine>> {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        engines.get(profile).cloned()
    }
}

/// A route's WAF: its model and its engine (`None` only if loading was skipped, which fails
/// every request closed).
#[derive(Debug)]
pub struct RouteWaf {
    pub model: WafModel,
    pub engine: Option<Arc<Engine>>,
}

/// How much of the body the engine saw (the access log's `waf_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySeen {
    /// All of it (or there was none).
    Whole,
    /// The first `limit` bytes; the rest went to the pod uninspected.
    Prefix,
    /// None: body inspection is off.
    NotInspected,
}

impl BodySeen {
    pub fn name(self) -> &'static str {
        match self {
            BodySeen::Whole => "inspected",
            BodySeen::Prefix => "prefix_inspected",
            BodySeen::NotInspected => "not_inspected",
        }
    }
}

/// What the filter found, for the access log and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafReport {
    /// Rules matched by the request, then by its response.
    pub rule_ids: Vec<u32>,
    pub anomaly_score: Option<u32>,
    /// The rule group of the first matched detection rule.
    pub group: WafReason,
    /// The rules would block (in Detect mode the request passed anyway).
    pub matched_block: bool,
    pub body: Option<&'static str>,
    pub engine_error: bool,
    /// How much of the response the engine saw, when responses are inspected.
    pub response_body: Option<&'static str>,
    /// The outbound anomaly score the response rules reported.
    pub outbound_score: Option<u32>,
}

impl Default for WafReport {
    fn default() -> WafReport {
        WafReport {
            rule_ids: Vec::new(),
            anomaly_score: None,
            group: WafReason::Other,
            matched_block: false,
            body: None,
            engine_error: false,
            response_body: None,
            outbound_score: None,
        }
    }
}

/// What the response rules found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseVerdict {
    /// The rule group of the leak, when the rules would block the response.
    pub matched_block: Option<WafReason>,
    pub engine_error: bool,
}

/// The request as the engine takes it, owned so it can move to a blocking thread.
struct OwnedRequest {
    peer: Peer,
    method: String,
    uri: String,
    version: &'static str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Bytes,
}

impl OwnedRequest {
    /// The engine's verdict, and with `keep_open` the transaction left open for the response.
    fn evaluate(
        &self,
        engine: &Arc<Engine>,
        keep_open: bool,
    ) -> Result<(Evaluation, Option<Exchange>), rampart_waf::WafError> {
        let headers = header_pairs(&self.headers);
        let request = rampart_waf::Request {
            client: self.peer.source,
            server: self.peer.destination,
            method: &self.method,
            uri: &self.uri,
            http_version: self.version,
            headers: &headers,
            body: &self.body,
        };
        if keep_open {
            engine.exchange(&request)
        } else {
            engine.evaluate(&request).map(|e| (e, None))
        }
    }
}

fn header_pairs(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    headers
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

fn owned_headers(headers: &hyper::HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The request's headers for the engine. HTTP/2 carries the host as `:authority`, which hyper
/// keeps in the URI: the engine is given it as `Host`, as an HTTP/1.1 request would carry it
/// (else CRS's rule 920280, "missing Host", refuses every HTTP/2 request).
/// With `decoded_length`, the body is given to the engine decoded: its `content-encoding` is
/// not the engine's to see, and its length is the decoded one.
fn request_headers(
    parts: &hyper::http::request::Parts,
    decoded_length: Option<usize>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut headers = owned_headers(&parts.headers);
    if let Some(length) = decoded_length {
        headers.retain(|(name, _)| {
            !name.eq_ignore_ascii_case(b"content-encoding")
                && !name.eq_ignore_ascii_case(b"content-length")
        });
        headers.push((b"content-length".to_vec(), length.to_string().into_bytes()));
    }
    if !parts.headers.contains_key(hyper::header::HOST)
        && let Some(authority) = parts.uri.authority()
    {
        headers.insert(
            0,
            (b"host".to_vec(), authority.as_str().as_bytes().to_vec()),
        );
    }
    headers
}

fn version_number(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        _ => "1.1",
    }
}

/// The request's verdict: `Ok` with the body to forward, or the denial; the report; and, when
/// the route inspects responses and the request passed, the engine's transaction kept open.
pub struct Inspected {
    pub judged: Result<(), Denial>,
    pub report: WafReport,
    pub exchange: Option<Exchange>,
}

/// Runs the filter on a request: its head, and its body held up to the profile's limit (read
/// once into `body`, which later filters and the pod get).
pub async fn inspect(
    waf: &RouteWaf,
    parts: &Parts,
    body: &mut RequestBody,
    peer: &Peer,
) -> Inspected {
    let (judged, report, exchange) = inspect_request(waf, parts, body, peer).await;
    Inspected {
        judged,
        report,
        exchange,
    }
}

async fn inspect_request(
    waf: &RouteWaf,
    parts: &Parts,
    body: &mut RequestBody,
    peer: &Peer,
) -> (Result<(), Denial>, WafReport, Option<Exchange>) {
    let model = &waf.model;
    let mut report = WafReport::default();
    let refused = |mut report: WafReport, reason: WafReason, status: StatusCode| {
        report.body = Some(BodySeen::NotInspected.name());
        (Err(denial(reason, status)), report, None)
    };
    let (seen, judged) = if model.inspect_body {
        match body.hold(model.profile.body_limit).await {
            Err(_) => return refused(report, WafReason::BodyUnreadable, StatusCode::BAD_REQUEST),
            Ok(Holding::Whole(bytes)) => (BodySeen::Whole, bytes.clone()),
            Ok(Holding::Over(prefix)) => match model.over_limit {
                OverLimit::Reject => {
                    return refused(
                        report,
                        WafReason::BodyTooLarge,
                        StatusCode::PAYLOAD_TOO_LARGE,
                    );
                }
                // The engine is given more than its limit so that it cuts the body itself and
                // knows it did (a JSON body cut short is then no parse error); the rest is
                // streamed to the pod after it.
                OverLimit::InspectPrefix => (BodySeen::Prefix, prefix.clone()),
            },
        }
    } else {
        (BodySeen::NotInspected, Bytes::new())
    };
    // The rules read text: a body with a content-encoding is given to them decoded (it goes on
    // as it came), or refused when it cannot be (a pod that inflates request bodies would
    // otherwise read what no rule saw).
    let encoded = model.inspect_body && super::body::encoded(&parts.headers);
    let judged = if encoded {
        match body.decoded(&parts.headers, model.profile.body_limit) {
            Some(Ok(decoded)) => decoded,
            None | Some(Err(Undecodable::TooLarge)) => {
                return refused(
                    report,
                    WafReason::BodyTooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                );
            }
            Some(Err(Undecodable::Encoding)) => {
                return refused(
                    report,
                    WafReason::BodyEncoding,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                );
            }
            Some(Err(Undecodable::Unreadable)) => {
                return refused(report, WafReason::BodyUnreadable, StatusCode::BAD_REQUEST);
            }
        }
    } else {
        judged
    };
    report.body = Some(seen.name());
    let Some(engine) = waf.engine.clone() else {
        report.engine_error = true;
        let (judged, report) = engine_failed(model, report, ());
        return (judged, report, None);
    };
    let request = OwnedRequest {
        peer: peer.clone(),
        method: parts.method.as_str().to_owned(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned()),
        version: version_number(parts.version),
        headers: request_headers(parts, encoded.then_some(judged.len())),
        body: judged,
    };
    let keep_open = model.profile.response_body_limit.is_some();
    let evaluated = tokio::task::spawn_blocking(move || request.evaluate(&engine, keep_open)).await;
    let (evaluation, exchange) = match evaluated {
        Ok(Ok(evaluated)) => evaluated,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "waf: the engine could not judge a request");
            report.engine_error = true;
            let (judged, report) = engine_failed(model, report, ());
            return (judged, report, None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "waf: evaluation task failed");
            report.engine_error = true;
            let (judged, report) = engine_failed(model, report, ());
            return (judged, report, None);
        }
    };
    report.rule_ids = evaluation.rule_ids();
    report.anomaly_score = evaluation.anomaly_score;
    report.group = evaluation.group();
    report.matched_block = evaluation.disruptive;
    if evaluation.disruptive && model.block {
        let status = StatusCode::from_u16(evaluation.status)
            .ok()
            .filter(|s| s.is_client_error())
            .unwrap_or(StatusCode::FORBIDDEN);
        return (Err(denial(report.group, status)), report, None);
    }
    if keep_open && exchange.is_none() {
        // Detect mode let an interrupted request through: its transaction is over, the
        // response goes uninspected (the access log says so).
        report.response_body = Some(BodySeen::NotInspected.name());
    }
    (Ok(()), report, exchange)
}

/// Runs the response rules on the pod's response (`has_body`: one may follow its head): `Ok`
/// with the body to send (what the engine judged, then, past the limit with `InspectPrefix`,
/// the rest streamed), or the denial. `report` gains the response's rules and score.
pub async fn inspect_response(
    waf: &RouteWaf,
    exchange: Exchange,
    head: &hyper::http::response::Parts,
    body: UpstreamBody,
    has_body: bool,
    report: &mut WafReport,
) -> (Result<UpstreamBody, Denial>, ResponseVerdict) {
    let model = &waf.model;
    let mut verdict = ResponseVerdict {
        matched_block: None,
        engine_error: false,
    };
    let limit = model.profile.response_body_limit.unwrap_or_default();
    let (seen, judged, forward) = if has_body {
        match read_up_to(body, limit).await {
            Err(_) => {
                report.response_body = Some(BodySeen::NotInspected.name());
                return (
                    Err(denial(
                        WafReason::ResponseUnreadable,
                        StatusCode::BAD_GATEWAY,
                    )),
                    verdict,
                );
            }
            Ok(Read::Whole(bytes, trailers)) => {
                (BodySeen::Whole, bytes.clone(), whole_body(bytes, trailers))
            }
            // A compressed response can be judged only whole (decoded below).
            Ok(Read::Over(..)) if super::body::encoded(&head.headers) => {
                report.response_body = Some(BodySeen::NotInspected.name());
                return (
                    Err(denial(WafReason::ResponseTooLarge, StatusCode::BAD_GATEWAY)),
                    verdict,
                );
            }
            Ok(Read::Over(prefix, rest)) => match model.response_over_limit {
                OverLimit::Reject => {
                    report.response_body = Some(BodySeen::NotInspected.name());
                    return (
                        Err(denial(WafReason::ResponseTooLarge, StatusCode::BAD_GATEWAY)),
                        verdict,
                    );
                }
                OverLimit::InspectPrefix => (
                    BodySeen::Prefix,
                    prefix.slice(..limit.min(prefix.len())),
                    PrefixedBody {
                        prefix: Some(prefix),
                        rest,
                    }
                    .boxed(),
                ),
            },
        }
    } else {
        (BodySeen::Whole, Bytes::new(), body)
    };
    // The rules read text: a compressed body is given to them decoded (it goes on as it came).
    let judged = match super::body::decode_for_inspection(&head.headers, judged, limit) {
        Ok(judged) => judged,
        Err(reason) => {
            report.response_body = Some(BodySeen::NotInspected.name());
            let reason = match reason {
                Undecodable::TooLarge => WafReason::ResponseTooLarge,
                Undecodable::Unreadable => WafReason::ResponseUnreadable,
                Undecodable::Encoding => WafReason::ResponseEncoding,
            };
            return (Err(denial(reason, StatusCode::BAD_GATEWAY)), verdict);
        }
    };
    report.response_body = Some(seen.name());
    let status = head.status.as_u16();
    let version = version_number(head.version);
    let mut headers = owned_headers(&head.headers);
    if super::body::encoded(&head.headers) {
        // The rules see the body decoded, so the encoding is not theirs to see (CRS skips its
        // leak rules on a compressed body).
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(b"content-encoding"));
    }
    let evaluated = tokio::task::spawn_blocking(move || {
        exchange.respond(&rampart_waf::Response {
            status,
            http_version: version,
            headers: &header_pairs(&headers),
            body: &judged,
        })
    })
    .await;
    let problem = match evaluated {
        Ok(Ok(evaluation)) => Ok(evaluation),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let evaluation = match problem {
        Ok(evaluation) => evaluation,
        Err(problem) => {
            tracing::info!(%problem, "waf: the engine could not judge a response");
            verdict.engine_error = true;
            if model.block_on_error {
                return (
                    Err(denial(
                        WafReason::EngineError,
                        StatusCode::SERVICE_UNAVAILABLE,
                    )),
                    verdict,
                );
            }
            return (Ok(forward), verdict);
        }
    };
    report.rule_ids.extend(evaluation.rule_ids());
    report.outbound_score = evaluation.anomaly_score;
    if evaluation.disruptive {
        verdict.matched_block = Some(evaluation.group());
        if model.block {
            let status = StatusCode::from_u16(evaluation.status)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            return (Err(denial(evaluation.group(), status)), verdict);
        }
    }
    (Ok(forward), verdict)
}

fn engine_failed<T>(
    model: &WafModel,
    report: WafReport,
    forward: T,
) -> (Result<T, Denial>, WafReport) {
    if model.block_on_error {
        (
            Err(denial(
                WafReason::EngineError,
                StatusCode::SERVICE_UNAVAILABLE,
            )),
            report,
        )
    } else {
        (Ok(forward), report)
    }
}

fn denial(reason: WafReason, status: StatusCode) -> Denial {
    Denial::new(reason, status)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn an_http2_authority_is_the_engines_host() {
        let (h2, ()) = hyper::Request::get("http://shop.example:8080/a")
            .version(Version::HTTP_2)
            .body(())
            .expect("request")
            .into_parts();
        assert_eq!(
            request_headers(&h2, None),
            [(b"host".to_vec(), b"shop.example:8080".to_vec())]
        );
        let (h1, ()) = hyper::Request::get("/a")
            .header("host", "shop.example")
            .body(())
            .expect("request")
            .into_parts();
        assert_eq!(
            request_headers(&h1, None),
            [(b"host".to_vec(), b"shop.example".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_body_read_whole_keeps_its_trailers() {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = whole_body(Bytes::from_static(b"payload"), Some(trailers));
        let Ok(Read::Whole(bytes, kept)) = read_up_to(body, 64).await else {
            panic!("read whole");
        };
        assert_eq!(&bytes[..], b"payload");
        let forwarded = whole_body(bytes, kept)
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            forwarded.trailers().and_then(|t| t.get("grpc-status")),
            Some(&HeaderValue::from_static("0"))
        );
        assert_eq!(&forwarded.to_bytes()[..], b"payload");
    }
}
