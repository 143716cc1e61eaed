"""The engine loop in a background thread, with one async output stream per request.

The event loop never waits on the engine: prompts are tokenized and checked in the caller
(bad input raises there, at once), then handed to the engine thread through a queue together
with aborts; the thread applies them between steps and pushes each step's outputs to the
streams with `call_soon_threadsafe`. A request whose consumer goes away (client disconnect,
cancelled task) is aborted, and its KV blocks return to the pool.

The engine is built in its loop thread, not the caller's: with OpenMP, torch work split over
two threads keeps two thread teams on the same cores, and a CPU decode step run in the second
thread took 50 ms instead of 30 here (SmolLM2, bf16, 2 cores).

Liveness: the thread stamps `heartbeat` on every iteration, busy or idle, after asking the
engine whether it can still serve (a tensor-parallel worker may have died, even while idle);
`is_healthy()` is false once the loop has died or has not come round for `stall_seconds`,
`is_dead()` only for the former. The loop stops the engine's worker processes when it ends.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from infernetes.runtime.engine.llm_engine import LLMEngine
from infernetes.runtime.engine.stats import IterationStats
from infernetes.runtime.outputs import RequestOutput
from infernetes.runtime.request import LoRARequest
from infernetes.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_IDLE_WAIT_SECONDS = 0.5


class EngineDeadError(RuntimeError):
    """The engine loop stopped; no request can be served."""


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLM:
    engine: LLMEngine  # built and driven by the engine thread

    def __init__(self, make_engine: Callable[[], LLMEngine], stall_seconds: float = 60.0,
                 on_stats: Callable[[IterationStats], None] | None = None):
        """make_engine: builds the engine, called in the engine thread; an error it raises
        is raised here. on_stats: called in the engine thread with each step's stats."""
        self.stall_seconds = stall_seconds
        self.on_stats = on_stats
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._stop = threading.Event()
        self._built = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make_engine,),
                                        name="engine-loop", daemon=True)
        self._thread.start()
        self._built.wait()
        if self.error is not None:
            raise self.error

    # -- caller side (event loop) -----------------------------------------------------------

    def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                 lora_request: LoRARequest | None = None) -> AsyncIterator[RequestOutput]:
        """The request's outputs as the engine makes them. Bad input raises ValueError here,
        at the call, before a response (a stream's headers above all) has started."""
        self._check_alive()
        prompt_token_ids = self.engine.encode_prompt(prompt)
        self.engine.validate_prompt(prompt_token_ids)
        self.engine.validate_params(params)
        return self._outputs(request_id, prompt_token_ids, params, lora_request)

    async def _outputs(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, lora_request: LoRARequest | None
                       ) -> AsyncIterator[RequestOutput]:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, prompt_token_ids, params, lora_request))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    async def call(self, fn: Callable[[LLMEngine], object]) -> object:
        """fn(engine), run in the engine thread between steps (the engine is not thread-safe);
        its result, or its exception, comes back here."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._commands.put(("call", fn, loop, future))
        return await future

    def is_healthy(self) -> bool:
        return (self.error is None and self._thread.is_alive()
                and time.monotonic() - self.heartbeat < self.stall_seconds)

    def is_dead(self) -> bool:
        """The loop has stopped for good (not merely slow): the process should exit."""
        return self.error is not None or not self._thread.is_alive()

    def num_waiting(self) -> int:
        """Requests accepted and not yet running (read from the caller's thread: approximate)."""
        return max(0, len(self._streams) - self.engine.scheduler.num_running)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._commands.put(("wake",))
        self._thread.join(timeout)

    def _check_alive(self) -> None:
        if self.error is not None or not self._thread.is_alive():
            raise EngineDeadError(f"the engine loop has stopped: {self.error!r}")

    # -- engine thread ----------------------------------------------------------------------

    def _run(self, make_engine: Callable[[], LLMEngine]) -> None:
        try:
            self.engine = make_engine()
            self.engine.log_stats = self.on_stats is not None
        except BaseException as e:
            self.error = e
            return
        finally:
            self._built.set()
        try:
            while not self._stop.is_set():
                self.engine.check_health()
                self.heartbeat = time.monotonic()
                busy = self.engine.has_unfinished_requests()
                self._apply_commands(block=not busy)
                if self.engine.has_unfinished_requests():
                    self._deliver(self.engine.step())
                    if self.on_stats is not None:
                        self.on_stats(self.engine.last_stats)
        except BaseException as e:  # the loop must report its death, whatever killed it
            logger.exception("engine loop died")
            self.error = e
            for request_id in list(self._streams):
                self._push(request_id, EngineDeadError(f"the engine loop died: {e!r}"))
        finally:
            self.engine.shutdown()

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_SECONDS) if block \
                else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            kind = command[0]
            if kind == "add":
                _, request_id, prompt_token_ids, params, lora = command
                if request_id in self._streams:  # not already abandoned by its caller
                    try:
                        self.engine.add_request(request_id, prompt_token_ids, params, lora)
                    except ValueError as e:
                        self._push(request_id, e)
            elif kind == "abort":
                self.engine.abort_request(command[1])
            elif kind == "call":
                _, fn, loop, future = command
                try:
                    result = fn(self.engine)
                except Exception as e:  # the caller's error, not the loop's
                    loop.call_soon_threadsafe(_settle, future, None, e)
                else:
                    loop.call_soon_threadsafe(_settle, future, result, None)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            self._push(output.request_id, output)

    def _push(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
