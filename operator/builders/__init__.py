"""Pure builders: an InferenceService (and the operator's config) -> the Kubernetes objects it
needs, as plain dicts. No I/O; the plan compares them with what exists.

Which fields the API server will not let an update change: a Job's spec.template (and
selector), a PVC's spec except resources.requests.storage (growing only, where the
StorageClass allows expansion), a Deployment's spec.selector, a Service's spec.clusterIP.
"""
from __future__ import annotations

from typing import Any

from infernetes.operator.builders.deployment import build_deployment, spec_hash
from infernetes.operator.builders.download_job import build_download_job, pod_failure_policy
from infernetes.operator.builders.probes import (
    liveness_probe, readiness_probe, startup_budget_seconds, startup_probe)
from infernetes.operator.builders.pvc import (
    ModelVolume, build_cache_pvc, model_volume, needs_download)
from infernetes.operator.builders.serve_args import RUNTIME_PORT, serve_args
from infernetes.operator.builders.service import build_service
from infernetes.operator.config import OperatorConfig
from infernetes.operator.replicas import desired_replicas
from infernetes.operator.resource import InferenceService

__all__ = [
    "ModelVolume", "RUNTIME_PORT", "build_cache_pvc", "build_children", "build_deployment",
    "build_download_job", "build_service", "desired_replicas", "liveness_probe",
    "model_volume", "needs_download", "pod_failure_policy", "readiness_probe", "serve_args",
    "spec_hash", "startup_budget_seconds", "startup_probe",
]


def build_children(isvc: InferenceService, config: OperatorConfig, model_bytes: int | None,
                   download_complete: bool) -> list[dict[str, Any]]:
    """Every object the InferenceService should have now, in creation order.

    hf:// : the cache PVC, the download Job and the Service from the start (the URL resolves
            while the model downloads); the Deployment once `download_complete` (a runtime
            started earlier would only crash-loop on a half-filled folder).
    pvc://: the Service and the Deployment; nothing to download.

    `download_complete` is ignored for pvc:// sources. Raises ValueError naming the field for
    a spec the builders cannot honour.
    """
    if not needs_download(isvc.spec):
        return [build_service(isvc, config), build_deployment(isvc, config, model_bytes)]
    children = [build_cache_pvc(isvc, config), build_download_job(isvc, config),
                build_service(isvc, config)]
    if download_complete:
        children.append(build_deployment(isvc, config, model_bytes))
    return children
