//! The `waf` part of a MeshPolicy's `http` section: the OWASP Core Rule Set on the selected
//! ports' requests, after authentication, authorization and rate limits. Defaults are CRS's
//! own recommended ones, set explicitly (paranoia level 1, inbound threshold 5).
//!
//! ```yaml
//! http:
//!   waf:
//!     mode: Block                   # Block: 403 and nothing reaches the pod; Detect: count and log only
//!     paranoiaLevel: 1              # 1..4
//!     inboundAnomalyThreshold: 5    # CRS: one critical match (5 points) blocks
//!     excludeRules: [920350]        # rule ids
//!     excludeTags: [attack-protocol]
//!     extraRules: [{inline: 'SecRule ...'}, {file: /etc/rampart/waf/local.conf}]
//!     requestBody:
//!       inspect: true
//!       limit: 131072               # bytes given to the engine
//!       overLimit: Reject           # Reject: 413; InspectPrefix: the first `limit` bytes are judged, the rest streamed
//!     onEngineError: Block          # Block (fail closed, 503) or Allow
//!     responseBody:                 # CRS's RESPONSE-95x rules (data leakage, web shells); off by default
//!       inspect: true
//!       limit: 524288               # bytes of a response held and given to the engine
//!       overLimit: InspectPrefix    # InspectPrefix: the first `limit` bytes judged, the rest streamed; Reject: 502
//!     outboundAnomalyThreshold: 4   # CRS: one error-level leak blocks
//!     auditLog:                     # ModSecurity's audit log, written by the engine
//!       path: /var/log/rampart/waf-audit.log
//!       format: JSON                # JSON (a line per record) or Native
//!       parts: AHZ                  # SecAuditLogParts; B and I add the request's headers and body as sent
//!       mode: RelevantOnly          # RelevantOnly: transactions rules flagged; All: every one
//!     blockPage:                    # what a request (or response) the rules block gets instead
//!       status: 403                 # 400..=499 (default: the engine's, 403)
//!       contentType: text/html; charset=utf-8
//!       body: '<html><body><h1>Request blocked</h1></body></html>'
//! ```
//!
//! Response inspection is off unless asked for: it holds each response (up to its limit) until
//! the engine has judged it, where an uninspected response streams.
//!
//! Loading the rules is the agent's (one engine per distinct profile, see `l7::waf`): a set
//! whose rules do not load is rejected and the last good one stays in force.

use std::path::PathBuf;

use crate::policy::spec::compact::Spanned;
use rampart_waf::{ExtraRules, Profile};

use super::diag::Diagnostic;
use super::source::SourceObject;
use super::spec::waf::WafSpec;

/// Largest request-body limit (the proxy holds that much per request in memory).
pub const MAX_BODY_LIMIT: usize = 16 << 20;

/// Largest block page body.
pub const MAX_BLOCK_PAGE_BYTES: usize = 64 * 1024;

/// The answer to a request the rules block, in place of the plain-text default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPage {
    /// `None`: the status the rules asked for (403).
    pub status: Option<hyper::StatusCode>,
    pub content_type: hyper::header::HeaderValue,
    pub body: hyper::body::Bytes,
}

/// Default audit-log parts: the record's header, the rules' messages, its end (no headers or
/// bodies, which carry credentials and data as the client sent them; the request line, query
/// included, is in every record).
pub const DEFAULT_AUDIT_PARTS: &str = "AHZ";

/// ModSecurity's recommended `SecResponseBodyLimit`.
pub const DEFAULT_RESPONSE_BODY_LIMIT: usize = 512 * 1024;

/// What to do with a body over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverLimit {
    /// 413, nothing reaches the pod.
    Reject,
    /// The engine judges the first `limit` bytes; the rest is streamed to the pod uninspected
    /// (the access log says so).
    InspectPrefix,
}

/// The WAF of a route, as the proxy runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafModel {
    /// Block (403) or only detect.
    pub block: bool,
    /// The engine's settings beside the CRS (one engine per distinct profile).
    pub profile: Profile,
    /// Whether request bodies are given to the engine (else only the head is).
    pub inspect_body: bool,
    pub over_limit: OverLimit,
    /// Fail closed (503) when the engine fails on a request or its response.
    pub block_on_error: bool,
    /// What happens to a response over `profile.response_body_limit` (when responses are
    /// inspected).
    pub response_over_limit: OverLimit,
    pub block_page: Option<BlockPage>,
}

