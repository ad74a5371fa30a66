//! The registered claims of a verified token (RFC 7519 §4.1), checked against a provider's
//! settings: `exp` / `nbf` / `iat` with leeway, exact `iss`, `aud` among the allowed audiences,
//! required claims present, registered claims of the right JSON type.

use serde_json::{Map, Value};

use super::reject::{RejectReason, Rejection};

/// The claims checks of one provider.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// `iss` must equal this exactly (no trailing-slash or case folding).
    pub issuer: Option<String>,
    /// `aud` (a string or an array of strings) must contain one of these; empty: not checked.
    pub audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_s: u64,
    /// Claims that must be present.
    pub required: Vec<String>,
}

/// The claims of a token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.0.get("iss").and_then(Value::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A claim as text, for headers and rate-limit keys: strings as they are, numbers and
    /// booleans printed, arrays of strings joined with `,`; objects have no text form.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(|items| items.join(",")),
            Value::Null | Value::Object(_) => None,
        }
    }

    /// Does the claim equal `value`, or (for an array, or a space-separated `scope` string)
    /// contain it?
    pub fn contains(&self, name: &str, value: &str) -> bool {
        match self.0.get(name) {
            Some(Value::String(s)) if name == "scope" || name == "scp" => {
                s.split(' ').any(|item| item == value)
            }
            Some(Value::String(s)) => s == value,
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(value)),
            Some(Value::Number(n)) => n.to_string() == value,
            Some(Value::Bool(b)) => b.to_string() == value,
            _ => false,
        }
    }
}

impl ClaimRules {
    /// Checks `claims` at `now` (seconds since the epoch).
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), Rejection> {
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        let iat = numeric_date(claims, "iat")?;
        for name in ["iss", "sub", "jti"] {
            if claims.get(name).is_some_and(|value| !value.is_string()) {
                return Err(malformed(format!("`{name}` is not a string")));
            }
        }
        for name in &self.required {
            let handled_below = (name == "iss" && self.issuer.is_some())
                || (name == "aud" && !self.audiences.is_empty());
            if !handled_below && !claims.contains_key(name) {
                return Err(Rejection::new(
                    RejectReason::MissingClaim,
                    format!("required claim `{name}` is missing"),
                ));
            }
        }
        let now = now as f64;
        let leeway = self.leeway_s as f64;
        if let Some(exp) = exp
            && now >= exp + leeway
        {
            return Err(Rejection::new(RejectReason::Expired, "`exp` has passed"));
        }
        if let Some(nbf) = nbf
            && now + leeway < nbf
        {
            return Err(Rejection::new(
                RejectReason::NotYetValid,
                "`nbf` is in the future",
            ));
        }
        if let Some(iat) = iat
            && now + leeway < iat
        {
            return Err(Rejection::new(
                RejectReason::NotYetValid,
                "`iat` is in the future",
            ));
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(Rejection::new(
                RejectReason::Issuer,
                "`iss` is missing or not the configured issuer",
            ));
        }
        if !self.audiences.is_empty() {
            self.check_audience(claims.get("aud"))?;
        }
        Ok(())
    }

    fn check_audience(&self, aud: Option<&Value>) -> Result<(), Rejection> {
        let allowed = |candidate: &str| self.audiences.iter().any(|a| a == candidate);
        let matches = match aud {
            None => false,
            Some(Value::String(aud)) => allowed(aud),
            Some(Value::Array(items)) => {
                let mut any = false;
                for item in items {
                    let item = item
                        .as_str()
                        .ok_or_else(|| malformed("`aud` array holds a non-string"))?;
                    any |= allowed(item);
                }
                any
            }
            Some(_) => return Err(malformed("`aud` is neither a string nor an array")),
        };
        if matches {
            Ok(())
        } else {
            Err(Rejection::new(
                RejectReason::Audience,
                "`aud` is missing or names no allowed audience",
            ))
        }
    }
}

/// A NumericDate claim: absent, or a finite JSON number. A string (`"exp": "1700000000"`) is
/// malformed, never parsed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| malformed(format!("`{name}` is not a finite number"))),
        Some(_) => Err(malformed(format!("`{name}` is not a number"))),
    }
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::Malformed, detail)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Some("https://idp".into()),
            audiences: vec!["api".into()],
            leeway_s: 0,
            required: vec!["exp".into(), "iss".into(), "aud".into()],
        }
    }

    fn check(rules: &ClaimRules, claims: Value, now: u64) -> Result<(), RejectReason> {
        let Value::Object(claims) = claims else {
            return Err(RejectReason::Malformed);
        };
        rules.check(&claims, now).map_err(|r| r.reason)
    }

    #[test]
    fn time_claims_with_and_without_leeway() {
        let base = json!({"iss": "https://idp", "aud": "api"});
        let with = |extra: Value| {
            let mut claims = base.clone();
            if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            claims
        };
        let r = rules();
        assert_eq!(check(&r, with(json!({"exp": 101})), 100), Ok(()));
        assert_eq!(
            check(&r, with(json!({"exp": 100})), 100),
            Err(RejectReason::Expired)
        );
        assert_eq!(
            check(&r, with(json!({"exp": 101, "nbf": 101})), 100),
            Err(RejectReason::NotYetValid)
        );
        assert_eq!(
            check(&r, with(json!({"exp": 101, "iat": 160})), 100),
            Err(RejectReason::NotYetValid)
        );
        let lenient = ClaimRules {
            leeway_s: 60,
            ..rules()
        };
        assert_eq!(
            check(&lenient, with(json!({"exp": 90, "nbf": 150})), 100),
            Ok(())
        );
        assert_eq!(
            check(&r, with(json!({"exp": "101"})), 100),
            Err(RejectReason::Malformed)
        );
        assert_eq!(
            check(&r, with(json!({})), 100),
            Err(RejectReason::MissingClaim)
        );
    }

    #[test]
    fn issuer_and_audience_are_exact() {
        let r = rules();
        let claims = |iss: &str, aud: Value| json!({"exp": 200, "iss": iss, "aud": aud});
        assert_eq!(
            check(&r, claims("https://idp", json!(["x", "api"])), 100),
            Ok(())
        );
        assert_eq!(
            check(&r, claims("https://idp/", json!("api")), 100),
            Err(RejectReason::Issuer)
        );
        assert_eq!(
            check(&r, claims("https://idp", json!("api2")), 100),
            Err(RejectReason::Audience)
        );
        assert_eq!(
            check(&r, claims("https://idp", json!("ap")), 100),
            Err(RejectReason::Audience)
        );
        assert_eq!(
            check(&r, claims("https://idp", json!([])), 100),
            Err(RejectReason::Audience)
        );
        assert_eq!(
            check(&r, claims("https://idp", json!([1])), 100),
            Err(RejectReason::Malformed)
        );
        assert_eq!(
            check(&r, json!({"exp": 200, "iss": "https://idp"}), 100),
            Err(RejectReason::Audience)
        );
    }

    #[test]
    fn claim_text_and_membership() {
        let claims = Claims(
            json!({"sub": "alice", "groups": ["admin", "dev"], "scope": "read write", "n": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(claims.subject(), Some("alice"));
        assert!(claims.contains("groups", "dev"));
        assert!(!claims.contains("groups", "ops"));
        assert!(claims.contains("scope", "write"));
        assert_eq!(claims.text("groups").as_deref(), Some("admin,dev"));
        assert_eq!(claims.text("n").as_deref(), Some("3"));
    }
}
