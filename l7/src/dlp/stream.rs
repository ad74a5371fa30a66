//! Masking a body as it streams: each chunk is scanned together with the end of the previous
//! one, and the last [`MAX_MATCH`] bytes are held back until more arrives (or the body ends), so
//! a card number split across two chunks is still seen whole; a match that starts in the part
//! about to be released holds that part back from its start. What is held is scanned once half
//! as much again has arrived (a body sent a byte at a time costs a few scans of each byte, not
//! one scan of the hold-back per byte), and a scan sees a byte standing for what was released
//! before it ([`context_byte`]), so that the body is masked as it would be whole.
//!
//! A JSON body is also scanned with its string escapes decoded ([`DlpSet::find_json`]): it holds
//! back [`JSON_HOLD`] bytes, since a match of [`MAX_MATCH`] decoded bytes may be six times as
//! long escaped, and is never cut inside an escape, so each window decodes as the whole would.

use std::borrow::Borrow;

use super::detect::{Action, DlpSet, Found, JsonFound, MAX_MATCH};
use super::json;

/// What a JSON body holds back between chunks: [`MAX_MATCH`] decoded bytes, each of which may
/// be sent as a six-byte escape (`\u0034` for `4`).
pub const JSON_HOLD: usize = 6 * MAX_MATCH;

/// What one step released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub bytes: Vec<u8>,
    /// (detector index) per match acted on in these bytes.
    pub matches: Vec<usize>,
    /// A `Block` detector matched: the message must be refused.
    pub blocked: bool,
    /// A match only the JSON-decoded text shows, spanning escapes: it cannot be masked where it
    /// stands, so the message must be refused whatever the detector's action.
    pub revealed: bool,
}

/// The masking state of one body, over a detector set it borrows or shares (`&DlpSet`,
/// `Arc<DlpSet>`).
#[derive(Debug)]
pub struct StreamMasker<S: Borrow<DlpSet>> {
    set: S,
    /// What is held: [`CONTEXT`] bytes standing for what was released before (none at the
    /// body's start), then the body's bytes not yet released.
    held: Vec<u8>,
    /// Count only, change nothing.
    shadow: bool,
    /// The body is JSON: its decoded text is scanned too.
    json: bool,
    /// Bytes were released: `held` starts with the context.
    released: bool,
}

/// The byte that stands for the last one released: `a` after a word character (an ASCII or
/// Unicode letter, a digit, `_`), a space after anything else. The detectors look back only at
/// whether a word ends there (`\b`, a card's run of digits) and a pattern's `^` must not match
/// where the body does not start: with it, a body scanned in windows finds what it would
/// scanned whole. (Never a backslash, so it decodes to itself as JSON.)
fn context_byte(released: &[u8], last: u8) -> u8 {
    let word = if last.is_ascii() {
        last.is_ascii_alphanumeric() || last == b'_'
    } else {
        // The last character, if the text is UTF-8 there.
        let start = released.len().saturating_sub(4);
        released[start..]
            .utf8_chunks()
            .last()
            .filter(|chunk| chunk.invalid().is_empty())
            .and_then(|chunk| chunk.valid().chars().last())
            .is_some_and(|c| c.is_alphanumeric())
    };
    if word { b'a' } else { b' ' }
}

/// `found` in the positions of what is held after its first `lead` bytes.
fn shifted(found: &[Found], lead: usize) -> Vec<Found> {
    found
        .iter()
        .map(|f| Found {
            start: f.start - lead,
            end: f.end - lead,
            matched: f.matched - lead,
            ..*f
        })
        .collect()
}

/// How many bytes of [`StreamMasker::held`] stand for what was released.
const CONTEXT: usize = 1;

impl<S: Borrow<DlpSet>> StreamMasker<S> {
    pub fn new(set: S, shadow: bool) -> StreamMasker<S> {
        StreamMasker {
            set,
            held: Vec::new(),
            shadow,
            json: false,
            released: false,
        }
    }

