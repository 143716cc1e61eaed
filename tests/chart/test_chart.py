"""The chart as `helm lint --strict` and `helm template` see it: valid objects for every
combination of options, the operator's flags, images and security, and RBAC that is exactly
per watched namespace (or cluster-wide) and never wider than what the operator's code uses."""
from __future__ import annotations

import argparse
import json
import textwrap

import pytest
import yaml

from chart_render import (
    CHART, NAMESPACE, find, helm, lint, one, render, validate_object)
from infernetes import __version__
from infernetes.operator.config import DEFAULT_RUNTIME_IMAGE, OperatorConfig
from infernetes.operator.kube import RESOURCES

MATRIX = {
    "defaults": {},
    "cluster-wide": {"clusterWide": True},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True},
                                  "podMonitor": {"enabled": True},
                                  "prometheusRule": {"enabled": True}}},
    "cluster-wide-monitoring": {"clusterWide": True,
                                "monitoring": {"podMonitor": {"enabled": True}}},
    "three-namespaces": {"watchNamespaces": ["a", "b", "c"]},
    "no-grafana": {"grafana": {"dashboards": {"enabled": False}}},
    "everything-set": {
        "fullnameOverride": "llm-operator", "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"name": "llm-sa", "annotations": {"a": "b"}},
        "podAnnotations": {"x": "y"}, "podLabels": {"team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical", "resyncSeconds": 2.5,
        "grafana": {"dashboards": {"folder": "LLM", "namespace": "monitoring",
                                   "annotations": {"k": "v"}}}},
}
OPERATOR_VERBS = {"get", "list", "watch", "create", "patch", "delete"}


def operator_container(objects):
    deployment = one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def flag_values(args: list[str], flag: str) -> list[str]:
    return [value for name, value in zip(args, args[1:]) if name == flag]


def test_chart_metadata_matches_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "infernetes"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == __version__


def test_helm_is_v4():
    assert helm("version", "--short").stdout.startswith("v4.")


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_lint_strict(values):
    lint(values)


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_every_rendered_object_is_valid(values):
    objects = render(values, include_crds=True)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= {
        obj["kind"] for obj in objects}
    for obj in objects:
        validate_object(obj)
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole",
                               "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"], f"{obj['kind']}: kubectl apply needs it"


def test_defaults_watch_the_release_namespace_with_a_role():
    objects = render()
    args = operator_container(objects)["args"]
    assert args[0] == "operator"
    assert flag_values(args, "--namespace") == [NAMESPACE]
    assert "--all-namespaces" not in args
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")


def test_one_role_and_binding_per_watched_namespace():
    objects = render({"watchNamespaces": ["a", "b", "c"]})
    assert flag_values(operator_container(objects)["args"], "--namespace") == ["a", "b", "c"]
    for kind in ("Role", "RoleBinding"):
        assert sorted(o["metadata"]["namespace"] for o in find(objects, kind)) == ["a", "b", "c"]
    account = one(objects, "ServiceAccount")["metadata"]
    for binding in find(objects, "RoleBinding"):
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": find(objects, "Role")[0]["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]
    assert not find(objects, "ClusterRole")


def test_cluster_wide_uses_a_cluster_role_and_all_namespaces():
    objects = render({"clusterWide": True})
    args = operator_container(objects)["args"]
    assert "--all-namespaces" in args and "--namespace" not in args
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    assert role["rules"] == one(render(), "Role")["rules"]


def test_rbac_is_off_when_not_created():
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def test_rules_name_only_what_the_operator_uses():
    """Resources among operator/kube.py's RESOURCES (plus pods/log and status), in their API
    group, with the verbs of operator/kube.py; no wildcards, and no Secrets: the kubelet, not
    the operator, reads token and API-key secrets."""
    groups = {plural: (api.rpartition("/")[0]) for api, plural in RESOURCES.values()}
    allowed = set(groups) | {"pods/log", "inferenceservices/status"}
    rules = one(render(), "Role")["rules"]
    granted = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for resource in rule["resources"]:
            assert resource in allowed, resource
            assert rule["apiGroups"] == [groups[resource.split("/")[0]]], rule
            assert set(rule["verbs"]) <= OPERATOR_VERBS, rule
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert "*" not in json.dumps(rules)
    assert "secrets" not in granted
    assert granted["inferenceservices"] == {"get", "list", "watch"}  # status: via subresource
    assert granted["inferenceservices/status"] == {"patch"}
    for child in ("jobs", "deployments", "services"):  # watched by kopf, planned by plan.py
        assert granted[child] == {"list", "watch", "create", "patch", "delete"}, child
    assert granted["persistentvolumeclaims"] == {"get", "create", "patch"}  # never deleted
    assert granted["pods"] == {"list"} and granted["pods/log"] == {"get"}
    assert granted["events"] == {"create"}


