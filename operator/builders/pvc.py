"""Where the model's weights live: the model-cache PersistentVolumeClaim of an hf:// source,
or the user's claim of a pvc:// source, and how the runtime pods mount either.

hf://  : the download Job writes the model to CACHE_MOUNT/MODEL_DIR of the cache claim; the
         runtime mounts the same claim read-only at MODEL_MOUNT and serves MODEL_MOUNT/MODEL_DIR.
pvc:// : nothing is downloaded; the runtime mounts CLAIM read-only at MODEL_MOUNT with
         subPath PATH and serves MODEL_MOUNT.
pvc:// adapters are parsed and mounted with the same functions (adapters.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infernetes.operator import naming
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import InferenceServiceSpec
from infernetes.runtime.download.source import PVCSource, parse_model_source

CACHE_MOUNT = "/cache"   # where the download Job mounts the cache claim (read-write)
MODEL_MOUNT = "/models"  # where the runtime mounts the model's claim (read-only)
MODEL_DIR = "model"      # the folder of the model inside a cache claim
MODEL_VOLUME = "model"   # the runtime pod's volume of the model's claim


@dataclass(frozen=True, slots=True)
class ModelVolume:
    """The claim the runtime reads the model from, and where it finds the model there."""
    claim_name: str
    sub_path: str | None  # mounted part of the claim; None: all of it
    model_path: str       # what `infernetes serve` is given


def is_hub_source(source: str) -> bool:
    """True for an hf:// source (fetched with `infernetes download`), False for pvc://."""
    return source.startswith("hf://")


def needs_download(spec: InferenceServiceSpec) -> bool:
    """True when the model must be fetched into a cache claim first (hf:// sources)."""
    return is_hub_source(spec.model.source)


def pvc_source(source: str, field: str) -> PVCSource:
    """The claim and path of a pvc:// source. Raises ValueError naming `field` when the path is
    unusable (e.g. `..`), which the CRD's pattern lets through."""
    try:
        parsed = parse_model_source(source)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from e
    if not isinstance(parsed, PVCSource):
        raise ValueError(f"{field}: {source!r} is neither hf:// nor pvc://")
    return parsed


def claim_volume(name: str, claim_name: str) -> dict[str, Any]:
    """A pod volume of an existing claim, read-only: the runtime never writes weights."""
    return {"name": name, "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True}}


def model_volume(spec: InferenceServiceSpec) -> ModelVolume:
    """Raises ValueError naming spec.model.source when a pvc:// path is unusable."""
    source = spec.model.source
    if needs_download(spec):
        return ModelVolume(naming.cache_claim_name(source), None, f"{MODEL_MOUNT}/{MODEL_DIR}")
    parsed = pvc_source(source, "spec.model.source")
    return ModelVolume(parsed.claim, parsed.path or None, MODEL_MOUNT)


def cache_labels(source: str) -> dict[str, str]:
    """No instance labels: the claim is shared by every InferenceService with this source."""
    return {naming.LABEL_NAME: "infernetes", naming.LABEL_COMPONENT: naming.COMPONENT_CACHE,
            naming.LABEL_MANAGED_BY: naming.MANAGER,
            naming.LABEL_SOURCE_HASH: naming.source_hash(source)}


def build_cache_pvc(isvc: InferenceService, config: OperatorConfig) -> dict[str, Any]:
    """The model cache of an hf:// source. It has no owner reference: it is keyed by the
    source, outlives the InferenceService, and a re-created one with the same source finds the
    model already downloaded. Raises ValueError for a source that needs no download."""
    spec = isvc.spec
    if not needs_download(spec):
        raise ValueError(f"spec.model.source: {spec.model.source!r} needs no model cache")
    source = spec.model.source
    pvc_spec: dict[str, Any] = {
        "accessModes": [spec.cache.access_mode.value],
        "resources": {"requests": {"storage": spec.cache.size}},
    }
    if spec.cache.storage_class_name is not None:
        pvc_spec["storageClassName"] = spec.cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": naming.cache_claim_name(source), "namespace": isvc.namespace,
                     "labels": cache_labels(source),
                     "annotations": {naming.ANNOTATION_SOURCE: source}},
        "spec": pvc_spec,
    }
