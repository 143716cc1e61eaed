"""The real operator (kopf, our handlers, our API client) against the Kubernetes emulator: an
InferenceService walks Pending -> Downloading -> Loading -> Ready as the test plays the Job
controller, the kubelet and the Deployment controller; spec changes roll the pods (adapter
changes too), edits and deletions of children are undone, a failed download ends in Failed
with its typed reason."""
from __future__ import annotations

import json
import time

import pytest

from crd_validation import apply_defaults, crd_schema
from infernetes.operator import naming
from infernetes.runtime.download.failures import EXIT_CODES, DownloadFailure
from k8s_harness import kopf_runner, wait_for

NS = "ml"
SOURCE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_BYTES = 270_000_000


@pytest.fixture
def operator(k8s, monkeypatch):
    monkeypatch.setenv("INFERNETES_OPERATOR_RESYNC_SECONDS", "0.3")
    monkeypatch.setenv("INFERNETES_OPERATOR_RUNTIME_IMAGE", "example.com/runtime:test")
    with kopf_runner("-m", "infernetes.operator.handlers") as runner:
        yield runner
    assert runner.exception is None, runner.output


def create_isvc(k8s, name: str, spec: dict) -> dict:
    """As the API server admits it: with the CRD's defaults."""
    obj = {"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": name, "namespace": NS}, "spec": spec}
    return k8s.create(apply_defaults(obj, crd_schema()))


def status(k8s, name: str) -> dict:
    return (k8s.get("inferenceservices", NS, name) or {}).get("status") or {}


def phase_is(k8s, name: str, phase: str):
    return lambda: status(k8s, name).get("phase") == phase and status(k8s, name)


