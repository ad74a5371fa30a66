//! Bodies as the filters hold them: the body type forwarded to the pod, reading a body up to a
//! limit, a read prefix chained before the rest of its stream, and `content-encoding` decoding
//! for inspectors (gzip, deflate, brotli; capped so a small input cannot expand without bound).

use std::io::Write as _;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap};

/// The body forwarded to the pod.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Size of the brotli decoder's output buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// A body decoder for `content-encoding`: compressed bytes are written in, decoded bytes taken
/// out as they come.
pub enum Decoder {
    Gzip(flate2::write::GzDecoder<Capped>),
    Deflate(flate2::write::ZlibDecoder<Capped>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Capped>>),
}

/// The most a streamed body's decoder may produce from one frame.
const DECODED_PER_FRAME: usize = 16 << 20;

/// Where a decoder writes: it refuses to hold more than `cap` bytes, so a small compressed
/// input cannot expand without bound inside one write (a decompression bomb: brotli turns a
/// few bytes into megabytes).
pub struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "decoded data over the limit",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Decoder {
    fn sink(&mut self) -> &mut Capped {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        }
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => d.write_all(data)?,
            Decoder::Deflate(d) => d.write_all(data)?,
            Decoder::Brotli(d) => d.write_all(data)?,
        }
        Ok(std::mem::take(&mut self.sink().buf))
    }

    /// The last decoded bytes; an error if the stream ended early.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => d.try_finish()?,
            Decoder::Deflate(d) => d.try_finish()?,
            Decoder::Brotli(d) => d.close()?,
        }
        Ok(std::mem::take(&mut self.sink().buf))
    }

    /// Decodes a whole body, refusing one that decodes to more than `limit` bytes (stopped as
    /// soon as the output passes it).
    pub fn decode_whole(mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, Undecodable> {
        let refusal = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                Undecodable::TooLarge
            } else {
                Undecodable::Unreadable
            }
        };
        let mut out = Vec::new();
        for piece in data.chunks(4096) {
            self.sink().cap = limit.saturating_add(1).saturating_sub(out.len());
            out.extend(self.write(piece).map_err(refusal)?);
        }
        self.sink().cap = limit.saturating_add(1).saturating_sub(out.len());
        out.extend(self.finish().map_err(refusal)?);
        if out.len() > limit {
            return Err(Undecodable::TooLarge);
        }
        Ok(out)
    }
}

/// Whether a message's `content-type` is JSON (`application/json`, a `+json` type, or JSON
/// lines), whose body is also scanned with its string escapes decoded.
pub fn json_content(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.ends_with("+json")
        || matches!(
            essence.as_str(),
            "application/json"
                | "text/json"
                | "application/json-seq"
                | "application/jsonl"
                | "application/x-ndjson"
                | "application/ndjson"
        )
}

/// Whether a message carries a `content-encoding` other than identity.
pub fn encoded(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().any(|v| {
        !matches!(
            v.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref(),
            Ok("" | "identity")
        )
    })
}

/// Why a body could not be decoded for an inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    /// An encoding other than gzip, deflate or brotli, or two of them.
    Encoding,
    /// A stream that does not decode.
    Unreadable,
    /// More than the limit, decoded.
    TooLarge,
}

/// `body` decoded for an inspector that reads text (the WAF's rules): as it is if the message
/// is not encoded; `Err` says why it cannot be.
pub fn decode_for_inspection(
    headers: &HeaderMap,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, Undecodable> {
    if !encoded(headers) {
        return Ok(body);
    }
    match decoder(headers, true) {
        Ok(Some(decoder)) => decoder.decode_whole(&body, limit).map(Bytes::from),
        Ok(None) => Ok(body),
        Err(e) => Err(e),
    }
}

/// The decoder a message's `content-encoding` needs (`None`: identity), or a refusal (every
/// encoding without `decompress`).
pub fn decoder(headers: &HeaderMap, decompress: bool) -> Result<Option<Decoder>, Undecodable> {
    let Some(encoding) = headers.get(CONTENT_ENCODING) else {
        return Ok(None);
    };
    // Two encodings (two headers, or a list) would need two decoders: refused.
    if headers.get_all(CONTENT_ENCODING).iter().count() > 1 {
        return Err(Undecodable::Encoding);
    }
    let encoding = encoding
        .to_str()
        .map_err(|_| Undecodable::Encoding)?
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" if decompress => Ok(Some(Decoder::Gzip(flate2::write::GzDecoder::new(
            Capped::new(DECODED_PER_FRAME),
        )))),
        "deflate" if decompress => Ok(Some(Decoder::Deflate(flate2::write::ZlibDecoder::new(
            Capped::new(DECODED_PER_FRAME),
        )))),
        "br" if decompress => Ok(Some(Decoder::Brotli(Box::new(
            brotli_decompressor::DecompressorWriter::new(
                Capped::new(DECODED_PER_FRAME),
                BROTLI_BUFFER,
            ),
        )))),
        _ => Err(Undecodable::Encoding),
    }
}

pub enum Read<B> {
    /// The whole body, at most `limit` bytes, and its trailers.
    Whole(Bytes, Option<hyper::HeaderMap>),
    /// More than `limit` bytes: those read so far (over `limit` by less than a frame), and the
    /// rest of the stream.
    Over(Bytes, B),
}

/// Reads `body` until it ends or passes `limit` bytes (past it, the trailers stay in the rest).
pub async fn read_up_to<B>(mut body: B, limit: usize) -> Result<Read<B>, BoxError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut buffer = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                buffer.extend_from_slice(&data);
                if buffer.len() > limit {
                    return Ok(Read::Over(Bytes::from(buffer), body));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Read::Whole(Bytes::from(buffer), trailers))
}

/// A body read whole, forwarded with its trailers.
pub fn whole_body(bytes: Bytes, trailers: Option<hyper::HeaderMap>) -> UpstreamBody {
    Full::new(bytes)
        .with_trailers(std::future::ready(trailers.map(Ok)))
        .map_err(|never| match never {})
        .boxed()
}

/// The bytes already read, then the rest of the stream. (http-body-util has no body that
/// chains a buffer and a stream.)
pub struct PrefixedBody<B> {
    pub prefix: Option<Bytes>,
    pub rest: B,
}

impl<B> Body for PrefixedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // Upper first: `set_lower` refuses a lower bound above the upper one.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}

/// A request's body as the filters share it: streamed until a filter needs it held, then read
/// once (up to that filter's limit) and kept, with its decoded form made once, on first need,
/// for every filter that reads text.
pub struct RequestBody {
    state: Held,
    /// The decoded form of a whole body: the limit it was decoded under, and the outcome.
    decoded: Option<(usize, Result<Bytes, Undecodable>)>,
}

enum Held {
    /// Not read yet.
    Streaming(UpstreamBody),
    /// Read to its end.
    Whole(Bytes, Option<HeaderMap>),
    /// Read past a limit: those bytes, and the rest of the stream.
    Over(Bytes, UpstreamBody),
    /// Left in the middle of a read that failed.
    Failed,
}

static NOTHING: Bytes = Bytes::new();

/// What [`RequestBody::hold`] found.
pub enum Holding<'a> {
    /// The whole body, within the limit.
    Whole(&'a Bytes),
    /// More than the limit: the bytes read so far (at least the limit).
    Over(&'a Bytes),
}

impl RequestBody {
    pub fn new(body: UpstreamBody) -> RequestBody {
        RequestBody {
            state: Held::Streaming(body),
            decoded: None,
        }
    }

    /// Reads the body until it ends or passes `limit` bytes (what was read before is kept: a
    /// second filter with a larger limit reads on from there).
    pub async fn hold(&mut self, limit: usize) -> Result<Holding<'_>, BoxError> {
        let state = std::mem::replace(&mut self.state, Held::Failed);
        self.state = match state {
            Held::Streaming(body) => match read_up_to(body, limit).await? {
                Read::Whole(bytes, trailers) => Held::Whole(bytes, trailers),
                Read::Over(prefix, rest) => Held::Over(prefix, rest),
            },
            Held::Over(prefix, rest) if prefix.len() <= limit => {
                match read_up_to(rest, limit - prefix.len()).await? {
                    Read::Whole(more, trailers) => Held::Whole(joined(prefix, more), trailers),
                    Read::Over(more, rest) => Held::Over(joined(prefix, more), rest),
                }
            }
            other => other,
        };
        match &self.state {
            Held::Whole(bytes, _) if bytes.len() <= limit => Ok(Holding::Whole(bytes)),
            Held::Whole(bytes, _) | Held::Over(bytes, _) => Ok(Holding::Over(bytes)),
            // A read that failed before: nothing more can be held (refused as over any limit).
            Held::Streaming(_) | Held::Failed => Ok(Holding::Over(&NOTHING)),
        }
    }

    /// The whole body decoded from its `content-encoding` (as it is if it has none), refused
    /// past `limit` decoded bytes; decoded once, whoever asks first. `None` until the body was
    /// held whole.
    pub fn decoded(
        &mut self,
        headers: &HeaderMap,
        limit: usize,
    ) -> Option<Result<Bytes, Undecodable>> {
        let Held::Whole(bytes, _) = &self.state else {
            return None;
        };
        let reusable =
            |(decoded_under, outcome): &(usize, Result<Bytes, Undecodable>)| match outcome {
                // Whole: a smaller limit is checked below, a larger one finds the same bytes.
                Ok(_) => true,
                // Too large under a limit at least this one: too large under this one too.
                Err(Undecodable::TooLarge) => *decoded_under >= limit,
                Err(_) => true,
            };
        if !self.decoded.as_ref().is_some_and(reusable) {
            let outcome = decode_for_inspection(headers, bytes.clone(), limit);
            self.decoded = Some((limit, outcome));
        }
        let (_, outcome) = self.decoded.as_ref()?;
        Some(match outcome {
            Ok(plain) if plain.len() > limit => Err(Undecodable::TooLarge),
            other => other.clone(),
        })
    }

    /// Replaces a held body by `bytes` (a rewritten body, sent decoded); the trailers stay.
    pub fn replace(&mut self, bytes: Bytes) {
        let trailers = match std::mem::replace(&mut self.state, Held::Failed) {
            Held::Whole(_, trailers) => trailers,
            _ => None,
        };
        self.state = Held::Whole(bytes.clone(), trailers);
        self.decoded = Some((bytes.len(), Ok(bytes)));
    }

    /// The body to forward: what was held, then the rest of the stream.
    pub fn into_upstream(self) -> UpstreamBody {
        match self.state {
            Held::Streaming(body) => body,
            Held::Whole(bytes, trailers) => whole_body(bytes, trailers),
            Held::Over(prefix, rest) => PrefixedBody {
                prefix: Some(prefix),
                rest,
            }
            .boxed(),
            Held::Failed => whole_body(Bytes::new(), None),
        }
    }
}

fn joined(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut all = Vec::with_capacity(a.len() + b.len());
    all.extend_from_slice(&a);
    all.extend_from_slice(&b);
    Bytes::from(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        use std::io::Write as _;
        let mut bomb = Vec::new();
        {
            let mut encoder = brotli::CompressorWriter::new(&mut bomb, 4096, 5, 22);
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..32 {
                let _ = encoder.write_all(&zeros);
            }
        }
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let mut decoder = Decoder::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
            Capped::new(1 << 20),
            BROTLI_BUFFER,
        )));
        let err = decoder.write(&bomb).expect_err("32 MiB out of one write");
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(decoder.sink().buf.len() <= 1 << 20);
        let whole = Decoder::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
            Capped::new(DECODED_PER_FRAME),
            BROTLI_BUFFER,
        )));
        assert!(matches!(
            whole.decode_whole(&bomb, 4096),
            Err(Undecodable::TooLarge)
        ));
    }

    /// A body of `frames`, each its own frame.
    async fn streamed(frames: &[&'static [u8]]) -> UpstreamBody {
        let (mut sender, body) =
            http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(frames.len());
        for frame in frames {
            let _ = sender.send_data(Bytes::from_static(frame)).await;
        }
        body.map_err(|never| match never {}).boxed()
    }

    async fn sent(body: RequestBody) -> Bytes {
        body.into_upstream()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_body_held_past_one_limit_is_read_on_for_a_larger_one_and_sent_whole() {
        let mut body = RequestBody::new(streamed(&[b"0123", b"4567", b"89"]).await);
        assert!(matches!(body.hold(5).await, Ok(Holding::Over(b)) if b.len() > 5 && b.len() < 10));
        assert!(
            matches!(body.hold(100).await, Ok(Holding::Whole(b)) if b.as_ref() == b"0123456789")
        );
        // A smaller limit after it was held whole: over it, nothing read again.
        assert!(matches!(body.hold(3).await, Ok(Holding::Over(b)) if b.len() == 10));
        assert_eq!(sent(body).await.as_ref(), b"0123456789");
        // Held only in part: the prefix, then the rest of the stream.
        let mut prefix_only = RequestBody::new(streamed(&[b"0123", b"4567", b"89"]).await);
        assert!(matches!(prefix_only.hold(2).await, Ok(Holding::Over(_))));
        assert_eq!(sent(prefix_only).await.as_ref(), b"0123456789");
    }

    #[tokio::test]
    async fn a_compressed_body_is_decoded_once_for_every_filter() {
        use std::io::Write as _;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gzip.write_all(&[b'a'; 1000]);
        let compressed = gzip.finish().unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_ENCODING,
            hyper::header::HeaderValue::from_static("gzip"),
        );
        let mut body = RequestBody::new(whole_body(Bytes::from(compressed.clone()), None));
        assert!(body.decoded(&headers, 4096).is_none(), "not held yet");
        assert!(matches!(body.hold(4096).await, Ok(Holding::Whole(_))));
        let first = body
            .decoded(&headers, 4096)
            .and_then(Result::ok)
            .unwrap_or_default();
        assert_eq!(first.len(), 1000);
        // Another filter with its own (larger) limit gets the same decoded bytes, not a copy.
        let second = body
            .decoded(&headers, 8192)
            .and_then(Result::ok)
            .unwrap_or_default();
        assert_eq!(first.as_ptr(), second.as_ptr());
        // One with a smaller limit is refused, without decoding again.
        assert_eq!(
            body.decoded(&headers, 999),
            Some(Err(Undecodable::TooLarge))
        );
        // The pod gets the body as it was sent.
        assert_eq!(sent(body).await.as_ref(), compressed.as_slice());
        // Too large for a first filter's small limit is no verdict for a larger one.
        let mut body = RequestBody::new(whole_body(Bytes::from(compressed.clone()), None));
        assert!(matches!(body.hold(4096).await, Ok(Holding::Whole(_))));
        assert_eq!(
            body.decoded(&headers, 100),
            Some(Err(Undecodable::TooLarge))
        );
        assert_eq!(
            body.decoded(&headers, 4096).map(|d| d.map(|b| b.len())),
            Some(Ok(1000))
        );
    }

    #[tokio::test]
    async fn a_rewritten_body_replaces_what_is_sent() {
        let mut body = RequestBody::new(whole_body(Bytes::from_static(b"card 4111"), None));
        assert!(matches!(body.hold(100).await, Ok(Holding::Whole(_))));
        body.replace(Bytes::from_static(b"card ****"));
        assert_eq!(sent(body).await.as_ref(), b"card ****");
    }
}
