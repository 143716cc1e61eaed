"""kopf handlers: thin. Every watch event about an InferenceService or one of its children
asks the work queue for a reconcile of that InferenceService; a resync loop asks for all of
them periodically. The reconcile itself is `reconcile.py`.

Only event handlers are used (no on.create/update/delete, timers or daemons), so kopf puts no
finalizer on InferenceServices: nothing needs cleaning up that owner references do not already
remove, and deleting an InferenceService is never blocked by the operator being down.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from infernetes.operator.config import OperatorConfig
from infernetes.operator.kube import KubeClient, connect_credentials
from infernetes.operator.metrics import OperatorMetrics
from infernetes.operator.naming import LABEL_ISVC, LABEL_MANAGED_BY, MANAGER
from infernetes.operator.reconcile import Reconciler
from infernetes.operator.spec import GROUP, PLURAL, VERSION
from infernetes.operator.work_queue import WorkQueue

logger = logging.getLogger(__name__)

_CHILDREN = {LABEL_MANAGED_BY: MANAGER, LABEL_ISVC: kopf.PRESENT}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # our Events say what happened; kopf's would be noise
    # No cluster-wide scans of namespaces and CRDs: the namespaces are named exactly and the
    # CRD is installed first, and a namespaced Role does not allow those scans (kopf would
    # retry the 403s for a minute and watch nothing meanwhile).
    settings.scanning.disabled = True
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    memo.config = config
    memo.metrics = memo.get("metrics") or OperatorMetrics()
    memo.kube = KubeClient(connect_credentials(settings))
    memo.reconciler = Reconciler(memo.kube, config, memo.metrics)
    memo.queue = WorkQueue(memo.reconciler.reconcile)
    memo.resync = asyncio.get_running_loop().create_task(_resync(memo), name="resync")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    await memo.queue.close()
    await memo.kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_service_event(type: str | None, name: str, namespace: str,
                                  memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.queue.forget(namespace, name)
        memo.metrics.forget(namespace, name)
        return
    memo.queue.request(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=_CHILDREN)
@kopf.on.event("apps", "v1", "deployments", labels=_CHILDREN)
@kopf.on.event("v1", "services", labels=_CHILDREN)
async def child_event(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A child changed (a Job finished, a Deployment became available, someone edited or
    deleted one): reconcile its InferenceService."""
    memo.queue.request(namespace, labels[LABEL_ISVC])


async def _resync(memo: kopf.Memo) -> None:
    """Level-based safety net: every InferenceService is reconciled at least every
    resync_seconds, whatever events were missed."""
    namespaces = memo.get("namespaces") or [None]
    while True:
        await asyncio.sleep(memo.config.resync_seconds)
        try:
            for namespace in namespaces:
                for obj in await memo.kube.list("InferenceService", namespace):
                    meta = obj["metadata"]
                    memo.queue.request(meta["namespace"], meta["name"])
        except Exception:  # the API server may be away for a while: try again next round
            logger.exception("resync listing failed")