def start_download_pod(k8s, job_name: str, log: list[dict], terminated: dict | None = None):
    """What the Job controller and the kubelet would do: a pod with the Job's label, and the
    JSON lines `infernetes download` prints."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{job_name}-abcde", "namespace": NS,
                        "labels": {naming.LABEL_JOB_NAME: job_name}},
           "spec": {"containers": [{"name": "download", "image": "x"}]}}
    state = {"terminated": terminated} if terminated else {"running": {}}
    pod["status"] = {"phase": "Failed" if terminated else "Running",
                     "containerStatuses": [{"name": "download", "state": state, "ready": True,
                                            "restartCount": 0, "image": "x", "imageID": ""}]}
    if k8s.get("pods", NS, pod["metadata"]["name"]) is None:
        k8s.create(pod)
    k8s.pod_logs[(NS, pod["metadata"]["name"])] = "".join(json.dumps(e) + "\n" for e in log)


def progress(done: int) -> dict:
    return {"event": "progress", "bytes": done, "totalBytes": MODEL_BYTES,
            "bytesPerSecond": 50_000_000.0, "etaSeconds": (MODEL_BYTES - done) / 50e6}


def owned_by(obj: dict, isvc: dict) -> bool:
    return any(ref["uid"] == isvc["metadata"]["uid"] and ref.get("controller")
               for ref in obj["metadata"].get("ownerReferences") or [])


def events(k8s, reason: str) -> list[dict]:
    return [e for e in k8s.list("events", NS) if e.get("reason") == reason]


def test_lifecycle_from_apply_to_ready_then_update_repair_and_delete(k8s, operator):
    isvc = create_isvc(k8s, "smol", {"model": {"source": SOURCE}, "resources": {"gpus": 1}})
    claim = naming.cache_claim_name(SOURCE)
    job_name = naming.download_job_name("smol", SOURCE)

    # Applied: the cache, the download Job and the Service appear; nothing serves yet.
    job = wait_for(lambda: k8s.get("jobs", NS, job_name))
    service = wait_for(lambda: k8s.get("services", NS, "smol"))
    pvc = wait_for(lambda: k8s.get("persistentvolumeclaims", NS, claim))
    assert owned_by(job, isvc) and owned_by(service, isvc)
    assert not pvc["metadata"].get("ownerReferences")  # the cache outlives the service
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "example.com/runtime:test"
    assert SOURCE in container["args"] + container.get("command", [])
    pending = wait_for(lambda: phase_is(k8s, "smol", "Pending")() and status(k8s, "smol").get(
        "url") and status(k8s, "smol"))
    assert pending["url"] == "http://smol.ml.svc.cluster.local/v1"
    assert k8s.get("deployments", NS, "smol") is None

    # Downloading: the pod's progress lines reach status.download.
    start_download_pod(k8s, job_name, [progress(90_000_000)])
    downloading = wait_for(phase_is(k8s, "smol", "Downloading"))
    assert downloading["download"]["bytes"] == 90_000_000
    assert downloading["download"]["totalBytes"] == MODEL_BYTES
    assert "Downloading" in downloading["message"] or "download" in downloading["message"]

    # The Job completes: the cache is marked, the Deployment appears, the Job goes.
    start_download_pod(k8s, job_name, [progress(MODEL_BYTES),
                                       {"event": "done", "bytes": MODEL_BYTES,
                                        "totalBytes": MODEL_BYTES}])
    k8s.patch_status("jobs", NS, job_name, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})
    deployment = wait_for(lambda: k8s.get("deployments", NS, "smol"))
    assert owned_by(deployment, isvc)
    assert wait_for(phase_is(k8s, "smol", "Loading"))["modelBytes"] == MODEL_BYTES
    annotations = k8s.get("persistentvolumeclaims", NS, claim)["metadata"]["annotations"]
    assert annotations[naming.ANNOTATION_MODEL_BYTES] == str(MODEL_BYTES)
    wait_for(lambda: k8s.get("jobs", NS, job_name) is None)

    # The Deployment becomes available: Ready, with the URL and replica counts.
    k8s.patch_status("deployments", NS, "smol", {"replicas": 1, "readyReplicas": 1,
                                                 "availableReplicas": 1, "conditions": [
                                                     {"type": "Available", "status": "True"}]})
    ready = wait_for(phase_is(k8s, "smol", "Ready"))
    assert ready["ready"] == "1/1" and ready["readyReplicas"] == 1
    assert ready["observedGeneration"] == isvc["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in ready["conditions"]} == {
        "ModelCached": "True", "Available": "True", "Ready": "True"}
    for reason in ("Downloading", "Loading", "Ready"):
        assert wait_for(lambda: events(k8s, reason)), reason

    # Settled: resync passes change nothing (no roll without a spec change).
    settled = {kind: k8s.get(kind, NS, "smol")["metadata"]["resourceVersion"]
               for kind in ("deployments", "services", "inferenceservices")}
    time.sleep(5 * 0.3)  # five resync periods
    assert settled == {kind: k8s.get(kind, NS, "smol")["metadata"]["resourceVersion"]
                       for kind in settled}

    # A spec change rolls the pods: new args, new spec hash.
    old_hash = _spec_hash(k8s)
    k8s.patch("inferenceservices", NS, "smol", {"spec": {"engine": {"maxNumSeqs": 32}}})
    wait_for(lambda: "32" in _runtime_args(k8s) and _spec_hash(k8s) != old_hash)
    args = _runtime_args(k8s)
    assert args[args.index("--max-num-seqs") + 1] == "32"
    generation = k8s.get("inferenceservices", NS, "smol")["metadata"]["generation"]
    wait_for(lambda: status(k8s, "smol").get("observedGeneration") == generation)

    # Scaling through spec.replicas reaches the Deployment without a roll.
    rolled_hash = _spec_hash(k8s)
    k8s.patch("inferenceservices", NS, "smol", {"spec": {"replicas": 3}})
    wait_for(lambda: k8s.get("deployments", NS, "smol")["spec"]["replicas"] == 3)
    assert _spec_hash(k8s) == rolled_hash
    assert wait_for(lambda: status(k8s, "smol").get("desiredReplicas") == 3)

    # Children edited or deleted by someone else are put back.
    k8s.delete("services", NS, "smol")
    wait_for(lambda: k8s.get("services", NS, "smol") is not None)
    k8s.patch("deployments", NS, "smol", {"spec": {"template": {"spec": {"containers": [
        {"name": "runtime", "image": "evil.example.com/x:1"}]}}}})
    wait_for(lambda: _container(k8s)["image"] == "example.com/runtime:test")

    # Deleting the InferenceService removes its children; the model cache stays for reuse.
    k8s.delete("inferenceservices", NS, "smol")
    wait_for(lambda: k8s.get("inferenceservices", NS, "smol") is None)
    wait_for(lambda: k8s.get("deployments", NS, "smol") is None
             and k8s.get("services", NS, "smol") is None)
    assert k8s.get("persistentvolumeclaims", NS, claim) is not None

    # Re-created with the same source: the cache is complete, so no download at all.
    create_isvc(k8s, "smol", {"model": {"source": SOURCE}})
    wait_for(lambda: k8s.get("deployments", NS, "smol"))
    assert k8s.get("jobs", NS, job_name) is None
    assert wait_for(phase_is(k8s, "smol", "Loading"))["modelBytes"] == MODEL_BYTES


@pytest.mark.parametrize("reason", [DownloadFailure.AuthFailed, DownloadFailure.NotFound])
def test_failed_download_ends_in_failed_with_its_typed_reason(k8s, operator, reason):
    source = "hf://meta-llama/Llama-3.1-8B-Instruct"
    create_isvc(k8s, "gated", {"model": {"source": source}})
    job_name = naming.download_job_name("gated", source)
    wait_for(lambda: k8s.get("jobs", NS, job_name))
    message = f"{reason.value}: 401 Client Error for url ..."
    start_download_pod(k8s, job_name, [{"event": "failed", "reason": reason.value,
                                        "message": message}],
                       terminated={"exitCode": EXIT_CODES[reason], "reason": "Error",
                                   "message": json.dumps({"reason": reason.value,
                                                          "message": message})})
    k8s.patch_status("jobs", NS, job_name, {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
         "message": f"Container download for pod {NS}/{job_name}-abcde failed with exit code "
                    f"{EXIT_CODES[reason]} matching FailJob rule at index 0"}]})
    failed = wait_for(phase_is(k8s, "gated", "Failed"))
    cached = next(c for c in failed["conditions"] if c["type"] == "ModelCached")
    assert cached["status"] == "False" and cached["reason"] == reason.value
    assert reason.value in failed["message"]
    warning = wait_for(lambda: events(k8s, reason.value))[0]
    assert warning["type"] == "Warning"
    assert k8s.get("deployments", NS, "gated") is None


def test_spec_the_runtime_cannot_take_is_reported_not_retried(k8s, operator):
    """An object that skipped the CRD's validation (the emulator does not validate) gets a
    Failed status naming the field, and a Warning event."""
    k8s.create({"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": "bad", "namespace": NS},
                "spec": {"model": {"source": SOURCE}, "resources": {"gpus": -3}}})
    failed = wait_for(phase_is(k8s, "bad", "Failed"))
    assert "spec.resources.gpus" in failed["message"]
    assert wait_for(lambda: events(k8s, "InvalidSpec"))
    assert k8s.get("jobs", NS, naming.download_job_name("bad", SOURCE)) is None


def _deployment(k8s, name: str = "smol") -> dict:
    return k8s.get("deployments", NS, name)


def _container(k8s, name: str = "smol") -> dict:
    return _deployment(k8s, name)["spec"]["template"]["spec"]["containers"][0]


def _runtime_args(k8s, name: str = "smol") -> list[str]:
    return _container(k8s, name).get("args", [])


def _spec_hash(k8s, name: str = "smol") -> str:
    return _deployment(k8s, name)["spec"]["template"]["metadata"]["annotations"][
        naming.ANNOTATION_SPEC_HASH]


def test_two_services_with_one_source_share_the_cache_and_one_download(k8s, operator):
    create_isvc(k8s, "first", {"model": {"source": SOURCE}})
    first_job = naming.download_job_name("first", SOURCE)
    wait_for(lambda: k8s.get("jobs", NS, first_job))
    create_isvc(k8s, "second", {"model": {"source": SOURCE}})
    wait_for(lambda: k8s.get("services", NS, "second"))
    time.sleep(1.0)  # a few passes of the second: it must not start a second writer
    assert k8s.get("jobs", NS, naming.download_job_name("second", SOURCE)) is None
    assert status(k8s, "second")["phase"] == "Pending"

    start_download_pod(k8s, first_job, [{"event": "done", "bytes": MODEL_BYTES,
                                         "totalBytes": MODEL_BYTES}])
    k8s.patch_status("jobs", NS, first_job, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})
    for name in ("first", "second"):
        wait_for(lambda: k8s.get("deployments", NS, name))
        assert wait_for(phase_is(k8s, name, "Loading"))["modelBytes"] == MODEL_BYTES
    assert k8s.get("jobs", NS, naming.download_job_name("second", SOURCE)) is None
    assert len(k8s.list("persistentvolumeclaims", NS)) == 1


def test_adapter_changes_roll_the_deployment_in_place(k8s, operator):
    """Adding, changing and removing adapters each patch the one Deployment (same uid: a
    rolling update with maxUnavailable 0, not a delete); removing the last also removes the
    init containers that mounted the adapters' volume."""
    create_isvc(k8s, "lora", {"model": {"source": "pvc://models/llama"}})
    uid = wait_for(lambda: _deployment(k8s, "lora"))["metadata"]["uid"]
    assert "--enable-lora" not in _runtime_args(k8s, "lora")
    hashes = [_spec_hash(k8s, "lora")]

    sql = {"name": "sql", "source": "hf://org/sql-lora"}
    chat = {"name": "chat", "source": "pvc://loras/chat"}
    for adapters, downloads in (([sql, chat], ["hf://org/sql-lora"]),
                                ([{**sql, "source": "hf://org/sql-lora@v2"}, chat],
                                 ["hf://org/sql-lora@v2"])):
        k8s.patch("inferenceservices", NS, "lora", {"spec": {"adapters": adapters}})
        wait_for(lambda: _spec_hash(k8s, "lora") not in hashes)
        hashes.append(_spec_hash(k8s, "lora"))
        args = _runtime_args(k8s, "lora")
        assert args[args.index("--lora-modules") + 1:][:2] == [
            "sql=/adapters/sql", "chat=/adapter-claims/loras/chat"]
        pod = _deployment(k8s, "lora")["spec"]["template"]["spec"]
        assert [c["args"][1] for c in pod["initContainers"]] == downloads
    deployment = _deployment(k8s, "lora")
    assert deployment["metadata"]["uid"] == uid
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}

    k8s.patch("inferenceservices", NS, "lora", {"spec": {"adapters": []}})
    wait_for(lambda: "--enable-lora" not in _runtime_args(k8s, "lora"))
    deployment = _deployment(k8s, "lora")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod and deployment["metadata"]["uid"] == uid
    assert {v["name"] for v in pod["volumes"]} == {"model", "dshm", "tmp"}
    assert _spec_hash(k8s, "lora") == hashes[0]  # the template it had before any adapter
    generation = k8s.get("inferenceservices", NS, "lora")["metadata"]["generation"]
    wait_for(lambda: status(k8s, "lora").get("observedGeneration") == generation)
    assert not [e for e in k8s.list("events", NS) if e.get("type") == "Warning"]
