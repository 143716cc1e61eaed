"""The Deployment of the runtime: `infernetes serve` replicas of one InferenceService.

A rollout happens exactly when the pod template changes: the template's hash is an annotation
on the pods and on the Deployment (naming.ANNOTATION_SPEC_HASH), so the operator compares one
string to tell whether a Deployment is current. Replicas are not in the template and do not
change the hash.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from infernetes.operator import naming
from infernetes.operator.builders.adapters import AdapterPodParts, adapter_pod_parts
from infernetes.operator.builders.probes import (
    PORT_NAME, liveness_probe, readiness_probe, startup_budget_seconds, startup_probe)
from infernetes.operator.builders.pvc import (
    MODEL_MOUNT, MODEL_VOLUME, ModelVolume, claim_volume, model_volume)
from infernetes.operator.builders.security import (
    container_security_context, pod_security_context)
from infernetes.operator.builders.serve_args import RUNTIME_PORT, serve_args
from infernetes.operator.config import OperatorConfig
from infernetes.operator.replicas import desired_replicas
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import InferenceServiceSpec, api_dict

CONTAINER_NAME = "runtime"
GRACE_MARGIN_SECONDS = 15  # beyond the drain timeout: uvicorn's shutdown and engine teardown
# Scheduling and pulling a multi-GB image come before the startup budget starts counting.
PROGRESS_MARGIN_SECONDS = 600
PROMETHEUS_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(RUNTIME_PORT),
                          "prometheus.io/path": "/metrics"}


def spec_hash(pod_template: dict[str, Any]) -> str:
    """sha256 of the template's canonical JSON, 16 hex digits."""
    canonical = json.dumps(pod_template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _env(isvc: InferenceService) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"},
                                 {"name": "INFERNETES_CACHE", "value": "/tmp/infernetes"}]
    ref = isvc.spec.api_key_secret_ref
    if ref is not None:  # from the Secret, not a flag: args show in `kubectl describe`
        env.append({"name": "INFERNETES_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _resources(spec: InferenceServiceSpec) -> dict[str, Any]:
    """No CPU limit: throttling a server shows as latency spikes, not as an error."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.resources.gpus > 0:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.resources.gpus)
    if spec.resources.memory is not None:
        requests["memory"] = limits["memory"] = spec.resources.memory
    if spec.resources.cpu is not None:
        requests["cpu"] = spec.resources.cpu
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _volumes(model: ModelVolume, config: OperatorConfig) -> list[dict[str, Any]]:
    return [
        claim_volume(MODEL_VOLUME, model.claim_name),
        # NCCL and torch share tensors between processes through /dev/shm.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _volume_mounts(model: ModelVolume) -> list[dict[str, Any]]:
    model_mount: dict[str, Any] = {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT,
                                   "readOnly": True}
    if model.sub_path is not None:
        model_mount["subPath"] = model.sub_path
    return [model_mount, {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"}]


def _container(isvc: InferenceService, config: OperatorConfig, model: ModelVolume,
               adapters: AdapterPodParts, model_bytes: int | None) -> dict[str, Any]:
    budget = startup_budget_seconds(model_bytes, isvc.spec.resources.gpus)
    container = {
        "name": CONTAINER_NAME,
        "image": isvc.spec.image or config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["infernetes"],
        "args": serve_args(isvc, config, model.model_path),
        "ports": [{"name": PORT_NAME, "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": _env(isvc),
        "volumeMounts": _volume_mounts(model) + adapters.volume_mounts,
        "startupProbe": startup_probe(budget),
        "readinessProbe": readiness_probe(),
        "livenessProbe": liveness_probe(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    resources = _resources(isvc.spec)
    if resources:
        container["resources"] = resources
    return container


def _pod_template(isvc: InferenceService, config: OperatorConfig,
                  model_bytes: int | None) -> dict[str, Any]:
    spec = isvc.spec
    model = model_volume(spec)
    adapters = adapter_pod_parts(isvc, config, model)
    # Ours win over extra_pod_labels: the selector depends on them.
    labels = {**config.extra_pod_labels,
              **naming.common_labels(isvc.name, naming.COMPONENT_RUNTIME)}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the runtime never calls the API server
        # No $<SERVICE>_PORT variables: a Service named like a prefix the runtime reads
        # (INFERNETES_...) would otherwise inject settings.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.drain_timeout_seconds + GRACE_MARGIN_SECONDS,
        "securityContext": pod_security_context(writes_volumes=False),
        "containers": [_container(isvc, config, model, adapters, model_bytes)],
        "volumes": _volumes(model, config) + adapters.volumes,
    }
    if adapters.init_containers:
        pod_spec["initContainers"] = adapters.init_containers
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [api_dict(t) for t in spec.resources.tolerations]
    return {"metadata": {"labels": labels, "annotations": dict(PROMETHEUS_ANNOTATIONS)},
            "spec": pod_spec}


def build_deployment(isvc: InferenceService, config: OperatorConfig,
                     model_bytes: int | None) -> dict[str, Any]:
    """`model_bytes`: the model's size (sizes the startup probe); None when unknown. Raises
    ValueError naming the field for a spec the builders cannot honour (see serve_args,
    pvc.model_volume and adapters.adapter_path). spec.adapters add init containers and volumes
    to the pods (adapters.py).

    RollingUpdate with maxSurge 1, maxUnavailable 0 keeps every replica serving during a
    rollout; it needs room (GPUs) for one extra replica, else the rollout waits for it.
    """
    template = _pod_template(isvc, config, model_bytes)
    template_hash = spec_hash(template)
    template["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH] = template_hash
    budget = startup_budget_seconds(model_bytes, isvc.spec.resources.gpus)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": naming.deployment_name(isvc.name), "namespace": isvc.namespace,
                     "labels": naming.common_labels(isvc.name, naming.COMPONENT_RUNTIME),
                     "annotations": {naming.ANNOTATION_SPEC_HASH: template_hash},
                     "ownerReferences": [isvc.owner_reference()]},
        "spec": {
            "replicas": desired_replicas(isvc.spec),
            "selector": {"matchLabels": naming.runtime_selector(isvc.name)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            # Loading a large model is progress too: no ProgressDeadlineExceeded before the
            # startup probe would give up.
            "progressDeadlineSeconds": budget + PROGRESS_MARGIN_SECONDS,
            "template": template,
        },
    }
