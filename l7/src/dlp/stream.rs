//! Masking a body as it streams: each chunk is scanned together with the end of the previous
//! one, and the last [`MAX_MATCH`] bytes are held back until more arrives (or the body ends), so
//! a card number split across two chunks is still seen whole; a match that starts in the part
//! about to be released holds that part back from its start.
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
    held: Vec<u8>,
    /// Count only, change nothing.
    shadow: bool,
    /// The body is JSON: its decoded text is scanned too.
    json: bool,
}

impl<S: Borrow<DlpSet>> StreamMasker<S> {
    pub fn new(set: S, shadow: bool) -> StreamMasker<S> {
        StreamMasker {
            set,
            held: Vec::new(),
            shadow,
            json: false,
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

    /// Takes the next chunk; releases what can no longer be part of a match that continues.
    pub fn push(&mut self, chunk: &[u8]) -> Released {
        self.held.extend_from_slice(chunk);
        let JsonFound { found, revealed } = self.scan(&self.held);
        let hold = if self.json { JSON_HOLD } else { MAX_MATCH };
        let mut safe = self.held.len().saturating_sub(hold);
        // What is released ends neither inside a match nor (JSON) inside an escape.
        loop {
            let before = safe;
            if let Some(straddling) = found
                .iter()
                .chain(&revealed)
                .find(|f| f.start < safe && f.end > safe)
            {
                safe = straddling.start;
            }
            if self.json {
                safe = json::boundary(&self.held, safe);
            }
            if safe == before {
                break;
            }
        }
        let before_safe = |f: &Found| f.end <= safe;
        let now: Vec<Found> = found.into_iter().filter(before_safe).collect();
        let revealed: Vec<Found> = revealed.into_iter().filter(before_safe).collect();
        let rest = self.held.split_off(safe);
        let ready = std::mem::replace(&mut self.held, rest);
        self.release(&ready, &now, &revealed)
    }

    /// The body ended: releases everything held.
    pub fn finish(&mut self) -> Released {
        let held = std::mem::take(&mut self.held);
        let JsonFound { found, revealed } = self.scan(&held);
        self.release(&held, &found, &revealed)
    }

    fn scan(&self, text: &[u8]) -> JsonFound {
        let set = self.set.borrow();
        if self.json {
            set.find_json(text)
        } else {
            JsonFound {
                found: set.find(text),
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
