//! What an engine is built from: where the Core Rule Set is, and a profile (paranoia level,
//! anomaly threshold, body limit, exclusions, extra rules). Two profiles that are equal build
//! the same engine, so the proxy keeps one engine per distinct configuration.
//!
//! Loading order (CRS's own): the engine's base settings (with ModSecurity's recommended
//! request body checks, which refuse a body the engine could not parse), `crs-setup.conf`, the
//! profile's variables (after the setup file, so they win over it; before the rules, whose
//! initialization only fills what is unset), `rules/*.conf` in name order, then the exclusions
//! and extra rules.

use std::path::{Path, PathBuf};

use crate::WafError;

/// Debian's `modsecurity-crs` (CRS 3.3): the rules, and the setup file it keeps under `/etc`.
pub const DEBIAN_CRS_DIR: &str = "/usr/share/modsecurity-crs";
const DEBIAN_CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";

/// Rule ids of the settings this crate adds (ModSecurity keeps 1-99,999 for local rules).
const PROFILE_RULE_ID: u32 = 10_001;
const XML_PROCESSOR_RULE_ID: u32 = 10_002;
const JSON_PROCESSOR_RULE_ID: u32 = 10_003;

/// The rule refusing (`400`) a request body its processor (JSON, XML, multipart) could not
/// parse: `REQBODY_ERROR` (ModSecurity's recommended rule 200002). Such a body is not inspected
/// (a JSON body stops being read at the first error, a multipart body's parts become `ARGS`
/// only once its final boundary is seen), so it could carry any attack to the pod.
pub const REQUEST_BODY_ERROR_RULE_ID: u32 = 10_004;
/// The rule refusing (`400`) a multipart body the parser took but flagged as ambiguous:
/// `MULTIPART_STRICT_ERROR` (recommended rule 200003), where parsers may disagree on its parts.
pub const MULTIPART_STRICT_RULE_ID: u32 = 10_005;
/// The rule refusing (`400`) a multipart body with a line that looks like its boundary but is
/// not, after the last one matched: `MULTIPART_UNMATCHED_BOUNDARY` 1 (recommended rule 200004,
/// its permissive form: 2, a `--` line inside a part such as a PEM file, passes).
pub const MULTIPART_BOUNDARY_RULE_ID: u32 = 10_006;
/// The rule skipping the checks above for a JSON body cut at the limit whose only error is its
/// cut end (see [`Profile::base_rules`]); it refuses nothing.
const JSON_CUT_RULE_ID: u32 = 10_007;
/// The rule skipping the checks above when the engine was given no body (nothing was parsed).
const NO_BODY_RULE_ID: u32 = 10_008;
/// Where the request body checks end (a `SecMarker`).
const END_MARKER: &str = "END_RAMPART_REQUEST_BODY_CHECKS";

/// A Core Rule Set on disk: `crs-setup.conf` and the rule files, in load order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CrsLayout {
    pub dir: PathBuf,
    pub setup: PathBuf,
    pub rules: Vec<PathBuf>,
}

impl CrsLayout {
    /// Finds the rules in `dir/rules/*.conf` (`.conf.example` templates are skipped) and the
    /// setup file: `dir/crs-setup.conf`, else `dir/crs-setup.conf.example`, else Debian's
    /// `/etc/modsecurity/crs/crs-setup.conf` (CRS 3.3 and CRS 4 layouts both load).
    pub fn discover(dir: &Path) -> Result<CrsLayout, WafError> {
        let rules_dir = dir.join("rules");
        let entries = std::fs::read_dir(&rules_dir).map_err(|e| WafError::Crs {
            path: rules_dir.clone(),
            problem: e.to_string(),
        })?;
        let mut rules: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        rules.sort();
        if rules.is_empty() {
            return Err(WafError::Crs {
                path: rules_dir,
                problem: "no *.conf rule files".into(),
            });
        }
        let setup = [
            dir.join("crs-setup.conf"),
            dir.join("crs-setup.conf.example"),
            PathBuf::from(DEBIAN_CRS_SETUP),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| WafError::Crs {
            path: dir.to_owned(),
            problem: "no crs-setup.conf (or .example) beside the rules (CRS refuses every request without it)".into(),
        })?;
        Ok(CrsLayout {
            dir: dir.to_owned(),
            setup,
            rules,
        })
    }
}

