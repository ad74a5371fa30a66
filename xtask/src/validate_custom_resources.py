"""Validates Rampart's custom resources against the CustomResourceDefinitions' own schemas.

Usage: validate_custom_resources.py CRDS_YAML FILE...

Every document of a kind that CRDS_YAML defines is checked against that version's
openAPIV3Schema, as the API server checks it with strict field validation (the default of
`kubectl apply` since Kubernetes 1.27): unknown fields are errors, `x-kubernetes-int-or-string`
takes an integer or a string, `nullable` takes null. Documents of other kinds are left to
kubernetes-validate. Prints one line per error and exits 1 if there is any; a self-check first
proves the schemas reject a document with an unknown field and one with a wrong type.

Run by `cargo xtask manifests` (and so by `cargo xtask test`) from its own virtualenv, which has
`jsonschema` and `PyYAML` (kubernetes-validate's dependencies).
"""

import copy
import sys

import jsonschema
import yaml


def structural(schema):
    """The OpenAPI v3 structural schema as JSON Schema, strict about unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return node
        for key in ("properties", "patternProperties"):
            if key in node:
                node[key] = {k: walk(v) for k, v in node[key].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                node[key] = walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in node:
                node[key] = [walk(v) for v in node[key]]
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = node.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        for key in list(node):
            if key.startswith("x-kubernetes-"):
                node.pop(key)
        return node

    return walk(schema)


def schemas_of(crds_path):
    """(apiVersion, kind) -> JSON Schema, for every served version of every CRD."""
    out = {}
    with open(crds_path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = structural(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are the API server's to check.
                for field in ("apiVersion", "kind", "metadata"):
                    schema.setdefault("properties", {}).setdefault(field, {})
                out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return out


def errors_of(schemas, doc):
    schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return None
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def self_check(schemas):
    """The schemas must reject what the API server would: else this check proves nothing."""
    for (api_version, kind), _ in schemas.items():
        base = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": {}}
        unknown = copy.deepcopy(base)
        unknown["spec"]["noSuchField"] = 1
        if not errors_of(schemas, unknown):
            return f"{kind}: a spec with an unknown field passed"
        wrong = copy.deepcopy(base)
        wrong["spec"] = "not an object"
        if not errors_of(schemas, wrong):
            return f"{kind}: a spec of the wrong type passed"
    return None


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    schemas = schemas_of(sys.argv[1])
    if not schemas:
        print(f"{sys.argv[1]}: no CustomResourceDefinition")
        return 1
    broken = self_check(schemas)
    if broken:
        print(f"self-check failed: {broken}")
        return 1
    failed = checked = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if not doc:
                    continue
                errors = errors_of(schemas, doc)
                if errors is None:
                    continue
                checked += 1
                name = doc.get("metadata", {}).get("name", "?")
                for e in errors:
                    failed += 1
                    print(f"ERROR {path} document {index + 1} ({doc['kind']} {name}): {e}")
    print(f"custom resources: {checked} checked against the CRDs, {failed} errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
