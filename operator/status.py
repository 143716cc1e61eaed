"""An InferenceService's status from what its children report. Pure: the handler reads the
children (and the download pod's log and termination message), this decides.

Phases: Pending (no download pod running yet) -> Downloading -> Loading (no replica ready)
-> Ready (a replica serves; a rollout with some replicas ready stays Ready) or Failed (the
download failed, or the Deployment's rollout passed its progress deadline). A download in
progress outranks the Deployment: its rollout may stall while it waits for the weights.
Scaled to zero (desired replicas 0) is phase Ready with the Ready condition False, reason
ScaledToZero: nothing is wrong, and nothing serves.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from infernetes.operator import naming
from infernetes.operator.replicas import desired_replicas
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import (Condition, ConditionStatus, DownloadStatus,
                                      InferenceServiceStatus, Phase)
from infernetes.runtime.download.failures import EXIT_CODES

MODEL_CACHED = "ModelCached"
AVAILABLE = "Available"
READY = "Ready"
DOWNLOAD_FAILED = "DownloadFailed"  # the reason when the pod said none (killed, evicted, ...)
SCALED_TO_ZERO = "ScaledToZero"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
_EXIT_CODE = re.compile(r"exit code (\d+)")
_REASON = re.compile(r"^[A-Z][A-Za-z0-9]*$")  # a Kubernetes reason: CamelCase
_MAX_MESSAGE = 240  # status.message is a kubectl column: one line, bounded
_T, _F, _U = ConditionStatus.true, ConditionStatus.false, ConditionStatus.unknown


@dataclass(frozen=True)
class Observed:
    isvc: InferenceService
    now: str  # RFC 3339: the lastTransitionTime of conditions that change in this pass
    download_needed: bool  # False when the source is on a volume already (pvc://)
    download_job: dict[str, Any] | None = None
    download_progress: DownloadStatus | None = None  # parse_download_log(download pod's log)
    download_failure: tuple[str, str] | None = None  # parse_termination_message(...)
    deployment: dict[str, Any] | None = None
    service_exists: bool = False
    # The model cache holds this source completely (recorded on its PVC), this many bytes:
    # the download is done whatever became of its Job.
    cache_bytes: int | None = None


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class _Verdict:
    phase: Phase
    reason: str  # the Ready condition's reason, and a Failed event's
    message: str  # one line, unbounded (status.message is its truncation)
    cached: tuple[ConditionStatus, str, str]  # the ModelCached condition


def compute_status(o: Observed) -> InferenceServiceStatus:
    isvc, deployment_status = o.isvc, (o.deployment or {}).get("status") or {}
    desired = desired_replicas(isvc.spec)
    ready = deployment_status.get("readyReplicas") or 0
    verdict = _download_verdict(o) or _serving_verdict(o, desired, ready)
    available = _available(o.deployment, desired, ready)
    previous = {c.get("type"): c for c in isvc.status.get("conditions") or []
                if isinstance(c, dict)}
    conditions = [_condition(MODEL_CACHED, *verdict.cached, o, previous),
                  _condition(AVAILABLE, *available, o, previous),
                  _condition(READY, _T if verdict.reason == READY else _F, verdict.reason,
                             verdict.message, o, previous)]
    download, model_bytes = _download_fields(o)
    return InferenceServiceStatus(
        phase=verdict.phase, message=_truncate(verdict.message), conditions=conditions,
        download=download, model_bytes=model_bytes,
        url=isvc.url if o.service_exists else None,
        replicas=deployment_status.get("replicas") or 0, ready_replicas=ready,
        desired_replicas=desired, ready=f"{ready}/{desired}",
        selector=naming.selector_string(naming.runtime_selector(isvc.name)),
        observed_generation=isvc.generation)


def transitions(previous: dict[str, Any], new: InferenceServiceStatus) -> list[Event]:
    """Events for a change of phase (or of the reason of a failure, or of scaling to zero);
    none when the previous status already said the same."""
    new_reason = next((c.reason for c in new.conditions if c.type == READY), "")
    old_reason = next((c.get("reason") for c in previous.get("conditions") or []
                       if isinstance(c, dict) and c.get("type") == READY), None)
    if (previous.get("phase"), old_reason) == (new.phase.value, new_reason):
        return []
    if new.phase is Phase.Failed:
        return [Event("Warning", new_reason, new.message)]
    return [Event("Normal", SCALED_TO_ZERO if new_reason == SCALED_TO_ZERO else new.phase.value,
                  new.message)]


def _download_verdict(o: Observed) -> _Verdict | None:
    """The verdict while the download decides it (pending, running, failed); None after."""
    source = o.isvc.spec.model.source
    if not o.download_needed or o.cache_bytes is not None:
        return None
    job = o.download_job
    if _true_condition(job, "Complete"):
        return None
    failed = _true_condition(job, "Failed", "FailureTarget")
    if failed is not None:
        detail = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}"
        reason, detail = o.download_failure or (_reason_of_exit_code(detail), detail)
        message = _one_line(f"download failed ({reason}): {detail}")
        return _Verdict(Phase.Failed, reason, message, (_F, reason, _one_line(detail)))
    job_status = (job or {}).get("status") or {}
    running = job_status.get("ready", job_status.get("active")) or 0
    if job is None or (o.download_progress is None and running == 0):
        message = f"waiting for the download of {source} to start"
        return _Verdict(Phase.Pending, Phase.Pending.value, message,
                        (_U, "DownloadPending", message))
    message = download_message(source, o.download_progress, job_status.get("failed") or 0)
    return _Verdict(Phase.Downloading, Phase.Downloading.value, message,
                    (_F, "Downloading", message))


def _reason_of_exit_code(job_message: str) -> str:
    """The reason of the exit code a Job's podFailurePolicy names ("... failed with exit code
    10 matching FailJob rule ..."), for when the pod and its termination message are gone."""
    found = _EXIT_CODE.search(job_message)
    code = int(found.group(1)) if found else None
    return next((reason.value for reason, exit_code in EXIT_CODES.items() if exit_code == code),
                DOWNLOAD_FAILED)