/// Extra rules of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtraRules {
    /// SecLang text.
    Inline(String),
    /// A SecLang file (loaded after the CRS).
    File(PathBuf),
}

/// ModSecurity's audit log, written by the library itself (serially, one record per audited
/// transaction).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditLog {
    pub path: PathBuf,
    /// JSON (one object per line) or ModSecurity's native multi-part text.
    pub json: bool,
    /// `SecAuditLogParts`: letters of `ABCDEFGHIJKZ`, with `A` and `Z`.
    pub parts: String,
    /// Every transaction (`On`), or only those a rule marked for the audit log or answered
    /// with an error status (`RelevantOnly`).
    pub all: bool,
}

/// The settings of one engine beside the CRS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    /// 1..=4.
    pub paranoia_level: u8,
    /// `tx.inbound_anomaly_score_threshold` (CRS default 5: one critical match blocks).
    pub inbound_threshold: u32,
    /// Bytes of a request body the engine may be given.
    pub body_limit: usize,
    /// Bytes of a response body the engine may be given; `None`: responses are not inspected
    /// (the response rules, `RESPONSE-95x`, then never match).
    pub response_body_limit: Option<usize>,
    /// `tx.outbound_anomaly_score_threshold` (CRS default 4: one error-level leak blocks).
    pub outbound_threshold: u32,
    /// Where the library writes its audit log (`None`: no audit log).
    pub audit: Option<AuditLog>,
    pub exclude_ids: Vec<u32>,
    pub exclude_tags: Vec<String>,
    pub extra: Vec<ExtraRules>,
}

impl Default for Profile {
    /// CRS's recommended defaults: paranoia level 1, inbound threshold 5; bodies up to 128 KiB
    /// (ModSecurity's recommended `SecRequestBodyNoFilesLimit`).
    fn default() -> Profile {
        Profile {
            paranoia_level: 1,
            inbound_threshold: 5,
            body_limit: 128 * 1024,
            response_body_limit: None,
            outbound_threshold: 4,
            audit: None,
            exclude_ids: Vec::new(),
            exclude_tags: Vec::new(),
            extra: Vec::new(),
        }
    }
}

