"""Checks of built Kubernetes objects without a cluster: the API's OpenAPI schema (strict:
unknown fields fail) through kubernetes-validate, plus the cross-field rules a schema cannot
express (names, label syntax, volume and port references, selectors, Pod Security "restricted").

(A module of its own, not conftest.py: see k8s_harness.py for why.)
"""
from __future__ import annotations

import re
from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = "1.33"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                            "persistentVolumeClaim", "projected", "secret"}


def assert_valid_manifest(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(part) for part in e.absolute_path)
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {path}: "
                             f"{e.message}") from None
    meta = obj["metadata"]
    assert _DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
    assert meta.get("namespace"), "namespaced objects need a namespace"
    _assert_labels(meta.get("labels", {}))
    template = obj.get("spec", {}).get("template")
    if template is not None:
        _assert_labels(template["metadata"]["labels"])
        _assert_pod_spec(template["spec"])
    if obj["kind"] == "Deployment":
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), \
            "the Deployment's selector must match its pods"
    if obj["kind"] == "Job" and "podFailurePolicy" in obj["spec"]:
        _assert_pod_failure_policy(obj["spec"]["podFailurePolicy"], template["spec"])


def _assert_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        assert not prefix or len(prefix) <= 253, key
        assert name and len(name) <= 63 and _LABEL_NAME.match(name), key
        assert len(value) <= 63 and _LABEL_NAME.match(value), f"{key}={value!r}"


def _assert_pod_spec(pod: dict[str, Any]) -> None:
    volumes = [volume["name"] for volume in pod["volumes"]]
    assert len(volumes) == len(set(volumes)), volumes
    for volume in pod["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= _RESTRICTED_VOLUME_TYPES, f"volume type {kinds} is not restricted"
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        _assert_container(container, set(volumes))


def _assert_container(container: dict[str, Any], volumes: set[str]) -> None:
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"{mount['name']} mounted but not declared"
    env = [var["name"] for var in container.get("env", [])]
    assert len(env) == len(set(env)), env
    ports = {port["name"] for port in container.get("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container.get(probe, {}).get("httpGet", {}).get("port")
        assert port is None or isinstance(port, int) or port in ports, f"{probe}: {port}"
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")


def _assert_pod_failure_policy(policy: dict[str, Any], pod: dict[str, Any]) -> None:
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"
    containers = {container["name"] for container in pod["containers"]}
    for rule in policy["rules"]:
        exit_codes = rule.get("onExitCodes")
        if exit_codes is None:
            continue
        assert exit_codes.get("containerName", next(iter(containers))) in containers
        values = exit_codes["values"]
        assert values == sorted(set(values)), "values must be ordered and unique"
        assert exit_codes["operator"] != "In" or 0 not in values
