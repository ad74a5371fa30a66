//! What the proxy makes of a request before any filter judges it, and of the pod's response
//! before it goes back: the filters and the pod must see the same request, or a rule can be
//! matched against one reading while the pod serves another.
//!
//! - **Path** (Envoy's `normalize_path` + `merge_slashes` + `path_with_escaped_slashes_action`):
//!   percent-encoded unreserved characters (RFC 3986 §2.3) are decoded, other escapes kept as
//!   sent; runs of `/` merged; dot segments removed (§5.2.4, so `%2e%2e` too). What
//!   stays ambiguous is refused with `400`: a backslash (raw or `%5C`), an encoded slash (`%2F`,
//!   unless the policy keeps them unchanged), a dot segment with a path parameter (`..;`, `.;x`:
//!   Tomcat and Jetty read it as `..`), a bad escape, an encoded NUL, a path that does not
//!   start with `/` (an HTTP/2 `:path` may; only `OPTIONS *` is let through). The request is
//!   forwarded with the normalised path, so the rules judged what the pod serves. Rules match
//!   the path with each segment's `;parameters` removed ([`rule_path`]), as Tomcat, Jetty and
//!   Spring serve it: `/internal;x/secret` is `/internal/secret` to a `Deny prefix /internal/`.
//! - **Host**: more than one `Host`, an authority (absolute-form request line, or HTTP/2's
//!   `:authority`) that disagrees with `Host` or carries userinfo, a host that is not a DNS name
//!   or an IP literal with an optional numeric port (`admin.example:x` is routed to
//!   `admin.example` by nginx), or an HTTP/1.1 request with neither: `400`. Hosts are compared
//!   case-insensitively, without the port and without a trailing dot.
//! - **Transfer-codings**: only `chunked` (RFC 9112 §6.1 lets a server refuse the others): a
//!   request with any other gets `501`, a response `502`, because a gzip-coded body would pass
//!   the WAF and DLP undecoded.
//! - **Hop-by-hop headers** (RFC 9110 §7.6.1): `Connection` and every header it names,
//!   `Keep-Alive`, `Proxy-Connection`, `Upgrade`, `HTTP2-Settings`, and `TE` unless it is
//!   `trailers` (gRPC needs it), removed in both directions. `Host` and the framing headers
//!   (`Content-Length`, `Transfer-Encoding`) are kept even if named: the proxy frames the
//!   message it forwards itself. `X-Original-URL` and `X-Rewrite-URL` (a path some frameworks
//!   serve instead of the request line's, past every rule) are removed from requests.
//! - **CONNECT** on a port with L7 rules: `405` (its target has no path for the rules).

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode, Uri, Version};

use super::context::Denial;
use crate::policy::http::EscapedSlashes;
use rampart_common::reason::HttpReason;

/// Makes the request what the filters and the pod will both see, or refuses it.
pub fn request(parts: &mut Parts, escaped_slashes: EscapedSlashes) -> Result<(), Denial> {
    if parts.method == Method::CONNECT {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, HttpReason::Connect));
    }
    if !only_chunked(&parts.headers) {
        return Err(refuse(
            StatusCode::NOT_IMPLEMENTED,
            HttpReason::TransferCoding,
        ));
    }
    remove_hop_by_hop(&mut parts.headers);
    for name in PATH_OVERRIDES {
        parts.headers.remove(name);
    }
    check_host(parts)?;
    let path = parts.uri.path();
    if path == "*" && parts.method == Method::OPTIONS {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(refuse(StatusCode::BAD_REQUEST, HttpReason::BadPath));
    }
    let normalized = normalize_path(path, escaped_slashes)
        .map_err(|reason| refuse(StatusCode::BAD_REQUEST, reason))?;
    if normalized != path {
        parts.uri = with_path(&parts.uri, &normalized)
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, HttpReason::BadPath))?;
    }
    Ok(())
}

/// Headers some frameworks (IIS URL Rewrite, Symfony, Zend) serve a path from instead of the
/// request line's: a rule never judged it.
const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// The path rules match: each segment without its `;parameters` (what Tomcat, Jetty and Spring
/// serve for `/internal;jsessionid=x/secret`). The forwarded path keeps them.
pub fn rule_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let stripped: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(segment))
        .collect();
    std::borrow::Cow::Owned(stripped.join("/"))
}

/// The pod's response head: a transfer-coding other than `chunked` is the reason to refuse it
/// (`502`); hop-by-hop headers are removed.
pub fn response(headers: &mut HeaderMap) -> Result<(), Denial> {
    if !only_chunked(headers) {
        return Err(refuse(StatusCode::BAD_GATEWAY, HttpReason::TransferCoding));
    }
    remove_hop_by_hop(headers);
    Ok(())
}

