//! Objects as read (`spec/`) become the policy model the compiler works on: duplicates,
//! names and labels are checked here, each kind's fields in its own file beside this one, and
//! Secrets and ConfigMaps are resolved into the sections that name them once every object is
//! read.

use std::collections::HashMap;

use crate::policy::spec::compact::Spanned;

use super::*;
use crate::policy::diag::{Diagnostic, Origin};
use crate::policy::selector::{self, Labels, Selector};
use crate::policy::source::{Object, SourceObject};
use crate::policy::spec::objects::{LabelSelector, PolicyMode};
use crate::policy::{config_map, http, ingress, secret};

/// Validates `objects` into a model, with what a source validated itself (`validated`, whose
/// objects no document repeats); every problem is added to `diags`.
pub fn build(objects: &[SourceObject], validated: Validated, diags: &mut Vec<Diagnostic>) -> Model {
    build_with(objects, validated, diags, None)
}

/// [`build`], taking the policies `memo` holds for unchanged objects and remembering the others.
pub fn build_with(
    objects: &[SourceObject],
    validated: Validated,
    diags: &mut Vec<Diagnostic>,
    mut memo: Option<&mut ValidationMemo>,
) -> Model {
    let mut model = Model {
        namespaces: validated.namespaces,
        pods: validated.pods,
        nodes: validated.nodes,
        services: validated.services,
        endpoint_slices: validated.endpoint_slices,
        ..Model::default()
    };
    let mut seen: HashMap<(&'static str, String, String), Origin> = HashMap::new();
    for so in objects {
        let mut v = Validator { so, diags };
        let Some((namespace, name)) = v.identity() else {
            continue;
        };
        let key = (
            so.object.kind(),
            namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let here = so
            .object
            .metadata()
            .name
            .as_ref()
            .map(|n| so.at(n))
            .unwrap_or_else(|| so.whole());
        if let Some(first) = seen.get(&key) {
            let shown = match &namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            };
            v.diags.push(Diagnostic::error(
                here,
                format!(
                    "duplicate {} {shown} (first defined at {first})",
                    so.object.kind()
                ),
            ));
            continue;
        }
        seen.insert(key, here);
        match so.object.as_ref() {
            Object::Namespace(_) => {
                let mut labels = v.labels().unwrap_or_default();
                labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
                model.namespaces.insert(name, labels);
            }
            Object::Pod(pod) => {
                if let Some(p) = v.pod(pod, namespace.unwrap_or_default(), name) {
                    model.pods.push(std::sync::Arc::new(p));
                }
            }
            Object::NetworkPolicy(_) | Object::ClusterPolicy(_) => {
                let remembered = memo.as_mut().and_then(|m| m.get(so));
                let validation = remembered.unwrap_or_else(|| {
                    let mut own = Vec::new();
                    let mut v = Validator {
                        so,
                        diags: &mut own,
                    };
                    let policy = match so.object.as_ref() {
                        Object::NetworkPolicy(np) => {
                            v.network_policy(np, namespace.unwrap_or_default(), name)
                        }
                        Object::ClusterPolicy(cp) => v.cluster_policy(cp, name),
                        _ => None,
                    };
                    let validation = Validation {
                        policy: policy.map(std::sync::Arc::new),
                        diagnostics: own,
                    };
                    if let Some(m) = memo.as_mut() {
                        m.put(so, validation.clone());
                    }
                    validation
                });
                diags.extend(validation.diagnostics);
                model.policies.extend(validation.policy);
            }
            Object::MeshPolicy(mp) => {
                if let Some(p) = v.mesh_policy(mp, name) {
                    model.mesh_policies.push(p);
                }
            }
            Object::Secret(secret) => {
                let namespace = namespace.unwrap_or_default();
                if let Some(s) = secret::secret(so, secret, v.diags) {
                    model.secrets.insert((namespace, name), s);
                }
            }
            Object::ConfigMap(config_map) => {
                let namespace = namespace.unwrap_or_default();
                if let Some(c) = config_map::config_map(so, config_map, v.diags) {
                    model.config_maps.insert((namespace, name), c);
                }
            }
        }
    }
    for policy in &mut model.mesh_policies {
        if let Some(http) = &mut policy.http {
            let http = std::sync::Arc::make_mut(http);
            http::resolve_api_keys(http, &model.secrets, diags);
            if let Some(ext_authz) = &mut http.ext_authz {
                http::ext_authz::resolve_secret(ext_authz, &model.secrets, diags);
            }
            if let Some(rego) = &mut http.rego {
                http::rego::resolve_config_map(rego, &model.config_maps, diags);
            }
        }
        if let Some(ingress) = &mut policy.ingress {
            ingress::resolve_certificates(std::sync::Arc::make_mut(ingress), &model.secrets, diags);
        }
    }
    // Pods in namespaces no object describes still have the namespace's own-name label.
    for pod in &model.pods {
        model
            .namespaces
            .entry(pod.namespace.to_string())
            .or_insert_with(|| {
                Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), pod.namespace.to_string())])
            });
    }
    model
}

