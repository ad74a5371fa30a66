//! Masking a body as it streams: each chunk is scanned together with the end of the previous
//! one, and the last [`MAX_MATCH`] bytes are held back until more arrives (or the body ends), so
//! a card number split across two chunks is still seen whole; a match that starts in the part
//! about to be released holds that part back from its start.

use std::borrow::Borrow;

use super::detect::{Action, DlpSet, Found, MAX_MATCH};

/// What one step released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub bytes: Vec<u8>,
    /// (detector index) per match acted on in these bytes.
    pub matches: Vec<usize>,
    /// A `Block` detector matched: the message must be refused.
    pub blocked: bool,
}

/// The masking state of one body, over a detector set it borrows or shares (`&DlpSet`,
/// `Arc<DlpSet>`).
#[derive(Debug)]
pub struct StreamMasker<S: Borrow<DlpSet>> {
    set: S,
    held: Vec<u8>,
    /// Count only, change nothing.
    shadow: bool,
}

impl<S: Borrow<DlpSet>> StreamMasker<S> {
    pub fn new(set: S, shadow: bool) -> StreamMasker<S> {
        StreamMasker {
            set,
            held: Vec::new(),
            shadow,
        }
    }

    /// The detector set.
    pub fn set(&self) -> &S {
        &self.set
    }

    /// Takes the next chunk; releases what can no longer be part of a match that continues.
    pub fn push(&mut self, chunk: &[u8]) -> Released {
        self.held.extend_from_slice(chunk);
        let found = self.set.borrow().find(&self.held);
        let mut safe = self.held.len().saturating_sub(MAX_MATCH);
        if let Some(straddling) = found.iter().find(|f| f.start < safe && f.end > safe) {
            safe = straddling.start;
        }
        let now: Vec<Found> = found.into_iter().filter(|f| f.end <= safe).collect();
        let rest = self.held.split_off(safe);
        let ready = std::mem::replace(&mut self.held, rest);
        self.release(&ready, &now)
    }

    /// The body ended: releases everything held.
    pub fn finish(&mut self) -> Released {
        let held = std::mem::take(&mut self.held);
        let found = self.set.borrow().find(&held);
        self.release(&held, &found)
    }

    fn release(&self, text: &[u8], found: &[Found]) -> Released {
        let set = self.set.borrow();
        let blocked = found
            .iter()
            .any(|f| set.detectors[f.detector].action == Action::Block);
        Released {
            bytes: if self.shadow || found.is_empty() {
                text.to_vec()
            } else {
                set.apply(text, found)
            },
            matches: found.iter().map(|f| f.detector).collect(),
            blocked,
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
