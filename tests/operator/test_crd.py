"""The CRD is generated from operator/spec.py, checked in fresh, structural, valid for the API
server, and admits exactly what it should: defaults applied, every bad field rejected with a
message naming it (schema and CEL rules evaluated in Python, crd_validation.py)."""
from __future__ import annotations

import json
from pathlib import Path

import celpy
import kubernetes_validate
import pytest
import yaml

from crd_validation import cel_rules, crd_schema, validate
from infernetes.operator.crd import CRD_FILE, crd_yaml, custom_resource_definition
from infernetes.operator.spec import parse_spec
from infernetes.runtime.cli import main

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"


def isvc(spec: dict, name: str = "qwen") -> dict:
    return {"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ml"}, "spec": spec}


MINIMAL = {"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct"}}
FULL = {
    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct@5206a32",
              "servedName": "llama-3.1-8b", "tokenSecretRef": {"name": "hf-token"}},
    "adapters": [{"name": "sql", "source": "hf://org/sql-lora"},
                 {"name": "chat", "source": "pvc://adapters/chat"}],
    "resources": {"gpus": 4, "memory": "64Gi", "cpu": "8", "nodeSelector": {"gpu": "h100"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]},
    "parallelism": {"tensor": 2},
    "engine": {"maxModelLen": 8192, "gpuMemoryUtilization": 0.85, "maxNumSeqs": 128,
               "enablePrefixCaching": False, "dtype": "bfloat16", "maxLoraRank": 64,
               "extraArgs": ["--max-num-batched-tokens", "4096"]},
    "replicas": 2,
    "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "target": 8},
    "cache": {"storageClassName": "fast", "size": "200Gi", "accessMode": "ReadWriteMany"},
    "apiKeySecretRef": {"name": "llm-key", "key": "key"},
}


def with_(base: dict, path: str, value) -> dict:
    """`base` with the dotted `path` set to `value` (None removes it)."""
    spec = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


class TestGeneratedFile:
    def test_checked_in_crd_is_fresh(self):
        assert (REPO / "crds" / CRD_FILE).read_text() == crd_yaml(), \
            "crds/ is stale: run `infernetes crd > crds/" + CRD_FILE + "`"

    def test_cli_prints_it(self, capsys):
        assert main(["crd"]) == 0
        assert capsys.readouterr().out == crd_yaml()

    def test_crd_is_a_valid_kubernetes_object(self):
        kubernetes_validate.validate(yaml.safe_load(crd_yaml()), KUBERNETES_VERSION, strict=True)

    def test_schema_is_structural(self):
        text = json.dumps(crd_schema())
        for forbidden in ('"$ref"', '"anyOf"', '"title"', '"additionalProperties": false',
                          '"nullable"'):
            assert forbidden not in text

        def walk(schema, path="openAPIV3Schema"):
            assert "type" in schema, f"{path} has no type"
            for name, sub in schema.get("properties", {}).items():
                walk(sub, f"{path}.{name}")
            if "items" in schema:
                walk(schema["items"], f"{path}[]")
        walk(crd_schema())

    def test_api_surface(self):
        version = custom_resource_definition()["spec"]["versions"][0]
        assert version["subresources"]["scale"] == {
            "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"}
        assert "status" in version["subresources"]
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns[:5] == ["Model", "Phase", "Ready", "URL", "Age"]
        names = custom_resource_definition()["spec"]["names"]
        assert names["shortNames"] == ["isvc"]

    def test_every_cel_rule_compiles(self):
        environment = celpy.Environment()
        rules = cel_rules()
        assert len(rules) >= 4
        for rule in rules:
            environment.compile(rule)


@pytest.mark.parametrize("spec", [MINIMAL, FULL, with_(MINIMAL, "resources", {"gpus": 0}),
                                  with_(MINIMAL, "model.source", "pvc://models/qwen/7b"),
                                  with_(MINIMAL, "model.source", "pvc://models")],
                         ids=["minimal", "full", "cpu", "pvc-path", "pvc-root"])
def test_valid_specs_are_admitted_and_parse(spec):
    assert validate(isvc(spec)) == []
    parse_spec(spec)


def test_defaults_are_applied_like_the_api_server():
    from crd_validation import apply_defaults
    obj = apply_defaults(isvc(json.loads(json.dumps(MINIMAL))), crd_schema())
    spec = obj["spec"]
    assert spec["replicas"] == 1 and spec["resources"]["gpus"] == 1
    assert spec["engine"] == {"gpuMemoryUtilization": 0.9, "maxNumSeqs": 256,
                              "enablePrefixCaching": True, "dtype": "auto", "extraArgs": []}
    assert spec["cache"] == {"size": "100Gi", "accessMode": "ReadWriteOnce"}
    assert parse_spec(spec) == parse_spec(MINIMAL)  # the operator's defaults are the same


