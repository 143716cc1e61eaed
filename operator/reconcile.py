"""One reconcile pass over one InferenceService: observe, build, plan, apply, report.

Level-based and idempotent: every pass rebuilds the desired children from the spec, compares
them with what exists (plan.py), applies the difference, and writes the status computed from
what it observed (status.py); a pass over a settled object changes nothing.

The model cache is keyed by source and outlives InferenceServices; once a download into it
completes, the PVC is annotated with the model's size, and from then on that cache counts as
complete whatever becomes of the Job (which is then removed): a later InferenceService with the
same source, or a Job re-created after the operator's image changed, never stops serving.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from infernetes.operator import naming
from infernetes.operator.builders import build_children, needs_download
from infernetes.operator.config import OperatorConfig
from infernetes.operator.kube import ApiError, KubeClient
from infernetes.operator.metrics import OperatorMetrics
from infernetes.operator.plan import Action, Create, Delete, Patch, Skip, plan
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import (
    Condition, ConditionStatus, InferenceServiceStatus, Phase, api_dict)
from infernetes.operator.status import (
    Event, Observed, compute_status, parse_download_log, parse_termination_message, transitions)

logger = logging.getLogger(__name__)

_IN_PROGRESS_REQUEUE_SECONDS = 5.0  # how fresh download progress and rollout state are kept
_AFTER_DELETE_REQUEUE_SECONDS = 1.0
_CHILD_KINDS = ("Job", "Deployment", "Service")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Children:
    """What exists of an InferenceService's children, read in one pass."""
    cache_pvc: dict[str, Any] | None
    owned: list[dict[str, Any]]  # Jobs, Deployments, Services labelled with its name
    download_log: str = ""
    termination_message: str = ""
    other_download_running: bool = False  # another InferenceService's Job fills this cache

    def find(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        return next((o for o in self.owned if o["kind"] == kind
                     and (name is None or o["metadata"]["name"] == name)), None)


class Reconciler:
    def __init__(self, kube: KubeClient, config: OperatorConfig, metrics: OperatorMetrics,
                 clock=now_rfc3339):
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._warned: set[tuple[str, str]] = set()  # (uid, message) of one-time warnings

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """One pass; returns seconds until the next pass it wants (None: only on events)."""
        started = time.perf_counter()
        try:
            again = await self._reconcile(namespace, name)
        except Exception as e:
            self.metrics.reconciles.labels("error").inc()
            self.metrics.reconcile_errors.labels(type(e).__name__).inc()
            raise
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        self.metrics.reconciles.labels("ok").inc()
        return again

    async def _reconcile(self, namespace: str, name: str) -> float | None:
        obj = await self.kube.get("InferenceService", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None  # children go with it (owner references)
        try:
            isvc = InferenceService.from_object(obj)
        except ValidationError as e:
            await self._report_invalid(obj, _validation_message(e))
            return None
        children = await self._observe(isvc)
        cache_bytes = await self._record_completed_download(isvc, children)
        try:
            desired = build_children(isvc, self.config, cache_bytes or _model_bytes(isvc),
                                     download_complete=cache_bytes is not None)
        except ValueError as e:
            await self._report_invalid(obj, str(e))
            return None
        if cache_bytes is not None or children.other_download_running:
            # The cache is complete, or another InferenceService is filling it right now (two
            # writers would corrupt it): no download Job of ours.
            desired = [d for d in desired if d["kind"] != "Job"]
        observed = ([children.cache_pvc] if children.cache_pvc else []) + children.owned
        actions = plan(desired, observed, isvc.uid)
        await self._apply(isvc, actions)
        status = compute_status(self._observed(isvc, children, cache_bytes))
        await self._write_status(isvc, obj, status)
        self.metrics.observe(namespace, name, status)
        if any(isinstance(a, Delete) for a in actions):
            return _AFTER_DELETE_REQUEUE_SECONDS
        if status.phase in (Phase.Pending, Phase.Downloading, Phase.Loading) or actions:
            return min(_IN_PROGRESS_REQUEUE_SECONDS, self.config.resync_seconds)
        return None

    # -- observe ----------------------------------------------------------------------------

    async def _observe(self, isvc: InferenceService) -> Children:
        labels = {naming.LABEL_ISVC: isvc.name, naming.LABEL_MANAGED_BY: naming.MANAGER}
        owned = [o for kind in _CHILD_KINDS
                 for o in await self.kube.list(kind, isvc.namespace, labels)]
        pvc = None
        if needs_download(isvc.spec):
            pvc = await self.kube.get("PersistentVolumeClaim", isvc.namespace,
                                      naming.cache_claim_name(isvc.spec.model.source))
        children = Children(pvc, owned)
        if pvc is not None:
            children.other_download_running = await self._other_download_running(isvc, pvc)
        job = children.find("Job", naming.download_job_name(isvc.name,
                                                            isvc.spec.model.source))
        if job is not None:
            await self._read_download_pod(isvc.namespace, job["metadata"]["name"], children)
        return children

    async def _other_download_running(self, isvc: InferenceService,
                                      pvc: dict[str, Any]) -> bool:
        """Another InferenceService's download of this source is running, or has completed
        without its size on the claim yet (its owner's next pass records it): a Job of ours
        now would be a second, needless writer."""
        recorded = naming.ANNOTATION_MODEL_BYTES in (pvc["metadata"].get("annotations") or {})
        source_hash = naming.source_hash(isvc.spec.model.source)
        jobs = await self.kube.list("Job", isvc.namespace,
                                    {naming.LABEL_SOURCE_HASH: source_hash})
        return any(not _job_finished(job) or (_job_complete(job) and not recorded)
                   for job in jobs
                   if job["metadata"]["labels"].get(naming.LABEL_ISVC) != isvc.name)

    async def _read_download_pod(self, namespace: str, job_name: str,
                                 children: Children) -> None:
        """The newest pod of the download Job: the tail of its log (progress lines) and, if
        it ended, its termination message (the typed failure)."""
        pods = await self.kube.list("Pod", namespace, {naming.LABEL_JOB_NAME: job_name})
        if not pods:
            return
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                message = (state.get("terminated") or {}).get("message")
                if message:
                    children.termination_message = message
        try:
            children.download_log = await self.kube.pod_log(
                namespace, pod["metadata"]["name"], "download", tail_lines=20)
        except ApiError as e:  # not started yet, or already gone
            logger.debug("no log of download pod %s: %s", pod["metadata"]["name"], e)

    async def _record_completed_download(self, isvc: InferenceService,
                                         children: Children) -> int | None:
        """The model's size once the cache holds it; marks the PVC when the Job just
        completed."""
        pvc = children.cache_pvc
        if pvc is None:
            return None
        recorded = (pvc["metadata"].get("annotations") or {}).get(
            naming.ANNOTATION_MODEL_BYTES)
        if recorded is not None:
            return int(recorded) if recorded.isdigit() else 0
        job = children.find("Job", naming.download_job_name(isvc.name, isvc.spec.model.source))
        if not _job_complete(job):
            return None
        progress = parse_download_log(children.download_log)
        size = (progress.total_bytes or progress.bytes) if progress else _model_bytes(isvc)
        await self.kube.patch("PersistentVolumeClaim", isvc.namespace,
                              pvc["metadata"]["name"],
                              {"metadata": {"annotations": {
                                  naming.ANNOTATION_MODEL_BYTES: str(size or 0)}}})
        return size or 0

    def _observed(self, isvc: InferenceService, children: Children,
                  cache_bytes: int | None) -> Observed:
        source = isvc.spec.model.source
        failure = parse_termination_message(children.termination_message) \
            if children.termination_message else None
        return Observed(
            isvc=isvc, now=self.clock(), download_needed=needs_download(isvc.spec),
            download_job=children.find("Job", naming.download_job_name(isvc.name, source)),
            download_progress=parse_download_log(children.download_log),
            download_failure=failure,
            deployment=children.find("Deployment", naming.deployment_name(isvc.name)),
            service_exists=children.find("Service", naming.service_name(isvc.name)) is not None,
            cache_bytes=cache_bytes)

    # -- act --------------------------------------------------------------------------------

    async def _apply(self, isvc: InferenceService, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Skip):
                await self._warn_once(isvc, "ChildNotUpdated",
                                      f"{action.kind} {action.name}: {action.reason}")
                continue
            kind = action.obj["kind"] if isinstance(action, Create) else action.kind
            self.metrics.actions.labels(type(action).__name__.lower(), kind).inc()
            if isinstance(action, Create):
                await self._create(action.obj)
            elif isinstance(action, Patch):
                await self._patch(isvc, action)
            else:
                logger.info("deleting %s %s/%s: %s", kind, action.namespace, action.name,
                            action.reason)
                await self.kube.delete(kind, action.namespace, action.name)

    async def _create(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        logger.info("creating %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
        try:
            await self.kube.create(obj)
        except ApiError as e:
            if e.status != 409:  # created meanwhile (a shared cache PVC): next pass patches
                raise

    async def _patch(self, isvc: InferenceService, action: Patch) -> None:
        logger.info("updating %s %s/%s", action.kind, action.namespace, action.name)
        try:
            await self.kube.patch(action.kind, action.namespace, action.name, action.patch)
        except ApiError as e:
            if action.kind != "PersistentVolumeClaim" or e.status not in (403, 422):
                raise
            # A StorageClass without volume expansion refuses to grow the cache.
            await self._warn_once(isvc, "CacheNotResized", f"{action.name}: {e.message}")

    async def _write_status(self, isvc: InferenceService, obj: dict[str, Any],
                            status: InferenceServiceStatus) -> None:
        old = obj.get("status") or {}
        new = api_dict(status)
        if new == old:
            return
        patch = {**{key: None for key in old if key not in new}, **new}
        await self.kube.patch("InferenceService", isvc.namespace, isvc.name,
                              {"status": patch}, subresource="status")
        for event in transitions(old, status):
            await self._post_event(isvc, event)
            if event.type == "Warning" and status.phase is Phase.Failed:
                self.metrics.download_failures.labels(isvc.namespace, isvc.name,
                                                      event.reason).inc()

    async def _report_invalid(self, obj: dict[str, Any], message: str) -> None:
        """A spec the API server admitted but we cannot honour (or that skipped the CRD's
        validation): phase Failed, reason InvalidSpec, until the spec changes."""
        meta = obj["metadata"]
        now = self.clock()
        status = InferenceServiceStatus(
            phase=Phase.Failed, message=message[:240],
            conditions=[Condition(type="Ready", status=ConditionStatus.false,
                                  reason="InvalidSpec", message=message,
                                  last_transition_time=now,
                                  observed_generation=meta.get("generation"))],
            observed_generation=meta.get("generation"))
        old = obj.get("status") or {}
        if old.get("phase") == "Failed" and old.get("message") == status.message:
            return
        await self.kube.patch("InferenceService", meta["namespace"], meta["name"],
                              {"status": api_dict(status)}, subresource="status")
        await self._post_event_raw(obj, Event("Warning", "InvalidSpec", message))

    async def _warn_once(self, isvc: InferenceService, reason: str, message: str) -> None:
        if (isvc.uid, message) in self._warned:
            return
        self._warned.add((isvc.uid, message))
        logger.warning("%s/%s: %s", isvc.namespace, isvc.name, message)
        await self._post_event(isvc, Event("Warning", reason, message))

    async def _post_event(self, isvc: InferenceService, event: Event) -> None:
        await self._post_event_raw({"apiVersion": "infernetes.io/v1alpha1",
                                    "kind": "InferenceService",
                                    "metadata": {"name": isvc.name, "namespace": isvc.namespace,
                                                 "uid": isvc.uid}}, event)

    async def _post_event_raw(self, obj: dict[str, Any], event: Event) -> None:
        """A core/v1 Event about `obj` (what `kubectl describe` shows); best effort."""
        meta, now = obj["metadata"], self.clock()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid", "")},
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "source": {"component": naming.MANAGER}, "reportingComponent": naming.MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            await self.kube.create(body)
        except ApiError as e:
            logger.warning("could not post event %s: %s", event.reason, e)


def _job_complete(job: dict[str, Any] | None) -> bool:
    return _job_condition(job, "Complete")


def _job_finished(job: dict[str, Any] | None) -> bool:
    return _job_condition(job, "Complete") or _job_condition(job, "Failed")


def _job_condition(job: dict[str, Any] | None, kind: str) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def _model_bytes(isvc: InferenceService) -> int | None:
    value = isvc.status.get("modelBytes")
    return value if isinstance(value, int) else None


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"spec.{where}: {first['msg']}{more}"
