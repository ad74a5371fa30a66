//! The `dlp` filter on requests (`http.dlp.requests`): what a client sends to the pod — the
//! path and query, the headers the policy names, and the body — scanned before the pod sees
//! any of it. In the mesh every call between workloads passes the destination's proxy, so this
//! is where data leaving a workload is stopped: a `Block` detector answers `403`; `Mask` and
//! `Redact` rewrite what is forwarded.
//!
//! The body is held whole, at most `bodyLimit` bytes (decoded, for gzip/deflate/br bodies):
//! a longer one is refused with `413`, never passed on unscanned. URL-encoded text (the query,
//! form bodies) is scanned as sent and percent-decoded, a JSON body as sent and with its string
//! escapes decoded (`\u0034`); what only decoding reveals cannot be masked in place, so it
//! blocks whatever the detector's action (a JSON match whose bytes hold no escape, such as a
//! card after a `\n`, is masked where it stands).

use hyper::body::Bytes;
use hyper::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, TRANSFER_ENCODING,
};
use hyper::http::request::Parts;
use hyper::{StatusCode, Uri};
use rampart_l7::dlp::{Action, DlpSet, JsonFound, json};

use super::L7Stats;
use super::body::{Holding, RequestBody};
use super::context::Denial;
use super::dlp::Refusal;
use crate::policy::dlp::{DlpModel, RequestDlp};

/// The metric's `direction` label.
pub const DIRECTION: &str = "request";

/// What scanning one piece of a request found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Judged {
    /// The detectors that matched, once per match.
    matches: Vec<usize>,
    blocked: bool,
    /// The text with its matches masked or redacted (`None`: nothing to change).
    rewritten: Option<Vec<u8>>,
}

/// How a piece of a request is written, which the pod decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Taken as it is.
    Plain,
    /// Percent-encoded, `+` as a space (the query, form bodies).
    UrlEncoded,
    /// JSON, with string escapes.
    Json,
}

impl Form {
    /// The form of a body, by its `content-type`; a body of another type that holds a JSON
    /// `\u` escape is read as JSON too (an application may decode it whatever it is labelled).
    fn of_body(headers: &HeaderMap, body: &[u8]) -> Form {
        let form = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if form {
            Form::UrlEncoded
        } else if super::body::json_content(headers) || body.windows(2).any(|w| w == b"\\u") {
            Form::Json
        } else {
            Form::Plain
        }
    }

    fn decode(self, text: &[u8]) -> Option<Vec<u8>> {
        match self {
            Form::Plain => None,
            Form::UrlEncoded => Some(url_decode(text)),
            Form::Json => Some(json::decode(text).text),
        }
    }
}

/// Scans `raw` as sent and, as its `form` says, decoded.
/// A request target judged as the filter judges it (the fuzz target's entry): whether it
/// blocks, and the target rewritten with its matches masked, if any were.
pub fn judge_target(set: &DlpSet, target: &str) -> (bool, Option<Vec<u8>>) {
    let judged = judge(set, target.as_bytes(), Form::UrlEncoded);
    (judged.blocked, judged.rewritten)
}

fn judge(set: &DlpSet, raw: &[u8], form: Form) -> Judged {
    // JSON: a match of the decoded text is masked where it stands if its bytes hold no escape;
    // else it is revealed, and blocks.
    let JsonFound { found, revealed } = match form {
        Form::Json => set.find_json(raw),
        Form::Plain | Form::UrlEncoded => JsonFound {
            found: set.find(raw),
            revealed: Vec::new(),
        },
    };
    let mut judged = Judged {
        matches: found.iter().chain(&revealed).map(|f| f.detector).collect(),
        blocked: !revealed.is_empty()
            || found
                .iter()
                .any(|f| set.detectors[f.detector].action == Action::Block),
        rewritten: (!found.is_empty()).then(|| set.apply(raw, &found)),
    };
    // What the pod decodes must hold no match either: one that only decoding reveals (or that
    // decoding makes out of a masked neighbour) cannot be masked where it stands.
    let Some(decoded) = form.decode(judged.rewritten.as_deref().unwrap_or(raw)) else {
        return judged;
    };
    let left = set.find(&decoded);
    if left.is_empty() {
        return judged;
    }
    let already = std::mem::replace(&mut judged.blocked, true);
    match form {
        Form::UrlEncoded => {
            let revealed = set.find(&url_decode(raw));
            let counted = if revealed.is_empty() {
                &left
            } else {
                &revealed
            };
            judged.matches = counted.iter().map(|f| f.detector).collect();
        }
        // Made by masking (not a match already counted, left for the refusal): counted too.
        Form::Json if !already => {
            judged.matches.extend(left.iter().map(|f| f.detector));
        }
        Form::Plain | Form::Json => {}
    }
    judged
}

