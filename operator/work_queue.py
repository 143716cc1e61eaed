"""Reconcile requests, coalesced per InferenceService.

Watch events arrive in bursts (the object, its Job, its Deployment, its status write...). Each
InferenceService gets at most one reconcile at a time; requests that come while one runs fold
into a single further pass. A pass returns when it wants to run again (while a download or a
rollout is under way), and a failed pass is retried with exponential backoff.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# A pass: returns seconds until the next pass it wants, or None.
ReconcileFn = Callable[[str, str], Awaitable[float | None]]

_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0


@dataclass
class _State:
    task: asyncio.Task | None = None
    dirty: bool = False
    timer: asyncio.TimerHandle | None = None
    failures: int = 0


class WorkQueue:
    def __init__(self, reconcile: ReconcileFn):
        self._reconcile = reconcile
        self._states: dict[Key, _State] = {}
        self._closed = False

    def request(self, namespace: str, name: str, delay: float = 0.0) -> None:
        """Reconcile (namespace, name) now, or after `delay` seconds."""
        if self._closed:
            return
        key = (namespace, name)
        state = self._states.setdefault(key, _State())
        loop = asyncio.get_running_loop()
        if delay > 0:
            if state.timer is None or state.timer.when() > loop.time() + delay:
                if state.timer is not None:
                    state.timer.cancel()
                state.timer = loop.call_later(delay, self._fire, key)
            return
        if state.task is not None and not state.task.done():
            state.dirty = True
            return
        state.task = loop.create_task(self._run(key), name=f"reconcile {namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: drop pending timers (a running pass finishes on its own)."""
        state = self._states.pop((namespace, name), None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for state in self._states.values():
            if state.timer is not None:
                state.timer.cancel()
            if state.task is not None and not state.task.done():
                state.task.cancel()
                tasks.append(state.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fire(self, key: Key) -> None:
        state = self._states.get(key)
        if state is not None:
            state.timer = None
            self.request(*key)

    async def _run(self, key: Key) -> None:
        state = self._states[key]
        while True:
            state.dirty = False
            try:
                again = await self._reconcile(*key)
                state.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                state.failures += 1
                again = min(_BACKOFF_FIRST * 2 ** (state.failures - 1), _BACKOFF_MAX)
                logger.exception("reconciling %s/%s failed (attempt %d); retrying in %.0f s",
                                 *key, state.failures, again)
            if not state.dirty:
                break
        if again is not None and self._states.get(key) is state:
            self.request(*key, delay=again)
