//! `rego`: a Rego policy the proxy evaluates per request, in the agent (regorus, no OPA
//! server), over an input shaped as OPA's Envoy plugin builds it. Compiled when the set is
//! checked: a syntax error, or a query that names no rule, is a policy error.

use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::super::spec::http::RegoSpec;
use super::HttpValidator;

pub const DEFAULT_QUERY: &str = "data.envoy.authz.allow";
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(10);
pub const MAX_BUDGET: Duration = Duration::from_secs(1);
/// Largest policy text.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// A compiled Rego policy: an engine with the policy loaded and prepared, cloned per request.
#[derive(Clone)]
pub struct RegoModel {
    pub engine: Arc<regorus::Engine>,
    pub query: String,
    pub budget: Duration,
    /// Where it came from, for logs (`inline` or the file's path).
    pub source: String,
}

impl std::fmt::Debug for RegoModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoModel")
            .field("source", &self.source)
            .field("query", &self.query)
            .field("budget", &self.budget)
            .finish()
    }
}

/// An engine for `text`, with `query` compiled once to find every static error.
pub fn compile(name: &str, text: &str, query: &str) -> Result<regorus::Engine, String> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(name.to_owned(), text.to_owned())
        .map_err(|e| e.to_string())?;
    let entry: regorus::Rc<str> = query.into();
    engine
        .clone()
        .compile_with_entrypoint(&entry)
        .map_err(|e| e.to_string())?;
    Ok(engine)
}

impl HttpValidator<'_> {
    pub(super) fn rego(&mut self, spec: &Spanned<RegoSpec>) -> Option<RegoModel> {
        let raw = &spec.value;
        let (text, source, at) = match (&raw.inline, &raw.file) {
            (Some(inline), None) => (inline.value.clone(), "inline".to_owned(), inline),
            (None, Some(file)) if file.value.starts_with('/') => {
                match std::fs::read_to_string(&file.value) {
                    Ok(text) => (text, file.value.clone(), file),
                    Err(e) => {
                        self.error(file, format!("rego.file: {}: {e}", file.value));
                        return None;
                    }
                }
            }
            (None, Some(file)) => {
                self.error(file, "rego.file: an absolute path");
                return None;
            }
            _ => {
                self.error(spec, "rego: exactly one of inline, file");
                return None;
            }
        };
        if text.len() > MAX_POLICY_BYTES {
            self.error(
                at,
                format!("rego: {} bytes, more than {MAX_POLICY_BYTES}", text.len()),
            );
            return None;
        }
        let query = match &raw.query {
            None => DEFAULT_QUERY.to_owned(),
            Some(q)
                if q.value.starts_with("data.")
                    && q.value.len() > 5
                    && q.value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_')) =>
            {
                q.value.clone()
            }
            Some(q) => {
                self.error(
                    q,
                    "rego.query: a rule's path such as data.envoy.authz.allow",
                );
                return None;
            }
        };
        let budget = match &raw.time_budget {
            None => DEFAULT_BUDGET,
            Some(t) => match super::parse_duration(&t.value) {
                Some(d) if !d.is_zero() && d <= MAX_BUDGET => d,
                _ => {
                    self.error(
                        t,
                        "rego.timeBudget: a duration from 1ms to 1s, such as 10ms",
                    );
                    return None;
                }
            },
        };
        match compile(&source, &text, &query) {
            Ok(engine) => Some(RegoModel {
                engine: Arc::new(engine),
                query,
                budget,
                source,
            }),
            Err(e) => {
                let (position, message) = rego_error(&e);
                let mut origin = self.so.at(at);
                // Inline text in a block scalar starts at the span, one file line per line of
                // the policy; a file's positions are the file's own.
                match position {
                    Some((line, col)) if source == "inline" && text.contains('\n') => {
                        origin.pos.line += line.saturating_sub(1);
                        origin.pos.col += col.saturating_sub(1);
                    }
                    // One line of quoted text: after its opening quote.
                    Some((_, col)) if source == "inline" => origin.pos.col += col,
                    Some((line, col)) => {
                        self.diags.push(super::super::diag::Diagnostic::error(
                            origin,
                            format!("rego: {source}:{line}:{col}: {message}"),
                        ));
                        self.ok = false;
                        return None;
                    }
                    None => {}
                }
                self.diags.push(super::super::diag::Diagnostic::error(
                    origin,
                    format!("rego: {message}"),
                ));
                self.ok = false;
                None
            }
        }
    }
}

/// The position (`--> name:line:col`) and the message (`error: ...`) of a regorus error.
fn rego_error(text: &str) -> (Option<(u64, u64)>, String) {
    let position = text.lines().find_map(|l| {
        let at = l.trim().strip_prefix("-->")?.trim();
        let mut parts = at.rsplitn(3, ':');
        let col = parts.next()?.trim().parse().ok()?;
        let line = parts.next()?.trim().parse().ok()?;
        Some((line, col))
    });
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:").map(str::trim))
        .unwrap_or_else(|| text.trim())
        .to_owned();
    (position, message)
}
