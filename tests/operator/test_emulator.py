"""The emulator behaves as the Kubernetes API does where the operator depends on it, and the real
kopf runs an operator against it end to end."""
from __future__ import annotations

import json
import textwrap
import urllib.request

import kmock
import pytest

from emulator import RESOURCES, as_resource
from k8s_harness import kopf_runner, wait_for

NS = "default"
ISVC_PATH = f"/apis/infernetes.io/v1alpha1/namespaces/{NS}/inferenceservices"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def isvc(name: str = "llm", model: str = "smollm2", **extra) -> dict:
    return {"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS}, "spec": {"model": model}, **extra}


def version(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


# An operator as small as can show kopf's whole cycle: finalizer, child with an owner reference,
# status through the subresource, an update handler on spec, a delete handler, events posted.
# Its handlers are sync and use urllib (run in kopf's threads), as no client library is a
# dependency.
OPERATOR = textwrap.dedent('''
    import json, os, urllib.request
    import kopf, yaml

    def api(method, path, body, content_type="application/json"):
        with open(os.environ["KUBECONFIG"]) as f:
            server = yaml.safe_load(f)["clusters"][0]["cluster"]["server"]
        request = urllib.request.Request(server + path, data=json.dumps(body).encode(),
                                         method=method, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    @kopf.on.create("infernetes.io", "v1alpha1", "inferenceservices")
    def create_config(body, spec, name, namespace, patch, **_):
        config = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-config"}, "data": {"model": spec["model"]}}
        kopf.adopt(config, owner=body)
        api("POST", f"/api/v1/namespaces/{namespace}/configmaps", config)
        patch.status["phase"] = "Pending"

    @kopf.on.update("infernetes.io", "v1alpha1", "inferenceservices", field="spec")
    def update_config(spec, name, namespace, **_):
        api("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{name}-config",
            {"data": {"model": spec["model"]}}, "application/merge-patch+json")

    @kopf.on.delete("infernetes.io", "v1alpha1", "inferenceservices")
    def say_goodbye(body, **_):
        kopf.info(body, reason="Deleting", message="goodbye")
''')


def test_kopf_operator_end_to_end(k8s, tmp_path):
    path = tmp_path / "operator.py"
    path.write_text(OPERATOR)
    with kopf_runner(str(path)) as runner:
        created = k8s.create(isvc(model="a"))

        config = wait_for(lambda: k8s.get("configmaps", NS, "llm-config"))
        assert config["data"] == {"model": "a"}
        [owner] = config["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == \
            ("InferenceService", "llm", created["metadata"]["uid"])
        served = wait_for(lambda: (obj := k8s.get("inferenceservices", NS, "llm"))
                          and obj.get("status", {}).get("phase") == "Pending" and obj)
        assert served["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        assert served["metadata"]["generation"] == 1  # finalizer, annotations, status: no bump

        updated = k8s.patch("inferenceservices", NS, "llm", {"spec": {"model": "b"}})
        assert updated["metadata"]["generation"] == 2
        wait_for(lambda: k8s.get("configmaps", NS, "llm-config")["data"] == {"model": "b"})

        deleting = k8s.delete("inferenceservices", NS, "llm")
        assert deleting["metadata"]["deletionTimestamp"]  # held by kopf's finalizer
        wait_for(lambda: k8s.get("inferenceservices", NS, "llm") is None)
        assert k8s.get("configmaps", NS, "llm-config") is None  # garbage-collected
        assert any(event["reason"] == "Deleting" and event["involvedObject"]["name"] == "llm"
                   for event in k8s.list("events", NS))

    assert runner.exit_code == 0 and runner.exception is None
    assert "Traceback" not in runner.output
    assert "inconsistencies" not in runner.output  # kopf re-reads what it patched


def test_an_operator_module_runs_again_with_its_handlers_once(k8s, tmp_path, monkeypatch):
    (tmp_path / "tiny_operator.py").write_text(OPERATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("first", "second"):
        with kopf_runner("-m", "tiny_operator") as runner:
            k8s.create(isvc(name))
            wait_for(lambda: k8s.get("configmaps", NS, f"{name}-config"))
        assert runner.output.count("Handler 'create_config' succeeded") == 1


def test_every_write_gets_a_new_resource_version(k8s):
    first = k8s.create(isvc("a"))
    second = k8s.create(isvc("b"))
    labelled = k8s.patch("inferenceservices", NS, "a", {"metadata": {"labels": {"x": "1"}}})
    assert version(first) < version(second) < version(labelled)
    meta = first["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert meta["uid"] != second["metadata"]["uid"]
    assert labelled["metadata"]["uid"] == meta["uid"]
    assert labelled["metadata"]["generation"] == 1  # metadata is not spec


def test_a_write_that_changes_nothing_keeps_the_resource_version(k8s):
    k8s.create(isvc())
    before = k8s.patch("inferenceservices", NS, "llm", {"spec": {"model": "b"}})
    after = k8s.patch("inferenceservices", NS, "llm", {"spec": {"model": "b"}})
    assert after == before
    assert read_watch(k8s, f"resourceVersion={version(before)}") == []  # and no event


def test_generation_grows_with_spec_changes_only(k8s):
    k8s.create(isvc())
    status, body = k8s.request("PATCH", f"{ISVC_PATH}/llm", {"spec": {"replicas": 2}}, MERGE)
    assert (status, body["metadata"]["generation"]) == (200, 2)
    _, body = k8s.request("PATCH", f"{ISVC_PATH}/llm/status", {"status": {"phase": "Ready"}},
                          MERGE)
    assert body["metadata"]["generation"] == 2
    _, body = k8s.request("PATCH", f"{ISVC_PATH}/llm",
                          {"metadata": {"annotations": {"a": "b"}, "generation": 7}}, MERGE)
    assert body["metadata"]["generation"] == 2  # and a client cannot set it


def test_status_subresource_is_written_apart_from_the_object(k8s):
    status, body = k8s.request("POST", ISVC_PATH, isvc(status={"phase": "Forged"}))
    assert status == 201 and "status" not in body  # a client cannot create a status

    _, body = k8s.request("PATCH", f"{ISVC_PATH}/llm/status",
                          {"spec": {"model": "other"}, "status": {"phase": "Ready"}}, MERGE)
    assert body["spec"] == {"model": "smollm2"} and body["status"] == {"phase": "Ready"}

    _, body = k8s.request("PATCH", f"{ISVC_PATH}/llm",
                          {"spec": {"model": "other"}, "status": {"phase": "Forged"}}, MERGE)
    assert body["spec"] == {"model": "other"} and body["status"] == {"phase": "Ready"}

    # A ConfigMap has no status subresource: a status written to it is kept.
    k8s.create({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": NS}})
    patched = k8s.patch("configmaps", NS, "c", {"status": {"x": 1}})
    assert patched["status"] == {"x": 1}


def test_the_test_writes_status_as_a_controller_would(k8s):
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "download", "namespace": NS}, "spec": {"template": {}}}
    k8s.create(job)
    done = k8s.patch_status("jobs", NS, "download", {"succeeded": 1})
    assert done["status"] == {"succeeded": 1} and done["metadata"]["generation"] == 1
    applied = k8s.apply({**job, "status": {"succeeded": 1, "conditions": [{"type": "Complete"}]}})
    assert applied["status"]["conditions"] == [{"type": "Complete"}]
    assert k8s.get("jobs", NS, "download")["kind"] == "Job"


def test_failed_json_patch_test_is_422_and_changes_nothing(k8s):
    created = k8s.create(isvc())
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
             {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    status, body = k8s.request("PATCH", f"{ISVC_PATH}/llm", stale, JSON_PATCH)
    assert (status, body["code"]) == (422, 422)
    assert k8s.get("inferenceservices", NS, "llm") == created

    fresh = [{**stale[0], "value": created["metadata"]["resourceVersion"]}, stale[1]]
    status, body = k8s.request("PATCH", f"{ISVC_PATH}/llm", fresh, JSON_PATCH)
    assert status == 200 and body["metadata"]["finalizers"] == ["f"]


def test_stale_resource_version_in_a_merge_patch_is_409(k8s):
    k8s.create(isvc())
    status, _ = k8s.request("PATCH", f"{ISVC_PATH}/llm",
                            {"metadata": {"resourceVersion": "0"}, "spec": {"model": "b"}}, MERGE)
    assert status == 409


def test_create_conflicts_and_generate_name(k8s):
    assert k8s.request("POST", ISVC_PATH, isvc())[0] == 201
    assert k8s.request("POST", ISVC_PATH, isvc())[0] == 409
    body = isvc()
    body["metadata"] = {"generateName": "llm-"}
    status, created = k8s.request("POST", ISVC_PATH, body)
    assert status == 201 and created["metadata"]["name"].startswith("llm-")
    assert len(created["metadata"]["name"]) == len("llm-") + 5
    body["metadata"] = {}
    assert k8s.request("POST", ISVC_PATH, body)[0] == 422


def test_list_has_kind_version_and_selects_by_labels(k8s):
    for name, tier in [("a", "gpu"), ("b", "cpu")]:
        k8s.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": NS, "labels": {"tier": tier}}})
    k8s.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "other"}})
    status, listing = k8s.request("GET", f"/api/v1/namespaces/{NS}/pods")
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "PodList")
    assert [pod["metadata"]["name"] for pod in listing["items"]] == ["a", "b"]
    assert int(listing["metadata"]["resourceVersion"]) == 3
    _, listing = k8s.request("GET", "/api/v1/pods?labelSelector=tier%3Dgpu")
    assert [pod["metadata"]["name"] for pod in listing["items"]] == ["a"]
    _, listing = k8s.request("GET", "/api/v1/pods?labelSelector=tier%21%3Dgpu")
    assert [pod["metadata"]["name"] for pod in listing["items"]] == ["b", "c"]
    _, listing = k8s.request("GET", "/api/v1/pods?fieldSelector=metadata.name%3Dc")
    assert [pod["metadata"]["name"] for pod in listing["items"]] == ["c"]


def read_watch(k8s, query: str) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of each event of a watch that ends by timeoutSeconds."""
    with urllib.request.urlopen(f"{k8s.url}{ISVC_PATH}?watch=true&timeoutSeconds=0.3&{query}",
                                timeout=10) as response:
        events = [json.loads(line) for line in response if line.strip()]
    return [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
            for e in events]


def test_watch_resumes_after_a_resource_version(k8s):
    listing_version = version(k8s.create(isvc("a")))
    k8s.patch("inferenceservices", NS, "a", {"spec": {"model": "b"}})
    k8s.create(isvc("b"))
    k8s.delete("inferenceservices", NS, "a")
    assert read_watch(k8s, f"resourceVersion={listing_version}") == [
        ("MODIFIED", "a", "2"), ("ADDED", "b", "3"), ("DELETED", "a", "4")]
    assert read_watch(k8s, "") == [("ADDED", "b", "3")]  # no version: the current state


def test_delete_waits_for_finalizers_then_collects_dependents(k8s):
    owner = k8s.create(isvc(metadata={"name": "llm", "namespace": NS, "finalizers": ["f"]}))
    reference = {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                 "name": "llm", "uid": owner["metadata"]["uid"]}
    k8s.create({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "child", "namespace": NS, "ownerReferences": [reference]}})

    deleting = k8s.delete("inferenceservices", NS, "llm")
    assert deleting["metadata"]["deletionTimestamp"] and deleting["metadata"]["generation"] == 2
    assert k8s.get("configmaps", NS, "child") is not None
    status, _ = k8s.request("PATCH", f"{ISVC_PATH}/llm", {"metadata": {"finalizers": None}}, MERGE)
    assert status == 200
    assert k8s.get("inferenceservices", NS, "llm") is None
    assert k8s.get("configmaps", NS, "child") is None
    assert k8s.request("DELETE", f"{ISVC_PATH}/llm")[0] == 404


def test_put_replaces_and_checks_the_resource_version(k8s):
    created = k8s.create(isvc())
    stale = {**isvc(model="b"), "metadata": {"name": "llm", "resourceVersion": "0"}}
    assert k8s.request("PUT", f"{ISVC_PATH}/llm", stale)[0] == 409
    status, body = k8s.request("PUT", f"{ISVC_PATH}/llm", isvc(model="b"))
    assert status == 200 and body["spec"] == {"model": "b"}
    assert body["metadata"]["uid"] == created["metadata"]["uid"]


def test_pod_log_answers_with_the_text_the_test_set(k8s):
    k8s.pod_logs[(NS, "download")] = '{"done": 1}\n{"done": 2}\n{"done": 3}\n'
    path = f"/api/v1/namespaces/{NS}/pods/download/log"
    assert k8s.request("GET", path) == (200, '{"done": 1}\n{"done": 2}\n{"done": 3}\n')
    assert k8s.request("GET", f"{path}?tailLines=1") == (200, {"done": 3})  # one JSON line
    assert k8s.request("GET", f"{path}?tailLines=2")[1] == '{"done": 2}\n{"done": 3}\n'
    assert k8s.request("GET", f"/api/v1/namespaces/{NS}/pods/nobody/log")[0] == 404


def test_discovery_serves_the_custom_resource(k8s):
    _, groups = k8s.request("GET", "/apis")
    assert "infernetes.io" in [group["name"] for group in groups["groups"]]
    _, listing = k8s.request("GET", "/apis/infernetes.io/v1alpha1")
    resources = {resource["name"]: resource for resource in listing["resources"]}
    assert set(resources) == {"inferenceservices", "inferenceservices/status",
                              "inferenceservices/scale"}
    main = resources["inferenceservices"]
    assert (main["kind"], main["namespaced"], main["shortNames"]) == \
        ("InferenceService", True, ["isvc"])


@pytest.mark.parametrize("plural", sorted(RESOURCES))
def test_the_resources_the_operator_uses_are_served(k8s, plural):
    resource = as_resource(plural)
    prefix = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    status, listing = k8s.request("GET", f"{prefix}/namespaces/{NS}/{plural}")
    assert status == 200 and listing["items"] == []


def test_a_reaction_fails_a_write_and_nothing_is_stored(k8s):
    k8s.emulator["post", kmock.resource("v1/configmaps")][:1] << 503
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert k8s.request("POST", f"/api/v1/namespaces/{NS}/configmaps", config)[0] == 503
    assert k8s.get("configmaps", NS, "c") is None
    assert k8s.request("POST", f"/api/v1/namespaces/{NS}/configmaps", config)[0] == 201
