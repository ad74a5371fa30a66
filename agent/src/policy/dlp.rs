//! The `dlp` part of a MeshPolicy's `http` section: sensitive data in the selected ports'
//! responses (bodies, and headers the policy names) masked, redacted or blocked before the
//! client gets them.
//!
//! ```yaml
//! http:
//!   dlp:
//!     shadow: false                 # true: count matches, change nothing
//!     detectors:
//!     - {type: cardNumber, action: Mask, keepLast: 4}      # Luhn-checked, Visa/MC/Amex/Discover/JCB/Diners
//!     - {type: usSsn, action: Redact}
//!     - {type: iban, action: Mask, keepLast: 4}            # mod-97 checked
//!     - {type: email, action: Mask}
//!     - {type: bearerToken, action: Redact}                # bearer tokens and JWTs
//!     - {type: custom, name: employee-id, pattern: 'EMP-(?P<value>\d{6})', action: Block}
//!     responseHeaders: [x-account]  # headers whose values are scanned too
//!     compressed: Decompress        # gzip/deflate/br bodies decompressed, masked and sent identity; others refused
//!     requests:                     # what a client sends (east-west: what leaves the calling workload)
//!       detectors: [{type: cardNumber, action: Block}]    # Block: 403, nothing reaches the pod
//!       headers: [x-note]           # request headers scanned (the path and query always are)
//!       bodyLimit: 1048576          # the most held to scan; a longer body is refused (413), never passed unscanned
//! ```
//!
//! Responses stream through the masker; a request is held whole (up to `bodyLimit`) so a
//! `Block` detector stops it before the pod sees a byte of it.

use std::sync::Arc;

use crate::policy::spec::compact::Spanned;
use hyper::header::HeaderName;
use rampart_l7::dlp::{Action, Detector, DlpSet, Kind};

use super::diag::Diagnostic;
use super::source::SourceObject;
use super::spec::dlp::{DetectorSpec, DlpSpec};

/// Default of `requests.bodyLimit`.
pub const DEFAULT_REQUEST_BODY_LIMIT: usize = 1 << 20;
/// Largest `requests.bodyLimit` (the proxy holds that much per request in memory).
pub const MAX_REQUEST_BODY_LIMIT: usize = 16 << 20;

/// A route's DLP, as the proxy runs it.
#[derive(Debug, Clone)]
pub struct DlpModel {
    /// Detectors on responses (empty: responses pass untouched).
    pub set: Arc<DlpSet>,
    pub shadow: bool,
    pub headers: Vec<HeaderName>,
    /// gzip/deflate bodies are decompressed (else refused like every other encoding).
    pub decompress: bool,
    /// A detector blocks: responses are held whole (up to a limit) before they are sent.
    pub blocks: bool,
    pub requests: Option<RequestDlp>,
}

/// Detectors on requests.
#[derive(Debug, Clone)]
pub struct RequestDlp {
    pub set: Arc<DlpSet>,
    /// Request headers whose values are scanned.
    pub headers: Vec<HeaderName>,
    pub body_limit: usize,
}

