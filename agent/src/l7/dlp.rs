//! The `dlp` filter on responses: the pod's response headers the policy names and its body are
//! scanned for sensitive data and masked or redacted as they stream to the client (a match
//! split across chunks is still seen, see `rampart_l7::dlp::stream`); the body is then sent
//! re-chunked (its length may change). gzip, deflate and brotli bodies are decompressed first and sent
//! without encoding; any other encoding is refused (`502`), never passed through unscanned. A
//! policy with a `Block` detector holds the whole response (up to [`BLOCK_MODE_LIMIT`]) and
//! answers `502` instead if it matches. Trailers (gRPC's status) follow the masked body.
//!
//! A JSON response is also scanned with its string escapes decoded: a match whose bytes hold no
//! escape is masked where it stands; one spanning escapes (`\u0034111...`) cannot be, so it
//! refuses the response whatever the action (`encoded_match`). The head of a JSON response
//! waits for the first bytes the masker lets go, so such a response shorter than the masker's
//! hold-back is answered `502`; past that, the body is cut before the match.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame};
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, HeaderMap, HeaderValue};
use rampart_common::reason::DlpReason;
use rampart_l7::dlp::{Action, DlpSet, Released, StreamMasker};

use super::L7Stats;
use super::body::{BoxError, Decoder, Undecodable, UpstreamBody, decoder, json_content};
use crate::policy::dlp::DlpModel;

/// The most a `Block`-mode response may hold.
pub const BLOCK_MODE_LIMIT: usize = 4 << 20;

/// Why a response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `Block` detector matched.
    Blocked,
    /// An encoding the filter cannot read (or `compressed: Refuse`).
    Encoding,
    /// A `Block`-mode response over the limit.
    TooLarge,
    /// The body could not be read or decoded.
    Unreadable,
    /// A match only the JSON-decoded body shows: it cannot be masked where it stands.
    EncodedMatch,
}

impl From<Undecodable> for Refusal {
    fn from(why: Undecodable) -> Refusal {
        match why {
            Undecodable::Encoding => Refusal::Encoding,
            Undecodable::Unreadable => Refusal::Unreadable,
            Undecodable::TooLarge => Refusal::TooLarge,
        }
    }
}

impl Refusal {
    pub fn reason(self) -> DlpReason {
        match self {
            Refusal::Blocked => DlpReason::Blocked,
            Refusal::Encoding => DlpReason::UnsupportedEncoding,
            Refusal::TooLarge => DlpReason::TooLarge,
            Refusal::Unreadable => DlpReason::Unreadable,
            Refusal::EncodedMatch => DlpReason::EncodedMatch,
        }
    }
}

/// The action label of a match (`shadow` when nothing was changed).
fn action_label(action: Action, shadow: bool) -> &'static str {
    match (shadow, action) {
        (true, _) => "shadow",
        (_, Action::Mask { .. }) => "mask",
        (_, Action::Redact) => "redact",
        (_, Action::Block) => "block",
    }
}

/// The metric's `direction` label.
pub const DIRECTION: &str = "response";

/// Counts `matches` (indices into `set`) of one `direction`.
pub(super) fn count(
    stats: &L7Stats,
    direction: &'static str,
    set: &DlpSet,
    shadow: bool,
    matches: &[usize],
) {
    for &i in matches {
        if let Some(d) = set.detectors.get(i) {
            stats.dlp_matched(direction, &d.name, action_label(d.action, shadow));
        }
    }
}

/// Masks the values of the headers `names` in `map` with `set` (unless `shadow`), counting the
/// matches under `direction`; whether a `Block` detector matched one.
pub(super) fn mask_headers(
    set: &DlpSet,
    names: &[hyper::header::HeaderName],
    shadow: bool,
    direction: &'static str,
    map: &mut HeaderMap,
    stats: &L7Stats,
) -> bool {
    let mut blocked = false;
    for name in names {
        let values: Vec<HeaderValue> = map.get_all(name).iter().cloned().collect();
        if values.is_empty() {
            continue;
        }
        map.remove(name);
        for value in values {
            let found = set.find(value.as_bytes());
            let matched: Vec<usize> = found.iter().map(|f| f.detector).collect();
            count(stats, direction, set, shadow, &matched);
            blocked |= matched
                .iter()
                .any(|&i| set.detectors[i].action == Action::Block);
            let masked = if shadow || found.is_empty() {
                value
            } else {
                HeaderValue::from_bytes(&set.apply(value.as_bytes(), &found))
                    .unwrap_or(HeaderValue::from_static("[REDACTED]"))
            };
            map.append(name.clone(), masked);
        }
    }
    blocked
}

