//! `rego`: a Rego policy the proxy evaluates per request, in the agent (regorus, no OPA
//! server), over an input shaped as OPA's Envoy plugin builds it. Compiled when the set is
//! checked: a syntax error, or a query that names no rule, is a policy error at its position
//! (in the policy's file, or in the ConfigMap that carries the module).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::spec::compact::Spanned;

use super::super::config_map::{ConfigEntry, ConfigMapModel};
use super::super::diag::{Diagnostic, Origin};
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
    /// Where it came from, for logs (`inline`, the file's path, or `ConfigMap ns/name`).
    pub source: String,
    /// A ConfigMap still to load: the engine is empty (it allows nothing) until
    /// [`resolve_config_maps`] compiles the ConfigMap's modules into it; a set whose ConfigMap
    /// is missing or does not compile is rejected.
    pub pending: Option<PendingConfigMap>,
}

/// A `configMapRef` to resolve once every object of the set is read.
#[derive(Debug, Clone)]
pub struct PendingConfigMap {
    pub namespace: String,
    pub name: String,
    pub key: Option<String>,
    /// The reference, for a missing ConfigMap or key.
    pub origin: Origin,
}

impl std::fmt::Debug for RegoModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoModel")
            .field("source", &self.source)
            .field("query", &self.query)
            .field("budget", &self.budget)
            .field("pending", &self.pending)
            .finish()
    }
}

/// A module to compile: its name (in regorus's errors), its text, and where the text starts
/// in a policy file when it is a YAML block scalar or a one-line scalar there (an error inside
/// is then reported at its file line), or `None` for a file of its own.
struct Module<'a> {
    name: String,
    text: &'a str,
    at: Option<Origin>,
}

/// A compile failure: the message and, where it can be placed, the file position.
struct CompileError {
    origin: Option<Origin>,
    message: String,
}

/// An engine for `text`, with `query` compiled once to find every static error.
pub fn compile(name: &str, text: &str, query: &str) -> Result<regorus::Engine, String> {
    let module = Module {
        name: name.to_owned(),
        text,
        at: None,
    };
    compile_modules(&[module], &[], query).map_err(|e| e.message)
}

