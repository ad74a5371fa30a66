//! Rampart's kinds as CustomResourceDefinitions, generated from the shapes the policy reader
//! uses (`spec/`), so the API server checks what it can (types, enums, patterns, unknown
//! fields) before an agent sees an object, and the agents and the API never disagree on a
//! field. `rampart crds` prints them; `deploy/crds.yaml` is that output, and a test fails when
//! the two differ.
//!
//! The schema is made structural as kube-rs's `CustomResource` derive makes it (inline
//! subschemas, enums and untagged enums rewritten, `nullable` for options); the derive itself is
//! not used because the shapes carry positions (`Spanned`) that the API's types must not.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::objects::{ClusterPolicySpec, MeshPolicySpec};

pub const GROUP: &str = "rampart.dev";
pub const VERSION: &str = "v1alpha1";

/// The status the elected agent writes on each Rampart object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `metadata.generation` in force on the nodes (the last accepted one; absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A condition, as `metav1.Condition` has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// CamelCase: `Valid`, `Invalid`, `InvalidKeptLastGood`.
    pub reason: String,
    /// What was wrong, with the field's position in the object.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// One definition's names and columns.
struct Kind {
    kind: &'static str,
    plural: &'static str,
    short: &'static str,
    /// Extra printer columns before `Accepted` and `Age`: (name, type, JSON path).
    columns: &'static [(&'static str, &'static str, &'static str)],
}

fn schema_of<T: JsonSchema>() -> Value {
    // As kube-derive generates a CustomResource's schema.
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let mut schema =
        serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or_default();
    if let Some(map) = schema.as_object_mut() {
        map.remove("title");
    }
    schema
}

fn definition(kind: &Kind, spec: Value) -> Value {
    let mut columns: Vec<Value> = kind
        .columns
        .iter()
        .map(|(name, ty, path)| json!({"name": name, "type": ty, "jsonPath": path}))
        .collect();
    columns.push(json!({
        "name": "Accepted",
        "type": "string",
        "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status",
    }));
    columns.push(json!({
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason",
    }));
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{GROUP}", kind.plural)},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": format!("{}List", kind.kind),
                "plural": kind.plural,
                "singular": kind.kind.to_ascii_lowercase(),
                "shortNames": [kind.short],
                "categories": ["rampart"],
            },
            "scope": "Cluster",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": schema_of::<ObjectStatus>(),
                    },
                }},
            }],
        },
    })
}

/// The definitions of ClusterPolicy and MeshPolicy.
pub fn definitions() -> Vec<Value> {
    vec![
        definition(
            &Kind {
                kind: "ClusterPolicy",
                plural: "clusterpolicies",
                short: "rcp",
                columns: &[("Mode", "string", ".spec.mode")],
            },
            schema_of::<ClusterPolicySpec>(),
        ),
        definition(
            &Kind {
                kind: "MeshPolicy",
                plural: "meshpolicies",
                short: "rmp",
                columns: &[("mTLS", "string", ".spec.mtls")],
            },
            schema_of::<MeshPolicySpec>(),
        ),
    ]
}

/// The definitions as one YAML stream (what `deploy/crds.yaml` holds).
pub fn definitions_yaml() -> String {
    let mut out = String::from(
        "# Generated by `rampart crds` from the policy shapes (agent/src/policy/spec/): do not edit.\n",
    );
    for definition in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&definition).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_definitions_are_what_the_shapes_generate() {
        let checked_in = include_str!("../../../deploy/crds.yaml");
        assert!(
            checked_in == definitions_yaml(),
            "deploy/crds.yaml is stale: run `cargo run -p rampart-agent -- crds > deploy/crds.yaml`"
        );
    }

    /// The API server's structural-schema rules that a generator can break: every node has a
    /// type (or is int-or-string), no `$ref`, no `anyOf`/`oneOf`/`allOf` at all here, and no
    /// `additionalProperties` beside `properties`.
    fn structural_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
        let Some(map) = schema.as_object() else {
            out.push(format!("{path}: not an object"));
            return;
        };
        let typed = map.contains_key("type")
            || map.contains_key("x-kubernetes-int-or-string")
            || map.contains_key("x-kubernetes-preserve-unknown-fields");
        if !typed {
            out.push(format!("{path}: no type"));
        }
        for forbidden in ["$ref", "anyOf", "oneOf", "allOf", "$defs", "definitions"] {
            if map.contains_key(forbidden) {
                out.push(format!("{path}: {forbidden}"));
            }
        }
        if map.contains_key("properties") && map.contains_key("additionalProperties") {
            out.push(format!("{path}: properties and additionalProperties"));
        }
        for (name, sub) in map
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            structural_problems(sub, &format!("{path}.{name}"), out);
        }
        if let Some(items) = map.get("items") {
            structural_problems(items, &format!("{path}[]"), out);
        }
        if let Some(values) = map.get("additionalProperties").filter(|v| v.is_object()) {
            structural_problems(values, &format!("{path}{{}}"), out);
        }
    }

    #[test]
    fn the_schemas_are_structural_and_carry_the_enums() {
        let defs = definitions();
        let mut problems = Vec::new();
        for d in &defs {
            let schema = &d["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            structural_problems(
                schema,
                d["spec"]["names"]["kind"].as_str().unwrap_or("?"),
                &mut problems,
            );
        }
        assert!(problems.is_empty(), "{problems:#?}");
        let spec =
            &defs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["mode"]["enum"],
            json!(["enforce", "audit"]),
            "{spec}"
        );
        assert_eq!(
            spec["additionalProperties"],
            Value::Null,
            "unknown fields are pruned or refused by the API server, not kept"
        );
    }
}
