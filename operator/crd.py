"""The InferenceService CustomResourceDefinition, generated from the models in `spec.py`.

pydantic writes JSON Schema (2020-12); a CRD wants a structural OpenAPI v3.0 schema. The
translation: `$ref`s inlined, `Optional` (anyOf with null) reduced to its non-null branch (an
absent field is the null), `exclusiveMinimum: x` -> `minimum: x, exclusiveMinimum: true`,
`additionalProperties: false` dropped (the API server prunes unknown fields), titles dropped,
and object-valued defaults reduced to `{}` so that the API server fills nested defaults itself.
`infernetes crd` prints the result; `crds/` holds it, and a test fails when that copy is stale.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from infernetes.operator.spec import (
    GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, InferenceServiceSpec,
    InferenceServiceStatus)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"

_DROPPED_KEYS = ("title", "$defs")

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {"name": "URL", "type": "string", "jsonPath": ".status.url"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(schema, schema.get("$defs", {}))


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
            node = {**target, **node}  # the referring field's description/default win
        else:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express a union of {len(branches)} types in a CRD")
            node = {**branches[0], **node}
    if node.get("default", 0) is None:
        del node["default"]
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(
            node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("type") == "object" and "properties" in node and node.get("default"):
        node["default"] = {}
    for key in _DROPPED_KEYS:
        node.pop(key, None)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    return {key: (value if key in ("default", "enum", "example")
                  else _structural(value, defs))
            for key, value in node.items()}


def custom_resource_definition() -> dict[str, Any]:
    spec_schema = openapi_schema(InferenceServiceSpec)
    spec_schema["description"] = ("What to serve and how: the model, its adapters, the "
                                  "resources of each replica, engine settings and scaling.")
    status_schema = openapi_schema(InferenceServiceStatus)
    status_schema["description"] = "What the operator observed; written by the operator only."
    status_schema["properties"]["conditions"].update(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    status_schema["properties"]["conditions"]["items"]["required"] = ["type", "status",
                                                                      "reason"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME,
                     "labels": {"app.kubernetes.io/name": "infernetes",
                                "app.kubernetes.io/component": "crd"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": SHORT_NAMES,
                      "categories": ["all", "infernetes"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "description": "An OpenAI-compatible endpoint serving one open model "
                                   "(and its LoRA adapters) inside the cluster.",
                    "type": "object",
                    "required": ["spec"],
                    "x-kubernetes-validations": [
                        {"rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches("
                                 "'^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                         "message": "metadata.name must be a DNS-1035 label (lowercase letters, "
                                    "digits and '-', starting with a letter, at most 63 "
                                    "characters): it names the Service"}],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    }}},
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas",
                              "statusReplicasPath": ".status.replicas",
                              "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def crd_yaml() -> str:
    header = ("# Generated from operator/spec.py by `infernetes crd`: do not edit by hand.\n")
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
