//! Policy: Kubernetes objects in, kernel state out.
//!
//! | stage | module | what |
//! | --- | --- | --- |
//! | read | `source` | files → objects with positions (YAML multi-document or JSON) |
//! | shapes | `spec/` | the kinds read and a MeshPolicy's sections, as serde types (unknown fields: ignored in Kubernetes's kinds, errors in a NetworkPolicy's spec and in Rampart's kinds) |
//! | validate | `model/`, `selector`, `secret` | objects → the policy model (one file per kind), or diagnostics at `file:line:col`; Secrets resolved into the sections that name them |
//! | L7 | `http` | a MeshPolicy's `http` section: JWT and API-key providers, authorization rules, rate limits |
//! | DLP | `dlp` | a MeshPolicy's `http.dlp`: detectors and actions on responses and requests |
//! | WAF | `waf` | a MeshPolicy's `http.waf`: the Core Rule Set's profile, body inspection, modes |
//! | ingress | `ingress` | a MeshPolicy's `ingress` section: traffic from outside the cluster, TLS certificates from Secrets |
//! | identities | `identity` | numeric identities, stable while their label set exists |
//! | compile | `compile` | model → endpoints, ipcache and policy trie entries, mTLS destinations (pure) |
//! | Services | `services` | Services and EndpointSlices → the kernel's frontends and backends (pure) |
//! | decide | `verdict` | what the kernel decides for a flow, from the compiled state |
//! | definitions | `crd` | Rampart's kinds as CustomResourceDefinitions, generated from `spec/` |
//!
//! Nothing here names the running agent (the layering test in `tidy.rs`).
//!
//! A set with any error is rejected whole; the caller keeps the last good state in force.

pub mod compile;
pub mod config_map;
pub mod cookie;
pub mod crd;
pub mod diag;
pub mod dlp;
#[cfg(test)]
pub mod examples;
pub mod http;
pub mod identity;
pub mod ingress;
pub mod model;
pub mod secret;
pub mod selector;
pub mod services;
pub mod source;
pub mod spec;
pub mod verdict;
pub mod waf;

use diag::Diagnostic;

/// A validated policy set, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Checked {
    pub model: model::Model,
    pub warnings: Vec<Diagnostic>,
}

/// Validates what was read. Errors reject the set: all of them are returned, sorted by file and
/// position.
pub fn check(read: source::Read) -> Result<Checked, Vec<Diagnostic>> {
    check_with(read, model::Validated::default())
}

/// [`check`], with objects a source validated itself.
pub fn check_with(
    read: source::Read,
    validated: model::Validated,
) -> Result<Checked, Vec<Diagnostic>> {
    check_objects(&read.objects, read.diagnostics, validated, None)
}

/// [`check_with`], for objects the caller keeps (to check them again after a change), with the
/// policies `memo` remembers for objects validated before.
pub fn check_objects(
    objects: &[source::SourceObject],
    mut diagnostics: Vec<Diagnostic>,
    validated: model::Validated,
    memo: Option<&mut model::ValidationMemo>,
) -> Result<Checked, Vec<Diagnostic>> {
    let model = model::validate::build_with(objects, validated, &mut diagnostics, memo);
    diagnostics.sort();
    if diag::has_errors(&diagnostics) {
        Err(diagnostics)
    } else {
        Ok(Checked {
            model,
            warnings: diagnostics,
        })
    }
}