    /// The masker of a JSON body: its text with string escapes decoded is scanned too.
    pub fn json(mut self) -> StreamMasker<S> {
        self.json = true;
        self
    }

    /// The detector set.
    pub fn set(&self) -> &S {
        &self.set
    }

    /// Where the body's held bytes start in [`StreamMasker::held`].
    fn lead(&self) -> usize {
        if self.released { CONTEXT } else { 0 }
    }

    /// Takes the next chunk; releases what can no longer be part of a match that continues.
    pub fn push(&mut self, chunk: &[u8]) -> Released {
        let lead = self.lead();
        self.held.extend_from_slice(chunk);
        let hold = if self.json { JSON_HOLD } else { MAX_MATCH };
        // Scanned once half a hold-back more has come: each scan covers what is held, so a
        // body sent a byte at a time would otherwise be scanned a hold-back's worth per byte.
        if self.held.len() - lead < hold + hold / 2 {
            return self.release(&[], &[], &[]);
        }
        let JsonFound { found, revealed } = self.scan(lead);
        let mut safe = self.held.len().saturating_sub(hold).max(lead);
        // What is released ends neither inside a match nor (JSON) inside an escape.
        loop {
            let before = safe;
            if let Some(straddling) = found
                .iter()
                .chain(&revealed)
                .find(|f| f.matched < safe && f.end > safe)
            {
                safe = straddling.matched;
            }
            if self.json {
                safe = json::boundary(&self.held, safe).max(lead);
            }
            if safe == before {
                break;
            }
        }
        let before_safe = |f: &Found| f.end <= safe;
        let now: Vec<Found> = found.into_iter().filter(before_safe).collect();
        let revealed: Vec<Found> = revealed.into_iter().filter(before_safe).collect();
        if safe == lead {
            // Nothing to release yet.
            return self.release(&[], &[], &[]);
        }
        let last = if self.json {
            json::last_decoded(&self.held, safe).unwrap_or(b' ')
        } else {
            self.held[safe - 1]
        };
        let context = context_byte(&self.held[lead..safe], last);
        let mut rest = Vec::with_capacity(CONTEXT + self.held.len() - safe);
        rest.push(context);
        rest.extend_from_slice(&self.held[safe..]);
        let ready = std::mem::replace(&mut self.held, rest);
        self.released = true;
        self.release(
            &ready[lead..safe],
            &shifted(&now, lead),
            &shifted(&revealed, lead),
        )
    }

    /// The body ended: releases everything held.
    pub fn finish(&mut self) -> Released {
        let lead = self.lead();
        let JsonFound { found, revealed } = self.scan(lead);
        let held = std::mem::take(&mut self.held);
        self.release(
            held.get(lead..).unwrap_or_default(),
            &shifted(&found, lead),
            &shifted(&revealed, lead),
        )
    }

    /// The matches in what is held, from `lead` on (in [`StreamMasker::held`]'s positions).
    fn scan(&self, lead: usize) -> JsonFound {
        let set = self.set.borrow();
        if self.json {
            set.find_json_from(&self.held, lead)
        } else {
            JsonFound {
                found: set.find_from(&self.held, lead),
                revealed: Vec::new(),
            }
        }
    }