def _serving_verdict(o: Observed, desired: int, ready: int) -> _Verdict:
    source = o.isvc.spec.model.source
    cached = ((_T, "Downloaded", f"{source} is in the model cache") if o.download_needed
              else (_T, "SourceOnVolume", f"{source} is read from its volume"))
    stalled = _stalled_rollout(o.deployment)
    if stalled is not None:
        message = _one_line(f"rollout failed ({PROGRESS_DEADLINE_EXCEEDED}): {ready}/{desired} "
                            f"replicas ready: {stalled.get('message', '')}")
        return _Verdict(Phase.Failed, PROGRESS_DEADLINE_EXCEEDED, message, cached)
    if desired == 0:
        return _Verdict(Phase.Ready, SCALED_TO_ZERO, "scaled to zero", cached)
    if ready >= 1:
        return _Verdict(Phase.Ready, READY, f"serving {o.isvc.served_name}: {ready}/{desired} "
                                            f"replicas ready", cached)
    return _Verdict(Phase.Loading, Phase.Loading.value, f"loading: {ready}/{desired} replicas "
                                                        f"ready", cached)


def _available(deployment: dict[str, Any] | None, desired: int,
               ready: int) -> tuple[ConditionStatus, str, str]:
    """From readyReplicas, not the Deployment's own Available: with one replica and the default
    maxUnavailable (25%, rounded down to 0) a Deployment is "Available" with no pod ready."""
    if deployment is None:
        return _U, "DeploymentNotCreated", "the Deployment does not exist yet"
    counts = f"{ready}/{desired} replicas ready"
    if ready >= 1:
        return _T, "MinimumReplicasAvailable", counts
    stalled = _stalled_rollout(deployment)
    if stalled is not None:
        return _F, PROGRESS_DEADLINE_EXCEEDED, _one_line(stalled.get("message", counts))
    if desired == 0:
        return _F, SCALED_TO_ZERO, "scaled to zero"
    return _F, "ReplicasNotReady", counts