/// Hop-by-hop headers removed, for a request on a port without L7 rules (passed on as it is
/// otherwise).
pub fn hop_by_hop_only(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

fn refuse(status: StatusCode, reason: HttpReason) -> Denial {
    Denial::new(reason, status)
}

/// Whether every `Transfer-Encoding` names only `chunked` (once).
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return false;
        };
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return false;
            }
            codings += 1;
        }
    }
    codings <= 1
}

/// Hop-by-hop headers every proxy removes, beside those `Connection` names.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "http2-settings",
    "connection",
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| {
            ![
                header::HOST,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ]
            .contains(name)
        })
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let te_is_trailers = headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(header::TE);
    }
}

/// The host of a `Host` value or an authority, lower-case, without the port and a trailing
/// dot (what rules and checks compare); `None` if it is not a DNS name or an IP literal with an
/// optional numeric port (no userinfo, nothing else).
pub fn host_key(authority: &str) -> Option<String> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority.get(1..end)?.parse::<std::net::Ipv6Addr>().ok()?;
        let after = authority.get(end + 1..)?;
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':')?)
        };
        (authority.get(..=end)?, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !name_ok {
            return None;
        }
        (host, port)
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn check_host(parts: &Parts) -> Result<(), Denial> {
    // Per request: the values are walked, not collected.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first: Option<&HeaderValue> = hosts.next();
    if hosts.next().is_some() {
        return Err(refuse(StatusCode::BAD_REQUEST, HttpReason::DuplicateHost));
    }
    let header = match first {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(host_key)
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, HttpReason::BadHost))?,
        ),
        None => None,
    };
    let authority = match parts.uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            return Err(refuse(StatusCode::BAD_REQUEST, HttpReason::BadHost));
        }
        Some(authority) => Some(
            host_key(authority.as_str())
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, HttpReason::BadHost))?,
        ),
        None => None,
    };
    match (authority, header) {
        (Some(authority), Some(header)) if authority != header => {
            Err(refuse(StatusCode::BAD_REQUEST, HttpReason::HostMismatch))
        }
        (None, None) if parts.version == Version::HTTP_11 => {
            Err(refuse(StatusCode::BAD_REQUEST, HttpReason::MissingHost))
        }
        _ => Ok(()),
    }
}

