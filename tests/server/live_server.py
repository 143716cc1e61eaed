"""A live server on 127.0.0.1 (uvicorn in a thread) over the default model in float32, so its
greedy outputs can be compared with the offline engine's.

Imported by name from tests (`from live_server import ...`): test helpers live in modules with
unique names, never in a conftest, which pytest may import under the shared name `conftest`."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

SERVE = [sys.executable, "-m", "infernetes.runtime.cli", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, ctx, app):
        import uvicorn
        self.ctx = ctx
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.ctx.engine.shutdown()


def start_server(api_keys: list[str] | None = None, max_num_queued_requests: int | None = None,
                 reasoning_parser: str | None = None, **engine_kwargs) -> LiveServer:
    from infernetes.runtime.config import CacheConfig, EngineConfig, SchedulerConfig
    from infernetes.runtime.engine.async_engine import AsyncLLM
    from infernetes.runtime.engine.llm_engine import LLMEngine
    from infernetes.runtime.server.app import build_app
    from infernetes.runtime.server.context import ServingContext
    from infernetes.runtime.server.metrics import Metrics
    from infernetes.runtime.server.reasoning import get_reasoning_parser
    config = EngineConfig(
        model=engine_kwargs.pop("model", None), lora=engine_kwargs.pop("lora", None),
        skip_tokenizer_init=engine_kwargs.pop("skip_tokenizer_init", False),
        dtype="float32", max_model_len=engine_kwargs.pop("max_model_len", 2048),
        cache=CacheConfig(kv_cache_memory=engine_kwargs.pop("kv_cache_memory", 256 << 20)),
        scheduler=SchedulerConfig(**engine_kwargs))
    metrics = Metrics(config.resolved_served_model_name)
    ctx = ServingContext(AsyncLLM(lambda: LLMEngine(config), on_stats=metrics.record),
                         config.resolved_served_model_name, api_keys or [], metrics,
                         max_num_queued_requests,
                         reasoning_parser=get_reasoning_parser(reasoning_parser))
    return LiveServer(ctx, build_app(ctx))


def start_serve_process(flags: list[str], timeout: float = 180
                        ) -> tuple[subprocess.Popen, str]:
    """`infernetes serve FLAGS` on a free loopback port, as a user runs it, once /health
    answers 200: (the process, its base URL). Output goes to the process's stdout pipe."""
    import httpx
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(SERVE + ["--host", "127.0.0.1", "--port", str(port)] + flags,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited at start:\n{process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not become ready:\n{process.stdout.read()}")
        time.sleep(0.2)