/// Validates one object; the object kinds' methods are in this folder, one file a kind.
pub(super) struct Validator<'a> {
    pub(super) so: &'a SourceObject,
    pub(super) diags: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    pub(super) fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let origin = self.so.at(spanned);
        self.diags.push(Diagnostic::error(origin, message));
    }

    pub(super) fn error_whole(&mut self, message: impl Into<String>) {
        let origin = self.so.whole();
        self.diags.push(Diagnostic::error(origin, message));
    }

    /// `(namespace, name)` of the object, checked; `None` after reporting an error.
    pub(super) fn identity(&mut self) -> Option<(Option<String>, String)> {
        let kind = self.so.object.kind();
        let meta = self.so.object.metadata();
        let Some(name) = &meta.name else {
            self.error_whole(format!("{kind}: metadata.name is required"));
            return None;
        };
        let name_ok = match self.so.object.as_ref() {
            Object::Namespace(_) => crate::dns_name::is_dns_label(&name.value),
            _ => crate::dns_name::is_dns_subdomain(&name.value),
        };
        if !name_ok {
            self.error(
                name,
                format!(
                    "metadata.name {:?}: must be a lowercase RFC 1123 name",
                    name.value
                ),
            );
            return None;
        }
        let namespaced = matches!(
            self.so.object.as_ref(),
            Object::Pod(_) | Object::NetworkPolicy(_) | Object::Secret(_) | Object::ConfigMap(_)
        );
        let namespace = match (&meta.namespace, namespaced) {
            (Some(ns), true) => {
                if !crate::dns_name::is_dns_label(&ns.value) {
                    self.error(
                        ns,
                        format!(
                            "metadata.namespace {:?}: must be an RFC 1123 label",
                            ns.value
                        ),
                    );
                    return None;
                }
                Some(ns.value.clone())
            }
            (None, true) => Some("default".to_owned()),
            (Some(ns), false) => {
                self.error(
                    ns,
                    format!("{kind} is cluster-scoped: metadata.namespace is not allowed"),
                );
                return None;
            }
            (None, false) => None,
        };
        Some((namespace, name.value.clone()))
    }

    pub(super) fn labels(&mut self) -> Option<Labels> {
        let meta = self.so.object.metadata();
        let Some(labels) = &meta.labels else {
            return Some(Labels::new());
        };
        for (k, v) in &labels.value {
            if let Err(e) = selector::validate_key(k).and_then(|()| selector::validate_value(v)) {
                self.error(labels, format!("metadata.labels: {e}"));
                return None;
            }
        }
        Some(labels.value.clone())
    }

    pub(super) fn selector(
        &mut self,
        raw: &Spanned<LabelSelector>,
        what: &str,
    ) -> Option<Selector> {
        match selector::compile(&raw.value) {
            Ok(s) => Some(s),
            Err((index, message)) => {
                let origin = match index
                    .and_then(|i| raw.value.match_expressions.as_ref().and_then(|e| e.get(i)))
                {
                    Some(expr) => self.so.at(expr),
                    None => self.so.at(raw),
                };
                self.diags
                    .push(Diagnostic::error(origin, format!("{what}: {message}")));
                None
            }
        }
    }

    pub(super) fn mode_annotation(&mut self) -> Option<PolicyMode> {
        let meta = self.so.object.metadata();
        match meta.annotations.get(MODE_ANNOTATION).map(String::as_str) {
            None | Some("enforce") => Some(PolicyMode::Enforce),
            Some("audit") => Some(PolicyMode::Audit),
            Some(other) => {
                self.error_whole(format!(
                    "annotation {MODE_ANNOTATION}: {other:?} is not enforce or audit"
                ));
                None
            }
        }
    }
}
