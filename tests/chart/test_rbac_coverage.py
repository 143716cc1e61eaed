"""The operator, started with the flags the chart's Deployment gives it, against the Kubernetes
emulator answering 403 to whatever the chart's RBAC does not allow (as the API server would):
an InferenceService goes all the way to Ready, through a spec change, repairs and a source
change, nothing the operator asks for is refused, and nearly every permission is used.

kopf itself, unless `settings.scanning.disabled`, lists and watches namespaces and CRDs
cluster-wide, which a namespaced Role does not allow; it retries each 403 for about a minute
(its error backoffs) before it falls back to the named namespaces, and watches nothing
meanwhile. The chart grants no cluster-wide read for that: the operator should turn scanning
off (its namespaces are exact names, and the chart installs the CRD before the operator)."""
from __future__ import annotations

import argparse
import functools
import json
import sys
import threading

import aiohttp.web
import attrs
import kopf
import pytest

from chart_render import find, render
from rbac_authorizer import Attributes, allows, request_attributes

import k8s_harness  # tests/operator's, on sys.path through chart_render
from crd_validation import apply_defaults, crd_schema
from emulator import Emulator
from infernetes.operator import naming

NS = "ml"
SOURCE, OTHER_SOURCE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "hf://org/other"


@attrs.define(kw_only=True)
class AuthorizingEmulator(Emulator):
    """The emulator behind an RBAC check of every request."""
    role_rules: dict = attrs.field(factory=dict)
    cluster_rules: list = attrs.field(factory=list)
    decisions: list = attrs.field(factory=list)  # (Attributes, allowed)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest):
        attributes = request_attributes(raw_request.method, raw_request.path, raw_request.query)
        if attributes is not None:
            allowed = allows(self.role_rules, self.cluster_rules, attributes)
            self.decisions.append((attributes, allowed))
            if not allowed:
                return aiohttp.web.json_response(status=403, data={
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403, "message": f"forbidden: {attributes}"})
        return await super().__call__(raw_request)


@pytest.fixture
def fresh_registry():
    previous = kopf.get_default_registry()
    kopf.set_default_registry(kopf.OperatorRegistry())
    yield
    kopf.set_default_registry(previous)


@pytest.fixture
def cluster(tmp_path, monkeypatch, fresh_registry):
    monkeypatch.setattr(k8s_harness, "Emulator", AuthorizingEmulator)
    cluster = k8s_harness.Cluster(tmp_path)
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    yield cluster
    cluster.close()


def run_chart_operator(objects, monkeypatch, disable_scanning: bool):
    """`infernetes operator` with the rendered Deployment's args and environment (ports off),
    in a thread; returns its stop flag, thread and errors once kopf is ready."""
    from infernetes.operator.cli import add_operator_commands
    from infernetes.operator.main import run_operator
    (container,) = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    add_operator_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["args"] + ["--metrics-port", "0", "--liveness-port", "0"])
    for variable in container["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    stop, ready = threading.Event(), threading.Event()
    settings = k8s_harness.fast_settings()
    settings.scanning.disabled = disable_scanning or settings.scanning.disabled
    monkeypatch.setattr(kopf, "run", functools.partial(kopf.run, stop_flag=stop,
                                                       ready_flag=ready, settings=settings))
    # The handlers in a fresh registry: run_operator imports them anew.
    monkeypatch.delitem(sys.modules, "infernetes.operator.handlers", raising=False)
    errors = []
    thread = threading.Thread(target=_capture, args=(errors, run_operator, args), daemon=True)
    thread.start()
    assert ready.wait(15), errors
    return stop, thread, errors


def _capture(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001  (reported by the test)
        errors.append(e)


def watching(objects, cluster, monkeypatch, disable_scanning=False):
    """Roles from `objects` in the emulator, an InferenceService, the operator running."""
    cluster.emulator.role_rules = {role["metadata"]["namespace"]: role["rules"]
                                   for role in find(objects, "Role")}
    assert not find(objects, "ClusterRole")
    isvc = {"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "smol", "namespace": NS},
            "spec": {"model": {"source": SOURCE}, "resources": {"gpus": 1}}}
    cluster.create(apply_defaults(isvc, crd_schema()))
    return run_chart_operator(objects, monkeypatch, disable_scanning)


def phase(cluster, name):
    return ((cluster.get("inferenceservices", NS, name) or {}).get("status") or {}).get("phase")


def complete_download(cluster, source):
    job_name = naming.download_job_name("smol", source)
    k8s_harness.wait_for(lambda: cluster.get("jobs", NS, job_name))
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{job_name}-x", "namespace": NS,
                        "labels": {naming.LABEL_JOB_NAME: job_name}},
           "spec": {"containers": [{"name": "download", "image": "x"}]},
           "status": {"phase": "Running"}}
    cluster.create(pod)
    cluster.pod_logs[(NS, pod["metadata"]["name"])] = json.dumps(
        {"event": "done", "bytes": 1000, "totalBytes": 1000}) + "\n"
    cluster.patch_status("jobs", NS, job_name, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})


