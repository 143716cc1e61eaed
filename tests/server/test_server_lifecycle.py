"""Auth, client disconnects, and health when the engine loop dies."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from live_server import start_server

CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def keyed():
    live = start_server(api_keys=["secret-1"])
    yield live
    live.stop()


def test_api_key_is_required_on_v1(keyed):
    url = f"{keyed.url}/v1/models"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401
    assert httpx.get(url, headers={"Authorization": "Bearer secret-1"}).status_code == 200
    assert httpx.get(f"{keyed.url}/health").status_code == 200  # probes need no key


def test_disconnect_mid_stream_frees_the_kv_blocks(server):
    engine = server.ctx.engine.engine
    total = engine.num_blocks
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.url}/v1/chat/completions", json=CHAT) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in received)
            assert engine.kv_cache_manager.num_free_blocks < total
    deadline = time.monotonic() + 20
    while engine.has_unfinished_requests() or engine.kv_cache_manager.num_free_blocks != total:
        assert time.monotonic() < deadline, "the aborted request still holds KV blocks"
        time.sleep(0.05)


def test_health_fails_when_the_engine_loop_dies():
    live = start_server()
    try:
        engine = live.ctx.engine.engine

        def broken_step():
            raise RuntimeError("simulated fault")
        engine.step = broken_step
        response = httpx.post(f"{live.url}/v1/completions",
                              json={"prompt": "hi", "max_tokens": 3})
        assert response.status_code == 503
        assert httpx.get(f"{live.url}/health").status_code == 503
        after = httpx.post(f"{live.url}/v1/completions", json={"prompt": "hi"})
        assert after.status_code == 503 and "engine" in after.json()["error"]["message"]
    finally:
        live.stop()


def test_health_fails_while_the_engine_loop_hangs():
    live = start_server()
    try:
        engine, async_llm = live.ctx.engine.engine, live.ctx.engine
        async_llm.stall_seconds = 0.5
        real_step = engine.step

        def hung_step():
            time.sleep(2.0)
            return real_step()
        engine.step = hung_step
        with httpx.Client(timeout=30) as http:
            threading.Thread(target=lambda: httpx.post(
                f"{live.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                timeout=30), daemon=True).start()
            time.sleep(1.2)  # the loop is inside a 2 s step, past its 0.5 s allowance
            assert http.get(f"{live.url}/health").status_code == 503
            engine.step = real_step
            deadline = time.monotonic() + 10
            while http.get(f"{live.url}/health").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        live.stop()