/// `text` percent-decoded, `+` as a space (the query and form bodies).
fn url_decode(text: &[u8]) -> Vec<u8> {
    let plus_as_space: Vec<u8> = text
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus_as_space).collect()
}

/// Runs the filter on a request that passed the other filters: `Ok` (with `parts` and `body`
/// rewritten where a match was masked), or the refusal. The body is held in `body` (read once,
/// decoded once for every filter that reads it).
pub async fn inspect(
    model: &DlpModel,
    requests: &RequestDlp,
    parts: &mut Parts,
    body: &mut RequestBody,
    stats: &L7Stats,
) -> Result<(), Denial> {
    let shadow = model.shadow;
    let set = &requests.set;
    let mut blocked = false;
    let tally = |judged: &Judged| {
        super::dlp::count(stats, DIRECTION, set, shadow, &judged.matches);
        judged.blocked
    };
    // The headers the policy names.
    blocked |= super::dlp::mask_headers(
        set,
        &requests.headers,
        shadow,
        DIRECTION,
        &mut parts.headers,
        stats,
    );
    // The path and query.
    if let Some(pq) = parts.uri.path_and_query() {
        let judged = judge(set, pq.as_str().as_bytes(), Form::UrlEncoded);
        blocked |= tally(&judged);
        if let Some(text) = judged.rewritten.filter(|_| !shadow) {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(
                hyper::http::uri::PathAndQuery::try_from(text)
                    .map_err(|_| refusal(Refusal::Blocked))?,
            );
            parts.uri = Uri::from_parts(uri).map_err(|_| refusal(Refusal::Blocked))?;
        }
    }
    if blocked && !shadow {
        return Err(refusal(Refusal::Blocked));
    }
    // The body, held whole.
    let sent = match body.hold(requests.body_limit).await {
        Ok(Holding::Whole(bytes)) => bytes.clone(),
        Ok(Holding::Over(_)) => return Err(refusal(Refusal::TooLarge)),
        Err(_) => return Err(refusal(Refusal::Unreadable)),
    };
    if sent.is_empty() {
        return Ok(());
    }
    // An encoding the policy does not decompress (or one no decoder reads) is refused.
    let decoder = super::body::decoder(&parts.headers, model.decompress)
        .map_err(|why| refusal(why.into()))?;
    let plain = match decoder {
        None => None,
        Some(_) => match body.decoded(&parts.headers, requests.body_limit) {
            Some(Ok(plain)) => Some(plain),
            Some(Err(why)) => return Err(refusal(why.into())),
            None => return Err(refusal(Refusal::TooLarge)),
        },
    };
    let text = plain.as_deref().unwrap_or(&sent);
    let judged = judge(set, text, Form::of_body(&parts.headers, text));
    blocked |= tally(&judged);
    if shadow {
        return Ok(());
    }
    if blocked {
        return Err(refusal(Refusal::Blocked));
    }
    let Some(rewritten) = judged.rewritten else {
        return Ok(());
    };
    // The rewritten body goes decoded, with its own length.
    parts.headers.remove(CONTENT_ENCODING);
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
    body.replace(Bytes::from(rewritten));
    Ok(())
}

