//! ConfigMaps as the policy set carries them (Kubernetes `v1 ConfigMap`): text the sections
//! that name them load (Rego modules and their data), each entry with where it was read, so an
//! error inside an entry is reported at its file line.

use std::collections::BTreeMap;

use super::diag::{Diagnostic, Origin};
use super::source::SourceObject;
use super::spec::objects::ConfigMap;

/// The label a ConfigMap needs for the agent to read it from the Kubernetes API (as OPA's
/// kube-mgmt reads only labelled ConfigMaps): agents never list every ConfigMap of the cluster.
pub const CONFIG_MAP_LABEL: &str = "rampart.dev/policy";

/// Said where a policy names a ConfigMap that is not there.
pub const LABEL_HINT: &str =
    "from the Kubernetes API, only ConfigMaps labelled rampart.dev/policy are read";

/// Largest entry read (the API server's own limit on a whole ConfigMap is 1 MiB).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// One `data` entry: its text and where the text starts.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    pub text: String,
    pub origin: Origin,
}

/// A ConfigMap's `data` entries by name.
#[derive(Debug, Clone)]
pub struct ConfigMapModel {
    pub entries: BTreeMap<String, ConfigEntry>,
}

/// Validates a ConfigMap: entry names as the API server allows them, and sizes.
pub fn config_map(
    so: &SourceObject,
    raw: &ConfigMap,
    diags: &mut Vec<Diagnostic>,
) -> Option<ConfigMapModel> {
    let mut entries = BTreeMap::new();
    let mut ok = true;
    for (name, value) in &raw.data {
        let origin = so.at(value);
        if !is_config_key(name) {
            diags.push(Diagnostic::error(
                origin,
                format!("ConfigMap data.{name}: a key of letters, digits, '-', '_' and '.'"),
            ));
            ok = false;
        } else if value.value.len() > MAX_ENTRY_BYTES {
            diags.push(Diagnostic::error(
                origin,
                format!(
                    "ConfigMap data.{name}: {} bytes, more than {MAX_ENTRY_BYTES}",
                    value.value.len()
                ),
            ));
            ok = false;
        } else {
            entries.insert(
                name.clone(),
                ConfigEntry {
                    text: value.value.clone(),
                    origin,
                },
            );
        }
    }
    ok.then_some(ConfigMapModel { entries })
}

/// A ConfigMap key as the API server validates it: `[-._a-zA-Z0-9]+`, at most 253 bytes, not
/// `.` or `..`.
fn is_config_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_checked_as_the_api_server_does() {
        for good in ["policy.rego", "data.json", "a-b_c.d", "x"] {
            assert!(super::is_config_key(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü.rego"] {
            assert!(!super::is_config_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_hint_names_the_label() {
        assert!(super::LABEL_HINT.contains(super::CONFIG_MAP_LABEL));
    }
}
