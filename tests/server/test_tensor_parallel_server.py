"""`infernetes serve --tensor-parallel-size 3` (the default model splits over 3 ranks): a
worker killed from outside makes /health fail and the server exit non-zero, SIGTERM stops
every worker, and no worker process outlives the server either way."""
from __future__ import annotations

import signal
import time

import httpx
import psutil

from live_server import start_serve_process

FLAGS = ["--tensor-parallel-size", "3", "--dtype", "bfloat16", "--max-model-len", "512",
         "--kv-cache-memory", "64MiB"]


def _workers(pid: int) -> list[psutil.Process]:
    """The server's rank processes (multiprocessing's resource tracker is not one)."""
    children = psutil.Process(pid).children()
    workers = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) == 3, [c.cmdline() for c in children]
    return workers


def _gone(workers: list[psutil.Process], timeout: float = 15) -> bool:
    _, alive = psutil.wait_procs(workers, timeout=timeout)
    return not alive


def test_a_killed_worker_fails_health_and_stops_the_server():
    process, url = start_serve_process(FLAGS)
    try:
        answer = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "prompt": "Hello", "max_tokens": 3})
        assert answer.status_code == 200, answer.text
        workers = _workers(process.pid)
        workers[1].kill()
        statuses = []
        deadline = time.monotonic() + 20
        while 503 not in statuses and time.monotonic() < deadline:
            statuses.append(httpx.get(f"{url}/health", timeout=5).status_code)
            time.sleep(0.1)
        assert 503 in statuses
        assert process.wait(30) == 1
        assert "tensor-parallel worker rank 1" in process.stdout.read()
        assert _gone(workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_stops_every_worker():
    """Also when every process of the server gets the signal (pkill, a service manager): the
    workers outlive it until the server has drained and stops them."""
    process, url = start_serve_process(FLAGS)
    try:
        workers = _workers(process.pid)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the engine checks its workers at least every 0.5 s
        assert all(worker.is_running() for worker in workers)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert _gone(workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
