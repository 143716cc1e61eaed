"""compute_status() and transitions(): children's state -> phase, conditions, message, events;
and the parsing of what the download pod prints."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import DownloadStatus, Phase, api_dict, parse_spec
from infernetes.operator.status import (Event, Observed, compute_status, download_message,
                                        format_bytes, format_duration, parse_download_log,
                                        parse_termination_message, transitions)

NOW = "2024-05-01T12:00:00Z"
EARLIER = "2024-05-01T11:00:00Z"
GiB, MiB = 2**30, 2**20
BACKOFF = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
           "message": "Job has reached the specified backoff limit"}
POLICY = {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
          "message": "Container download for pod ml/qwen-dl-1 failed with exit code 10 matching "
                     "FailJob rule at index 0"}
STALLED = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
           "message": 'ReplicaSet "qwen-5d" has timed out progressing.'}
PROGRESSING = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
COMPLETE = {"type": "Complete", "status": "True"}


def isvc(source: str = "hf://org/m", status: dict[str, Any] | None = None,
         **spec: Any) -> InferenceService:
    return InferenceService("qwen", "ml", "uid-1", 3, parse_spec(
        {"model": {"source": source, "servedName": "qwen2.5"}, **spec}), status or {})


def job(*conditions: dict[str, Any], **status: int) -> dict[str, Any]:
    return {"kind": "Job", "status": {"conditions": list(conditions), **status}}


def deployment(ready: int, replicas: int | None = None, *conditions: dict[str, Any]):
    return {"kind": "Deployment", "status": {"replicas": ready if replicas is None else replicas,
                                             "readyReplicas": ready,
                                             "conditions": list(conditions)}}


def observed(**fields: Any) -> Observed:
    fields.setdefault("isvc", isvc())
    fields.setdefault("download_needed", True)
    return Observed(now=NOW, **fields)


PROGRESS = DownloadStatus(bytes=int(3.2 * GiB), total_bytes=int(15.1 * GiB),
                          bytes_per_second=120 * MiB, eta_seconds=105)
DONE = DownloadStatus(bytes=int(15.1 * GiB), total_bytes=int(15.1 * GiB))
HF = "hf://org/m"

# (observed, phase, message, {condition type: (status, reason)})
CASES = [
    pytest.param(observed(), "Pending", f"waiting for the download of {HF} to start",
                 {"ModelCached": ("Unknown", "DownloadPending"),
                  "Available": ("Unknown", "DeploymentNotCreated"),
                  "Ready": ("False", "Pending")}, id="pending-no-job-yet"),
    pytest.param(observed(download_job=job(active=1, ready=0)), "Pending",
                 f"waiting for the download of {HF} to start",
                 {"ModelCached": ("Unknown", "DownloadPending")}, id="pending-pod-not-running"),
    pytest.param(observed(download_job=job(active=1, ready=1)), "Downloading",
                 f"downloading {HF}: starting",
                 {"ModelCached": ("False", "Downloading"), "Ready": ("False", "Downloading")},
                 id="downloading-no-progress-yet"),
    pytest.param(observed(download_job=job(active=1), download_progress=PROGRESS),
                 "Downloading",
                 f"downloading {HF}: 3.2 GiB of 15.1 GiB, 120 MiB/s, ETA 1m45s",
                 {"ModelCached": ("False", "Downloading")}, id="downloading-with-progress"),
    pytest.param(observed(download_job=job(active=1, failed=2), download_progress=PROGRESS),
                 "Downloading",
                 f"downloading {HF}: 3.2 GiB of 15.1 GiB, 120 MiB/s, ETA 1m45s (retry 2)",
                 {"ModelCached": ("False", "Downloading")}, id="downloading-after-failed-pods"),
    pytest.param(observed(download_job=job(active=1), download_progress=PROGRESS,
                          deployment=deployment(0, 1, STALLED)), "Downloading",
                 f"downloading {HF}: 3.2 GiB of 15.1 GiB, 120 MiB/s, ETA 1m45s",
                 {"Available": ("False", "ProgressDeadlineExceeded")},
                 id="download-outranks-a-rollout-stalled-waiting-for-it"),
    *[pytest.param(observed(download_job=job(BACKOFF), download_failure=(reason, "why")),
                   "Failed", f"download failed ({reason}): why",
                   {"ModelCached": ("False", reason), "Ready": ("False", reason)},
                   id=f"download-failed-{reason}")
      for reason in ("AuthFailed", "NotFound", "DiskFull", "NetworkError", "InvalidSource")],
    pytest.param(observed(download_job=job(BACKOFF)), "Failed",
                 "download failed (DownloadFailed): BackoffLimitExceeded: Job has reached the "
                 "specified backoff limit",
                 {"ModelCached": ("False", "DownloadFailed")},
                 id="download-failed-without-termination-message"),
    pytest.param(observed(download_job=job(POLICY)), "Failed",
                 "download failed (AuthFailed): PodFailurePolicy: Container download for pod "
                 "ml/qwen-dl-1 failed with exit code 10 matching FailJob rule at index 0",
                 {"ModelCached": ("False", "AuthFailed")},
                 id="download-failed-pod-gone-reason-from-exit-code"),
    pytest.param(observed(download_job=job(COMPLETE)), "Loading", "loading: 0/1 replicas ready",
                 {"ModelCached": ("True", "Downloaded"),
                  "Available": ("Unknown", "DeploymentNotCreated"),
                  "Ready": ("False", "Loading")}, id="loading-no-deployment-yet"),
    pytest.param(observed(download_job=job(COMPLETE), deployment=deployment(0, 2),
                          isvc=isvc(replicas=2)), "Loading", "loading: 0/2 replicas ready",
                 {"Available": ("False", "ReplicasNotReady")}, id="loading-replicas-not-ready"),
    pytest.param(observed(download_job=job(COMPLETE), deployment=deployment(2),
                          isvc=isvc(replicas=2)), "Ready", "serving qwen2.5: 2/2 replicas ready",
                 {"ModelCached": ("True", "Downloaded"),
                  "Available": ("True", "MinimumReplicasAvailable"),
                  "Ready": ("True", "Ready")}, id="ready"),
    pytest.param(observed(download_job=job(COMPLETE), isvc=isvc(replicas=2),
                          deployment=deployment(1, 3, PROGRESSING)),
                 "Ready", "serving qwen2.5: 1/2 replicas ready",
                 {"Available": ("True", "MinimumReplicasAvailable"), "Ready": ("True", "Ready")},
                 id="rollout-in-progress-with-a-replica-ready-stays-ready"),
    pytest.param(observed(download_job=job(COMPLETE), deployment=deployment(0, 1, STALLED)),
                 "Failed", 'rollout failed (ProgressDeadlineExceeded): 0/1 replicas ready: '
                           'ReplicaSet "qwen-5d" has timed out progressing.',
                 {"Available": ("False", "ProgressDeadlineExceeded"),
                  "Ready": ("False", "ProgressDeadlineExceeded")},
                 id="rollout-past-its-progress-deadline-fails"),
    pytest.param(observed(download_job=job(COMPLETE), deployment=deployment(0),
                          isvc=isvc(replicas=0)), "Ready", "scaled to zero",
                 {"Available": ("False", "ScaledToZero"), "Ready": ("False", "ScaledToZero")},
                 id="scaled-to-zero"),
    pytest.param(observed(download_needed=False, isvc=isvc("pvc://models/qwen"),
                          deployment=deployment(0)), "Loading", "loading: 0/1 replicas ready",
                 {"ModelCached": ("True", "SourceOnVolume")}, id="pvc-source-loading"),
    pytest.param(observed(download_needed=False, isvc=isvc("pvc://models/qwen"),
                          deployment=deployment(1)), "Ready", "serving qwen2.5: 1/1 replicas ready",
                 {"ModelCached": ("True", "SourceOnVolume"), "Ready": ("True", "Ready")},
                 id="pvc-source-ready"),
]


@pytest.mark.parametrize("obs, phase, message, conditions", CASES)
def test_phase_message_and_conditions(obs, phase, message, conditions):
    status = compute_status(obs)
    assert (status.phase.value, status.message) == (phase, message)
    got = {c.type: (c.status.value, c.reason) for c in status.conditions}
    assert [c.type for c in status.conditions] == ["ModelCached", "Available", "Ready"]
    assert {k: got[k] for k in conditions} == conditions
    assert all(c.observed_generation == 3 for c in status.conditions)


@pytest.mark.parametrize("obs, phase, message, conditions", CASES)
def test_a_second_pass_keeps_times_and_raises_no_event(obs, phase, message, conditions):
    first = compute_status(obs)
    later = replace(obs, now="2024-05-01T13:00:00Z",
                    isvc=replace(obs.isvc, status=api_dict(first)))
    second = compute_status(later)
    assert second == first
    assert transitions(api_dict(first), second) == []



def condition(kind: str, status: str, reason: str = "X") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "lastTransitionTime": EARLIER}


@pytest.mark.parametrize("previous, kept", [
    pytest.param([condition("Ready", "False", "Loading")], True, id="same-status-other-reason"),
    pytest.param([condition("Ready", "True", "Ready")], False, id="status-changed"),
    pytest.param([], False, id="no-previous-condition"),
    pytest.param([{**condition("Ready", "False"), "lastTransitionTime": None}], False,
                 id="previous-without-time"),
])
def test_last_transition_time_moves_only_with_the_status(previous, kept):
    status = compute_status(observed(isvc=isvc(status={"conditions": previous}),
                                     download_job=job(active=1), download_progress=PROGRESS))
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.last_transition_time == (EARLIER if kept else NOW)


def test_counts_selector_url_and_generation():
    status = compute_status(observed(download_job=job(COMPLETE), service_exists=True,
                                     deployment=deployment(2, 4, PROGRESSING),
                                     isvc=isvc(replicas=3)))
    assert (status.replicas, status.ready_replicas, status.desired_replicas, status.ready) == (
        4, 2, 3, "2/3")
    assert status.selector == ("app.kubernetes.io/component=runtime,"
                               "infernetes.io/inference-service=qwen")
    assert status.url == "http://qwen.ml.svc.cluster.local/v1"
    assert status.observed_generation == 3
    assert compute_status(observed()).url is None  # no Service yet


@pytest.mark.parametrize("replicas, autoscaling, desired", [
    pytest.param(2, None, 2, id="no-autoscaling"),
    pytest.param(10, {"minReplicas": 1, "maxReplicas": 4}, 4, id="clamped-to-max"),
    pytest.param(0, {"minReplicas": 1, "maxReplicas": 4}, 1, id="clamped-to-min"),
    pytest.param(0, {"minReplicas": 0, "maxReplicas": 4}, 0, id="autoscaled-to-zero"),
])
def test_desired_replicas_are_kept_in_autoscaling_bounds(replicas, autoscaling, desired):
    spec = {"replicas": replicas} | ({"autoscaling": autoscaling} if autoscaling else {})
    status = compute_status(observed(download_job=job(COMPLETE), deployment=deployment(0),
                                     isvc=isvc(**spec)))
    assert (status.desired_replicas, status.ready) == (desired, f"0/{desired}")


PREVIOUS = {"download": {"bytes": 100, "totalBytes": 100}, "modelBytes": 100}


@pytest.mark.parametrize("obs, download, model_bytes", [
    pytest.param(observed(download_job=job(active=1), download_progress=PROGRESS), PROGRESS,
                 None, id="downloading-shows-progress"),
    pytest.param(observed(download_job=job(COMPLETE), download_progress=DONE), DONE,
                 DONE.total_bytes, id="done-keeps-total"),
    pytest.param(observed(download_job=job(COMPLETE), download_progress=PROGRESS),
                 DownloadStatus(bytes=PROGRESS.total_bytes, total_bytes=PROGRESS.total_bytes),
                 PROGRESS.total_bytes, id="done-from-last-progress"),
    pytest.param(observed(download_job=job(COMPLETE), isvc=isvc(status=PREVIOUS)),
                 DownloadStatus(bytes=100, total_bytes=100), 100,
                 id="done-log-gone-keeps-previous"),
    pytest.param(observed(download_job=job(COMPLETE), isvc=isvc(status={"modelBytes": 7})),
                 None, 7, id="done-only-model-bytes-known"),
    pytest.param(observed(download_job=job(BACKOFF), download_progress=PROGRESS), PROGRESS,
                 None, id="failed-shows-how-far-it-got"),
    pytest.param(observed(download_needed=False, isvc=isvc("pvc://models/q", status=PREVIOUS)),
                 None, None, id="pvc-source-has-no-download"),
])
def test_download_and_model_bytes(obs, download, model_bytes):
    status = compute_status(obs)
    assert (status.download, status.model_bytes) == (download, model_bytes)


def test_a_long_multi_line_failure_is_one_bounded_line():
    status = compute_status(observed(download_job=job(BACKOFF),
                                     download_failure=("NotFound", "line one\nline two " * 50)))
    assert "\n" not in status.message and len(status.message) <= 240
    assert status.message.startswith("download failed (NotFound): line one line two")
    assert status.message.endswith("…")
    cached = next(c for c in status.conditions if c.type == "ModelCached")
    assert cached.message.endswith("line two") and "\n" not in cached.message


def line(**event: Any) -> str:
    return json.dumps(event)


P1 = line(event="progress", bytes=1, totalBytes=10, bytesPerSecond=2.5, etaSeconds=3.6)
P2 = line(event="progress", bytes=5, totalBytes=10, bytesPerSecond=2.0, etaSeconds=2.5)
DONE_LINE = line(event="done", bytes=10, totalBytes=10, bytesPerSecond=3.0, etaSeconds=0,
                 source=HF, dest="/models/x", commit="abc", files=3, reused=False)


@pytest.mark.parametrize("text, expected", [
    pytest.param("", None, id="empty"),
    pytest.param("Traceback (most recent call last):\n  oops {\n", None, id="only-junk"),
    pytest.param(f"{P1}\n{P2}\n", DownloadStatus(bytes=5, total_bytes=10, bytes_per_second=2.0,
                                                 eta_seconds=2.5), id="last-progress-wins"),
    pytest.param(f"{P1}\nwarning: slow {{mirror}}\n[1, 2]\n\"x\"\n{{\"event\": \"progress\"",
                 DownloadStatus(bytes=1, total_bytes=10, bytes_per_second=2.5, eta_seconds=3.6),
                 id="junk-lines-and-a-cut-last-line-are-skipped"),
    pytest.param(f"{P1}\n{DONE_LINE}\n", DownloadStatus(bytes=10, total_bytes=10,
                                                        bytes_per_second=3.0, eta_seconds=0),
                 id="done-line-extra-fields-ignored"),
    pytest.param(f"{P2}\n" + line(event="failed", reason="DiskFull", message="full"),
                 DownloadStatus(bytes=5, total_bytes=10, bytes_per_second=2.0, eta_seconds=2.5),
                 id="failed-event-leaves-the-last-progress"),
    pytest.param(f"{P1}\n" + line(event="progress", bytes="many"),
                 DownloadStatus(bytes=1, total_bytes=10, bytes_per_second=2.5, eta_seconds=3.6),
                 id="bad-fields-skipped"),
    pytest.param(line(event="progress", bytes=0, totalBytes=None, bytesPerSecond=0.0,
                      etaSeconds=None), DownloadStatus(bytes=0, bytes_per_second=0.0),
                 id="unknown-total"),
    pytest.param(f"2024-05-01T12:00:00.1Z {P2}", DownloadStatus(
        bytes=5, total_bytes=10, bytes_per_second=2.0, eta_seconds=2.5), id="timestamp-prefix"),
])
def test_parse_download_log(text, expected):
    assert parse_download_log(text) == expected


@pytest.mark.parametrize("text, expected", [
    pytest.param('{"reason": "AuthFailed", "message": "401"}\n', ("AuthFailed", "401"),
                 id="termination-log"),
    pytest.param(f"{P2}\n" + line(event="failed", reason="NotFound", message="no repo"),
                 ("NotFound", "no repo"), id="fallback-to-logs-tail"),
    pytest.param('{"reason": "DiskFull"}', ("DiskFull", ""), id="no-message"),
    pytest.param("", None, id="empty"),
    pytest.param("Error: OOMKilled", None, id="not-json"),
    pytest.param('{"reason": "not a reason", "message": "x"}', None, id="malformed-reason"),
    pytest.param('{"reason": 3}', None, id="reason-not-a-string"),
])
def test_parse_termination_message(text, expected):
    assert parse_termination_message(text) == expected


@pytest.mark.parametrize("num_bytes, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(3.2 * GiB), "3.2 GiB"),
    (int(15.1 * GiB), "15.1 GiB"), (120 * MiB, "120 MiB"), (int(99.99 * MiB), "100 MiB"),
    (int(1023.9 * MiB), "1.0 GiB"), (2 * 2**50, "2.0 PiB"),
])
def test_format_bytes(num_bytes, text):
    assert format_bytes(num_bytes) == text


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (45.4, "45s"), (59.6, "1m00s"), (105, "1m45s"), (3600 * 2 + 185, "2h03m"),
    (86400 * 3 + 3600 * 4, "3d4h"), (-5, "0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("progress, text", [
    pytest.param(None, f"downloading {HF}: starting", id="no-progress"),
    pytest.param(DownloadStatus(bytes=GiB), f"downloading {HF}: 1.0 GiB", id="only-bytes"),
    pytest.param(DownloadStatus(bytes=GiB, total_bytes=2 * GiB, bytes_per_second=0.0),
                 f"downloading {HF}: 1.0 GiB of 2.0 GiB, 0 B/s", id="stalled-no-eta"),
])
def test_download_message(progress, text):
    assert download_message(HF, progress) == text


def status_of(phase: str, ready_reason: str, message: str = "m") -> dict[str, Any]:
    return {"phase": phase, "message": message,
            "conditions": [{"type": "Ready", "status": "False", "reason": ready_reason}]}


@pytest.mark.parametrize("previous, obs, events", [
    pytest.param({}, observed(), [Event("Normal", "Pending", f"waiting for the download of {HF} "
                                                             f"to start")], id="first-status"),
    pytest.param(status_of("Pending", "Pending"),
                 observed(download_job=job(active=1), download_progress=PROGRESS),
                 [Event("Normal", "Downloading", f"downloading {HF}: 3.2 GiB of 15.1 GiB, "
                                                 f"120 MiB/s, ETA 1m45s")], id="downloading"),
    pytest.param(status_of("Downloading", "Downloading", "old progress"),
                 observed(download_job=job(active=1), download_progress=PROGRESS), [],
                 id="progress-alone-is-no-event"),
    pytest.param(status_of("Loading", "Loading"),
                 observed(download_job=job(COMPLETE), deployment=deployment(1)),
                 [Event("Normal", "Ready", "serving qwen2.5: 1/1 replicas ready")], id="ready"),
    pytest.param(status_of("Downloading", "Downloading"),
                 observed(download_job=job(BACKOFF), download_failure=("AuthFailed", "401")),
                 [Event("Warning", "AuthFailed", "download failed (AuthFailed): 401")],
                 id="failed-is-a-warning-with-the-typed-reason"),
    pytest.param(status_of("Failed", "AuthFailed"),
                 observed(download_job=job(BACKOFF), download_failure=("NotFound", "404")),
                 [Event("Warning", "NotFound", "download failed (NotFound): 404")],
                 id="another-failure-reason"),
    pytest.param(status_of("Failed", "AuthFailed"),
                 observed(download_job=job(BACKOFF), download_failure=("AuthFailed", "401")),
                 [], id="same-failure-again"),
    pytest.param(status_of("Ready", "Ready"),
                 observed(download_job=job(COMPLETE), deployment=deployment(0),
                          isvc=isvc(replicas=0)),
                 [Event("Normal", "ScaledToZero", "scaled to zero")], id="scaled-to-zero"),
])
def test_transitions(previous, obs, events):
    assert transitions(previous, compute_status(obs)) == events


def test_every_phase_is_reachable():
    phases = {compute_status(case.values[0]).phase for case in CASES}
    assert phases == set(Phase)
