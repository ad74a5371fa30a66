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
//!     compressed: Decompress        # gzip/deflate bodies decompressed, masked and sent identity; others refused (502)
//! ```

use std::sync::Arc;

use hyper::header::HeaderName;
use rampart_l7::dlp::{Action, Detector, DlpSet, Kind};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diag::Diagnostic;
use super::source::SourceObject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DlpSpec {
    #[serde(default)]
    pub shadow: bool,
    pub detectors: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    pub response_headers: Vec<Spanned<String>>,
    pub compressed: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectorSpec {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// A custom detector's name (its metric label).
    pub name: Option<String>,
    /// A custom detector's pattern.
    pub pattern: Option<String>,
    pub action: Spanned<String>,
    pub keep_last: Option<usize>,
    pub mask_with: Option<Spanned<String>>,
}

/// A route's DLP, as the proxy runs it.
#[derive(Debug, Clone)]
pub struct DlpModel {
    pub set: Arc<DlpSet>,
    pub shadow: bool,
    pub headers: Vec<HeaderName>,
    /// gzip/deflate bodies are decompressed (else refused like every other encoding).
    pub decompress: bool,
    /// A detector blocks: responses are held whole (up to a limit) before they are sent.
    pub blocks: bool,
}

/// Validates a `dlp` section; errors go to `diags`.
pub fn validate(
    so: &SourceObject,
    raw: &Spanned<DlpSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<DlpModel> {
    let spec = &raw.value;
    let before = diags.len();
    let mut error = |origin, message: String| diags.push(Diagnostic::error(origin, message));
    if spec.detectors.is_empty() {
        error(so.at(raw), "dlp.detectors: at least one".into());
    }
    let mut detectors = Vec::new();
    for d in &spec.detectors {
        let s = &d.value;
        let keep_last = s.keep_last.unwrap_or(0);
        let with = match &s.mask_with {
            None => b'*',
            Some(m) if m.value.len() == 1 && m.value.is_ascii() => m.value.as_bytes()[0],
            Some(m) => {
                error(so.at(m), "maskWith: one ASCII character".into());
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
                if !super::selector::is_dns_label(name) {
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
    let mut headers = Vec::new();
    for h in &spec.response_headers {
        match HeaderName::from_bytes(h.value.as_bytes()) {
            Ok(name) => headers.push(name),
            Err(_) => error(so.at(h), format!("{:?} is not a header name", h.value)),
        }
    }
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
    })
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
                "one ASCII character",
            ),
            (
                "{detectors: [{type: email, action: Mask}], compressed: Maybe}",
                "Decompress or Refuse",
            ),
            (
                "{detectors: [{type: email, action: Mask}], responseHeaders: ['a b']}",
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
