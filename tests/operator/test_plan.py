"""plan(): desired vs observed children -> Create / Patch / Delete / Skip, with no cluster.

`observe()` plays the API server: it adds the defaults and metadata a real one adds, so that
"in sync" here means what it means against a cluster."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from infernetes.operator.plan import (Create, Delete, Patch, Skip, matches, parse_quantity,
                                      plan)

OWNER = "uid-isvc"
NS = "ml"
OURS = [{"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService", "name": "qwen",
         "uid": OWNER, "controller": True, "blockOwnerDeletion": True}]
LABELS = {"app.kubernetes.io/instance": "qwen", "infernetes.io/inference-service": "qwen"}
SELECTOR = {"infernetes.io/inference-service": "qwen", "app.kubernetes.io/component": "runtime"}


def pvc(size: str = "100Gi", access: str = "ReadWriteMany") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "infernetes-cache-abc", "namespace": NS,
                         "labels": {"app.kubernetes.io/component": "model-cache"}},
            "spec": {"accessModes": [access], "resources": {"requests": {"storage": size}},
                     "storageClassName": None}}


def job(name: str = "qwen-dl-abc", source: str = "hf://org/m") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "labels": dict(LABELS),
                         "ownerReferences": OURS},
            "spec": {"backoffLimit": 6, "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {"restartPolicy": "Never", "containers": [
                    {"name": "download", "image": "runtime:1",
                     "args": ["download", source, "/models"]}]}}}}


def deployment(image: str = "runtime:1", replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "qwen", "namespace": NS, "labels": dict(LABELS),
                         "annotations": {"infernetes.io/spec-hash": "h1"},
                         "ownerReferences": OURS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": dict(SELECTOR)},
                     "template": {
                         "metadata": {"labels": {**SELECTOR, **LABELS}},
                         "spec": {"nodeSelector": {}, "tolerations": [], "containers": [{
                             "name": "runtime", "image": image,
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                             "ports": [{"name": "http", "containerPort": 8000}],
                             "resources": {"limits": {"memory": "32768Mi",
                                                      "nvidia.com/gpu": 1},
                                           "requests": {"cpu": "0.5"}}}]}}}}


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "qwen", "namespace": NS, "labels": dict(LABELS),
                         "ownerReferences": OURS},
            "spec": {"selector": dict(SELECTOR),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8000}]}}


def desired_all() -> list[dict[str, Any]]:
    return [service(), deployment(), job(), pvc()]  # not in apply order on purpose


def observe(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the API server returns it: defaults, normalized quantities, others' labels."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    meta.update(uid=f"uid-{meta['name']}", resourceVersion="7",
                creationTimestamp="2024-01-01T00:00:00Z")
    meta.setdefault("labels", {})["team"] = "someone-else"
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied"] = "{}"
    spec, kind = obj["spec"], obj["kind"]
    if kind in ("Job", "Deployment"):
        _default_pod_template(spec["template"], kind)
    if kind == "Job":
        default(spec, completions=1, parallelism=1, completionMode="NonIndexed", suspend=False,
                selector={"matchLabels": {"batch.kubernetes.io/controller-uid": "x"}})
    if kind == "Deployment":
        meta["annotations"]["deployment.kubernetes.io/revision"] = "1"
        default(spec, progressDeadlineSeconds=600, revisionHistoryLimit=10,
                strategy={"type": "RollingUpdate"})
        default(spec["strategy"], rollingUpdate={})
        default(spec["strategy"]["rollingUpdate"], maxSurge="25%", maxUnavailable="25%")
    if kind == "Service":
        default(spec, clusterIP="10.0.0.7", clusterIPs=["10.0.0.7"], type="ClusterIP",
                sessionAffinity="None", ipFamilies=["IPv4"])
        for port in spec["ports"]:
            default(port, protocol="TCP")
    if kind == "PersistentVolumeClaim":
        default(spec, storageClassName="standard", volumeMode="Filesystem", volumeName="pv-1")
        obj["status"] = {"phase": "Bound", "capacity": {"storage": "100Gi"}}
    return obj


def _default_pod_template(template: dict[str, Any], kind: str) -> None:
    if kind == "Job":
        template["metadata"]["labels"].update({"job-name": "x", "controller-uid": "x"})
    pod = template["spec"]
    default(pod, dnsPolicy="ClusterFirst", schedulerName="default-scheduler", securityContext={},
            terminationGracePeriodSeconds=30, restartPolicy="Always")
    for key in ("nodeSelector", "tolerations"):  # empty maps and lists are not stored
        if not pod.get(key):
            pod.pop(key, None)
    for container in pod["containers"]:
        default(container, imagePullPolicy="IfNotPresent", terminationMessagePolicy="File",
                terminationMessagePath="/dev/termination-log")
        for port in container.get("ports", []):
            default(port, protocol="TCP")
        limits = container.get("resources", {}).get("limits", {})
        if limits.get("memory") == "32768Mi":
            limits["memory"] = "32Gi"
            limits["nvidia.com/gpu"] = "1"
        if container.get("resources", {}).get("requests", {}).get("cpu") == "0.5":
            container["resources"]["requests"]["cpu"] = "500m"


def default(obj: dict[str, Any], **values: Any) -> None:
    """Sets the fields a client left out (or null), as the API server's defaulting does."""
    obj.update({k: v for k, v in values.items() if obj.get(k) is None})