    fn release(&self, text: &[u8], found: &[Found], revealed: &[Found]) -> Released {
        let set = self.set.borrow();
        let blocked = found
            .iter()
            .chain(revealed)
            .any(|f| set.detectors[f.detector].action == Action::Block);
        Released {
            bytes: if self.shadow || found.is_empty() {
                text.to_vec()
            } else {
                set.apply(text, found)
            },
            matches: found.iter().chain(revealed).map(|f| f.detector).collect(),
            blocked,
            revealed: !revealed.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::detect::{Detector, Kind};
    use super::*;

    fn cards() -> DlpSet {
        DlpSet {
            detectors: vec![
                Detector::new(
                    "card_number",
                    Kind::CardNumber,
                    Action::Mask {
                        keep_last: 4,
                        with: b'*',
                    },
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ],
        }
    }

    /// `body` cut into chunks of `size`, through the masker.
    fn streamed(set: &DlpSet, body: &[u8], size: usize) -> (Vec<u8>, usize) {
        let mut masker = StreamMasker::new(set, false);
        let (mut out, mut matches) = (Vec::new(), 0);
        for chunk in body.chunks(size) {
            let r = masker.push(chunk);
            out.extend(r.bytes);
            matches += r.matches.len();
        }
        let r = masker.finish();
        out.extend(r.bytes);
        (out, matches + r.matches.len())
    }

    /// A JSON `body` cut into chunks of `size`, through the masker: what it released before it
    /// first said the body must be refused (all of it if never), and whether it said so.
    fn streamed_json(set: &DlpSet, body: &[u8], size: usize) -> (Vec<u8>, bool) {
        let mut masker = StreamMasker::new(set, false).json();
        let mut out = Vec::new();
        let steps = body
            .chunks(size)
            .map(|chunk| masker.push(chunk))
            .collect::<Vec<_>>();
        for r in steps.into_iter().chain(std::iter::once(masker.finish())) {
            if r.revealed {
                return (out, true);
            }
            out.extend(r.bytes);
        }
        (out, false)
    }

    const CUTS: [usize; 12] = [1, 2, 3, 5, 7, 13, 100, 1024, 4097, 6144, 6151, 20_000];

    #[test]
    fn an_escaped_card_split_across_chunks_refuses_the_body_before_any_of_it_goes() {
        let set = cards();
        let card = br"\u0034\u0031\u0031\u0031 1111 1111 1111 1111";
        for (padding, trailing) in [(0, 10), (10, 6200), (6150, 10), (9000, 6200)] {
            let mut body = br#"{"pad":""#.to_vec();
            body.extend(vec![b'x'; padding]);
            body.extend_from_slice(br#"","card":""#);
            let card_at = body.len();
            body.extend_from_slice(card);
            body.extend_from_slice(br#""}"#);
            body.extend(vec![b' '; trailing]);
            // (Byte by byte only where the body is short: each step scans all that is held.)
            for size in CUTS
                .into_iter()
                .filter(|&size| size > 2 || body.len() < 100)
            {
                let (released, refused) = streamed_json(&set, &body, size);
                let at = format!("padding {padding}, trailing {trailing}, chunks of {size}");
                assert!(refused, "{at}");
                assert!(released.len() <= card_at, "{at}: {}", released.len());
            }
            // Not JSON: taken as it is.
            assert_eq!(streamed(&set, &body, 100), (body.clone(), 0));
        }
    }

    #[test]
    fn a_card_only_escape_free_decoding_shows_is_masked_in_place_at_every_cut() {
        let set = cards();
        let mut body =
            br#"{"note":"call\n4111111111111111\tor\u00e9 5555555555554444 \u0041","#.to_vec();
        body.extend(vec![b'y'; 7000]);
        body.extend_from_slice(br#"","more":"\"4111-1111-1111-1111\""}"#);
        let found = set.find_json(&body);
        assert!(found.revealed.is_empty(), "{found:?}");
        let whole = set.apply(&body, &found.found);
        let text = String::from_utf8_lossy(&whole);
        assert!(
            text.starts_with(
                r#"{"note":"call\n************1111\tor\u00e9 ************4444 \u0041","#
            ) && text.ends_with(r#""more":"\"****-****-****-1111\""}"#),
            "{text}"
        );
        for size in CUTS {
            assert_eq!(
                streamed_json(&set, &body, size),
                (whole.clone(), false),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_card_split_across_chunks_is_masked_at_every_cut() {
        let set = cards();
        let mut body = vec![b'x'; 3000];
        body.extend_from_slice(b" 4111-1111-1111-1111 ");
        body.extend(vec![b'y'; 2000]);
        body.extend_from_slice(b" 5555555555554444");
        let whole = set.apply(&body, &set.find(&body));
        for size in [1, 2, 3, 7, 16, 100, 1023, 1024, 1025, 3010, 4096, 10_000] {
            let (out, matches) = streamed(&set, &body, size);
            assert_eq!(out, whole, "chunks of {size}");
            assert_eq!(matches, 2, "chunks of {size}");
        }
        let text = String::from_utf8_lossy(&whole);
        assert!(text.contains(" ****-****-****-1111 ") && text.ends_with("************4444"));
    }

    /// Every detector, as a policy that names them all has them.
    fn everything() -> DlpSet {
        let mask = |keep_last| Action::Mask {
            keep_last,
            with: b'*',
        };
        DlpSet {
            detectors: [
                ("card_number", Kind::CardNumber, mask(4)),
                ("us_ssn", Kind::UsSsn, Action::Redact),
                ("bearer_token", Kind::BearerToken, Action::Redact),
                (
                    "employee_id",
                    Kind::Custom(r"^EMP-(?P<value>\d{6})".into()),
                    mask(2),
                ),
            ]
            .into_iter()
            .map(|(n, k, a)| Detector::new(n, k, a).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        }
    }

    // Found by the `dlp_stream` fuzz target: a window of the body that starts inside a word
    // took that word's tail for a word of its own, and a pattern that holds more than it
    // changes (`Bearer ` before the token) had its start released before the token arrived.
    #[test]
    fn windows_see_what_came_before_them() {
        let set = everything();
        let mut bodies = Vec::new();
        // A run of digits longer than the hold-back, a card in its tail.
        let mut digits = vec![b'1'; 2100];
        digits.extend_from_slice(b"4111111111111111 x");
        bodies.push(digits);
        // A run of digits and separators, a card at its end.
        bodies.push(format!("{}4111 1111 1111 1111.", "1 ".repeat(1500)).into_bytes());
        // A word that runs through the cut, an SSN-shaped tail.
        bodies.push(format!("{}123-45-6789 y", "w".repeat(2100)).into_bytes());
        // The token after `Bearer ` arrives after the hold-back passed `Bearer`.
        bodies.push(format!("Authorization: Bearer abcdefgh12 {}", "0".repeat(2100)).into_bytes());
        // A pattern anchored at the body's start matches there only.
        bodies.push(format!("EMP-123456 {} EMP-654321", "z".repeat(2100)).into_bytes());
        for body in &bodies {
            let whole = set.apply(body, &set.find(body));
            for size in [5, 8, 100, 2047, 2049, 4096] {
                let (out, _) = streamed(&set, body, size);
                assert!(
                    out == whole,
                    "chunks of {size}: {:?}",
                    String::from_utf8_lossy(&out[..80.min(out.len())])
                );
            }
        }
        let text = |i: usize| {
            String::from_utf8_lossy(&set.apply(&bodies[i], &set.find(&bodies[i]))).into_owned()
        };
        assert!(
            text(0).ends_with("4111111111111111 x"),
            "one run, no card at its start"
        );
        assert!(text(1).ends_with("**** **** **** 1111."));
        assert!(text(2).ends_with("123-45-6789 y"), "inside a word");
        assert!(text(3).starts_with("Authorization: Bearer [REDACTED] "));
        assert!(text(4).starts_with("EMP-****56 ") && text(4).ends_with(" EMP-654321"));
    }

    #[test]
    fn shadow_mode_counts_without_changing() {
        let set = cards();
        let mut masker = StreamMasker::new(&set, true);
        let mut r = masker.push(b"card 4111111111111111");
        let end = masker.finish();
        r.bytes.extend(end.bytes);
        assert_eq!(r.bytes, b"card 4111111111111111");
        assert_eq!(r.matches.len() + end.matches.len(), 1);
    }
}
