"""Rendering the chart in tests: `helm template` with given values -> the objects, and the
checks every rendered object must pass.

(A module of its own, not conftest.py: pytest imports every conftest.py without a package as
the module `conftest`, so `from conftest import ...` is not reliable.)
"""
from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
CHART = CHARTS / "infernetes"
KUBERNETES_VERSION = "1.33"
RELEASE = "infernetes"
NAMESPACE = "infernetes-system"
MONITORING_GROUP = "monitoring.coreos.com"
# The operator tests' helpers (the emulator and its harness, the API server's CRD checks) are
# imported by name, as tests/operator's own modules import them.
if str(REPO / "tests" / "operator") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "operator"))
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")



def _load_generate():
    """charts/generate.py (which loads charts/helm_binary.py and charts/values_schema.py)."""
    spec = importlib.util.spec_from_file_location("generate", CHARTS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()
run_helm = generate.helm_binary.run_helm

__all__ = ["CHART", "REPO", "generate", "helm", "render", "render_error", "validate_object"]


def helm(*args: str, check: bool = True):
    return run_helm(*args, check=check)


def _values_file(values: dict[str, Any], directory: str) -> str:
    path = Path(directory) / "values.json"  # JSON is YAML
    path.write_text(json.dumps(values))
    return str(path)


@functools.lru_cache(maxsize=None)
def _render_cached(values_json: str, chart: str, include_crds: bool) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["template", RELEASE, chart, "--namespace", NAMESPACE,
                "--values", _values_file(json.loads(values_json), tmp)]
        out = helm(*args, *(["--include-crds"] if include_crds else [])).stdout
    return tuple(json.dumps(doc) for doc in yaml.safe_load_all(out) if doc)


def render(values: dict[str, Any] | None = None, chart: Path = CHART,
           include_crds: bool = False) -> list[dict[str, Any]]:
    """The objects `helm template` renders (fresh copies: tests may change them)."""
    docs = _render_cached(json.dumps(values or {}, sort_keys=True), str(chart), include_crds)
    return [json.loads(doc) for doc in docs]


def render_error(values: dict[str, Any]) -> str:
    """What `helm template` says when it refuses `values` (fails the test if it accepts)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                      "--values", _values_file(values, tmp), check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def lint(values: dict[str, Any] | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                      "--values", _values_file(values or {}, tmp), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def validate_object(obj: dict[str, Any]) -> None:
    """Built-in kinds against Kubernetes' OpenAPI schema (strict: unknown fields fail); the
    Prometheus Operator's kinds for their basic shape (no schema of theirs is at hand)."""
    meta = obj["metadata"]
    assert _DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253, meta["name"]
    if obj["apiVersion"].split("/")[0] == MONITORING_GROUP:
        assert obj["apiVersion"] == f"{MONITORING_GROUP}/v1", obj["apiVersion"]
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, set(obj)
        assert set(meta) <= {"name", "namespace", "labels", "annotations"}, set(meta)
        assert meta["namespace"] and isinstance(obj["spec"], dict) and obj["spec"]
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(part) for part in e.absolute_path)
        raise AssertionError(f"{obj['kind']} {meta['name']}: {path}: {e.message}") from None
