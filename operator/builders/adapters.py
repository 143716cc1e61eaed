"""How the runtime pods get spec.adapters (LoRA adapters), and where `infernetes serve` finds
each one (its `--lora-modules NAME=PATH`).

hf://  : an init container per adapter runs `infernetes download SOURCE ADAPTERS_MOUNT/DIR`
         into an emptyDir volume, which the runtime mounts read-only at ADAPTERS_MOUNT.
         Adapters are small (MBs), so every pod downloads its own copy: no cache claim, no
         Job, nothing shared between pods to coordinate or clean up. A pod whose download fails
         stays in Init (retried with backoff) and never becomes ready, so during a rollout the
         old pods keep serving.
pvc:// : the claim is mounted read-only, whole, at ADAPTER_CLAIMS_MOUNT/CLAIM, and the adapter
         is served from PATH inside it. Adapters on one claim share one volume; on the claim of
         a pvc:// model they share the model's volume (one pod volume per claim).

Every path is a function of the spec alone, so serve_args and the Deployment agree on it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from infernetes.operator.builders.download_job import download_container
from infernetes.operator.builders.pvc import (
    MODEL_VOLUME, ModelVolume, claim_volume, is_hub_source, pvc_source)
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import AdapterSpec, InferenceServiceSpec

ADAPTERS_MOUNT = "/adapters"              # the emptyDir of downloaded (hf://) adapters
ADAPTER_CLAIMS_MOUNT = "/adapter-claims"  # the claims of pvc:// adapters, one folder each
ADAPTERS_VOLUME = "adapters"
_SAFE_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


@dataclass(slots=True)
class AdapterPodParts:
    """What the runtime pod adds for its adapters."""
    init_containers: list[dict[str, Any]] = field(default_factory=list)  # hf:// downloads
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)  # the runtime's


def adapter_dir(name: str) -> str:
    """The folder of a downloaded adapter under ADAPTERS_MOUNT: its name, when that is one
    path segment; else (an adapter name may hold `/`) the name with `/` as `-` and a hash of
    the name, so that no two names share a folder and none leaves ADAPTERS_MOUNT."""
    if _SAFE_DIR.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.replace('/', '-')}-{digest}"


def adapter_path(adapter: AdapterSpec, index: int) -> str:
    """Where the runtime reads spec.adapters[index] from. Raises ValueError naming its source
    when a pvc:// path is unusable."""
    if is_hub_source(adapter.source):
        return f"{ADAPTERS_MOUNT}/{adapter_dir(adapter.name)}"
    parsed = pvc_source(adapter.source, f"spec.adapters[{index}].source")
    return f"{_claim_mount(parsed.claim)}/{parsed.path}".rstrip("/")


def _claim_mount(claim: str) -> str:
    return f"{ADAPTER_CLAIMS_MOUNT}/{claim}"


def lora_modules(spec: InferenceServiceSpec) -> list[str]:
    """`--lora-modules` values, NAME=PATH (the runtime splits at the first `=`, which an
    adapter name cannot hold), in spec order."""
    return [f"{adapter.name}={adapter_path(adapter, index)}"
            for index, adapter in enumerate(spec.adapters)]


def adapter_pod_parts(isvc: InferenceService, config: OperatorConfig,
                      model: ModelVolume) -> AdapterPodParts:
    """Empty without adapters, so that a pod template without adapters is what it always was.
    Init container `adapter-I` downloads spec.adapters[I]."""
    built = AdapterPodParts()
    volume_of = {model.claim_name: MODEL_VOLUME}  # claim -> its pod volume
    mounted: set[str] = set()
    for index, adapter in enumerate(isvc.spec.adapters):
        path = adapter_path(adapter, index)
        if is_hub_source(adapter.source):
            built.init_containers.append(download_container(
                isvc, config, f"adapter-{index}", adapter.source, path,
                {"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_MOUNT}))
            continue
        claim = pvc_source(adapter.source, f"spec.adapters[{index}].source").claim
        if claim in mounted:
            continue
        mounted.add(claim)
        if claim not in volume_of:
            volume_of[claim] = f"adapter-claim-{len(built.volumes)}"
            built.volumes.append(claim_volume(volume_of[claim], claim))
        # Whole, also when it is the model's claim (mounted at a subPath there).
        built.volume_mounts.append({"name": volume_of[claim], "mountPath": _claim_mount(claim),
                                    "readOnly": True})
    if built.init_containers:
        built.volumes.append({"name": ADAPTERS_VOLUME, "emptyDir": {}})
        built.volume_mounts.append({"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_MOUNT,
                                    "readOnly": True})
    return built