def play_lifecycle(cluster):
    """Download, Ready, a spec change, edited and deleted children, a new source."""
    wait_for = k8s_harness.wait_for
    job_name = naming.download_job_name("smol", SOURCE)
    backoff = wait_for(lambda: cluster.get("jobs", NS, job_name))["spec"]["backoffLimit"]
    cluster.patch("jobs", NS, job_name, {"spec": {"backoffLimit": backoff + 1}})  # put back
    wait_for(lambda: cluster.get("jobs", NS, job_name)["spec"]["backoffLimit"] == backoff)
    complete_download(cluster, SOURCE)
    wait_for(lambda: cluster.get("deployments", NS, "smol"))
    cluster.patch_status("deployments", NS, "smol", {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Available", "status": "True"}]})
    wait_for(lambda: phase(cluster, "smol") == "Ready")
    cluster.patch("inferenceservices", NS, "smol", {"spec": {"replicas": 2}})
    wait_for(lambda: cluster.get("deployments", NS, "smol")["spec"]["replicas"] == 2)
    ports = cluster.get("services", NS, "smol")["spec"]["ports"]
    cluster.patch("services", NS, "smol", {"spec": {"ports": [{**ports[0], "port": 81}]}})
    wait_for(lambda: cluster.get("services", NS, "smol")["spec"]["ports"] == ports)
    cluster.delete("services", NS, "smol")
    wait_for(lambda: cluster.get("services", NS, "smol"))
    # A new source: a new download; the old runtime goes until the new model is cached.
    cluster.patch("inferenceservices", NS, "smol", {"spec": {"model": {"source": OTHER_SOURCE}}})
    wait_for(lambda: cluster.get("deployments", NS, "smol") is None)
    complete_download(cluster, OTHER_SOURCE)
    wait_for(lambda: cluster.get("deployments", NS, "smol"))


def test_chart_rbac_is_what_the_operator_uses(cluster, monkeypatch):
    """With kopf's scans off (see the module's docstring)."""
    objects = render({"watchNamespaces": [NS], "resyncSeconds": 0.3})
    stop, thread, errors = watching(objects, cluster, monkeypatch, disable_scanning=True)
    try:
        play_lifecycle(cluster)
    finally:
        stop.set()
        thread.join(15)
    assert not errors, errors
    decisions = cluster.emulator.decisions
    assert [a for a, allowed in decisions if not allowed] == []
    assert {a.namespace for a, _ in decisions} == {NS}
    used = {(a.verb, a.resource) for a, _ in decisions}
    granted = {(verb, resource) for rule in cluster.emulator.role_rules[NS]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # Every grant is used but one: plan.py deletes any owned child no longer desired, and a
    # Service always is, so far.
    assert granted - used == {("delete", "services")}


def test_operator_watches_at_once_with_a_namespaced_role(cluster, monkeypatch):
    objects = render({"watchNamespaces": [NS]})  # resync every 30 s, as shipped
    stop, thread, errors = watching(objects, cluster, monkeypatch)
    try:
        k8s_harness.wait_for(lambda: cluster.get("jobs", NS, naming.download_job_name(
            "smol", SOURCE)), timeout=3)
    finally:
        stop.set()
        thread.join(15)
    assert not errors, errors
    assert [a for a, allowed in cluster.emulator.decisions if not allowed] == []