def apply(observed: list[dict[str, Any]], actions: list) -> list[dict[str, Any]]:
    """What the API server holds after the actions (Deletes complete at once)."""
    by_name = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in observed}
    for action in actions:
        if isinstance(action, Create):
            by_name[(action.obj["kind"], action.obj["metadata"]["name"])] = observe(action.obj)
        elif isinstance(action, Patch):
            key = (action.kind, action.name)
            by_name[key] = merge(by_name[key], action.patch)
        elif isinstance(action, Delete):
            del by_name[(action.kind, action.name)]
    return list(by_name.values())


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def edit(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `obj` with the field at dotted `path` (list indexes as numbers) set."""
    obj = copy.deepcopy(obj)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = obj
    for part in parents:
        node = node[part]
    node[last] = value
    return obj


def foreign(obj: dict[str, Any]) -> dict[str, Any]:
    return edit(obj, "metadata.ownerReferences", [{**OURS[0], "uid": "someone-else"}])


def kinds(actions: list) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.obj["kind"] if isinstance(a, Create) else a.kind)
            for a in actions]


def synced() -> list[dict[str, Any]]:
    return [observe(obj) for obj in desired_all()]


def without(observed: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in observed if o["kind"] != kind]


DEPLOY = ("Deployment", "apps/v1", NS, "qwen")
CLAIM = ("PersistentVolumeClaim", "v1", NS, "infernetes-cache-abc")
CASES = [
    pytest.param(desired_all, lambda: [],
                 lambda: [Create(pvc()), Create(job()), Create(deployment()), Create(service())],
                 id="nothing-observed-creates-all-in-dependency-order"),
    pytest.param(desired_all, synced, lambda: [], id="in-sync-with-api-defaults-does-nothing"),
    pytest.param(desired_all, lambda: without(synced(), "Deployment"),
                 lambda: [Create(deployment())], id="deleted-child-is-re-created"),
    pytest.param(lambda: [deployment(image="runtime:2")], lambda: [observe(deployment())],
                 lambda: [Patch(*DEPLOY, {"spec": {"template": {"spec": {
                     "containers": deployment(image="runtime:2")["spec"]["template"]["spec"][
                         "containers"]}}}})],
                 id="image-changed-patches-the-whole-containers-list"),
    pytest.param(lambda: [deployment(replicas=3)], lambda: [observe(deployment())],
                 lambda: [Patch(*DEPLOY, {"spec": {"replicas": 3}})],
                 id="replicas-changed-patches-only-replicas"),
    pytest.param(lambda: [edit(deployment(), "metadata.annotations",
                               {"infernetes.io/spec-hash": "h2"})],
                 lambda: [observe(deployment())],
                 lambda: [Patch(*DEPLOY, {"metadata": {"annotations": {
                     "infernetes.io/spec-hash": "h2"}}})],
                 id="own-annotation-changed-patches-only-that-key"),
    pytest.param(lambda: [deployment()],
                 lambda: [edit(observe(deployment()), "metadata.labels",
                               {**LABELS, "team": "x", "app.kubernetes.io/instance": "other"})],
                 lambda: [Patch(*DEPLOY, {"metadata": {"labels": {
                     "app.kubernetes.io/instance": "qwen"}}})],
                 id="own-label-reverted-others-labels-left-alone"),
    pytest.param(lambda: [edit(deployment(), "spec.template.spec.containers.0.env",
                               [{"name": "A", "value": "1"}])],
                 lambda: [observe(deployment())],
                 lambda: [Patch(*DEPLOY, {"spec": {"template": {"spec": {"containers": [
                     edit(deployment(), "spec.template.spec.containers.0.env",
                          [{"name": "A", "value": "1"}])["spec"]["template"]["spec"][
                         "containers"][0]]}}}})],
                 id="env-var-removed-replaces-the-list-of-different-length"),
    pytest.param(lambda: [deployment()],
                 lambda: [observe(edit(deployment(), "spec.template.spec.initContainers",
                                       [{"name": "adapter-0", "image": "runtime:1"}]))],
                 lambda: [Patch(*DEPLOY, {"spec": {"template": {"spec": {
                     "initContainers": None}}}})],
                 id="init-containers-no-longer-desired-are-removed"),
    pytest.param(lambda: [deployment(image="runtime:2")],
                 lambda: [observe(edit(deployment(), "spec.template.spec.nodeSelector",
                                       {"gpu": "h100"}))],
                 lambda: [Patch(*DEPLOY, {"spec": {"template": {"spec": {
                     "containers": deployment(image="runtime:2")["spec"]["template"]["spec"][
                         "containers"], "nodeSelector": None}}}})],
                 id="node-selector-no-longer-desired-is-removed-with-the-other-changes"),
    pytest.param(lambda: [edit(deployment(), "spec.selector.matchLabels.extra", "x")],
                 lambda: [observe(deployment())],
                 lambda: [Delete(*DEPLOY, "spec.selector changed and cannot be updated on a "
                                          "Deployment; re-created next pass")],
                 id="deployment-selector-changed-deletes-it"),
    pytest.param(lambda: [job(source="hf://org/m@v2")], lambda: [observe(job())],
                 lambda: [Delete("Job", "batch/v1", NS, "qwen-dl-abc",
                                 "spec.template changed and cannot be updated on a Job; "
                                 "re-created next pass")],
                 id="job-template-changed-deletes-it"),
    pytest.param(lambda: [edit(job(source="hf://org/m@v2"), "metadata.ownerReferences", None)],
                 lambda: [observe(edit(job(), "metadata.ownerReferences", None))],
                 lambda: [Skip("Job", "batch/v1", NS, "qwen-dl-abc",
                               "spec.template changed and cannot be updated on a Job; not owned "
                               "by this InferenceService")],
                 id="immutable-change-of-an-object-not-owned-is-skipped"),
    pytest.param(lambda: [edit(job(), "spec.backoffLimit", 2)], lambda: [observe(job())],
                 lambda: [Patch("Job", "batch/v1", NS, "qwen-dl-abc",
                                {"spec": {"backoffLimit": 2}})],
                 id="job-mutable-field-changed-patches-it"),
    pytest.param(lambda: [job(name="qwen-dl-new"), deployment()],
                 lambda: [observe(deployment()), observe(job())],
                 lambda: [Delete("Job", "batch/v1", NS, "qwen-dl-abc",
                                 "no longer desired by the InferenceService"),
                          Create(job(name="qwen-dl-new"))],
                 id="old-download-job-of-a-changed-source-is-deleted-first"),
    pytest.param(lambda: [deployment()],
                 lambda: [observe(deployment()), foreign(observe(job())),
                          observe(edit(service(), "metadata.ownerReferences", None)),
                          observe(pvc())],
                 lambda: [], id="objects-not-owned-are-never-deleted"),
    pytest.param(lambda: [deployment()],
                 lambda: [observe(deployment()), observe(edit(pvc(), "metadata.ownerReferences",
                                                              OURS))],
                 lambda: [], id="a-pvc-is-never-deleted-even-when-owned"),
    pytest.param(lambda: [deployment()], lambda: [foreign(observe(deployment(image="x")))],
                 lambda: [Skip(*DEPLOY, "exists and is not owned by this InferenceService")],
                 id="same-name-owned-by-another-is-skipped-not-patched"),
    pytest.param(lambda: [deployment(image="runtime:2")],
                 lambda: [edit(observe(deployment()), "metadata.deletionTimestamp", "now")],
                 lambda: [], id="terminating-object-is-waited-for"),
    pytest.param(lambda: [pvc(size="200Gi")], lambda: [observe(pvc())],
                 lambda: [Patch(*CLAIM, {"spec": {"resources": {"requests": {
                     "storage": "200Gi"}}}})], id="pvc-storage-grows"),
    pytest.param(lambda: [pvc(size="102400Mi")], lambda: [observe(pvc())], lambda: [],
                 id="pvc-same-size-in-other-units-does-nothing"),
    pytest.param(lambda: [pvc(size="50Gi")], lambda: [observe(pvc())],
                 lambda: [Skip(*CLAIM, "spec.resources.requests.storage 50Gi is less than "
                                       "100Gi; a volume cannot shrink")],
                 id="pvc-shrink-is-skipped"),
    pytest.param(lambda: [edit(pvc(access="ReadWriteOnce"), "metadata.labels.new", "1")],
                 lambda: [observe(pvc())],
                 lambda: [Patch(*CLAIM, {"metadata": {"labels": {"new": "1"}}}),
                          Skip(*CLAIM, "spec.accessModes differ and cannot be changed on a "
                                       "PersistentVolumeClaim; keeping the existing model "
                                       "cache")],
                 id="pvc-immutable-change-is-skipped-never-deleted"),
    pytest.param(lambda: [edit(pvc(), "spec.storageClassName", "fast")],
                 lambda: [observe(pvc())],
                 lambda: [Skip(*CLAIM, "spec.storageClassName differ and cannot be changed on "
                                       "a PersistentVolumeClaim; keeping the existing model "
                                       "cache")],
                 id="pvc-storage-class-change-is-skipped"),
]


@pytest.mark.parametrize("desired, observed, expected", CASES)
def test_plan(desired, observed, expected):
    assert plan(desired(), observed(), OWNER) == expected()


@pytest.mark.parametrize("desired, observed, expected", CASES)
def test_applying_the_plan_converges(desired, observed, expected):
    """Level-triggered: passes until nothing is left but Skips (Deletes take a second pass)."""
    state = observed()
    for _ in range(3):
        actions = plan(desired(), state, OWNER)
        state = apply(state, actions)
    assert all(isinstance(a, Skip) for a in plan(desired(), state, OWNER))


@pytest.mark.parametrize("desired, observed, expected", CASES)
def test_a_second_pass_over_the_first_ones_result_is_empty(desired, observed, expected):
    """Idempotent: after the first pass only what it could not do is left, the re-creation
    of what it deleted and the differences it skips on purpose."""
    first = plan(desired(), observed(), OWNER)
    deleted = {(a.kind, a.name) for a in first if isinstance(a, Delete)}
    recreated = [Create(obj) for obj in desired() if (obj["kind"], obj["metadata"]["name"])
                 in deleted]
    skipped = [a for a in first if isinstance(a, Skip)]
    assert plan(desired(), apply(observed(), first), OWNER) == recreated + skipped


def test_deletes_come_first_and_applies_follow_dependency_order():
    desired = [service(), deployment(), edit(job(), "spec.backoffLimit", 1), pvc(size="1Ti")]
    observed = synced() + [observe(job(name="old-dl"))]
    assert kinds(plan(desired, observed, OWNER)) == [
        ("Delete", "Job"), ("Patch", "PersistentVolumeClaim"), ("Patch", "Job")]


def test_a_desired_object_without_namespace_is_rejected():
    with pytest.raises(ValueError, match="metadata.namespace"):
        plan([edit(service(), "metadata.namespace", "")], [], OWNER)


@pytest.mark.parametrize("desired, observed, same", [
    pytest.param({"a": 1}, {"a": 1, "b": 2}, True, id="extra-observed-key"),
    pytest.param({"a": None}, {"a": 5}, True, id="none-is-no-opinion"),
    pytest.param({"a": {}}, {}, True, id="empty-dict-matches-missing"),
    pytest.param({"a": []}, {}, True, id="empty-list-matches-missing"),
    pytest.param({"a": [1]}, {}, False, id="list-vs-missing"),
    pytest.param([{"a": 1}], [{"a": 1, "b": 2}], True, id="list-elements-are-subsets"),
    pytest.param([1, 2], [1, 2, 3], False, id="list-length-differs"),
    pytest.param({"a": True}, {"a": 1}, False, id="bool-is-not-int"),
    pytest.param({"limits": {"memory": "1Gi"}}, {"limits": {"memory": "1024Mi"}}, True,
                 id="quantity-by-value"),
    pytest.param({"requests": {"cpu": 1}}, {"requests": {"cpu": "1000m"}}, True,
                 id="quantity-int-vs-milli"),
    pytest.param({"limits": {"memory": "1G"}}, {"limits": {"memory": "1Gi"}}, False,
                 id="quantity-decimal-vs-binary"),
    pytest.param({"image": "1Gi"}, {"image": "1024Mi"}, False,
                 id="quantity-rules-only-where-quantities-live"),
])
def test_matches(desired, observed, same):
    assert matches(desired, observed) is same


@pytest.mark.parametrize("text, value", [
    ("100Gi", 100 * 2**30), ("500m", 0.5), ("1.5", 1.5), ("1e3", 1000), ("2k", 2000),
    (4, 4), ("12Mi", 12 * 2**20), ("Gi", None), ("abc", None), ("", None), (None, None),
])
def test_parse_quantity(text, value):
    parsed = parse_quantity(text)
    assert (parsed if parsed is None else float(parsed)) == value
