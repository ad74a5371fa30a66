//! Detectors of sensitive data and what to do with a match. Built-in detectors are regular
//! expressions with bounded lengths, each confirmed by a validator where the data has one
//! (Luhn and brand ranges for cards, mod-97 for IBANs, reserved ranges for SSNs); a custom
//! detector is a policy's regular expression whose named group `value` is what gets masked.
//!
//! Card numbers and SSNs may have their digit groups apart by [`validate::separator`]s: a
//! space, a tab, a dash or a no-break space; never a `.` or `/`.

use regex::bytes::Regex;

use super::{json, validate};

/// The longest match any built-in detector may have, in bytes (a custom pattern's longer
/// matches are found only within a chunk and what is held with it): the stream masker keeps
/// this much of the body back between chunks so that a match split across them is seen whole
/// (six times as much of a JSON body, whose escapes may make a match that much longer:
/// `stream::JSON_HOLD`). The bearer token's pattern is the longest (a JWT of up to 2,005 bytes,
/// an RSA-4096 signature included).
pub const MAX_MATCH: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    CardNumber,
    UsSsn,
    Iban,
    Email,
    /// `Authorization`-style bearer tokens and JWTs in a body.
    BearerToken,
    /// A policy's pattern; its named group `value` is masked (or the whole match without one).
    Custom(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Replace every letter and digit but the last `keep_last` with `with` (separators kept).
    Mask { keep_last: usize, with: u8 },
    /// Replace the whole match with `[REDACTED]`.
    Redact,
    /// Refuse the whole message.
    Block,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DlpError {
    #[error("pattern {0:?}: {1}")]
    Pattern(String, String),
}

/// One configured detector.
#[derive(Debug, Clone)]
pub struct Detector {
    /// The metric label (`card_number`, `us_ssn`, ..., or the custom detector's name).
    pub name: String,
    pub kind: Kind,
    pub action: Action,
    /// `None` for card numbers, found by [`card_ranges`].
    regex: Option<Regex>,
    /// The capture group masked (`value` of a custom pattern; the token of a bearer header).
    group: Option<usize>,
}

impl Detector {
    pub fn new(name: &str, kind: Kind, action: Action) -> Result<Detector, DlpError> {
        // Built-in patterns are ASCII-only (`(?-u)`): `\d` and `\b` without Unicode tables
        // keep the regex engine on its DFAs.
        let pattern = match &kind {
            Kind::CardNumber => {
                return Ok(Detector {
                    name: name.to_owned(),
                    kind,
                    action,
                    regex: None,
                    group: None,
                });
            }
            // The separators of `validate::separator`, the no-break space as UTF-8 or Latin-1.
            Kind::UsSsn => r"(?-u)\b\d{3}(?:[-\t ]|\xC2?\xA0)\d{2}(?:[-\t ]|\xC2?\xA0)\d{4}\b",
            Kind::Iban => r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
            Kind::Email => {
                r"(?-u)\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
            }
            // Bounded repetitions only: every match fits in [`MAX_MATCH`].
            Kind::BearerToken => {
                r"(?-u)(?i:bearer)[ \t]{1,16}(?P<value>[A-Za-z0-9\-._~+/]{8,1024}={0,2})|\b(?P<jwt>eyJ[A-Za-z0-9_-]{4,400}\.[A-Za-z0-9_-]{4,900}\.[A-Za-z0-9_-]{4,700})"
            }
            Kind::Custom(pattern) => pattern.as_str(),
        };
        let regex = regex::bytes::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| DlpError::Pattern(pattern.to_owned(), e.to_string()))?;
        let group = regex.capture_names().position(|n| n == Some("value"));
        Ok(Detector {
            name: name.to_owned(),
            kind,
            action,
            regex: Some(regex),
            group,
        })
    }

    /// Whether a candidate is the real thing (card numbers are confirmed by `card_ranges`).
    fn confirms(&self, text: &[u8]) -> bool {
        match self.kind {
            Kind::UsSsn => validate::us_ssn(text),
            Kind::Iban => validate::iban(text),
            _ => true,
        }
    }

    /// The ranges of `text` from `from` on this detector matches (confirmed), as (where the
    /// pattern's match starts, start, end of what to change); `text[..from]` is what came
    /// before, for `\b` and `^`.
    fn ranges(&self, text: &[u8], from: usize, out: &mut Vec<(usize, usize, usize)>) {
        let Some(regex) = &self.regex else {
            return card_ranges(text, from, out);
        };
        // Matches are found on the fast path; capture groups are resolved only for patterns
        // that have them, and only where something matched.
        let captures = self.group.is_some() || self.kind == Kind::BearerToken;
        let mut at = from;
        while at <= text.len() {
            let Some(whole) = regex.find_at(text, at) else {
                break;
            };
            // An empty match (a custom pattern may have one) moves on by a byte.
            at = if whole.end() > whole.start() {
                whole.end()
            } else {
                whole.end() + 1
            };
            let target = if captures {
                let Some(caps) = regex.captures_at(text, whole.start()) else {
                    continue;
                };
                self.group
                    .and_then(|g| caps.get(g))
                    .or_else(|| caps.name("jwt"))
                    .unwrap_or(whole)
            } else {
                whole
            };
            let mut candidate = &text[target.start()..target.end()];
            // A greedy IBAN match may have taken the word after it too: try it shorter, at each
            // space, before giving up.
            loop {
                if self.confirms(candidate) {
                    out.push((
                        whole.start(),
                        target.start(),
                        target.start() + candidate.len(),
                    ));
                    break;
                }
                match candidate.iter().rposition(|b| *b == b' ') {
                    Some(cut) if self.kind == Kind::Iban => {
                        candidate = &candidate[..cut];
                    }
                    _ => break,
                }
            }
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The longest card number a run of digits may hold, separators included (19 digits, one
/// separator of at most two bytes between any two).
const CARD_SPAN: usize = 19 + 18 * 2;

/// Card numbers in `text`: runs of digits with single separators ([`validate::separator`])
/// between them, on word boundaries, of which the leftmost-longest piece that starts and ends
/// at the run's edges or at a separator and is a card (brand range, length, Luhn) is taken.
///
/// Hand-written rather than a regular expression: on digit-dense JSON (every 16-digit id a
/// candidate to confirm) the masker took about twice as long with the regex (measured here: ~400
/// against ~200 us per 64 KiB); this is one pass over the bytes.
fn card_ranges(text: &[u8], from: usize, out: &mut Vec<(usize, usize, usize)>) {
    let n = text.len();
    let mut i = from;
    // Where a piece may end and the next start: (before, after) the run's start, each separator
    // and the run's end.
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    while i < n {
        if !text[i].is_ascii_digit() || (i > 0 && is_word(text[i - 1])) {
            i += 1;
            continue;
        }
        // The run: digits, single separators between digits.
        let (start, mut j, mut end) = (i, i, i);
        cuts.clear();
        cuts.push((start, start));
        while j < n {
            if text[j].is_ascii_digit() {
                j += 1;
                end = j;
                continue;
            }
            let sep = validate::separator(&text[j..]);
            if sep > 0 && text.get(j + sep).is_some_and(u8::is_ascii_digit) {
                cuts.push((j, j + sep));
                j += sep;
            } else {
                break;
            }
        }
        cuts.push((end, end));
        let mut next = end.max(i + 1);
        if end == n || !is_word(text[end]) {
            // Pieces start at the run's start or after a separator and end at a separator or the
            // run's end.
            'search: for &(_, s) in &cuts[..cuts.len() - 1] {
                for &(e, _) in cuts[1..].iter().rev() {
                    if e <= s || e - s > CARD_SPAN {
                        continue;
                    }
                    let piece = &text[s..e];
                    let digits = piece.iter().filter(|b| b.is_ascii_digit()).count();
                    if (13..=19).contains(&digits) && validate::card_number(piece) {
                        out.push((s, s, e));
                        next = e;
                        break 'search;
                    }
                }
            }
        }
        i = next;
    }
}

/// A match to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub detector: usize,
    /// What to change: `start..end`.
    pub start: usize,
    pub end: usize,
    /// Where the pattern's match starts (before `start` when the pattern holds more than what
    /// it changes: `Bearer ` before a token, `EMP-` before a custom pattern's `value`): a
    /// stream holds the body back from here until the match is whole.
    pub matched: usize,
}

/// The detectors of a policy, in order (an earlier one wins where two overlap).
#[derive(Debug, Clone, Default)]
pub struct DlpSet {
    pub detectors: Vec<Detector>,
}

/// What a scan of JSON text found, as spans of the text as sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JsonFound {
    /// Matches to act on where they stand: those in the text as sent, and those of the decoded
    /// text whose bytes hold no escape (a card after a `\n`), not overlapping, by position.
    pub found: Vec<Found>,
    /// Matches only decoding shows, spanning escapes (`\u0034111...`): they cannot be masked
    /// where they stand, so the message is refused. By position.
    pub revealed: Vec<Found>,
}

impl DlpSet {
    /// Every confirmed match in `text`, not overlapping, by position.
    pub fn find(&self, text: &[u8]) -> Vec<Found> {
        self.find_from(text, 0)
    }

    /// Every confirmed match in `text` that starts at `from` or later, `text[..from]` being
    /// what came before (the stream masker's context: a word boundary, a run of digits, a
    /// pattern's `^` are judged with it).
    pub fn find_from(&self, text: &[u8], from: usize) -> Vec<Found> {
        let mut found: Vec<Found> = Vec::new();
        let mut ranges = Vec::new();
        for (i, d) in self.detectors.iter().enumerate() {
            ranges.clear();
            d.ranges(text, from, &mut ranges);
            for &(matched, start, end) in &ranges {
                if !found.iter().any(|f| start < f.end && f.start < end) {
                    found.push(Found {
                        detector: i,
                        start,
                        end,
                        matched,
                    });
                }
            }
        }
        found.sort_by_key(|f| f.start);
        found
    }

    /// The matches in JSON `text`, as sent and with its string escapes decoded (see
    /// [`JsonFound`]). Text without a backslash has nothing to decode.
    pub fn find_json(&self, text: &[u8]) -> JsonFound {
        self.find_json_from(text, 0)
    }

    /// [`DlpSet::find_json`] with `text[..from]` as what came before ([`DlpSet::find_from`]);
    /// it must hold no backslash, so that it decodes to itself.
    pub fn find_json_from(&self, text: &[u8], from: usize) -> JsonFound {
        let mut found = self.find_from(text, from);
        let mut revealed = Vec::new();
        if !text[from..].contains(&b'\\') {
            return JsonFound { found, revealed };
        }
        let view = json::decode(text);
        let as_sent = found.len();
        for f in self.find_from(&view.text, from) {
            let (start, end) = view.raw_span(f.start, f.end);
            let (matched, _) = view.raw_span(f.matched, f.end);
            let raw = Found {
                detector: f.detector,
                start,
                end,
                matched,
            };
            let mut overlapping = found[..as_sent]
                .iter()
                .filter(|g| g.start < end && start < g.end);
            match overlapping.next() {
                // The same bytes, matched as sent: masked there.
                Some(g) if g.start == start && g.end == end => {}
                None if !view.escaped(start, end) => found.push(raw),
                _ => revealed.push(raw),
            }
        }
        found.sort_by_key(|f| f.start);
        JsonFound { found, revealed }
    }

    /// `text` with `found` masked or redacted (Block matches are left as they are: the caller
    /// refuses the message).
    pub fn apply(&self, text: &[u8], found: &[Found]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.extend_from_slice(&text[at..f.start]);
            let matched = &text[f.start..f.end];
            match self.detectors[f.detector].action {
                Action::Mask { keep_last, with } => {
                    let total = matched.iter().filter(|b| b.is_ascii_alphanumeric()).count();
                    let mut seen = 0;
                    for &b in matched {
                        if b.is_ascii_alphanumeric() {
                            seen += 1;
                            out.push(if seen + keep_last > total { b } else { with });
                        } else {
                            out.push(b);
                        }
                    }
                }
                Action::Redact => out.extend_from_slice(b"[REDACTED]"),
                Action::Block => out.extend_from_slice(matched),
            }
            at = f.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(keep_last: usize) -> Action {
        Action::Mask {
            keep_last,
            with: b'*',
        }
    }

    fn set(detectors: Vec<(&str, Kind, Action)>) -> DlpSet {
        DlpSet {
            detectors: detectors
                .into_iter()
                .map(|(n, k, a)| Detector::new(n, k, a).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        }
    }

    fn run(set: &DlpSet, text: &str) -> String {
        let found = set.find(text.as_bytes());
        String::from_utf8_lossy(&set.apply(text.as_bytes(), &found)).into_owned()
    }

    #[test]
    fn cards_are_masked_to_their_last_four_and_order_ids_are_not() {
        let s = set(vec![("card_number", Kind::CardNumber, mask(4))]);
        assert_eq!(
            run(
                &s,
                r#"{"card":"4111 1111 1111 1111","order":"1234567812345678"}"#
            ),
            r#"{"card":"**** **** **** 1111","order":"1234567812345678"}"#
        );
        assert_eq!(run(&s, "amex 378282246310005."), "amex ***********0005.");
        assert_eq!(
            run(&s, "id 1234 4111111111111111 x"),
            "id 1234 ************1111 x"
        );
        assert_eq!(
            run(&s, "not luhn 4111111111111112"),
            "not luhn 4111111111111112"
        );
    }

    #[test]
    fn ssn_iban_email_tokens_and_custom_patterns() {
        let s = set(vec![
            ("us_ssn", Kind::UsSsn, Action::Redact),
            ("iban", Kind::Iban, mask(4)),
            ("email", Kind::Email, mask(0)),
            ("bearer_token", Kind::BearerToken, Action::Redact),
            (
                "employee_id",
                Kind::Custom(r"EMP-(?P<value>\d{6})".into()),
                mask(2),
            ),
        ]);
        assert_eq!(
            run(&s, "ssn 123-45-6789; bad 000-12-3456"),
            "ssn [REDACTED]; bad 000-12-3456"
        );
        assert_eq!(
            run(&s, "pay GB82 WEST 1234 5698 7654 32 EUR"),
            "pay **** **** **** **** **54 32 EUR"
        );
        assert_eq!(
            run(&s, "mail alice@example.com!"),
            "mail *****@*******.***!"
        );
        assert_eq!(
            run(&s, "Authorization: Bearer abcdefgh12345678 ok"),
            "Authorization: Bearer [REDACTED] ok"
        );
        assert_eq!(
            run(&s, "t=eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl;"),
            "t=[REDACTED];"
        );
        assert_eq!(run(&s, "EMP-123456"), "EMP-****56");
    }

    #[test]
    fn tabs_and_no_break_spaces_separate_digit_groups_and_are_kept() {
        let s = set(vec![
            ("card_number", Kind::CardNumber, mask(4)),
            ("us_ssn", Kind::UsSsn, mask(0)),
        ]);
        assert_eq!(
            run(&s, "card\t4111\t1111\t1111\t1111\t!"),
            "card\t****\t****\t****\t1111\t!"
        );
        assert_eq!(
            run(&s, "card 4111\u{a0}1111\u{a0}1111\u{a0}1111."),
            "card ****\u{a0}****\u{a0}****\u{a0}1111."
        );
        assert_eq!(run(&s, "5555 5555-5555\t4444"), "**** ****-****\t4444");
        // Latin-1 text: the no-break space is one byte, kept as it is.
        let latin1 = b"card 4111\xA01111\xA01111\xA01111";
        assert_eq!(
            s.apply(latin1, &s.find(latin1)),
            b"card ****\xA0****\xA0****\xA01111"
        );
        assert_eq!(
            run(&s, "ssn 123\t45\t6789 and 123\u{a0}45\u{a0}6789"),
            "ssn ***\t**\t**** and ***\u{a0}**\u{a0}****"
        );
        // One separator at a time, as with spaces.
        assert_eq!(
            run(&s, "4111\t\t1111\t\t1111\t\t1111"),
            "4111\t\t1111\t\t1111\t\t1111"
        );
    }

    #[test]
    fn dots_slashes_and_other_spaces_are_no_separators() {
        let s = set(vec![
            ("card_number", Kind::CardNumber, Action::Block),
            ("us_ssn", Kind::UsSsn, Action::Block),
        ]);
        for text in [
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "4111 1111.1111 1111",
            "v4111.1111.1111.1111",
            "4111\u{2007}1111\u{2007}1111\u{2007}1111",
            "4111\u{202f}1111\u{202f}1111\u{202f}1111",
            "4111_1111_1111_1111",
            "123.45.6789",
            "123/45/6789",
        ] {
            assert_eq!(s.find(text.as_bytes()), [], "{text}");
        }
    }

    #[test]
    fn json_text_is_scanned_decoded_too() {
        let s = set(vec![("card_number", Kind::CardNumber, mask(4))]);
        // Escaped digits: only decoding shows the card, and it cannot be masked in place.
        let escaped = br#"{"card":"\u0034\u0031\u0031\u0031 1111 1111 1111 1111"}"#;
        assert_eq!(s.find(escaped), []);
        let found = s.find_json(escaped);
        assert_eq!(found.found, []);
        assert_eq!(
            found.revealed,
            [Found {
                detector: 0,
                start: 9,
                end: 9 + 24 + 15,
                matched: 9,
            }]
        );
        // Escaped separators: a tab, no-break spaces (hex digits in either case).
        let revealed = s.find_json(br#""4111\t1111\u00a01111\u00A01111""#);
        assert_eq!((revealed.found.len(), revealed.revealed.len()), (0, 1));
        // A card after `\n` holds no escape: masked where it stands.
        let after_newline = br#"{"note":"line\n4111111111111111"}"#;
        assert_eq!(s.find(after_newline), []);
        let found = s.find_json(after_newline);
        assert_eq!(found.revealed, []);
        assert_eq!(
            s.apply(after_newline, &found.found),
            br#"{"note":"line\n************1111"}"#
        );
        // A card as sent that decoding makes 17 digits: masked as sent, nothing revealed.
        let longer = br#""4111111111111111\u0031""#;
        let found = s.find_json(longer);
        assert_eq!((found.found.len(), found.revealed), (1, vec![]));
        // An escaped backslash escapes nothing after it.
        let found = s.find_json(br#""\\u0034111111111111111""#);
        assert_eq!((found.found.len(), found.revealed), (0, vec![]));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Detector::new("x", Kind::Custom("(".into()), Action::Redact).is_err());
    }
}
