"""A live server on 127.0.0.1 (uvicorn in a thread) over the default model in float32, so its
greedy outputs can be compared with the offline engine's.

Imported by name from tests (`from live_server import ...`): test helpers live in modules with
unique names, never in a conftest, which pytest may import under the shared name `conftest`."""
from __future__ import annotations

import socket
import threading
import time


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