/// Validates a `waf` section; errors go to `diags`.
pub fn validate(
    so: &SourceObject,
    raw: &Spanned<WafSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<WafModel> {
    let spec = &raw.value;
    let before = diags.len();
    let mut error = |origin, message: String| diags.push(Diagnostic::error(origin, message));
    let choice = |field: &Option<Spanned<String>>, yes: &str, no: &str, default: bool| match field {
        None => Ok(default),
        Some(v) if v.value == yes => Ok(true),
        Some(v) if v.value == no => Ok(false),
        Some(v) => Err((so.at(v), format!("{:?}: {yes} or {no}", v.value))),
    };
    let block = choice(&spec.mode, "Block", "Detect", true)
        .map_err(|(o, m)| error(o, format!("mode {m}")))
        .unwrap_or(true);
    let block_on_error = choice(&spec.on_engine_error, "Block", "Allow", true)
        .map_err(|(o, m)| error(o, format!("onEngineError {m}")))
        .unwrap_or(true);
    let mut profile = Profile::default();
    if let Some(pl) = &spec.paranoia_level {
        if (1..=4).contains(&pl.value) {
            profile.paranoia_level = pl.value;
        } else {
            error(so.at(pl), "paranoiaLevel: 1 to 4".into());
        }
    }
    if let Some(t) = &spec.inbound_anomaly_threshold {
        if t.value >= 1 {
            profile.inbound_threshold = t.value;
        } else {
            error(so.at(t), "inboundAnomalyThreshold: at least 1".into());
        }
    }
    for id in &spec.exclude_rules {
        if id.value == 0 {
            error(so.at(id), "excludeRules: rule ids are positive".into());
        } else {
            profile.exclude_ids.push(id.value);
        }
    }
    for tag in &spec.exclude_tags {
        let ok = !tag.value.is_empty()
            && tag
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.:".contains(c));
        if ok {
            profile.exclude_tags.push(tag.value.clone());
        } else {
            error(
                so.at(tag),
                format!(
                    "excludeTags: {:?} is not a rule tag (letters, digits, / - _ . :)",
                    tag.value
                ),
            );
        }
    }
    for extra in &spec.extra_rules {
        match (&extra.value.inline, &extra.value.file) {
            (Some(text), None) => profile.extra.push(ExtraRules::Inline(text.clone())),
            (None, Some(file)) if file.starts_with('/') => {
                profile.extra.push(ExtraRules::File(PathBuf::from(file)));
            }
            (None, Some(_)) => error(so.at(extra), "extraRules.file: an absolute path".into()),
            _ => error(
                so.at(extra),
                "extraRules: exactly one of inline, file".into(),
            ),
        }
    }
    let mut inspect_body = true;
    let mut over_limit = OverLimit::Reject;
    if let Some(body) = &spec.request_body {
        inspect_body = body.value.inspect.unwrap_or(true);
        if let Some(limit) = &body.value.limit {
            if (1..=MAX_BODY_LIMIT).contains(&limit.value) {
                profile.body_limit = limit.value;
            } else {
                error(
                    so.at(limit),
                    format!("requestBody.limit: 1 to {MAX_BODY_LIMIT} bytes"),
                );
            }
        }
        if let Some(o) = &body.value.over_limit {
            match o.value.as_str() {
                "Reject" => {}
                "InspectPrefix" => over_limit = OverLimit::InspectPrefix,
                other => error(
                    so.at(o),
                    format!("requestBody.overLimit {other:?}: Reject or InspectPrefix"),
                ),
            }
        }
    }
    if let Some(t) = &spec.outbound_anomaly_threshold {
        if t.value >= 1 {
            profile.outbound_threshold = t.value;
        } else {
            error(so.at(t), "outboundAnomalyThreshold: at least 1".into());
        }
    }
    if let Some(log) = &spec.audit_log {
        let log = &log.value;
        if !log.path.value.starts_with('/') {
            error(so.at(&log.path), "auditLog.path: an absolute path".into());
        }
        let json = choice(&log.format, "JSON", "Native", true)
            .map_err(|(o, m)| error(o, format!("auditLog.format {m}")))
            .unwrap_or(true);
        let all = choice(&log.mode, "All", "RelevantOnly", false)
            .map_err(|(o, m)| error(o, format!("auditLog.mode {m}")))
            .unwrap_or(false);
        let parts = log
            .parts
            .as_ref()
            .map_or(DEFAULT_AUDIT_PARTS, |p| p.value.as_str());
        let valid = parts.starts_with('A')
            && parts.ends_with('Z')
            && parts.chars().all(|c| "ABCDEFGHIJKZ".contains(c))
            && parts.char_indices().all(|(i, c)| !parts[..i].contains(c));
        if !valid && let Some(p) = &log.parts {
            error(
                so.at(p),
                format!(
                    "auditLog.parts {:?}: distinct letters of ABCDEFGHIJKZ, from A to Z",
                    p.value
                ),
            );
        }
        profile.audit = Some(rampart_waf::AuditLog {
            path: PathBuf::from(&log.path.value),
            json,
            parts: parts.to_owned(),
            all,
        });
    }
    let block_page = spec.block_page.as_ref().and_then(|page| {
        let page = &page.value;
        let status = match &page.status {
            None => None,
            Some(s) if (400..=499).contains(&s.value) => hyper::StatusCode::from_u16(s.value).ok(),
            Some(s) => {
                error(so.at(s), "blockPage.status: 400 to 499".into());
                None
            }
        };
        let content_type = match &page.content_type {
            None => Some(hyper::header::HeaderValue::from_static(
                "text/plain; charset=utf-8",
            )),
            Some(t) => {
                let parsed = hyper::header::HeaderValue::from_str(&t.value).ok();
                if parsed.is_none() {
                    error(so.at(t), "blockPage.contentType: not a header value".into());
                }
                parsed
            }
        };
        if page.body.value.len() > MAX_BLOCK_PAGE_BYTES {
            error(
                so.at(&page.body),
                format!("blockPage.body: at most {MAX_BLOCK_PAGE_BYTES} bytes"),
            );
        }
        Some(BlockPage {
            status,
            content_type: content_type?,
            body: hyper::body::Bytes::from(page.body.value.clone()),
        })
    });
    let mut response_over_limit = OverLimit::InspectPrefix;
    if let Some(body) = &spec.response_body
        && body.value.inspect.unwrap_or(true)
    {
        let mut limit = DEFAULT_RESPONSE_BODY_LIMIT;
        if let Some(l) = &body.value.limit {
            if (1..=MAX_BODY_LIMIT).contains(&l.value) {
                limit = l.value;
            } else {
                error(
                    so.at(l),
                    format!("responseBody.limit: 1 to {MAX_BODY_LIMIT} bytes"),
                );
            }
        }
        profile.response_body_limit = Some(limit);
        if let Some(o) = &body.value.over_limit {
            match o.value.as_str() {
                "InspectPrefix" => {}
                "Reject" => response_over_limit = OverLimit::Reject,
                other => error(
                    so.at(o),
                    format!("responseBody.overLimit {other:?}: InspectPrefix or Reject"),
                ),
            }
        }
    }
    (diags.len() == before).then_some(WafModel {
        block,
        profile,
        inspect_body,
        over_limit,
        block_on_error,
        response_over_limit,
        block_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(waf: &str) -> Result<Option<WafModel>, Vec<String>> {
        crate::policy::http::section_for_tests(&format!("    waf: {waf}\n"))
            .map(|http| http.waf.clone())
    }

    #[test]
    fn defaults_are_crs_recommended_ones() {
        let waf = check("{}").expect("valid").expect("waf");
        assert!(waf.block && waf.block_on_error && waf.inspect_body);
        assert_eq!(waf.over_limit, OverLimit::Reject);
        assert_eq!(waf.profile, Profile::default());
        assert_eq!(
            (waf.profile.paranoia_level, waf.profile.inbound_threshold),
            (1, 5)
        );
        let tuned = check("{mode: Detect, paranoiaLevel: 2, inboundAnomalyThreshold: 10, excludeRules: [920350], excludeTags: [attack-protocol], extraRules: [{file: /etc/rampart/local.conf}], requestBody: {inspect: false}, onEngineError: Allow}")
            .expect("valid")
            .expect("waf");
        assert!(!tuned.block && !tuned.block_on_error && !tuned.inspect_body);
        assert_eq!(tuned.profile.exclude_ids, [920350]);
        assert_eq!(
            tuned.profile.extra,
            [ExtraRules::File("/etc/rampart/local.conf".into())]
        );
    }

    #[test]
    fn the_audit_log_is_json_of_relevant_transactions_by_default() {
        let waf = check("{auditLog: {path: /var/log/rampart/waf.log}}")
            .expect("valid")
            .expect("waf");
        assert_eq!(
            waf.profile.audit,
            Some(rampart_waf::AuditLog {
                path: "/var/log/rampart/waf.log".into(),
                json: true,
                parts: DEFAULT_AUDIT_PARTS.into(),
                all: false,
            })
        );
        let native = check("{auditLog: {path: /log, format: Native, parts: ABIHZ, mode: All}}")
            .expect("valid")
            .expect("waf");
        let audit = native.profile.audit.expect("audit");
        assert!(!audit.json && audit.all);
        assert_eq!(audit.parts, "ABIHZ");
    }

    #[test]
    fn a_block_page_replaces_the_plain_answer() {
        let waf = check("{blockPage: {status: 406, contentType: text/html, body: '<h1>no</h1>'}}")
            .expect("valid")
            .expect("waf");
        let page = waf.block_page.expect("page");
        assert_eq!(page.status, Some(hyper::StatusCode::NOT_ACCEPTABLE));
        assert_eq!(page.content_type, "text/html");
        assert_eq!(&page.body[..], b"<h1>no</h1>");
        assert_eq!(check("{}").expect("valid").expect("waf").block_page, None);
    }

    #[test]
    fn responses_are_inspected_only_when_asked() {
        let off = check("{}").expect("valid").expect("waf");
        assert_eq!(off.profile.response_body_limit, None);
        assert_eq!(off.profile.outbound_threshold, 4);
        let on = check("{responseBody: {inspect: true}, outboundAnomalyThreshold: 8}")
            .expect("valid")
            .expect("waf");
        assert_eq!(
            on.profile.response_body_limit,
            Some(DEFAULT_RESPONSE_BODY_LIMIT)
        );
        assert_eq!(on.profile.outbound_threshold, 8);
        assert_eq!(on.response_over_limit, OverLimit::InspectPrefix);
        let strict = check("{responseBody: {limit: 1024, overLimit: Reject}}")
            .expect("valid")
            .expect("waf");
        assert_eq!(strict.profile.response_body_limit, Some(1024));
        assert_eq!(strict.response_over_limit, OverLimit::Reject);
        let no = check("{responseBody: {inspect: false, limit: 1024}}")
            .expect("valid")
            .expect("waf");
        assert_eq!(no.profile.response_body_limit, None);
    }

    #[test]
    fn bad_settings_are_errors_at_their_place() {
        for (waf, expected) in [
            ("{mode: Block2}", "7:17: mode \"Block2\": Block or Detect"),
            ("{paranoiaLevel: 5}", "7:26: paranoiaLevel: 1 to 4"),
            (
                "{inboundAnomalyThreshold: 0}",
                "inboundAnomalyThreshold: at least 1",
            ),
            ("{excludeRules: [0]}", "rule ids are positive"),
            ("{excludeTags: ['a b']}", "is not a rule tag"),
            (
                "{extraRules: [{inline: x, file: /y}]}",
                "exactly one of inline, file",
            ),
            ("{extraRules: [{file: rel.conf}]}", "an absolute path"),
            ("{requestBody: {limit: 0}}", "requestBody.limit: 1 to"),
            (
                "{requestBody: {overLimit: Drop}}",
                "Reject or InspectPrefix",
            ),
            ("{onEngineError: Maybe}", "onEngineError \"Maybe\""),
            ("{responseBody: {limit: 0}}", "responseBody.limit: 1 to"),
            (
                "{responseBody: {overLimit: Drop}}",
                "responseBody.overLimit \"Drop\": InspectPrefix or Reject",
            ),
            (
                "{outboundAnomalyThreshold: 0}",
                "outboundAnomalyThreshold: at least 1",
            ),
            ("{responseRules: true}", "unknown field"),
            (
                "{blockPage: {status: 200, body: x}}",
                "blockPage.status: 400 to 499",
            ),
            (
                "{blockPage: {contentType: \"a\\nb\", body: x}}",
                "blockPage.contentType",
            ),
            (
                "{auditLog: {path: waf.log}}",
                "auditLog.path: an absolute path",
            ),
            (
                "{auditLog: {path: /l, format: XML}}",
                "auditLog.format \"XML\": JSON or Native",
            ),
            (
                "{auditLog: {path: /l, mode: Some}}",
                "auditLog.mode \"Some\": All or RelevantOnly",
            ),
            (
                "{auditLog: {path: /l, parts: AXZ}}",
                "auditLog.parts \"AXZ\"",
            ),
            ("{auditLog: {path: /l, parts: BZ}}", "from A to Z"),
        ] {
            let errors = check(waf).expect_err(waf);
            assert!(
                errors.len() == 1 && errors[0].contains(expected),
                "{waf}: {errors:?} should say {expected:?}"
            );
        }
    }
}
