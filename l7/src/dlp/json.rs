//! JSON string escapes decoded (`\u0034`, surrogate pairs, `\t`, `\\`, `\"`, ...): the text a
//! JSON reader gets, for the detectors to scan, and where each escape stands in the text as
//! sent, so that a match in the decoded text is traced back to the bytes that carry it.
//!
//! Escapes are decoded wherever they stand, not only inside strings: outside them a JSON text
//! has no backslash. A backslash that starts no valid escape is kept as it is.

/// One escape: its span in the text as sent and the span of what it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Escape {
    raw: usize,
    raw_end: usize,
    at: usize,
    at_end: usize,
}

/// A text with its JSON escapes decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JsonView {
    /// The decoded text.
    pub text: Vec<u8>,
    /// The escapes, in order (the text between them is the same in both).
    escapes: Vec<Escape>,
}

/// `text` with its escapes decoded.
pub fn decode(text: &[u8]) -> JsonView {
    let mut view = JsonView {
        text: Vec::with_capacity(text.len()),
        escapes: Vec::new(),
    };
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if b == b'\\'
            && let Some((len, c)) = escape(&text[i..])
        {
            let at = view.text.len();
            let mut utf8 = [0u8; 4];
            view.text
                .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            view.escapes.push(Escape {
                raw: i,
                raw_end: i + len,
                at,
                at_end: view.text.len(),
            });
            i += len;
        } else {
            view.text.push(b);
            i += 1;
        }
    }
    view
}

/// The nearest offset at or before `at` that is not inside an escape of `text` (where a text
/// may be cut without cutting an escape in two).
pub fn boundary(text: &[u8], at: usize) -> usize {
    let mut i = 0;
    while i < at {
        let len = match text.get(i..) {
            Some(rest @ [b'\\', ..]) => escape(rest).map_or(1, |(len, _)| len),
            _ => 1,
        };
        if i + len > at {
            return i;
        }
        i += len;
    }
    at
}

/// The last byte of what `text[..at]` decodes to (`at` not inside an escape): the byte before
/// `at` itself, or the last byte of the escape that ends there. `None` for an empty text.
pub fn last_decoded(text: &[u8], at: usize) -> Option<u8> {
    let mut i = 0;
    let mut last = None;
    while i < at {
        let (len, c) = match text.get(i..) {
            Some(rest @ [b'\\', ..]) => match escape(rest) {
                Some((len, c)) => (len, Some(c)),
                None => (1, None),
            },
            _ => (1, None),
        };
        last = Some(match c {
            Some(c) => {
                let mut utf8 = [0u8; 4];
                let bytes = c.encode_utf8(&mut utf8).as_bytes();
                bytes[bytes.len() - 1]
            }
            None => text[i],
        });
        i += len;
    }
    last
}

impl JsonView {
    /// The span of the text as sent that carries the decoded bytes `start..end` (whole escapes).
    pub fn raw_span(&self, start: usize, end: usize) -> (usize, usize) {
        let raw_start = self.raw_at(start, false);
        let raw_end = if end > start {
            self.raw_at(end - 1, true)
        } else {
            raw_start
        };
        (raw_start, raw_end)
    }

    /// Whether the span `start..end` of the text as sent holds (part of) an escape.
    pub fn escaped(&self, start: usize, end: usize) -> bool {
        let first = self.escapes.partition_point(|e| e.raw_end <= start);
        self.escapes.get(first).is_some_and(|e| e.raw < end)
    }

    /// Where decoded byte `at` stands in the text as sent: its start, or with `past`, the end of
    /// the escape or byte that carries it.
    fn raw_at(&self, at: usize, past: bool) -> usize {
        let before = self.escapes.partition_point(|e| e.at <= at);
        let Some(e) = before.checked_sub(1).and_then(|k| self.escapes.get(k)) else {
            return at + usize::from(past);
        };
        if at < e.at_end {
            if past { e.raw_end } else { e.raw }
        } else {
            e.raw_end + (at - e.at_end) + usize::from(past)
        }
    }
}

/// The escape `text` starts with (a backslash, then more): its length and what it stands for.
/// A lone surrogate stands for U+FFFD, as in a lenient reader.
fn escape(text: &[u8]) -> Option<(usize, char)> {
    let c = match text.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(text.get(2..6)?)?;
            if (0xD800..0xDC00).contains(&high)
                && let Some(low) = text
                    .get(6..12)
                    .filter(|t| t.starts_with(b"\\u"))
                    .and_then(|t| hex4(&t[2..]))
                    .filter(|low| (0xDC00..0xE000).contains(low))
            {
                let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return Some((12, char::from_u32(c)?));
            }
            return Some((
                6,
                char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER),
            ));
        }
        _ => return None,
    };
    Some((2, c))
}

/// Four hexadecimal digits (nothing else: no sign, no space).
fn hex4(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |acc, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some(acc * 16 + digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_as_a_json_reader_reads_them() {
        let view = decode(br#"a\u0034\"\\\/\t\n\u00a0\uD83D\uDE00\uD800!\x\u12G4"#);
        assert_eq!(
            String::from_utf8_lossy(&view.text),
            "a4\"\\/\t\n\u{a0}\u{1F600}\u{FFFD}!\\x\\u12G4"
        );
        // An escaped backslash does not start another escape.
        assert_eq!(decode(br"\\u0034").text, br"\u0034");
        // Cut short: kept as it is.
        assert_eq!(decode(br"1\u00").text, br"1\u00");
    }

    #[test]
    fn decoded_spans_trace_back_to_whole_escapes() {
        let raw = br#"x\u0034\u00a0y12"#;
        let view = decode(raw);
        assert_eq!(view.text, "x4\u{a0}y12".as_bytes());
        // "4" is the first escape; half of the no-break space is all of the second.
        assert_eq!(view.raw_span(1, 2), (1, 7));
        assert_eq!(view.raw_span(2, 3), (7, 13));
        assert_eq!(view.raw_span(1, 6), (1, 15));
        assert_eq!(view.raw_span(1, 7), (1, 16));
        assert_eq!(view.raw_span(5, 6), (14, 15));
        assert_eq!(view.raw_span(0, 1), (0, 1));
        assert!(view.escaped(0, 2));
        assert!(view.escaped(12, 14));
        assert!(!view.escaped(13, 16));
        assert!(!view.escaped(0, 1));
    }

    #[test]
    fn a_cut_never_falls_inside_an_escape() {
        let raw = br#"ab\u0034\\\uD83D\uDE00c"#;
        assert_eq!(boundary(raw, 2), 2);
        assert_eq!(boundary(raw, 3), 2);
        assert_eq!(boundary(raw, 7), 2);
        assert_eq!(boundary(raw, 8), 8);
        assert_eq!(boundary(raw, 9), 8);
        assert_eq!(boundary(raw, 10), 10);
        assert_eq!(boundary(raw, 21), 10);
        assert_eq!(boundary(raw, 22), 22);
    }
}