/// An engine with `modules` and `data` (JSON objects, merged) loaded, `query` compiled.
fn compile_modules(
    modules: &[Module<'_>],
    data: &[(&str, &str, &Origin)],
    query: &str,
) -> Result<regorus::Engine, CompileError> {
    let mut engine = regorus::Engine::new();
    for module in modules {
        engine
            .add_policy(module.name.clone(), module.text.to_owned())
            .map_err(|e| placed(modules, &e.to_string()))?;
    }
    for (key, text, origin) in data {
        let value = regorus::Value::from_json_str(text).map_err(|e| CompileError {
            origin: Some((*origin).clone()),
            message: format!("rego: {key}: not JSON: {e}"),
        })?;
        engine.add_data(value).map_err(|e| CompileError {
            origin: Some((*origin).clone()),
            message: format!("rego: {key}: {e}"),
        })?;
    }
    // Compiling prepares the engine (its analysis and schedule) once: every request's copy
    // starts prepared instead of analysing the modules again.
    let entry: regorus::Rc<str> = query.into();
    engine
        .compile_with_entrypoint(&entry)
        .map_err(|e| placed(modules, &e.to_string()))?;
    Ok(engine)
}

/// A regorus error placed at its file position where the module it names has one.
fn placed(modules: &[Module<'_>], text: &str) -> CompileError {
    let (position, message) = rego_error(text);
    let Some((module, line, col)) = position.and_then(|(name, line, col)| {
        let module = modules.iter().find(|m| m.name == name)?;
        Some((module, line, col))
    }) else {
        return CompileError {
            origin: None,
            message: format!("rego: {message}"),
        };
    };
    let Some(at) = &module.at else {
        return CompileError {
            origin: None,
            message: format!("rego: {}:{line}:{col}: {message}", module.name),
        };
    };
    let mut origin = at.clone();
    if module.text.contains('\n') {
        // A block scalar's content starts at its position, one file line per line of the
        // policy, indented by the position's column.
        origin.pos.line += line.saturating_sub(1);
        origin.pos.col += col.saturating_sub(1);
    } else {
        // One line of quoted text: after its opening quote.
        origin.pos.col += col;
    }
    CompileError {
        origin: Some(origin),
        message: format!("rego: {message}"),
    }
}

impl HttpValidator<'_> {
    pub(super) fn rego(&mut self, spec: &Spanned<RegoSpec>) -> Option<RegoModel> {
        let raw = &spec.value;
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
        let (text, source, at, field) = match (&raw.inline, &raw.file, &raw.config_map_ref) {
            (Some(inline), None, None) => {
                let origin = self.so.at(inline);
                let source = "inline".to_owned();
                (inline.value.clone(), source, Some(origin.clone()), origin)
            }
            (None, Some(file), None) if file.value.starts_with('/') => {
                match std::fs::read_to_string(&file.value) {
                    Ok(text) => (text, file.value.clone(), None, self.so.at(file)),
                    Err(e) => {
                        self.error(file, format!("rego.file: {}: {e}", file.value));
                        return None;
                    }
                }
            }
            (None, Some(file), None) => {
                self.error(file, "rego.file: an absolute path");
                return None;
            }
            (None, None, Some(r)) => {
                let v = &r.value;
                let key_ok = v.key.as_deref().is_none_or(|k| !k.is_empty());
                if !(crate::dns_name::is_dns_label(&v.namespace)
                    && crate::dns_name::is_dns_subdomain(&v.name)
                    && key_ok)
                {
                    self.error(r, "rego.configMapRef: namespace and name of a ConfigMap");
                    return None;
                }
                return Some(RegoModel {
                    engine: Arc::new(regorus::Engine::new()),
                    query,
                    budget,
                    source: format!("ConfigMap {}/{}", v.namespace, v.name),
                    pending: Some(PendingConfigMap {
                        namespace: v.namespace.clone(),
                        name: v.name.clone(),
                        key: v.key.clone(),
                        origin: self.so.at(r),
                    }),
                });
            }
            _ => {
                self.error(spec, "rego: exactly one of inline, file, configMapRef");
                return None;
            }
        };
        if text.len() > MAX_POLICY_BYTES {
            let message = format!("rego: {} bytes, more than {MAX_POLICY_BYTES}", text.len());
            self.diags.push(Diagnostic::error(field, message));
            self.ok = false;
            return None;
        }
        let module = Module {
            name: source.clone(),
            text: &text,
            at,
        };
        match compile_modules(&[module], &[], &query) {
            Ok(engine) => Some(RegoModel {
                engine: Arc::new(engine),
                query,
                budget,
                source,
                pending: None,
            }),
            Err(e) => {
                let origin = e.origin.unwrap_or(field);
                self.diags.push(Diagnostic::error(origin, e.message));
                self.ok = false;
                None
            }
        }
    }
}

/// Compiles a `configMapRef`'s policy from the ConfigMap it names; a missing ConfigMap or key,
/// a ConfigMap with no module, or a module that does not compile is an error (at the
/// reference, or inside the ConfigMap's entry).
pub fn resolve_config_map(
    model: &mut RegoModel,
    config_maps: &BTreeMap<(String, String), ConfigMapModel>,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(pending) = model.pending.take() else {
        return;
    };
    let PendingConfigMap {
        namespace,
        name,
        key,
        origin,
    } = &pending;
    let Some(config_map) = config_maps.get(&(namespace.clone(), name.clone())) else {
        diags.push(Diagnostic::error(
            origin.clone(),
            format!(
                "rego.configMapRef: no ConfigMap {namespace}/{name} in the policy set ({})",
                crate::policy::config_map::LABEL_HINT
            ),
        ));
        model.pending = Some(pending);
        return;
    };
    let chosen: Vec<(&String, &ConfigEntry)> = match key {
        Some(key) => match config_map.entries.get_key_value(key) {
            Some(entry) => vec![entry],
            None => {
                diags.push(Diagnostic::error(
                    origin.clone(),
                    format!("rego.configMapRef: ConfigMap {namespace}/{name} has no key {key}"),
                ));
                model.pending = Some(pending);
                return;
            }
        },
        None => config_map.entries.iter().collect(),
    };
    let modules: Vec<Module<'_>> = chosen
        .iter()
        .filter(|(k, _)| key.is_some() || k.ends_with(".rego"))
        .map(|(k, entry)| Module {
            name: format!("{namespace}/{name}/{k}"),
            text: &entry.text,
            at: Some(entry.origin.clone()),
        })
        .collect();
    let data: Vec<(&str, &str, &Origin)> = chosen
        .iter()
        .filter(|(k, _)| key.is_none() && k.ends_with(".json"))
        .map(|(k, entry)| (k.as_str(), entry.text.as_str(), &entry.origin))
        .collect();
    if modules.is_empty() {
        diags.push(Diagnostic::error(
            origin.clone(),
            format!("rego.configMapRef: ConfigMap {namespace}/{name} has no *.rego entry"),
        ));
        model.pending = Some(pending);
        return;
    }
    match compile_modules(&modules, &data, &model.query) {
        Ok(engine) => model.engine = Arc::new(engine),
        Err(e) => {
            diags.push(Diagnostic::error(
                e.origin.unwrap_or_else(|| origin.clone()),
                e.message,
            ));
            model.pending = Some(pending);
        }
    }
}

/// The position (`--> name:line:col`) and the message (`error: ...`) of a regorus error.
fn rego_error(text: &str) -> (Option<(String, u64, u64)>, String) {
    let position = text.lines().find_map(|l| {
        let at = l.trim().strip_prefix("-->")?.trim();
        let mut parts = at.rsplitn(3, ':');
        let col = parts.next()?.trim().parse().ok()?;
        let line = parts.next()?.trim().parse().ok()?;
        let name = parts.next()?.trim().to_owned();
        Some((name, line, col))
    });
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:").map(str::trim))
        .unwrap_or_else(|| text.trim())
        .to_owned();
    (position, message)
}