INVALID = [
    ("no-model", {"replicas": 1}, "spec: 'model' is a required property"),
    ("no-source", {"model": {"servedName": "x"}}, "spec.model: 'source' is a required"),
    ("http-source", with_(MINIMAL, "model.source", "https://huggingface.co/Qwen/Qwen2.5-7B"),
     "spec.model.source"),
    ("hf-without-name", with_(MINIMAL, "model.source", "hf://Qwen"), "spec.model.source"),
    ("empty-revision", with_(MINIMAL, "model.source", "hf://Qwen/Qwen2.5@"),
     "spec.model.source"),
    ("pvc-bad-claim", with_(MINIMAL, "model.source", "pvc://Bad_Claim/x"), "spec.model.source"),
    ("served-name-space", with_(MINIMAL, "model.servedName", "my model"),
     "spec.model.servedName"),
    ("negative-gpus", with_(MINIMAL, "resources.gpus", -1), "spec.resources.gpus"),
    ("too-many-gpus", with_(MINIMAL, "resources.gpus", 17), "spec.resources.gpus"),
    ("bad-memory", with_(MINIMAL, "resources.memory", "32 gigs"), "spec.resources.memory"),
    ("bad-toleration-effect", with_(MINIMAL, "resources.tolerations", [{"effect": "Never"}]),
     "spec.resources.tolerations[0].effect"),
    ("tp-not-dividing", with_(with_(MINIMAL, "resources.gpus", 4), "parallelism.tensor", 3),
     "spec.parallelism.tensor: parallelism.tensor must divide resources.gpus"),
    ("tp-on-cpu", with_(with_(MINIMAL, "resources.gpus", 0), "parallelism.tensor", 2),
     "spec.parallelism.tensor: parallelism.tensor must divide"),
    ("gpu-memory-zero", with_(MINIMAL, "engine.gpuMemoryUtilization", 0),
     "spec.engine.gpuMemoryUtilization"),
    ("gpu-memory-over-one", with_(MINIMAL, "engine.gpuMemoryUtilization", 1.5),
     "spec.engine.gpuMemoryUtilization"),
    ("bad-dtype", with_(MINIMAL, "engine.dtype", "int4"), "spec.engine.dtype"),
    ("tiny-max-model-len", with_(MINIMAL, "engine.maxModelLen", 8), "spec.engine.maxModelLen"),
    ("extra-args-not-strings", with_(MINIMAL, "engine.extraArgs", ["--x", 3]),
     "spec.engine.extraArgs[1]"),
    ("extra-args-port", with_(MINIMAL, "engine.extraArgs", ["--port=9000"]),
     "spec.engine.extraArgs: extraArgs cannot set --host or --port"),
    ("negative-replicas", with_(MINIMAL, "replicas", -2), "spec.replicas"),
    ("min-over-max", with_(MINIMAL, "autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas: minReplicas must be less than or equal to maxReplicas"),
    ("autoscaling-no-max", with_(MINIMAL, "autoscaling", {"minReplicas": 1}),
     "spec.autoscaling: 'maxReplicas' is a required"),
    ("unknown-metric", with_(MINIMAL, "autoscaling", {"maxReplicas": 2, "metric": "cpu"}),
     "spec.autoscaling.metric"),
    ("duplicate-adapters", with_(MINIMAL, "adapters", [{"name": "a", "source": "hf://o/a"},
                                                       {"name": "a", "source": "hf://o/b"}]),
     "spec.adapters: adapter names must be unique"),
    ("adapter-named-like-model", with_(with_(MINIMAL, "model.servedName", "qwen"), "adapters",
                                       [{"name": "qwen", "source": "hf://o/a"}]),
     "spec.adapters: an adapter cannot have the model's servedName"),
    ("adapter-bad-source", with_(MINIMAL, "adapters", [{"name": "a", "source": "s3://x/y"}]),
     "spec.adapters[0].source"),
    ("lora-rank-zero", with_(MINIMAL, "engine.maxLoraRank", 0), "spec.engine.maxLoraRank"),
    ("lora-rank-too-high", with_(MINIMAL, "engine.maxLoraRank", 513),
     "spec.engine.maxLoraRank"),
    ("bad-access-mode", with_(MINIMAL, "cache.accessMode", "ReadOnlyMany"),
     "spec.cache.accessMode"),
    ("bad-cache-size", with_(MINIMAL, "cache.size", "lots"), "spec.cache.size"),
    ("secret-ref-no-name", with_(MINIMAL, "apiKeySecretRef", {"key": "k"}),
     "spec.apiKeySecretRef: 'name' is a required"),
    ("replicas-not-int", with_(MINIMAL, "replicas", "two"), "spec.replicas"),
]


@pytest.mark.parametrize("spec, field", [(s, f) for _, s, f in INVALID],
                         ids=[name for name, _, _ in INVALID])
def test_invalid_specs_are_rejected_naming_the_field(spec, field):
    errors = validate(isvc(spec))
    assert errors, "admitted"
    assert any(e.startswith(field) or field in e for e in errors), errors


@pytest.mark.parametrize("name", ["Qwen", "7b-model", "a" * 64, "my_model"])
def test_names_that_cannot_name_a_service_are_rejected(name):
    errors = validate(isvc(MINIMAL, name=name))
    assert any(e.startswith("metadata.name must be a DNS-1035 label") for e in errors), errors