fn refusal(refusal: Refusal) -> Denial {
    Denial {
        reason: refusal.reason().into(),
        status: match refusal {
            Refusal::Blocked | Refusal::EncodedMatch => StatusCode::FORBIDDEN,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Encoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unreadable => StatusCode::BAD_REQUEST,
        },
        headers: Vec::new(),
        body: None,
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use rampart_l7::dlp::{Detector, Kind};

    use super::*;

    fn set(action: Action) -> DlpSet {
        DlpSet {
            detectors: vec![
                Detector::new("card_number", Kind::CardNumber, action)
                    .unwrap_or_else(|e| panic!("{e}")),
            ],
        }
    }

    #[test]
    fn a_card_is_found_as_sent_and_masked_in_place() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        let judged = judge(&mask, b"card=4111111111111111&x=1", Form::UrlEncoded);
        assert_eq!(judged.matches, [0]);
        assert!(!judged.blocked);
        assert_eq!(
            judged.rewritten.as_deref(),
            Some(&b"card=************1111&x=1"[..])
        );
    }

    #[test]
    fn a_card_only_decoding_reveals_blocks_whatever_the_action() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        for encoded in [
            &b"card=4111+1111+1111+1111"[..],
            b"card=4111%201111%201111%201111",
            b"card=%34111111111111111",
        ] {
            let judged = judge(&mask, encoded, Form::UrlEncoded);
            assert!(judged.blocked, "{}", String::from_utf8_lossy(encoded));
            assert_eq!(judged.matches, [0]);
        }
        // Not URL-encoded text is taken as it is.
        assert_eq!(
            judge(&mask, b"card=4111+1111+1111+1111", Form::Plain),
            Judged::default()
        );
    }

    #[test]
    fn decoding_cannot_turn_a_masked_neighbour_into_a_card() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        // As sent: one card (x), and 17 digits that are none (y). Decoded: x is 17 digits and
        // y a card; masking x as sent would hand the pod y's card.
        let judged = judge(
            &mask,
            b"x=4111111111111111%30&y=%34111111111111111",
            Form::UrlEncoded,
        );
        assert!(judged.blocked, "{judged:?}");
    }

    /// A Visa test card, its first four digits escaped.
    const ESCAPED: &[u8] = br#"{"card":"\u0034\u0031\u0031\u0031 1111 1111 1111 1111"}"#;

    #[test]
    fn a_card_only_json_decoding_reveals_blocks_whatever_the_action() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        for escaped in [
            ESCAPED,
            br#"["4111\t1111\t1111\t1111"]"#,
            br#"["\u0034111111111111111"]"#,
            br#"{"\u0063ard":"4111\u00a01111\u00A01111\u00a01111"}"#,
        ] {
            let judged = judge(&mask, escaped, Form::Json);
            assert_eq!(
                (judged.blocked, judged.matches),
                (true, vec![0]),
                "{}",
                String::from_utf8_lossy(escaped)
            );
        }
        // A fullwidth digit is no digit, and a slash no separator.
        assert_eq!(
            judge(
                &mask,
                br#"["\uff14111111111111111", "4111\/1111\/1111\/1111"]"#,
                Form::Json
            ),
            Judged::default()
        );
        // Not JSON: taken as sent, where no card shows.
        assert_eq!(judge(&mask, ESCAPED, Form::Plain), Judged::default());
    }

    #[test]
    fn a_json_match_without_escapes_in_it_is_masked_in_place() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        let judged = judge(
            &mask,
            br#"{"note":"call\n4111111111111111","id":"4111111111111111\u0031"}"#,
            Form::Json,
        );
        assert!(!judged.blocked, "{judged:?}");
        assert_eq!(judged.matches, [0, 0]);
        assert_eq!(
            judged.rewritten.as_deref(),
            Some(&br#"{"note":"call\n************1111","id":"************1111\u0031"}"#[..])
        );
    }

    #[test]
    fn json_masking_cannot_leave_a_card_for_the_pod_to_decode() {
        let mask = set(Action::Mask {
            keep_last: 4,
            with: b'*',
        });
        // As sent and decoded: one card (5555...4444), the escaped digits after it none. Decoded
        // once it is masked to its last four: those four and the escaped digits are a card.
        let text = br#""5555 5555 5555 4444 \u0031111 1111 1119""#;
        assert_eq!(mask.find_json(text).revealed, []);
        let judged = judge(&mask, text, Form::Json);
        assert!(judged.blocked, "{judged:?}");
        assert_eq!(judged.matches, [0, 0]);
    }

    #[tokio::test]
    async fn a_request_is_judged_json_decoded_by_its_content_type_or_its_escapes() {
        let model = crate::policy::http::section_for_tests(
            "    dlp: {requests: {detectors: [{type: cardNumber, action: Mask, keepLast: 4}]}}\n",
        )
        .ok()
        .and_then(|http| http.dlp.clone())
        .unwrap_or_else(|| panic!("no dlp"));
        let Some(requests) = model.requests.as_ref() else {
            panic!("no request detectors");
        };
        for (content_type, refused) in [
            ("application/json", true),
            ("application/vnd.api+json; charset=utf-8", true),
            // Not labelled JSON, but holding `\u` escapes an application may decode.
            ("text/plain", true),
        ] {
            let (mut parts, ()) = hyper::Request::post("/pay")
                .header(CONTENT_TYPE, content_type)
                .body(())
                .unwrap_or_else(|e| panic!("{e}"))
                .into_parts();
            let mut body = RequestBody::new(
                http_body_util::Full::new(Bytes::from_static(ESCAPED))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            let stats = L7Stats::default();
            let judged = inspect(&model, requests, &mut parts, &mut body, &stats).await;
            match judged {
                Err(denial) => {
                    assert!(refused, "{content_type}");
                    assert_eq!(
                        (denial.status, denial.reason.name()),
                        (StatusCode::FORBIDDEN, "blocked")
                    );
                }
                Ok(()) => {
                    assert!(!refused, "{content_type}");
                    let sent = body
                        .into_upstream()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .ok();
                    assert_eq!(sent.as_deref(), Some(ESCAPED));
                }
            }
        }
    }

    #[test]
    fn numbers_failing_luhn_pass_untouched() {
        let block = set(Action::Block);
        assert_eq!(
            judge(
                &block,
                b"order=4111111111111112&id=1234567812345678",
                Form::UrlEncoded
            ),
            Judged::default()
        );
    }
}