impl Profile {
    /// SecLang for the engine's own settings, loaded before `crs-setup.conf`: the rule engine
    /// on (the proxy decides between blocking and detection from the result), request bodies
    /// read up to the limit, XML and JSON bodies parsed, the audit log if the profile has one;
    /// response bodies (text, HTML, XML, JSON) read up to their limit when the profile inspects
    /// them.
    ///
    /// And ModSecurity's recommended request body checks (`modsecurity.conf-recommended`, rules
    /// 200002-200004, here with local ids that no exclusion of CRS ids removes), first in phase
    /// 2, once the body is parsed: a body its processor rejected
    /// ([`REQUEST_BODY_ERROR_RULE_ID`]), a multipart body failing strict validation
    /// ([`MULTIPART_STRICT_RULE_ID`]) or with an unmatched boundary
    /// ([`MULTIPART_BOUNDARY_RULE_ID`]) is denied with status `400` (severity critical). The
    /// proxy answers that status; in Detect mode it lets the request through and counts it, as
    /// any other interruption. A urlencoded body never sets `REQBODY_ERROR` in libmodsecurity
    /// 3.0.9 (bad `%`-encoding is `URLENCODED_ERROR`, which CRS scores itself: 920240). The
    /// checks apply only to a body the engine was given: 3.0.9 also calls an empty XML body, or
    /// a multipart Content-Type without a boundary, unparsable, and without body inspection the
    /// proxy gives the engine no body.
    ///
    /// One exception, ModSecurity v2's (it skips the end-of-body checks of a body it saw only
    /// part of): a JSON body cut at the limit (`INBOUND_DATA_ERROR`, see
    /// [`Engine::evaluate`](crate::Engine::evaluate)) whose only error is its premature end.
    /// Every value before the cut was parsed and inspected; a body with any other error is
    /// still refused, and so are a cut XML body (3.0.9's one XML error message does not tell a
    /// document broken at the cut from one broken before it) and a cut multipart body (its parts
    /// become arguments only with its final boundary: nothing of it was inspected).
    pub fn base_rules(&self) -> String {
        let limit = self.body_limit;
        let responses = match self.response_body_limit {
            Some(limit) => format!(
                "SecResponseBodyAccess On\n\
                 SecResponseBodyLimit {limit}\n\
                 SecResponseBodyLimitAction ProcessPartial\n\
                 SecResponseBodyMimeType text/plain text/html text/xml application/json application/xml\n"
            ),
            None => "SecResponseBodyAccess Off\n".to_owned(),
        };
        let audit = match &self.audit {
            Some(log) => format!(
                "SecAuditEngine {}\n\
                 SecAuditLogType Serial\n\
                 SecAuditLogFormat {}\n\
                 SecAuditLogParts {}\n\
                 SecAuditLog \"{}\"\n",
                if log.all { "On" } else { "RelevantOnly" },
                if log.json { "JSON" } else { "Native" },
                log.parts,
                escape(&log.path.display().to_string()),
            ),
            None => "SecAuditEngine Off\n".to_owned(),
        };
        format!(
            "SecRuleEngine On\n\
             SecRequestBodyAccess On\n\
             SecRequestBodyLimit {limit}\n\
             SecRequestBodyNoFilesLimit {limit}\n\
             SecRequestBodyLimitAction ProcessPartial\n\
             {responses}\
             {audit}\
             SecRule REQUEST_HEADERS:Content-Type \"@rx ^(?:application(?:/soap\\+|/)|text/)xml\" \"id:{XML_PROCESSOR_RULE_ID},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML\"\n\
             SecRule REQUEST_HEADERS:Content-Type \"@rx ^application/json\" \"id:{JSON_PROCESSOR_RULE_ID},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON\"\n\
             {checks}",
            checks = request_body_checks(),
        )
    }

    /// SecLang setting the profile's CRS variables (CRS 4 names and CRS 3.3 names), loaded after
    /// `crs-setup.conf` and before the rules.
    pub fn variables(&self) -> String {
        let (pl, threshold) = (self.paranoia_level, self.inbound_threshold);
        let outbound = self.outbound_threshold;
        format!(
            "SecAction \"id:{PROFILE_RULE_ID},phase:1,pass,nolog,t:none,\
             setvar:tx.blocking_paranoia_level={pl},setvar:tx.detection_paranoia_level={pl},\
             setvar:tx.paranoia_level={pl},setvar:tx.executing_paranoia_level={pl},\
             setvar:tx.inbound_anomaly_score_threshold={threshold},\
             setvar:tx.outbound_anomaly_score_threshold={outbound}\"\n"
        )
    }

    /// SecLang removing the excluded rules, loaded after the CRS.
    pub fn exclusions(&self) -> String {
        let mut text = String::new();
        if !self.exclude_ids.is_empty() {
            let ids: Vec<String> = self.exclude_ids.iter().map(u32::to_string).collect();
            text.push_str(&format!("SecRuleRemoveById {}\n", ids.join(" ")));
        }
        for tag in &self.exclude_tags {
            text.push_str(&format!("SecRuleRemoveByTag \"{}\"\n", escape(tag)));
        }
        text
    }
}

