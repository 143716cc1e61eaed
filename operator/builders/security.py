"""The security context every pod the operator creates runs with: Pod Security Standards
"restricted" (non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp) and
a read-only root filesystem, so the only writable places are the volumes a builder mounts."""
from __future__ import annotations

from typing import Any

# The uid and gid the runtime image's files are readable by; fixed so that what the download
# Job writes into the model cache, the runtime pods can read.
RUN_AS_USER = 1000
RUN_AS_GROUP = 1000


def pod_security_context(writes_volumes: bool) -> dict[str, Any]:
    """`writes_volumes`: the pod writes to a PersistentVolumeClaim, which kubelet then makes
    group-writable for RUN_AS_GROUP (fsGroup). OnRootMismatch skips the recursive ownership
    change when the volume's root already fits: a filled model cache holds many GB."""
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if writes_volumes:
        context["fsGroup"] = RUN_AS_GROUP
        context["fsGroupChangePolicy"] = "OnRootMismatch"
    return context


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