/// Bytes RFC 3986 calls unreserved: decoding them never changes what a path means.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normalised form of an origin-form path, or why it is refused.
pub fn normalize_path(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, HttpReason> {
    // Decode what is safe to decode; keep the rest escaped as sent. Bytes, not
    // chars: a path may carry UTF-8, which passes through untouched.
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(HttpReason::Backslash),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(HttpReason::BadPercentEncoding)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(HttpReason::BadPercentEncoding)?;
                match value {
                    b'\\' => return Err(HttpReason::Backslash),
                    0 => return Err(HttpReason::BadPercentEncoding),
                    b'/' if escaped_slashes == EscapedSlashes::Reject => {
                        return Err(HttpReason::EscapedSlash);
                    }
                    v if unreserved(v) => decoded.push(v),
                    // Kept as sent (hex case too): the pod reads what the client wrote.
                    _ => decoded.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Merge slashes and remove dot segments (RFC 3986 §5.2.4 on an absolute path).
    let trailing_slash = decoded.ends_with(b"/");
    let mut out: Vec<&[u8]> = Vec::new();
    let mut ends_in_dot = false;
    for segment in decoded.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        let bare = segment.split(|&b| b == b';').next().unwrap_or(segment);
        if segment.contains(&b';') && matches!(bare, b"." | b"..") {
            return Err(HttpReason::DotSegmentParameter);
        }
        // A kept `%2F` beside a dot segment is a traversal to an origin that decodes it.
        if escaped_slashes == EscapedSlashes::KeepUnchanged
            && std::str::from_utf8(segment).is_ok_and(|text| {
                let text = text.replace("%2f", "%2F");
                text.contains("%2F") && text.split("%2F").any(|p| p == "." || p == "..")
            })
        {
            return Err(HttpReason::EscapedSlash);
        }
        ends_in_dot = matches!(segment, b"." | b"..");
        match segment {
            b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    let mut normalized: Vec<u8> = Vec::with_capacity(decoded.len());
    for segment in &out {
        normalized.push(b'/');
        normalized.extend_from_slice(segment);
    }
    if normalized.is_empty() || ((trailing_slash || ends_in_dot) && !out.is_empty()) {
        normalized.push(b'/');
    }
    // Only ASCII was decoded or rewritten, so what was UTF-8 still is.
    String::from_utf8(normalized).map_err(|_| HttpReason::BadPath)
}

/// `uri` with its path replaced (query, scheme and authority kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, &'static str> {
        normalize_path(path, EscapedSlashes::Reject).map_err(HttpReason::name)
    }

    #[test]
    fn traversal_is_resolved_before_rules_see_the_path() {
        for (raw, want) in [
            ("/api/v1/../../internal/secret", "/internal/secret"),
            ("/api/v1/%2e%2e/%2E%2E/internal/secret", "/internal/secret"),
            ("/api/v1/./../../internal/secret", "/internal/secret"),
            ("/api/v1/.%2e/.%2E/internal/x", "/internal/x"),
            ("/../../../internal", "/internal"),
            ("//internal//secret", "/internal/secret"),
            ("/api/v1/items/", "/api/v1/items/"),
            ("/api/v1/items/.", "/api/v1/items/"),
            ("/api/v1/items/..", "/api/v1/"),
            ("/", "/"),
            ("/..", "/"),
            ("/%61pi/v1", "/api/v1"),
            ("/a%3bb/%7e", "/a%3bb/~"),
            ("/caf\u{e9}/./x", "/caf\u{e9}/x"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_stays_ambiguous_is_refused() {
        for (raw, reason) in [
            ("/api/v1/..;/internal", "dot_segment_parameter"),
            ("/api/v1/.;x/internal", "dot_segment_parameter"),
            ("/api/v1/..\\internal", "backslash"),
            ("/api/v1/%5c../internal", "backslash"),
            ("/api/v1/%5C..%5Cinternal", "backslash"),
            ("/api/v1/%2e%2e%2finternal", "escaped_slash"),
            ("/api/v1/%2E%2E%2Finternal", "escaped_slash"),
            ("/api/%zz", "bad_percent_encoding"),
            ("/api/%2", "bad_percent_encoding"),
            ("/api/%00", "bad_percent_encoding"),
        ] {
            assert_eq!(norm(raw), Err(reason), "{raw}");
        }
    }

    #[test]
    fn escaped_slashes_can_be_kept_unchanged() {
        assert_eq!(
            normalize_path("/files/a%2fb/../c", EscapedSlashes::KeepUnchanged).as_deref(),
            Ok("/files/c")
        );
        assert_eq!(
            normalize_path("/files/a%2fb", EscapedSlashes::KeepUnchanged).as_deref(),
            Ok("/files/a%2fb")
        );
        for traversal in [
            "/files/..%2Fsecret",
            "/files/a%2F..%2F..%2Fsecret",
            "/files/.%2f",
        ] {
            assert_eq!(
                normalize_path(traversal, EscapedSlashes::KeepUnchanged),
                Err(HttpReason::EscapedSlash),
                "{traversal}"
            );
        }
    }

    fn parts(request: hyper::http::request::Builder) -> Parts {
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn the_request_is_forwarded_normalised_with_its_query() {
        let mut p = parts(
            hyper::Request::get("/api/v1/../../internal/secret?x=1").header("host", "shop.example"),
        );
        request(&mut p, EscapedSlashes::Reject).expect("normalised");
        assert_eq!(p.uri.to_string(), "/internal/secret?x=1");
        let mut h2 =
            parts(hyper::Request::get("http://shop.example/a/./b//c").version(Version::HTTP_2));
        request(&mut h2, EscapedSlashes::Reject).expect("normalised");
        assert_eq!(h2.uri.to_string(), "http://shop.example/a/b/c");
    }

    #[test]
    fn rules_see_segments_without_their_parameters() {
        assert_eq!(rule_path("/internal;x/secret"), "/internal/secret");
        assert_eq!(rule_path("/admin;jsessionid=1"), "/admin");
        assert_eq!(rule_path("/a/b"), "/a/b");
    }

    #[test]
    fn a_path_without_its_slash_connect_and_path_overrides_are_refused_or_removed() {
        // An authority-form target (or an HTTP/2 `:path` without its slash) has no path the
        // rules could match.
        let mut relative =
            parts(hyper::Request::get("shop.example:443").header("host", "shop.example"));
        let denial = request(&mut relative, EscapedSlashes::Reject).expect_err("no slash");
        assert_eq!(
            (denial.status, denial.reason.name()),
            (StatusCode::BAD_REQUEST, "bad_path")
        );
        let mut connect = parts(hyper::Request::connect("shop.example:443"));
        assert_eq!(
            request(&mut connect, EscapedSlashes::Reject).map_err(|d| d.status),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        let mut star = parts(hyper::Request::options("*").header("host", "a"));
        assert!(request(&mut star, EscapedSlashes::Reject).is_ok());
        let mut overrides = parts(
            hyper::Request::get("/public")
                .header("host", "a")
                .header("x-original-url", "/internal/secret")
                .header("x-rewrite-url", "/internal/secret"),
        );
        request(&mut overrides, EscapedSlashes::Reject).expect("passes");
        assert!(overrides.headers.get("x-original-url").is_none());
        assert!(overrides.headers.get("x-rewrite-url").is_none());
    }

    #[test]
    fn host_tricks_are_refused() {
        let two = parts(
            hyper::Request::get("/")
                .header("host", "public.example")
                .header("host", "admin.example"),
        );
        assert_eq!(
            check_host(&two).map_err(|d| d.reason),
            Err(HttpReason::DuplicateHost.into())
        );
        let absolute = parts(
            hyper::Request::get("http://admin.example/secret").header("host", "public.example"),
        );
        assert_eq!(
            check_host(&absolute).map_err(|d| d.reason),
            Err(HttpReason::HostMismatch.into())
        );
        let none = parts(hyper::Request::get("/"));
        assert_eq!(
            check_host(&none).map_err(|d| d.reason),
            Err(HttpReason::MissingHost.into())
        );
        let agree = parts(
            hyper::Request::get("http://Admin.Example./x").header("host", "admin.example:80"),
        );
        assert!(check_host(&agree).is_ok());
        let http10 = parts(hyper::Request::get("/").version(Version::HTTP_10));
        assert!(check_host(&http10).is_ok());
        assert_eq!(host_key("Admin.Example.").as_deref(), Some("admin.example"));
        assert_eq!(
            host_key("admin.example:8080").as_deref(),
            Some("admin.example")
        );
        assert_eq!(host_key("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_key("10.0.0.1").as_deref(), Some("10.0.0.1"));
        for bad in [
            "admin.example:x",
            "admin.example:80:80",
            "admin.example:",
            "u@admin.example",
            "::1",
            "[::1",
            "[zz]:80",
            "[::1]x",
            "",
            ".",
            "admin example",
            "admin.example:123456",
        ] {
            assert_eq!(host_key(bad), None, "{bad}");
        }
        let userinfo =
            parts(hyper::Request::get("http://u@admin.example/x").header("host", "admin.example"));
        assert_eq!(
            check_host(&userinfo).map_err(|d| d.reason),
            Err(HttpReason::BadHost.into())
        );
        let odd_port = parts(hyper::Request::get("/").header("host", "admin.example:x"));
        assert_eq!(
            check_host(&odd_port).map_err(|d| d.reason),
            Err(HttpReason::BadHost.into())
        );
    }

    #[test]
    fn only_chunked_transfer_coding_passes() {
        let mut ok = parts(
            hyper::Request::post("/")
                .header("host", "a")
                .header("transfer-encoding", "chunked"),
        );
        assert!(request(&mut ok, EscapedSlashes::Reject).is_ok());
        for coding in ["gzip, chunked", "chunked, chunked", "identity", "x"] {
            let mut p = parts(
                hyper::Request::post("/")
                    .header("host", "a")
                    .header("transfer-encoding", coding),
            );
            let denial = request(&mut p, EscapedSlashes::Reject).expect_err(coding);
            assert_eq!(denial.status, StatusCode::NOT_IMPLEMENTED, "{coding}");
        }
        let mut response_headers = HeaderMap::new();
        response_headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            response(&mut response_headers).map_err(|d| d.status),
            Err(StatusCode::BAD_GATEWAY)
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut p = parts(
            hyper::Request::get("/")
                .header("host", "a")
                .header(
                    "connection",
                    "keep-alive, X-Secret-Hop, content-length, transfer-encoding, host",
                )
                .header("content-length", "0")
                .header("x-secret-hop", "1")
                .header("upgrade", "h2c")
                .header("http2-settings", "AAMAAABkAAQAAP__")
                .header("keep-alive", "timeout=5")
                .header("te", "gzip")
                .header("x-kept", "1"),
        );
        request(&mut p, EscapedSlashes::Reject).expect("passes");
        let mut names: Vec<&str> = p.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host", "x-kept"]);
        let mut grpc = parts(
            hyper::Request::post("/svc/Method")
                .header("host", "a")
                .header("te", "trailers"),
        );
        request(&mut grpc, EscapedSlashes::Reject).expect("passes");
        assert_eq!(
            grpc.headers.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }
}