/// What the filter makes of a response: its new head, and the body to send.
pub enum Filtered {
    Streamed(Box<DlpBody>),
    /// The whole body, and its trailers.
    Whole(Bytes, Option<HeaderMap>),
}

/// Applies the filter to a response head and body: the headers it names masked, the body
/// wrapped (or, with a `Block` detector, read whole and judged).
pub async fn filter(
    model: &DlpModel,
    head: &mut hyper::http::response::Parts,
    body: UpstreamBody,
    stats: &Arc<L7Stats>,
) -> Result<Filtered, Refusal> {
    let blocked = mask_headers(
        &model.set,
        &model.headers,
        model.shadow,
        DIRECTION,
        &mut head.headers,
        stats,
    );
    if blocked && !model.shadow {
        return Err(Refusal::Blocked);
    }
    let decoder = decoder(&head.headers, model.decompress)?;
    if decoder.is_some() {
        head.headers.remove(CONTENT_ENCODING);
    }
    if !model.shadow || decoder.is_some() {
        // The length may change: the body goes re-chunked (or with the length of the whole).
        head.headers.remove(CONTENT_LENGTH);
    }
    let json = json_content(&head.headers);
    let mut masker = StreamMasker::new(Arc::clone(&model.set), model.shadow);
    if json {
        masker = masker.json();
    }
    let mut streamed = DlpBody {
        inner: body,
        decoder,
        masker,
        shadow: model.shadow,
        stats: Arc::clone(stats),
        done: false,
        trailers: None,
        first: None,
        sent: false,
    };
    if !model.blocks || model.shadow {
        if json && !model.shadow {
            // A match only decoding shows refuses the response: the head waits for the first
            // bytes the masker lets go (all of a body shorter than its hold-back).
            match streamed.frame().await {
                Some(Err(e)) => return Err(refusal_of(&e)),
                first => streamed.first = first.and_then(Result::ok),
            }
        }
        streamed.sent = true;
        return Ok(Filtered::Streamed(Box::new(streamed)));
    }
    let mut whole = Vec::new();
    let mut trailers = None;
    while let Some(frame) = streamed.frame().await {
        let frame = frame.map_err(|e| refusal_of(&e))?;
        match frame.into_data() {
            Ok(data) => {
                whole.extend_from_slice(&data);
                if whole.len() > BLOCK_MODE_LIMIT {
                    return Err(Refusal::TooLarge);
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Filtered::Whole(Bytes::from(whole), trailers))
}

#[derive(Debug, thiserror::Error)]
#[error("a DLP detector that blocks matched the response")]
struct Blocked;

#[derive(Debug, thiserror::Error)]
#[error("the response is over the DLP block-mode limit")]
struct TooLarge;

#[derive(Debug, thiserror::Error)]
#[error("a DLP match only the JSON-decoded response shows")]
struct EncodedMatch;

/// The refusal a body error stands for.
fn refusal_of(e: &BoxError) -> Refusal {
    if e.downcast_ref::<TooLarge>().is_some() {
        Refusal::TooLarge
    } else if e.downcast_ref::<Blocked>().is_some() {
        Refusal::Blocked
    } else if e.downcast_ref::<EncodedMatch>().is_some() {
        Refusal::EncodedMatch
    } else {
        Refusal::Unreadable
    }
}

/// A response body masked as it streams; its trailers follow the last (held-back) bytes.
pub struct DlpBody {
    inner: UpstreamBody,
    decoder: Option<Decoder>,
    masker: StreamMasker<Arc<DlpSet>>,
    shadow: bool,
    stats: Arc<L7Stats>,
    done: bool,
    trailers: Option<HeaderMap>,
    /// A frame taken before the head was sent (a JSON response's first bytes), sent first.
    first: Option<Frame<Bytes>>,
    /// The head is sent: a refusal cuts the body, and is counted here.
    sent: bool,
}

impl DlpBody {
    fn released(&self, released: Released) -> Result<Option<Bytes>, BoxError> {
        count(
            &self.stats,
            DIRECTION,
            self.masker.set(),
            self.shadow,
            &released.matches,
        );
        if !self.shadow && (released.blocked || released.revealed) {
            let (refusal, error): (Refusal, BoxError) = if released.blocked {
                (Refusal::Blocked, Box::new(Blocked))
            } else {
                (Refusal::EncodedMatch, Box::new(EncodedMatch))
            };
            // Before the head, the caller answers `502` and counts it.
            if self.sent {
                self.stats.deny(refusal.reason().into());
                tracing::info!(reason = refusal.reason().name(), "dlp: response cut");
            }
            return Err(error);
        }
        Ok((!released.bytes.is_empty()).then(|| Bytes::from(released.bytes)))
    }
}

impl Body for DlpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            if self.done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers (the last frame) wait for the held-back bytes.
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            self.trailers = frame.into_trailers().ok();
                            continue;
                        }
                    };
                    let this = &mut *self;
                    let released = match &mut this.decoder {
                        Some(d) => match d.write(&data) {
                            Ok(plain) => this.masker.push(&plain),
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        },
                        None => this.masker.push(&data),
                    };
                    match self.released(released) {
                        Ok(Some(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                        Ok(None) => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let mut tail = Vec::new();
                    if let Some(d) = &mut self.decoder {
                        match d.finish() {
                            Ok(plain) => tail = plain,
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        }
                    }
                    let mut released = self.masker.push(&tail);
                    let end = self.masker.finish();
                    released.bytes.extend(end.bytes);
                    released.matches.extend(end.matches);
                    released.blocked |= end.blocked;
                    released.revealed |= end.revealed;
                    return match self.released(released) {
                        Ok(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                        Ok(None) => {
                            Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
                        }
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none() && self.first.is_none()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use hyper::header::HeaderValue;

    use hyper::header::CONTENT_TYPE;

    use super::*;
    use crate::policy::dlp::DlpModel;

    fn model(detectors: &str) -> DlpModel {
        crate::policy::http::section_for_tests(&format!("    dlp: {detectors}\n"))
            .ok()
            .and_then(|http| http.dlp.clone())
            .unwrap_or_else(|| panic!("{detectors}"))
    }

    /// `data` and `grpc-status: 0` as trailers, as the pod would send them.
    fn with_trailers(data: &'static [u8]) -> super::UpstreamBody {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Full::new(Bytes::from_static(data))
            .with_trailers(std::future::ready(Some(Ok(trailers))))
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body the pod sends in `frames`.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }
    }

    fn framed(frames: &[&[u8]]) -> super::UpstreamBody {
        Frames(frames.iter().map(|f| Bytes::copy_from_slice(f)).collect())
            .map_err(Into::into)
            .boxed()
    }

    fn head(content_type: &'static str) -> hyper::http::response::Parts {
        let (mut head, ()) = hyper::Response::new(()).into_parts();
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        head
    }

    /// A Visa test card, its first four digits escaped.
    const ESCAPED: &[u8] = br#"{"card":"\u0034\u0031\u0031\u0031 1111 1111 1111 1111"}"#;

    #[test]
    fn json_content_types() {
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("application/x-ndjson", true),
            ("text/plain", false),
            ("application/jsonp", false),
            ("application/javascript", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(json_content(&headers), json, "{value}");
        }
        assert!(!json_content(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn an_escaped_card_in_a_json_response_is_refused_whatever_the_action() {
        for detectors in [
            "{detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}",
            "{detectors: [{type: cardNumber, action: Redact}, {type: usSsn, action: Block}]}",
        ] {
            // Whole, and cut inside the first escape.
            for frames in [vec![ESCAPED], vec![&ESCAPED[..12], &ESCAPED[12..]]] {
                let stats = Arc::new(L7Stats::default());
                let refused = filter(
                    &model(detectors),
                    &mut head("application/json"),
                    framed(&frames),
                    &stats,
                )
                .await;
                assert!(
                    matches!(refused, Err(Refusal::EncodedMatch)),
                    "{detectors}, {} frames",
                    frames.len()
                );
                let action = if detectors.contains("Mask") {
                    "mask"
                } else {
                    "redact"
                };
                assert_eq!(
                    stats.dlp_matches(),
                    [(("response", "card_number".to_owned(), action), 1)]
                );
            }
        }
        // Not JSON: taken as sent, where no card shows.
        let stats = Arc::new(L7Stats::default());
        let mask = model("{detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}");
        let Ok(Filtered::Streamed(body)) =
            filter(&mask, &mut head("text/plain"), framed(&[ESCAPED]), &stats).await
        else {
            panic!("text/plain refused");
        };
        let sent = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(sent.as_deref(), Some(ESCAPED));
    }

    #[tokio::test]
    async fn a_json_response_masks_what_decoding_shows_outside_escapes() {
        let stats = Arc::new(L7Stats::default());
        let mask = model("{detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}");
        let body = br#"{"note":"call\n4111111111111111 or \"5555555555554444\""}"#;
        let Ok(Filtered::Streamed(body)) = filter(
            &mask,
            &mut head("application/json"),
            framed(&[&body[..15], &body[15..]]),
            &stats,
        )
        .await
        else {
            panic!("refused");
        };
        let sent = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(
            sent.as_deref(),
            Some(&br#"{"note":"call\n************1111 or \"************4444\""}"#[..])
        );
    }

    #[tokio::test]
    async fn a_json_response_is_cut_before_an_escaped_card_past_the_hold_back() {
        let mut body = br#"{"pad":""#.to_vec();
        // Past the JSON hold-back (12 KiB) and its step (6 KiB): some of the body goes first.
        body.extend(vec![b'x'; 20_000]);
        body.extend_from_slice(br#"","card":""#);
        let card_at = body.len();
        body.extend_from_slice(&ESCAPED[9..]);
        body.extend(vec![b' '; 14_000]);
        let frames: Vec<&[u8]> = body.chunks(1000).collect();
        let stats = Arc::new(L7Stats::default());
        let mask = model("{detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}");
        let Ok(Filtered::Streamed(mut streamed)) = filter(
            &mask,
            &mut head("application/json"),
            framed(&frames),
            &stats,
        )
        .await
        else {
            panic!("refused before the head");
        };
        let mut sent = Vec::new();
        let cut = loop {
            match streamed.frame().await {
                Some(Ok(frame)) => sent.extend(frame.into_data().unwrap_or_default()),
                Some(Err(e)) => break refusal_of(&e),
                None => panic!("not cut"),
            }
        };
        assert_eq!(cut, Refusal::EncodedMatch);
        assert!(!sent.is_empty() && sent.len() <= card_at, "{}", sent.len());
        assert_eq!(stats.denials(), [(("dlp", "encoded_match"), 1)]);
    }

    #[tokio::test]
    async fn trailers_follow_the_masked_body_in_both_modes() {
        for detectors in [
            "{detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}",
            "{detectors: [{type: cardNumber, action: Mask, keepLast: 4}, {type: usSsn, action: Block}]}",
        ] {
            let (mut head, ()) = hyper::Response::new(()).into_parts();
            let stats = Arc::new(L7Stats::default());
            let body = with_trailers(b"card 4111111111111111");
            let collected = match filter(&model(detectors), &mut head, body, &stats).await {
                Ok(Filtered::Streamed(body)) => body.collect().await.ok(),
                Ok(Filtered::Whole(bytes, trailers)) => {
                    assert_eq!(&bytes[..], b"card ************1111");
                    assert_eq!(
                        trailers.and_then(|t| t.get("grpc-status").cloned()),
                        Some(HeaderValue::from_static("0"))
                    );
                    continue;
                }
                Err(refusal) => panic!("{refusal:?}"),
            };
            let collected = collected.unwrap_or_else(|| panic!("{detectors}: body error"));
            assert_eq!(
                collected.trailers().and_then(|t| t.get("grpc-status")),
                Some(&HeaderValue::from_static("0")),
                "{detectors}"
            );
            assert_eq!(&collected.to_bytes()[..], b"card ************1111");
        }
    }
}