def test_operator_flags_and_environment():
    container = operator_container(render({
        "runtime": {"imagePullPolicy": "Always", "drainTimeoutSeconds": 90, "shmSize": "16Gi",
                    "downloadBackoffLimit": 2, "image": {"repository": "r.io/rt", "tag": "t"}},
        "resyncSeconds": 12.5}))
    args = container["args"]
    assert container["command"] == ["infernetes"]
    assert flag_values(args, "--runtime-image") == ["r.io/rt:t"]
    assert flag_values(args, "--image-pull-policy") == ["Always"]
    assert flag_values(args, "--resync-seconds") == ["12.5"]
    assert flag_values(args, "--drain-timeout") == ["90"]
    assert flag_values(args, "--metrics-port") == ["8080"]
    assert flag_values(args, "--liveness-port") == ["8081"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"INFERNETES_OPERATOR_SHM_SIZE": "16Gi",
                   "INFERNETES_OPERATOR_DOWNLOAD_BACKOFF_LIMIT": "2"}


def test_the_operator_parses_the_rendered_flags_and_environment(monkeypatch):
    """What the pod runs is accepted by `infernetes operator` and OperatorConfig.from_env."""
    from infernetes.operator.cli import add_operator_commands
    parser = argparse.ArgumentParser(prog="infernetes")
    add_operator_commands(parser.add_subparsers(dest="command"))
    container = operator_container(render())
    args = parser.parse_args(container["args"])
    assert (args.command, args.namespace, args.all_namespaces) == ("operator", [NAMESPACE], False)
    assert (args.resync_seconds, args.drain_timeout) == (30.0, 30)
    for variable in container["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    config = OperatorConfig.from_env()
    assert (config.shm_size, config.download_backoff_limit) == ("8Gi", 6)


def test_default_images_follow_the_app_version():
    container = operator_container(render())
    assert container["image"] == f"ghcr.io/infernetes/operator:{__version__}"
    assert flag_values(container["args"], "--runtime-image") == [DEFAULT_RUNTIME_IMAGE]
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_operator_pod_is_locked_down_and_single():
    deployment = one(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two operators
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]


def test_metrics_service_and_service_monitor_select_the_operator():
    objects = render(MATRIX["monitoring"])
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == "metrics"
    # The operator's own `namespace` label must survive the scrape (dashboards, alerts).
    assert monitor["endpoints"][0]["honorLabels"] is True


def test_pod_monitor_scrapes_runtime_pods_where_they_run():
    from infernetes.operator.builders.probes import PORT_NAME
    from infernetes.operator.naming import COMPONENT_RUNTIME, MANAGER
    monitor = one(render({"watchNamespaces": ["a", "b"],
                          "monitoring": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": COMPONENT_RUNTIME,
        "app.kubernetes.io/managed-by": MANAGER}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == (PORT_NAME, "/metrics")
    wide = one(render(MATRIX["cluster-wide-monitoring"]), "PodMonitor")
    assert wide["spec"]["namespaceSelector"] == {"any": True}


def test_monitoring_is_off_by_default():
    kinds = {obj["kind"] for obj in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("values", [{}, {"clusterWide": True}, {"watchNamespaces": ["ml"]}])
def test_notes_show_an_example_the_api_server_admits(values):
    from crd_validation import apply_defaults, crd_schema, validate
    notes = helm("install", "infernetes", str(CHART), "--dry-run=client", "--namespace",
                 NAMESPACE, *[f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]
                 ).stdout.split("NOTES:", 1)[1]
    namespace = values.get("watchNamespaces", [NAMESPACE])[0]
    assert f"kubectl get isvc -n {namespace} -w" in notes
    example = textwrap.dedent(notes.split("<<'YAML'\n", 1)[1].split("  YAML\n", 1)[0])
    isvc = yaml.safe_load(example)
    isvc["metadata"]["namespace"] = namespace
    assert validate(apply_defaults(isvc, crd_schema())) == []


def test_large_numbers_reach_the_operator_as_numbers_it_parses():
    """Helm reads numbers as float64: 10000000 would print as "1e+07", which int() refuses."""
    container = operator_container(render({
        "runtime": {"drainTimeoutSeconds": 2_000_000, "downloadBackoffLimit": 10_000_000},
        "resyncSeconds": 3_000_000}))
    assert flag_values(container["args"], "--drain-timeout") == ["2000000"]
    assert float(flag_values(container["args"], "--resync-seconds")[0]) == 3_000_000
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["INFERNETES_OPERATOR_DOWNLOAD_BACKOFF_LIMIT"] == "10000000"