def _download_fields(o: Observed) -> tuple[DownloadStatus | None, int | None]:
    """status.download and status.modelBytes. After the download, the pod's log may be gone
    (pods are garbage collected): the sizes stay as the previous status recorded them."""
    if not o.download_needed:
        return None, None
    if o.cache_bytes is not None:
        return DownloadStatus(bytes=o.cache_bytes, total_bytes=o.cache_bytes), o.cache_bytes
    progress = o.download_progress
    if not _true_condition(o.download_job, "Complete"):
        return progress, None
    if progress is None:
        try:
            progress = DownloadStatus.model_validate(o.isvc.status["download"])
        except (KeyError, TypeError, ValidationError):
            return None, o.isvc.status.get("modelBytes")
    total = progress.total_bytes if progress.total_bytes is not None else progress.bytes
    return DownloadStatus(bytes=total, total_bytes=total), total


def _condition(kind: str, status: ConditionStatus, reason: str, message: str, o: Observed,
               previous: dict[str, dict[str, Any]]) -> Condition:
    """lastTransitionTime moves only when the status does (reason and message may change)."""
    before = previous.get(kind) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status.value else None
    return Condition(type=kind, status=status, reason=reason, message=message,
                     last_transition_time=since or o.now, observed_generation=o.isvc.generation)


def _true_condition(obj: dict[str, Any] | None, *kinds: str) -> dict[str, Any] | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") in kinds and condition.get("status") == "True":
            return condition
    return None


def _stalled_rollout(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Deployment's Progressing condition when it says the rollout passed its deadline."""
    progressing = next((c for c in ((deployment or {}).get("status") or {}).get("conditions")
                        or [] if c.get("type") == "Progressing"), {})
    return progressing if progressing.get("reason") == PROGRESS_DEADLINE_EXCEEDED else None


def parse_download_log(text: str) -> DownloadStatus | None:
    """The last progress of `infernetes download`'s stdout: its last {"event": "progress"} or
    {"event": "done"} line. Other lines (not JSON, other events, bad fields) are skipped."""
    for line in reversed(text.splitlines()):
        event = _json_object(line)
        if event is None or event.get("event") not in ("progress", "done"):
            continue
        fields = {k: event[k] for k in ("bytes", "totalBytes", "bytesPerSecond", "etaSeconds")
                  if k in event}
        try:
            return DownloadStatus.model_validate(fields)
        except ValidationError:
            continue
    return None


def parse_termination_message(text: str) -> tuple[str, str] | None:
    """(reason, message) from the download container's termination message: the JSON line
    `infernetes download` writes, or its {"event": "failed"} log line when the message fell
    back to the log's tail. None when there is no well-formed reason (killed, OOM, a bug)."""
    for line in reversed(text.splitlines()):
        data = _json_object(line)
        reason = None if data is None else data.get("reason")
        if isinstance(reason, str) and _REASON.match(reason):
            return reason, str(data.get("message") or "")
    return None


def download_message(source: str, progress: DownloadStatus | None, failed_pods: int = 0) -> str:
    """e.g. "downloading hf://org/m: 3.2 GiB of 15.1 GiB, 120 MiB/s, ETA 1m45s"."""
    if progress is None:
        text = f"downloading {source}: starting"
    else:
        text = f"downloading {source}: {format_bytes(progress.bytes)}"
        if progress.total_bytes is not None:
            text += f" of {format_bytes(progress.total_bytes)}"
        if progress.bytes_per_second is not None:
            text += f", {format_bytes(progress.bytes_per_second)}/s"
        if progress.eta_seconds is not None:
            text += f", ETA {format_duration(progress.eta_seconds)}"
    if failed_pods:
        text += f" (retry {failed_pods})"
    return text


def format_bytes(num_bytes: float) -> str:
    """Binary units, 3 significant figures at most: 512 B, 3.2 GiB, 15.1 GiB, 120 MiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, unit = float(num_bytes), 0
    while round(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0 or round(value, 1) >= 100:
        return f"{value:.0f} {units[unit]}"
    return f"{value:.1f} {units[unit]}"


def format_duration(seconds: float) -> str:
    """45s, 1m45s, 2h03m, 3d4h."""
    total = max(int(round(seconds)), 0)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _json_object(line: str) -> dict[str, Any] | None:
    start = line.find("{")  # tolerates a timestamp prefix (kubectl logs --timestamps)
    try:
        data = json.loads(line[start:]) if start >= 0 else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1] + "…"