/// Validates a `dlp` section; errors go to `diags`.
pub fn validate(
    so: &SourceObject,
    raw: &Spanned<DlpSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<DlpModel> {
    let spec = &raw.value;
    let before = diags.len();
    if spec.detectors.is_empty() && spec.requests.is_none() {
        diags.push(Diagnostic::error(
            so.at(raw),
            "dlp.detectors: at least one (or requests.detectors)",
        ));
    }
    let detectors = compile_detectors(so, &spec.detectors, diags);
    let headers = header_names(so, &spec.response_headers, diags);
    let requests = spec.requests.as_ref().map(|r| {
        if r.value.detectors.is_empty() {
            diags.push(Diagnostic::error(
                so.at(r),
                "dlp.requests.detectors: at least one",
            ));
        }
        let body_limit = match &r.value.body_limit {
            None => DEFAULT_REQUEST_BODY_LIMIT,
            Some(l) if (1..=MAX_REQUEST_BODY_LIMIT).contains(&l.value) => l.value,
            Some(l) => {
                diags.push(Diagnostic::error(
                    so.at(l),
                    format!("bodyLimit: 1..={MAX_REQUEST_BODY_LIMIT} bytes"),
                ));
                DEFAULT_REQUEST_BODY_LIMIT
            }
        };
        RequestDlp {
            set: Arc::new(DlpSet {
                detectors: compile_detectors(so, &r.value.detectors, diags),
            }),
            headers: header_names(so, &r.value.headers, diags),
            body_limit,
        }
    });
    let mut error = |origin, message: String| diags.push(Diagnostic::error(origin, message));
    let decompress = match spec.compressed.as_ref().map(|c| c.value.as_str()) {
        None | Some("Decompress") => true,
        Some("Refuse") => false,
        Some(other) => {
            if let Some(c) = &spec.compressed {
                error(
                    so.at(c),
                    format!("compressed {other:?}: Decompress or Refuse"),
                );
            }
            true
        }
    };
    let blocks = detectors.iter().any(|d| d.action == Action::Block);
    (diags.len() == before).then(|| DlpModel {
        set: Arc::new(DlpSet { detectors }),
        shadow: spec.shadow,
        headers,
        decompress,
        blocks,
        requests,
    })
}

/// The header names of `list`; errors go to `diags`.
fn header_names(
    so: &SourceObject,
    list: &[Spanned<String>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<HeaderName> {
    let mut headers = Vec::new();
    for h in list {
        match HeaderName::from_bytes(h.value.as_bytes()) {
            Ok(name) => headers.push(name),
            Err(_) => diags.push(Diagnostic::error(
                so.at(h),
                format!("{:?} is not a header name", h.value),
            )),
        }
    }
    headers
}

/// The detectors of `list`; errors go to `diags`.
fn compile_detectors(
    so: &SourceObject,
    list: &[Spanned<DetectorSpec>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Detector> {
    let mut error = |origin, message: String| diags.push(Diagnostic::error(origin, message));
    let mut detectors = Vec::new();
    for d in list {
        let s = &d.value;
        let keep_last = s.keep_last.unwrap_or(0);
        let with = match &s.mask_with {
            None => b'*',
            // A printable character that is text in every format a body is masked in: a quote
            // or backslash would break a JSON string, `%`, `&`, `+`, `=` a form body.
            Some(m)
                if m.value.len() == 1
                    && m.value.bytes().all(|b| {
                        b.is_ascii_graphic()
                            && !matches!(b, b'"' | b'\\' | b'%' | b'&' | b'+' | b'=')
                    }) =>
            {
                m.value.as_bytes()[0]
            }
            Some(m) => {
                error(
                    so.at(m),
                    "maskWith: one printable ASCII character, not a quote, backslash, %, &, + or ="
                        .into(),
                );
                continue;
            }
        };
        let action = match s.action.value.as_str() {
            "Mask" => Action::Mask { keep_last, with },
            "Redact" => Action::Redact,
            "Block" => Action::Block,
            other => {
                error(
                    so.at(&s.action),
                    format!("action {other:?}: Mask, Redact or Block"),
                );
                continue;
            }
        };
        let (name, kind) = match (s.kind.value.as_str(), &s.name, &s.pattern) {
            ("cardNumber", None, None) => ("card_number".to_owned(), Kind::CardNumber),
            ("usSsn", None, None) => ("us_ssn".to_owned(), Kind::UsSsn),
            ("iban", None, None) => ("iban".to_owned(), Kind::Iban),
            ("email", None, None) => ("email".to_owned(), Kind::Email),
            ("bearerToken", None, None) => ("bearer_token".to_owned(), Kind::BearerToken),
            ("custom", Some(name), Some(pattern)) => {
                if !crate::dns_name::is_dns_label(name) {
                    error(
                        so.at(d),
                        format!("name {name:?}: lowercase letters, digits and '-'"),
                    );
                    continue;
                }
                (name.clone(), Kind::Custom(pattern.clone()))
            }
            ("custom", ..) => {
                error(so.at(d), "a custom detector needs name and pattern".into());
                continue;
            }
            ("cardNumber" | "usSsn" | "iban" | "email" | "bearerToken", ..) => {
                error(so.at(d), "name and pattern are for custom detectors".into());
                continue;
            }
            (other, ..) => {
                error(
                    so.at(&s.kind),
                    format!(
                        "type {other:?}: cardNumber, usSsn, iban, email, bearerToken or custom"
                    ),
                );
                continue;
            }
        };
        match Detector::new(&name, kind, action) {
            Ok(detector) => detectors.push(detector),
            Err(e) => error(so.at(d), e.to_string()),
        }
    }
    detectors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(dlp: &str) -> Result<Option<DlpModel>, Vec<String>> {
        crate::policy::http::section_for_tests(&format!("    dlp: {dlp}\n"))
            .map(|http| http.dlp.clone())
    }

    #[test]
    fn detectors_validate_into_a_set() {
        let dlp = check("{detectors: [{type: cardNumber, action: Mask, keepLast: 4}, {type: custom, name: emp, pattern: 'EMP-(?P<value>[0-9]+)', action: Block}], responseHeaders: [x-account]}")
            .expect("valid")
            .expect("dlp");
        assert_eq!(dlp.set.detectors.len(), 2);
        assert!(dlp.blocks && dlp.decompress && !dlp.shadow);
        assert_eq!(dlp.headers[0].as_str(), "x-account");
    }

    #[test]
    fn request_detectors_stand_alone() {
        let dlp = check("{requests: {detectors: [{type: cardNumber, action: Block}], headers: [x-note], bodyLimit: 4096}}")
            .expect("valid")
            .expect("dlp");
        assert!(dlp.set.detectors.is_empty(), "no response detectors");
        let requests = dlp.requests.expect("requests");
        assert_eq!(requests.set.detectors.len(), 1);
        assert_eq!(requests.body_limit, 4096);
        assert_eq!(requests.headers[0].as_str(), "x-note");
        let defaulted = check("{detectors: [{type: email, action: Mask}], requests: {detectors: [{type: usSsn, action: Redact}]}}")
            .expect("valid")
            .expect("dlp");
        assert_eq!(
            defaulted.requests.map(|r| r.body_limit),
            Some(DEFAULT_REQUEST_BODY_LIMIT)
        );
    }

    #[test]
    fn bad_detectors_are_errors() {
        for (dlp, expected) in [
            ("{detectors: []}", "at least one"),
            (
                "{detectors: [{type: phone, action: Mask}]}",
                "type \"phone\"",
            ),
            (
                "{detectors: [{type: email, action: Hide}]}",
                "action \"Hide\"",
            ),
            (
                "{detectors: [{type: custom, name: x, action: Mask}]}",
                "needs name and pattern",
            ),
            (
                "{detectors: [{type: custom, name: x, pattern: '(', action: Mask}]}",
                "pattern",
            ),
            (
                "{detectors: [{type: email, action: Mask, maskWith: '##'}]}",
                "one printable ASCII character",
            ),
            (
                "{detectors: [{type: email, action: Mask, maskWith: '\"'}]}",
                "not a quote",
            ),
            (
                "{detectors: [{type: email, action: Mask, maskWith: '\\\\'}]}",
                "not a quote",
            ),
            (
                "{detectors: [{type: email, action: Mask, maskWith: ' '}]}",
                "one printable ASCII character",
            ),
            (
                "{detectors: [{type: email, action: Mask}], compressed: Maybe}",
                "Decompress or Refuse",
            ),
            (
                "{detectors: [{type: email, action: Mask}], responseHeaders: ['a b']}",
                "not a header name",
            ),
            (
                "{requests: {detectors: []}}",
                "requests.detectors: at least one",
            ),
            (
                "{requests: {detectors: [{type: cardNumber, action: Block}], bodyLimit: 0}}",
                "bodyLimit",
            ),
            (
                "{requests: {detectors: [{type: iban, action: Stop}]}}",
                "action \"Stop\"",
            ),
            (
                "{requests: {detectors: [{type: iban, action: Block}], headers: ['x y']}}",
                "not a header name",
            ),
        ] {
            let errors = check(dlp).expect_err(dlp);
            assert!(
                errors.len() == 1 && errors[0].contains(expected),
                "{dlp}: {errors:?} should say {expected:?}"
            );
        }
    }
}
