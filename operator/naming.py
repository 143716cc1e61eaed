"""Names and labels of what the operator creates: one place, so builders, plan and status
agree, and so that the selectors of Services and Deployments match the pods they should."""
from __future__ import annotations

import hashlib

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ISVC = "infernetes.io/inference-service"
LABEL_SOURCE_HASH = "infernetes.io/model-source-hash"
ANNOTATION_SPEC_HASH = "infernetes.io/spec-hash"
ANNOTATION_SOURCE = "infernetes.io/model-source"
# On a model-cache PVC: the download into it completed; the value is the model's size in bytes.
ANNOTATION_MODEL_BYTES = "infernetes.io/model-bytes"
LABEL_JOB_NAME = "job-name"  # set by the Job controller on a Job's pods

MANAGER = "infernetes-operator"
COMPONENT_RUNTIME = "runtime"
COMPONENT_DOWNLOAD = "download"
COMPONENT_CACHE = "model-cache"

_MAX_NAME = 63  # what a label value, a Service or a Job's pods allow


def source_hash(source: str) -> str:
    """A short stable id of a model source: caches are keyed by it."""
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def cache_claim_name(source: str) -> str:
    """The model-cache PVC of a source. Keyed by the source, not the InferenceService, so a
    re-created InferenceService with the same source finds its model already there."""
    return f"infernetes-cache-{source_hash(source)}"


def download_job_name(isvc_name: str, source: str) -> str:
    """The download Job of an InferenceService for one source (a new source: a new Job)."""
    suffix = f"-dl-{source_hash(source)[:8]}"
    return isvc_name[:_MAX_NAME - len(suffix)].rstrip("-") + suffix


def deployment_name(isvc_name: str) -> str:
    return isvc_name


def service_name(isvc_name: str) -> str:
    return isvc_name


def common_labels(isvc_name: str, component: str) -> dict[str, str]:
    return {LABEL_NAME: "infernetes", LABEL_INSTANCE: isvc_name, LABEL_COMPONENT: component,
            LABEL_MANAGED_BY: MANAGER, LABEL_ISVC: isvc_name}


def runtime_selector(isvc_name: str) -> dict[str, str]:
    """The labels that select an InferenceService's runtime pods (Deployment, Service, scale)."""
    return {LABEL_ISVC: isvc_name, LABEL_COMPONENT: COMPONENT_RUNTIME}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
