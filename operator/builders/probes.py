"""Health checks of the runtime container.

The runtime starts listening only once the weights are loaded and a warm-up step ran, so
`/health` answering at all means ready; it turns 503 when the engine loop stops making
progress for 60 s (a hung GPU), which liveness acts on. The startup probe holds liveness off
for as long as loading may take, sized from the model.
"""
from __future__ import annotations

import math
from typing import Any

HEALTH_PATH = "/health"
PORT_NAME = "http"

STARTUP_FIXED_SECONDS = 120          # process start, imports, CUDA/NCCL init, KV profiling, warm-up
GPU_READ_BYTES_PER_SECOND = 100 * 2**20  # conservative: network volumes, cold page cache
CPU_READ_BYTES_PER_SECOND = 40 * 2**20   # CPU runs also convert dtypes and pack weights
UNKNOWN_SIZE_BUDGET_SECONDS = 1800
MAX_BUDGET_SECONDS = 2 * 3600
STARTUP_PERIOD_SECONDS = 10


def startup_budget_seconds(model_bytes: int | None, gpus: int) -> int:
    """How long a replica may take from container start to serving:

        min(MAX_BUDGET_SECONDS, STARTUP_FIXED_SECONDS + ceil(model_bytes / rate))

    rate = 100 MiB/s with GPUs, 40 MiB/s on CPU (gpus == 0); an unknown size gets
    UNKNOWN_SIZE_BUDGET_SECONDS (30 min). E.g. 15 GB (a 7B model in bf16) on a GPU: 120 + 144 =
    264 s. Generous by design: too short a budget restarts a pod that was about to be ready,
    over and over; too long only delays noticing a pod that hangs while loading.
    """
    if model_bytes is None:
        return UNKNOWN_SIZE_BUDGET_SECONDS
    rate = GPU_READ_BYTES_PER_SECOND if gpus > 0 else CPU_READ_BYTES_PER_SECOND
    return min(MAX_BUDGET_SECONDS, STARTUP_FIXED_SECONDS + math.ceil(model_bytes / rate))


def _http_get() -> dict[str, Any]:
    return {"path": HEALTH_PATH, "port": PORT_NAME}


def startup_probe(budget_seconds: int) -> dict[str, Any]:
    """Connection refused while loading counts as a failure; `budget_seconds` of them in a row
    and the container is restarted."""
    return {"httpGet": _http_get(), "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, math.ceil(budget_seconds / STARTUP_PERIOD_SECONDS))}


def readiness_probe() -> dict[str, Any]:
    """Out of the Service within 15 s of /health failing. A 3 s timeout: a replica busy
    streaming may answer slowly, and dropping it would only load the others more."""
    return {"httpGet": _http_get(), "periodSeconds": 5, "timeoutSeconds": 3,
            "failureThreshold": 3}


def liveness_probe() -> dict[str, Any]:
    """Restarted after about a minute of failures, on top of the runtime's own 60 s without
    progress before /health turns 503."""
    return {"httpGet": _http_get(), "periodSeconds": 10, "timeoutSeconds": 5,
            "failureThreshold": 6}
