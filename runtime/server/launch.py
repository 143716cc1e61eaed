"""`infernetes serve`: build the engine and the app, run uvicorn, drain on SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time

from infernetes.runtime.server.reasoning import REASONING_PARSERS, get_reasoning_parser

logger = logging.getLogger(__name__)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="0.0.0.0", help="address to listen on")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", help="the model name clients use (default: the "
                                                "model folder's or file's name)")
    g.add_argument("--api-key", action="append",
                   help="require this key as a Bearer token on /v1 (repeatable; default: "
                        "$INFERNETES_API_KEY or $VLLM_API_KEY)")
    g.add_argument("--max-num-queued-requests", type=int,
                   help="waiting requests beyond which new ones get 503 with Retry-After "
                        "(default: no limit)")
    g.add_argument("--reasoning-parser", choices=sorted(REASONING_PARSERS),
                   help="split chat completions into reasoning_content and content at the "
                        "think tags: deepseek_r1 (DeepSeek-R1 and its distills, QwQ: "
                        "reasoning until </think>) or qwen3 (reasoning only in an output "
                        "that opens with <think>)")
    g.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                   help="adapters to serve from the start (needs --enable-lora): NAME=PATH or "
                        '\'{"name": ..., "path": ..., "base_model_name": ...}\'')
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM")


def api_keys(args: argparse.Namespace) -> list[str]:
    if args.api_key:
        return args.api_key
    key = os.environ.get("INFERNETES_API_KEY") or os.environ.get("VLLM_API_KEY")
    return [key] if key else []


def run_server(args: argparse.Namespace) -> int:
    if args.max_num_queued_requests is not None and args.max_num_queued_requests < 0:
        raise ValueError(f"--max-num-queued-requests must be non-negative, got "
                         f"{args.max_num_queued_requests}")
    from infernetes.runtime.cli_args import engine_config_from_args
    from infernetes.runtime.config import ConfigError
    from infernetes.runtime.engine.async_engine import AsyncLLM
    from infernetes.runtime.engine.llm_engine import LLMEngine
    from infernetes.runtime.server.adapters import parse_lora_module
    from infernetes.runtime.server.metrics import Metrics

    started = time.perf_counter()
    modules = [parse_lora_module(text) for text in args.lora_modules]
    if modules and not args.enable_lora:
        raise ConfigError("--lora-modules needs --enable-lora")
    config = engine_config_from_args(args, args.model)
    config.served_model_name = args.served_model_name
    served_model_name = config.resolved_served_model_name
    metrics = Metrics(served_model_name)
    async_llm = AsyncLLM(lambda: LLMEngine(config), on_stats=metrics.record)
    try:
        return _serve(args, async_llm, metrics, modules, served_model_name, started)
    finally:
        async_llm.shutdown()


def _serve(args, async_llm, metrics, modules, served_model_name: str, started: float) -> int:
    import uvicorn

    from infernetes.runtime.config import ConfigError
    from infernetes.runtime.server.app import build_app
    from infernetes.runtime.server.context import ServingContext
    from infernetes.runtime.server.errors import OpenAIError
    ctx = ServingContext(async_llm, served_model_name, api_keys(args), metrics,
                         args.max_num_queued_requests,
                         reasoning_parser=get_reasoning_parser(args.reasoning_parser))
    for module in modules:
        try:
            asyncio.run(ctx.load_adapter(module))
        except OpenAIError as e:
            raise ConfigError(f"--lora-modules {module.name}: {e.message}") from None
    app = build_app(ctx)
    logger.info("serving %s on http://%s:%d/v1 (ready in %.1f s)", served_model_name,
                args.host, args.port, time.perf_counter() - started)
    server = _draining_server_class()(uvicorn.Config(app, host=args.host, port=args.port,
                                            log_level="info",
                                            timeout_graceful_shutdown=args.drain_timeout),
                                      async_llm)
    server.run()
    if async_llm.is_dead():
        logger.error("exiting: the engine stopped (%r)", async_llm.error)
        return 1
    return 0


# After the engine dies, /health answers 503 for this long before the process exits (non-zero,
# so Kubernetes restarts the pod): probes and load balancers see the failure, and requests in
# flight get their error responses.
DEAD_ENGINE_EXIT_SECONDS = 2.0


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn stops accepting on SIGTERM and waits for in-flight requests (up to the
        drain timeout), then re-raises the signal; a drained SIGTERM is an orderly stop here,
        so the process exits 0, as Kubernetes expects of a terminated pod. A dead engine (a
        tensor-parallel worker gone, the loop crashed) stops the server too."""

        def __init__(self, config, async_llm):
            super().__init__(config)
            self.async_llm = async_llm
            self.engine_dead_since: float | None = None

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)

        async def on_tick(self, counter: int) -> bool:
            if self.async_llm.is_dead():
                now = time.monotonic()
                if self.engine_dead_since is None:
                    self.engine_dead_since = now
                    logger.error("the engine stopped (%r); exiting in %.0f s",
                                 self.async_llm.error, DEAD_ENGINE_EXIT_SECONDS)
                elif now - self.engine_dead_since >= DEAD_ENGINE_EXIT_SECONDS:
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer
