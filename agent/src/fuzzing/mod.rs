//! The properties the fuzz targets (`fuzz/`, libFuzzer through `cargo fuzz`) check on every
//! parser that sees untrusted bytes. Each function takes the fuzzer's input and panics when a
//! property fails (a panic of the code under test is a failure too); the fuzz targets are
//! one-line wrappers, and the unit tests replay the committed corpus and every input a fuzzer
//! ever failed on (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) on stable Rust.
//!
//! | target | what it feeds | what must hold |
//! | --- | --- | --- |
//! | `policy_check` | a policy file (YAML stream or JSON) | `rampart policy check`'s path: read, checked, compiled; every diagnostic names the file and a line of it |
//! | `jwt_token` | a compact token | the verifier's front end: a token it accepts has an allowed algorithm, a known key and verifies again the same |
//! | `jwks_document` | a JWKS document | read or refused; every key read answers its questions, and verifies no junk signature |
//! | `dlp_stream` | a body and where it is cut | the stream masker gives the same bytes, matches and refusals however the body is cut |
//! | `decoders` | a gzip/deflate/brotli body and a limit | never more than the limit decoded; streamed in any pieces, the same bytes as decoded whole |
//! | `http_head` | an HTTP/1.1 request head | the proxy's normalisation: what it lets through has a clean path it would leave unchanged; request DLP on the target |
//! | `client_hello` | TLS records from a client | the tunnel's ClientHello path: read or refused; a destination named by SNI round-trips |
//! | `packet` | an Ethernet frame, or a description of one | the kernel programs (`BPF_PROG_TEST_RUN`, root): only their verdict codes, and every packet the table tests drop dropped |

pub mod client_hello;
pub mod decode;
pub mod dlp;
pub mod http_head;
pub mod jwt;
pub mod packet;
pub mod policy;

#[cfg(test)]
mod tests;

/// A target's property: panics on an input that breaks it.
pub type Property = fn(&[u8]);

/// The targets that need neither root nor the kernel, by name.
pub const TARGETS: [(&str, Property); 7] = [
    ("policy_check", policy::policy_check),
    ("jwt_token", jwt::jwt_token),
    ("jwks_document", jwt::jwks_document),
    ("dlp_stream", dlp::dlp_stream),
    ("decoders", decode::decoders),
    ("http_head", http_head::http_head),
    ("client_hello", client_hello::client_hello),
];

/// Splits off the first byte of `data`: (the first byte, the rest); `(0, [])` for
/// an empty input. Targets read a small header of choices from the front of their input.
pub(crate) fn split_first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, &[]),
    }
}
