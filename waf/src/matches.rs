//! Rule matches as the engine reports them: one text line per match through the log callback
//! (`ModSecurity: Warning. <what matched> [file "..."] [line "..."] [id "942100"] [msg "..."]
//! [severity "2"] [tag "attack-sqli"] ...`), parsed into the fields the proxy reports. The
//! line is the library's only C-API view of a match (`RuleMessage` is C++).

use rampart_common::reason::WafReason;

use crate::config;

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub id: u32,
    pub msg: String,
    /// The CRS severity (0 emergency .. 7 debug), when the rule has one.
    pub severity: Option<u8>,
    pub tags: Vec<String>,
    /// Whether the engine denied the request on this match (`Access denied with code ...`).
    pub disruptive: bool,
}

impl RuleMatch {
    /// Parses one log line; `None` if it names no rule id.
    pub fn parse(line: &str) -> Option<RuleMatch> {
        let id = field(line, "id").next()?.parse().ok()?;
        Some(RuleMatch {
            id,
            msg: field(line, "msg").next().unwrap_or_default().to_owned(),
            severity: field(line, "severity").next().and_then(|s| s.parse().ok()),
            tags: field(line, "tag").map(str::to_owned).collect(),
            disruptive: line.contains("Access denied"),
        })
    }

    /// The anomaly score a blocking-evaluation rule reports (`Inbound Anomaly Score Exceeded
    /// (Total Score: 10)`; `Outbound ...` in the response phases).
    pub fn total_score(&self) -> Option<u32> {
        let (_, rest) = self.msg.split_once("Total Score: ")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The CRS rule group of the id (its rule file's family), a bounded metric label.
    pub fn group(&self) -> WafReason {
        rule_group(self.id)
    }
}

/// The rule group of a rule id: this crate's request body checks by name (a body that could
/// not be parsed, a multipart body failing strict validation); a CRS rule by the family of its
/// rule file (`REQUEST-942-...-SQLI` is `sqli`); `other` for the rest (a policy's own rules).
pub fn rule_group(id: u32) -> WafReason {
    match id {
        config::REQUEST_BODY_ERROR_RULE_ID => return WafReason::RequestBodyError,
        config::MULTIPART_STRICT_RULE_ID | config::MULTIPART_BOUNDARY_RULE_ID => {
            return WafReason::MultipartStrictError;
        }
        _ => {}
    }
    match id / 1000 {
        911 => WafReason::MethodEnforcement,
        913 => WafReason::ScannerDetection,
        920 => WafReason::ProtocolEnforcement,
        921 => WafReason::ProtocolAttack,
        922 => WafReason::MultipartAttack,
        930 => WafReason::Lfi,
        931 => WafReason::Rfi,
        932 => WafReason::Rce,
        933 => WafReason::Php,
        934 => WafReason::Generic,
        941 => WafReason::Xss,
        942 => WafReason::Sqli,
        943 => WafReason::SessionFixation,
        944 => WafReason::Java,
        949 => WafReason::BlockingEvaluation,
        950 => WafReason::DataLeakage,
        951 => WafReason::DataLeakageSql,
        952 => WafReason::DataLeakageJava,
        953 => WafReason::DataLeakagePhp,
        954 => WafReason::DataLeakageIis,
        955 => WafReason::WebShell,
        956 => WafReason::DataLeakageRuby,
        959 => WafReason::BlockingEvaluation,
        _ => WafReason::Other,
    }
}

/// The values of `[name "value"]` in `line`, in order (a quote inside a value is `\"`).
fn field<'a>(line: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("[{name} \"");
    let mut rest = line;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let tail = &rest[start..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in tail.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped && tail[i + 1..].starts_with(']') => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        let value = &tail[..end];
        rest = &tail[end..];
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQLI: &str = r#"ModSecurity: Warning. detected SQLi using libinjection. [file "/crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"] [line "46"] [id "942100"] [rev ""] [msg "SQL Injection Attack Detected via libinjection"] [data "Matched Data: 1&1 found within ARGS:var: 1234 OR 1=1"] [severity "2"] [ver "OWASP_CRS/4.28.0"] [maturity "0"] [accuracy "0"] [tag "application-multi"] [tag "attack-sqli"] [tag "paranoia-level/1"] [hostname "10.0.0.2"] [uri "/post"] [unique_id "1"] [ref "v8,15"]"#;
    const BLOCK: &str = r#"ModSecurity: Access denied with code 403 (phase 2). Matched "Operator `Ge' with parameter `5' against variable `TX:BLOCKING_INBOUND_ANOMALY_SCORE' (Value: `5' ) [file "/crs/rules/REQUEST-949-BLOCKING-EVALUATION.conf"] [line "222"] [id "949110"] [rev ""] [msg "Inbound Anomaly Score Exceeded (Total Score: 5)"] [data ""] [severity "0"] [tag "anomaly-evaluation"]"#;

    const BODY_ERROR: &str = r#"[client 203.0.113.7] ModSecurity: Access denied with code 400 (phase 2). Matched "Operator `Eq' with parameter `0' against variable `REQBODY_ERROR' (Value: `1' ) [file "<<reference missing or not informed>>"] [line "13"] [id "10004"] [rev ""] [msg "Failed to parse request body."] [data "JSON parsing error: lexical error: invalid char in json text.\x0a"] [severity "2"] [ver ""] [maturity "0"] [accuracy "0"] [hostname "10.0.0.2"] [uri "/api/orders"] [unique_id "1"] [ref "v134,1"]"#;

    #[test]
    fn a_match_line_gives_id_message_severity_and_tags() {
        let m = RuleMatch::parse(SQLI).expect("parses");
        assert_eq!(m.id, 942100);
        assert_eq!(m.msg, "SQL Injection Attack Detected via libinjection");
        assert_eq!(m.severity, Some(2));
        assert_eq!(
            m.tags,
            ["application-multi", "attack-sqli", "paranoia-level/1"]
        );
        assert!(!m.disruptive);
        assert_eq!(m.group(), WafReason::Sqli);
        assert_eq!(m.total_score(), None);
    }

    #[test]
    fn the_blocking_rule_gives_the_score() {
        let m = RuleMatch::parse(BLOCK).expect("parses");
        assert_eq!(
            (m.id, m.disruptive, m.total_score()),
            (949110, true, Some(5))
        );
    }

    #[test]
    fn odd_lines_never_panic() {
        for line in [
            "",
            "[id \"",
            "[id \"x\"]",
            "[id \"12\"] [msg \"a \\\"quoted\\\" word\"]",
            "[id \"12\"] [msg \"ends",
            "[msg \"é\"] [id \"7\"]",
        ] {
            let _ = RuleMatch::parse(line);
        }
        let quoted = RuleMatch::parse("[id \"12\"] [msg \"a \\\"q\\\"]\"]").expect("parses");
        assert_eq!(quoted.msg, "a \\\"q\\\"]");
        assert_eq!(rule_group(12), WafReason::Other);
    }

    #[test]
    fn the_request_body_checks_have_groups_of_their_own() {
        let refused = RuleMatch::parse(BODY_ERROR).expect("parses");
        assert_eq!(
            (refused.id, refused.disruptive, refused.severity),
            (10004, true, Some(2))
        );
        assert_eq!(refused.msg, "Failed to parse request body.");
        assert_eq!(refused.group(), WafReason::RequestBodyError);
        assert_eq!(rule_group(10005), WafReason::MultipartStrictError);
        assert_eq!(rule_group(10006), WafReason::MultipartStrictError);
        assert_eq!(rule_group(10001), WafReason::Other);
    }
}
