//! What an engine is built from: where the Core Rule Set is, and a profile (paranoia level,
//! anomaly threshold, body limit, exclusions, extra rules). Two profiles that are equal build
//! the same engine, so the proxy keeps one engine per distinct configuration.
//!
//! Loading order (CRS's own): the engine's base settings, `crs-setup.conf`, the profile's
//! variables (after the setup file, so they win over it; before the rules, whose initialization
//! only fills what is unset), `rules/*.conf` in name order, then the exclusions and extra rules.

use std::path::{Path, PathBuf};

use crate::WafError;

/// Debian's `modsecurity-crs` (CRS 3.3): the rules, and the setup file it keeps under `/etc`.
pub const DEBIAN_CRS_DIR: &str = "/usr/share/modsecurity-crs";
const DEBIAN_CRS_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";

/// Rule ids of the settings this crate adds (ModSecurity keeps 1-99,999 for local rules).
const PROFILE_RULE_ID: u32 = 10_001;
const XML_PROCESSOR_RULE_ID: u32 = 10_002;
const JSON_PROCESSOR_RULE_ID: u32 = 10_003;

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
    /// read up to the limit, XML and JSON bodies parsed, the audit log if the profile has one; response bodies (text,
    /// HTML, XML, JSON) read up to their limit when the profile inspects them.
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
             SecRule REQUEST_HEADERS:Content-Type \"@rx ^application/json\" \"id:{JSON_PROCESSOR_RULE_ID},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON\"\n"
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
    }
}
