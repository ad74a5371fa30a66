//! The policy objects as they appear in files: serde shapes only (`deny_unknown_fields`, so a
//! field a kind does not have is an error at its position), no meaning and no validation, which
//! live in `model/` and the section modules (`http`, `ingress`, `waf`, `dlp`) beside it.
//!
//! - `objects`: the kinds (Namespace, Pod, Secret, NetworkPolicy, ClusterPolicy, MeshPolicy);
//! - `http`, `ingress`, `waf`, `dlp`: a MeshPolicy's sections;
//! - `compact`: shapes that keep what repeats per rule at its size.

pub mod compact;
pub mod dlp;
pub mod http;
pub mod ingress;
pub mod objects;
pub mod waf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
pub enum RuleAction {
    Allow,
    Deny,
}
