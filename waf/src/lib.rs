//! The WAF engine of the proxy: the OWASP Core Rule Set evaluated by libmodsecurity v3.
//!
//! | module | what |
//! | --- | --- |
//! | `sys` | the C API functions the engine calls (hand-declared, see `Cargo.toml`) |
//! | `config` | where the CRS is (CRS 3.3 and 4 layouts) and a profile: paranoia level, threshold, body limit, exclusions, extra rules; the request body checks (a body the engine cannot parse is refused, 400) |
//! | `engine` | one loaded engine, shared; a request's evaluation (blocking: run it off async threads) |
//! | `matches` | the engine's match lines parsed into rule id, message, severity, tags, anomaly score |

pub mod config;
pub mod engine;
pub mod matches;
mod sys;

pub use config::{AuditLog, CrsLayout, DEBIAN_CRS_DIR, ExtraRules, Profile};
pub use engine::{Engine, Evaluation, Exchange, Request, Response};
pub use matches::RuleMatch;

#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("libmodsecurity could not start")]
    Init,
    #[error("the Core Rule Set at {path}: {problem}")]
    Crs {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("{origin}: {problem}")]
    Rules { origin: String, problem: String },
    #[error("the request cannot be given to the engine: {0}")]
    Input(String),
}

#[cfg(test)]
mod tests;
