//! Kubernetes label selectors (`matchLabels` and `matchExpressions`) and label syntax.
//! Semantics as upstream: all requirements ANDed; an empty selector matches everything;
//! `NotIn` and `DoesNotExist` match objects without the key.

use std::collections::{BTreeMap, BTreeSet};

use super::spec::objects::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The (key, value) pairs a matching object must carry (its `Equals` requirements): what
    /// an index of objects by label can look a selector up by.
    pub fn required_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requirements.iter().filter_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

/// Validates and compiles a selector; the error names the offending key or value.
/// `expression_index` in the error says which `matchExpressions` entry is wrong (if any).
pub fn compile(raw: &LabelSelector) -> Result<Selector, (Option<usize>, String)> {
    let mut requirements = Vec::new();
    for (k, v) in raw.match_labels.iter().flatten() {
        validate_key(k).map_err(|e| (None, format!("matchLabels: {e}")))?;
        validate_value(v).map_err(|e| (None, format!("matchLabels[{k}]: {e}")))?;
        requirements.push(Requirement::Equals(k.clone(), v.clone()));
    }
    for (i, expr) in raw.match_expressions.iter().flatten().enumerate() {
        let e = &expr.value;
        let at = |m: String| (Some(i), format!("matchExpressions[{i}]: {m}"));
        validate_key(&e.key).map_err(at)?;
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        for v in &values {
            validate_value(v).map_err(at)?;
        }
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        let req = match e.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(at(format!(
                    "operator {} needs a non-empty values list",
                    e.operator
                )));
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(at(format!("operator {} takes no values", e.operator)));
            }
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => {
                return Err(at(format!(
                    "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                )));
            }
        };
        requirements.push(req);
    }
    requirements.sort();
    requirements.dedup();
    Ok(Selector { requirements })
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !crate::dns_name::is_dns_subdomain(prefix)
    {
        return Err(format!(
            "label key {key:?}: prefix must be a DNS subdomain (lowercase, at most 253 characters)"
        ));
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: name must be 1-63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name as in [`validate_key`].
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?}: must be at most 63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit"
        ))
    }
}

/// 1-63 bytes that `allowed` accepts, alphanumeric at both ends.
fn is_name(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| allowed(c))
}

fn is_label_name(s: &str) -> bool {
    is_name(s, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::objects::LabelSelector;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(yaml: &str) -> Result<Selector, (Option<usize>, String)> {
        let raw: LabelSelector = serde_saphyr::from_str(yaml).expect("selector yaml");
        compile(&raw)
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel("{}").expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let s = sel(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: env, operator: NotIn, values: [prod]}\n- {key: x, operator: DoesNotExist}\n",
        )
        .expect("valid");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("x", "")])));
        assert_eq!(s.required_labels().collect::<Vec<_>>(), [("app", "web")]);
        let e = sel("matchExpressions:\n- {key: k, operator: Exists}\n").expect("valid");
        assert_eq!(e.required_labels().count(), 0);
        assert!(e.matches(&labels(&[("k", "")])));
        assert!(!e.matches(&labels(&[])));
    }

    #[test]
    fn syntax_errors() {
        assert!(sel("matchExpressions:\n- {key: k, operator: In}\n").is_err());
        assert!(sel("matchExpressions:\n- {key: k, operator: Exists, values: [a]}\n").is_err());
        assert!(sel("matchExpressions:\n- {key: k, operator: Has}\n").is_err());
        assert!(sel("matchLabels: {\"bad key!\": a}\n").is_err());
        assert!(sel("matchLabels: {k: \"-bad\"}\n").is_err());
        assert!(sel("matchLabels: {example.com/k: ok}\n").is_ok());
        assert!(sel("matchLabels: {Example.com/k: ok}\n").is_err());
    }
}
