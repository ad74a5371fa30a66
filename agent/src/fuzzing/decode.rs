//! `decoders`: the body decoders (gzip, deflate, brotli) and their size caps.

use hyper::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};

use crate::l7::body::{Undecodable, decoder};

/// What a body's `content-encoding` may say: the three decoded, and names that must be refused.
const ENCODINGS: [&str; 8] = [
    "gzip", "deflate", "br", "x-gzip", " GZIP ", "gzip, br", "compress", "identity",
];
/// The most compared when a body is decoded whole and streamed.
const COMPARED: usize = 16 << 20;

/// Input: a byte of choices (the encoding, the limit: 2^0..2^15 bytes), a piece size, then the
/// body. Decoded whole under a limit, never more than the limit comes out; streamed in pieces,
/// the same bytes come out as decoded whole.
pub fn decoders(data: &[u8]) {
    let (choices, rest) = super::split_first(data);
    let (piece, body) = super::split_first(rest);
    let mut headers = HeaderMap::new();
    let encoding = ENCODINGS[usize::from(choices) % ENCODINGS.len()];
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
    let limit = 1usize << (choices >> 3 & 15);
    let Ok(Some(whole)) = decoder(&headers, true) else {
        assert!(
            matches!(encoding, "compress" | "gzip, br" | "identity"),
            "{encoding:?} has no decoder"
        );
        return;
    };
    match whole.decode_whole(body, limit) {
        Ok(out) => assert!(
            out.len() <= limit,
            "{} bytes over a limit of {limit}",
            out.len()
        ),
        Err(Undecodable::TooLarge | Undecodable::Unreadable) => {}
        Err(Undecodable::Encoding) => panic!("a decoder refused its own encoding"),
    }
    let Ok(Some(reference)) = decoder(&headers, true) else {
        return;
    };
    let Ok(reference) = reference.decode_whole(body, COMPARED) else {
        return;
    };
    let Ok(Some(mut streamed)) = decoder(&headers, true) else {
        return;
    };
    let mut out = Vec::new();
    for chunk in body.chunks(usize::from(piece).max(1)) {
        match streamed.write(chunk) {
            Ok(bytes) => out.extend(bytes),
            Err(_) => return,
        }
    }
    match streamed.finish() {
        Ok(bytes) => out.extend(bytes),
        Err(e) => panic!("decoded whole, but the stream did not end: {e}"),
    }
    assert!(
        out == reference,
        "streamed {} bytes, whole {}",
        out.len(),
        reference.len()
    );
}
