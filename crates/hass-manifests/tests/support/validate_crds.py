"""Validates custom resources against their CRD's openAPIV3Schema.

usage: validate_crds.py CRD_DIR MANIFEST...

Every object whose apiVersion/kind a CRD in CRD_DIR serves is checked with
jsonschema against that version's openAPIV3Schema. Objects of the schema get
`additionalProperties: false` unless they preserve unknown fields or define
additionalProperties themselves: the API server would silently prune an
unknown field, and a pruned field is a bug in the generator. Exits 1 listing
every error, 2 when a custom resource has no CRD.
"""
import copy
import glob
import os
import sys

import jsonschema
import yaml

BUILTIN_GROUPS = ("v1", "apps/", "batch/", "policy/", "networking.k8s.io/")


def tighten(schema):
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {k: tighten(v) for k, v in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = tighten(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = tighten(schema["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [tighten(s) for s in schema[key]]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def load_crds(directory):
    schemas = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{group}/{version['name']}", kind)] = tighten(copy.deepcopy(schema))
    return schemas


def main():
    crd_dir, files = sys.argv[1], sys.argv[2:]
    schemas = load_crds(crd_dir)
    errors, checked, unknown = [], 0, []
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            if api.startswith(BUILTIN_GROUPS) or kind == "Kustomization":
                continue
            schema = schemas.get((api, kind))
            if schema is None:
                unknown.append(f"{path}: no CRD serves {api} {kind}")
                continue
            checked += 1
            validator = jsonschema.Draft7Validator(schema)
            for e in validator.iter_errors(doc):
                where = ".".join(str(p) for p in e.absolute_path) or "(root)"
                errors.append(f"{path}: {kind} {doc['metadata']['name']}: {where}: {e.message}")
    for line in unknown + errors:
        print(line)
    print(f"checked {checked} custom resources, {len(errors)} errors")
    if unknown:
        sys.exit(2)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
