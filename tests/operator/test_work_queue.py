"""Reconcile requests: one pass at a time per object, bursts coalesced, requeue and backoff."""
from __future__ import annotations

import asyncio

from infernetes.operator import work_queue
from infernetes.operator.work_queue import WorkQueue


def run(coroutine):
    return asyncio.run(coroutine)


def test_burst_while_running_folds_into_one_more_pass():
    async def scenario():
        calls, gate = [], asyncio.Event()

        async def reconcile(namespace, name):
            calls.append((namespace, name))
            if len(calls) == 1:
                await gate.wait()
            return None

        queue = WorkQueue(reconcile)
        queue.request("ml", "a")
        await asyncio.sleep(0.01)
        for _ in range(5):
            queue.request("ml", "a")
        queue.request("ml", "b")
        gate.set()
        await asyncio.sleep(0.05)
        await queue.close()
        return calls

    calls = run(scenario())
    assert calls.count(("ml", "a")) == 2 and calls.count(("ml", "b")) == 1


def test_never_two_passes_of_one_object_at_once():
    async def scenario():
        running, overlaps = set(), []

        async def reconcile(namespace, name):
            if name in running:
                overlaps.append(name)
            running.add(name)
            await asyncio.sleep(0.005)
            running.discard(name)

        queue = WorkQueue(reconcile)
        for _ in range(20):
            queue.request("ml", "a")
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        await queue.close()
        return overlaps

    assert run(scenario()) == []


def test_requeue_after_and_backoff_on_failure(monkeypatch):
    monkeypatch.setattr(work_queue, "_BACKOFF_FIRST", 0.01)

    async def scenario():
        calls = []

        async def reconcile(namespace, name):
            calls.append(asyncio.get_running_loop().time())
            if len(calls) <= 2:
                raise RuntimeError("API server away")
            return 0.02 if len(calls) < 5 else None

        queue = WorkQueue(reconcile)
        queue.request("ml", "a")
        await asyncio.sleep(0.3)
        await queue.close()
        return calls

    calls = run(scenario())
    assert len(calls) == 5  # 2 failures retried, 2 requeues, then it settles
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[1] >= gaps[0] * 1.5  # backoff grows


def test_forget_cancels_a_pending_requeue():
    async def scenario():
        calls = []

        async def reconcile(namespace, name):
            calls.append(name)
            return 0.02

        queue = WorkQueue(reconcile)
        queue.request("ml", "a")
        await asyncio.sleep(0.005)
        queue.forget("ml", "a")
        await asyncio.sleep(0.06)
        await queue.close()
        return calls

    assert run(scenario()) == ["a"]