/// ModSecurity's recommended request body rules (see [`Profile::base_rules`]). A chained rule
/// needs an action list in 3.0.9 (`t:none`); an unknown variable is a load error, and every
/// `MULTIPART_*` here is one 3.0.9 sets. yajl reports a premature end as `parse error: premature
/// EOF` (and a lexical error when the cut splits a literal, an escape or a UTF-8 character: that
/// body is refused).
fn request_body_checks() -> String {
    format!(
        "SecRule REQUEST_BODY_LENGTH \"!@gt 0\" \"id:{NO_BODY_RULE_ID},phase:2,pass,nolog,t:none,skipAfter:{END_MARKER}\"\n\
         SecRule INBOUND_DATA_ERROR \"@eq 1\" \"id:{JSON_CUT_RULE_ID},phase:2,pass,nolog,t:none,chain,skipAfter:{END_MARKER}\"\n\
         SecRule REQBODY_PROCESSOR \"@streq JSON\" \"t:none,chain\"\n\
         SecRule REQBODY_ERROR_MSG \"@rx ^JSON parsing error: parse error: premature EOF\\s*$\" \"t:none\"\n\
         SecRule REQBODY_ERROR \"!@eq 0\" \"id:{REQUEST_BODY_ERROR_RULE_ID},phase:2,t:none,log,deny,status:400,severity:2,\
         msg:'Failed to parse request body.',logdata:'%{{REQBODY_ERROR_MSG}}'\"\n\
         SecRule MULTIPART_STRICT_ERROR \"!@eq 0\" \"id:{MULTIPART_STRICT_RULE_ID},phase:2,t:none,log,deny,status:400,severity:2,\
         msg:'Multipart request body failed strict validation: PE %{{REQBODY_PROCESSOR_ERROR}}, \
         BQ %{{MULTIPART_BOUNDARY_QUOTED}}, BW %{{MULTIPART_BOUNDARY_WHITESPACE}}, \
         DB %{{MULTIPART_DATA_BEFORE}}, DA %{{MULTIPART_DATA_AFTER}}, HF %{{MULTIPART_HEADER_FOLDING}}, \
         LF %{{MULTIPART_LF_LINE}}, SM %{{MULTIPART_MISSING_SEMICOLON}}, IQ %{{MULTIPART_INVALID_QUOTING}}, \
         IP %{{MULTIPART_INVALID_PART}}, IH %{{MULTIPART_INVALID_HEADER_FOLDING}}, \
         FL %{{MULTIPART_FILE_LIMIT_EXCEEDED}}'\"\n\
         SecRule MULTIPART_UNMATCHED_BOUNDARY \"@eq 1\" \"id:{MULTIPART_BOUNDARY_RULE_ID},phase:2,t:none,log,deny,status:400,severity:2,\
         msg:'Multipart parser detected a possible unmatched boundary.'\"\n\
         SecMarker {END_MARKER}\n"
    )
}

/// A tag as a SecLang quoted argument (tags are validated by the policy; quotes and
/// backslashes are escaped anyway).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crs_4_layout_is_found_with_its_example_setup() {
        let layout = CrsLayout::discover(&crate::tests::shared_crs()).expect("CRS 4.28");
        assert!(layout.setup.ends_with("crs-setup.conf.example"));
        let names: Vec<_> = layout
            .rules
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(names.first(), Some(&"REQUEST-901-INITIALIZATION.conf"));
        assert!(names.contains(&"REQUEST-949-BLOCKING-EVALUATION.conf"));
        assert!(names.iter().all(|n| n.ends_with(".conf")), "{names:?}");
    }

    #[test]
    fn a_directory_without_rules_is_an_error_naming_it() {
        let err = CrsLayout::discover(Path::new("/nonexistent-crs")).expect_err("no rules");
        assert!(err.to_string().contains("/nonexistent-crs/rules"), "{err}");
    }

    #[test]
    fn the_profile_becomes_seclang() {
        let profile = Profile {
            paranoia_level: 2,
            inbound_threshold: 10,
            exclude_ids: vec![942100, 920350],
            exclude_tags: vec!["attack-\"x".into()],
            ..Profile::default()
        };
        assert!(profile.variables().contains("tx.blocking_paranoia_level=2"));
        assert!(
            profile
                .variables()
                .contains("tx.inbound_anomaly_score_threshold=10")
        );
        assert_eq!(
            profile.exclusions(),
            "SecRuleRemoveById 942100 920350\nSecRuleRemoveByTag \"attack-\\\"x\"\n"
        );
        assert!(profile.base_rules().contains("SecRequestBodyLimit 131072"));
        let checks = profile.base_rules();
        for id in [10004, 10005, 10006] {
            let rule = checks
                .lines()
                .find(|l| l.contains(&format!("\"id:{id},phase:2,")))
                .unwrap_or_else(|| panic!("rule {id}: {checks}"));
            assert!(rule.contains(",deny,status:400,"), "{rule}");
        }
    }
}
