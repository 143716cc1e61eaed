"""How the operator is set up (flags of `infernetes operator`, values of the Helm chart)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from infernetes import __version__

# The two images of a release (runtime/Dockerfile, operator/Dockerfile), tagged with the
# package's version; the Helm chart's defaults name the same ones.
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/infernetes/runtime:{__version__}"
DEFAULT_OPERATOR_IMAGE = f"ghcr.io/infernetes/operator:{__version__}"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # Seconds an in-flight request may take to finish after SIGTERM (runtime --drain-timeout).
    drain_timeout_seconds: int = 30
    # Size of the memory-backed /dev/shm of each runtime pod (NCCL needs it for TP).
    shm_size: str = "8Gi"
    # How often every InferenceService is reconciled even when nothing was seen changing.
    resync_seconds: float = 30.0
    download_backoff_limit: int = 6
    extra_pod_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """Settings from INFERNETES_OPERATOR_<FIELD> variables (e.g.
        INFERNETES_OPERATOR_RUNTIME_IMAGE), for `kopf run` without our CLI."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"INFERNETES_OPERATOR_{f.name.upper()}")
            if raw is None or f.name == "extra_pod_labels":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"INFERNETES_OPERATOR_{f.name.upper()}: expected a "
                                 f"{kind.__name__}, got {raw!r}") from None
        return cls(**values)
