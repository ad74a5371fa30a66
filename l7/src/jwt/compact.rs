//! The JWS compact serialization, parsed strictly: exactly three segments of unpadded base64url
//! (RFC 7515 §2 and §7.1), a header that is a JSON object with no repeated member, and nothing
//! else tolerated. Lenient parsers are how duplicate-`alg` and padding tricks get through.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize as _;
use serde::de::{self, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::reject::{RejectReason, Rejection};

/// A token split into its parts, signature not yet checked.
#[derive(Debug)]
pub struct CompactJws<'a> {
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Splits and decodes `token`, refusing anything over `max_bytes` before looking inside.
pub fn parse(token: &str, max_bytes: usize) -> Result<CompactJws<'_>, Rejection> {
    if token.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "token of {} bytes over the {max_bytes}-byte limit",
                token.len()
            ),
        ));
    }
    let segments: Vec<&str> = token.split('.').collect();
    match segments.len() {
        3 => {}
        5 => return Err(malformed("a JWE (5 segments) is not a signed token")),
        n => return Err(malformed(format!("{n} segments, a compact JWS has 3"))),
    }
    let header_bytes = decode_segment(segments[0], "header")?;
    let payload = decode_segment(segments[1], "payload")?;
    let signature = decode_segment(segments[2], "signature")?;
    let header =
        parse_object(&header_bytes).map_err(|detail| malformed(format!("header: {detail}")))?;
    let signing_input_len = segments[0].len() + 1 + segments[1].len();
    Ok(CompactJws {
        signing_input: &token[..signing_input_len],
        header,
        payload,
        signature,
    })
}

/// Unpadded base64url only: `=`, `+`, `/`, whitespace and non-canonical trailing bits are
/// refused by the engine.
fn decode_segment(segment: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|error| malformed(format!("{what} is not unpadded base64url: {error}")))
}

/// Parses a JSON object whose top-level member names are all distinct (RFC 7515 §5.2 allows a
/// parser to refuse duplicates; accepting the last one is what lets `{"alg":"RS256",
/// "alg":"none"}` mean two things to two parsers).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let object = UniqueObject::deserialize(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(object.0)
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::Malformed, detail)
}

struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut object = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(de::Error::custom(format_args!(
                    "member {name:?} appears twice"
                )));
            }
            let value: Value = access.next_value()?;
            object.insert(name, value);
        }
        Ok(UniqueObject(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn splits_a_well_formed_token() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"sub":"a"}"#);
        let jws = parse(&t, 8192).expect("parses");
        assert_eq!(jws.header["alg"], "RS256");
        assert_eq!(jws.payload, br#"{"sub":"a"}"#);
        assert_eq!(jws.signature, b"sig");
        assert_eq!(jws.signing_input.matches('.').count(), 1);
    }

    #[test]
    fn refuses_every_malformed_shape() {
        let good = token(r#"{"alg":"RS256"}"#, "{}");
        let cases = [
            good.rsplit_once('.')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default(),
            format!("{good}.x"),
            format!("{good}.x.y"),
            token(r#"{"alg":"RS256","alg":"none"}"#, "{}"),
            token("[1]", "{}"),
            token("not json", "{}"),
            token(r#"{"alg":"RS256"} x"#, "{}"),
            format!("{}=.{}.{}", b64(r#"{"alg":"RS256"}"#), b64("{}"), b64("s")),
            good.replace('-', "+").replace('_', "/") + "+/",
            format!(" {good}"),
        ];
        for case in cases {
            let rejection = parse(&case, 8192).expect_err(&case);
            assert_eq!(
                rejection.reason,
                RejectReason::Malformed,
                "{case}: {rejection}"
            );
        }
    }

    #[test]
    fn refuses_oversized_tokens_before_parsing() {
        let rejection = parse(&"a".repeat(9000), 8192).expect_err("too large");
        assert_eq!(rejection.reason, RejectReason::TooLarge);
    }
}
