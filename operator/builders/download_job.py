"""The Job that fills the model cache: `infernetes download SOURCE /cache/model`.

The download is resumable and marks the folder complete, so a retried or re-created Job
continues where the last one stopped, and one over a filled cache ends at once. Its exit code
says why it failed (runtime/download/failures.py): the permanent reasons fail the Job at once
(podFailurePolicy), a network error is retried inside the process and then by backoffLimit.
"""
from __future__ import annotations

from typing import Any

from infernetes.operator import naming
from infernetes.operator.builders.pvc import CACHE_MOUNT, MODEL_DIR, needs_download
from infernetes.operator.builders.security import (
    container_security_context, pod_security_context)
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.runtime.download.failures import EXIT_CODES, DownloadFailure

CONTAINER_NAME = "download"
DOWNLOAD_DEST = f"{CACHE_MOUNT}/{MODEL_DIR}"
PROGRESS_INTERVAL_SECONDS = 5
TMP_VOLUME = "tmp"  # an emptyDir every pod with a download container has
# Exit codes after which another attempt cannot succeed (bad token, no such model, full disk).
PERMANENT_EXIT_CODES = sorted(code for reason, code in EXIT_CODES.items()
                              if reason is not DownloadFailure.NetworkError)


def download_labels(isvc: InferenceService) -> dict[str, str]:
    """The source hash lets the operator find every Job that writes one cache claim."""
    return {**naming.common_labels(isvc.name, naming.COMPONENT_DOWNLOAD),
            naming.LABEL_SOURCE_HASH: naming.source_hash(isvc.spec.model.source)}


def pod_failure_policy() -> dict[str, Any]:
    """Fail at once on a permanent reason; an evicted or preempted pod is not a failure."""
    return {"rules": [
        {"action": "FailJob",
         "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                         "values": PERMANENT_EXIT_CODES}},
        {"action": "Ignore",
         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def download_container(isvc: InferenceService, config: OperatorConfig, name: str, source: str,
                       dest: str, dest_mount: dict[str, Any]) -> dict[str, Any]:
    """A container running `infernetes download SOURCE DEST`: the runtime image, the Hugging
    Face token of spec.model.tokenSecretRef, the restricted security context. `dest_mount` is
    the volume mount that holds DEST; the pod must also have an emptyDir volume named
    TMP_VOLUME (HOME, huggingface_hub's scratch files)."""
    spec = isvc.spec
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if spec.model.token_secret_ref is not None:
        ref = spec.model.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": ref.name, "key": ref.key}}})
    return {
        "name": name,
        "image": spec.image or config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["infernetes"],
        "args": ["download", source, dest,
                 "--progress-interval", str(PROGRESS_INTERVAL_SECONDS)],
        "env": env,
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"memory": "2Gi"}},
        "volumeMounts": [dest_mount, {"name": TMP_VOLUME, "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }


def build_download_job(isvc: InferenceService, config: OperatorConfig) -> dict[str, Any]:
    """A Job's pod template is immutable: a changed source gets a new Job (its name carries the
    source's hash). `podReplacementPolicy: Failed` keeps a terminating pod and its replacement
    from writing the same cache at once. Raises ValueError for a source that needs no
    download (pvc://)."""
    source = isvc.spec.model.source
    if not needs_download(isvc.spec):
        raise ValueError(f"spec.model.source: {source!r} needs no download")
    labels = download_labels(isvc)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": naming.download_job_name(isvc.name, source),
                     "namespace": isvc.namespace, "labels": labels,
                     "ownerReferences": [isvc.owner_reference()]},
        "spec": {
            "backoffLimit": config.download_backoff_limit,
            "podFailurePolicy": pod_failure_policy(),
            "podReplacementPolicy": "Failed",
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(writes_volumes=True),
                    "containers": [download_container(
                        isvc, config, CONTAINER_NAME, source, DOWNLOAD_DEST,
                        {"name": "cache", "mountPath": CACHE_MOUNT})],
                    "volumes": [
                        {"name": "cache", "persistentVolumeClaim": {
                            "claimName": naming.cache_claim_name(source)}},
                        {"name": TMP_VOLUME, "emptyDir": {}},
                    ],
                },
            },
        },
    }
