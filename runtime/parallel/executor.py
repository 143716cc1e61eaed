"""The engine's side of tensor parallelism: N worker processes, one per rank, driven like one
ModelRunner (the methods the engine calls on a runner, with the same signatures).

Every call goes to every rank (one pickle, N sends) and waits for every answer: the ranks run
the same step in lockstep, since their collectives meet. A step goes out as a StepDelta: each
request's prompt once, then only its new output tokens. Rank 0's result is the call's result
(it alone samples); the KV-cache size is the smallest any rank can hold.

Ranks find each other through a TCP store this process binds on loopback to a free port (no
fixed address or port, nothing to collide). A thread watches the workers: when one exits
unasked, the rest are killed (they would wait forever in a collective), the executor is dead,
and every call, `check_health` included, raises WorkerDiedError; the engine loop stops on it,
so `/health` fails and the server exits non-zero. `shutdown` stops them all; so does the
interpreter's exit, and each worker dies with this process in any case.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import threading
import time
import weakref
from datetime import timedelta
from multiprocessing.connection import Connection, wait

import torch

from infernetes.runtime.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from infernetes.runtime.parallel.step_delta import StepEncoder
from infernetes.runtime.parallel.worker import RunnerSpec, WorkerInfo, worker_main
from infernetes.runtime.request import LoRARequest

logger = logging.getLogger(__name__)

_STOP_SECONDS = 5.0


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process exited; the engine cannot go on."""


class MultiprocExecutor:
    def __init__(self, spec: RunnerSpec, tp_size: int):
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True,
                                                 wait_for_workers=False,
                                                 timeout=timedelta(minutes=10))
        backend = "nccl" if spec.device_type == "cuda" else "gloo"
        self.size = tp_size
        self.processes: list[multiprocessing.Process] = []
        self._conns: list[Connection] = []
        self._dead: str | None = None
        self._closing = threading.Event()  # set by shutdown: workers exiting is expected
        self._steps = StepEncoder()
        for rank in range(tp_size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main, name=f"infernetes-tp-rank{rank}", daemon=True,
                args=(rank, tp_size, self._store.port, backend, spec, child_end))
            process.start()
            child_end.close()
            self.processes.append(process)
            self._conns.append(parent_end)
        self._finalizer = weakref.finalize(self, _stop, self.processes, self._conns,
                                           self._closing)
        threading.Thread(target=_watch, args=(self.processes, self._closing, weakref.ref(self)),
                         name="tp-worker-watch", daemon=True).start()
        try:
            self.workers: list[WorkerInfo] = self._collect()
        except WorkerDiedError as e:
            self.shutdown()
            raise WorkerDiedError(
                f"{e} while loading the model (its log is above). In a script, create the "
                f"engine under `if __name__ == \"__main__\":`: workers are spawned processes "
                f"that import the main module") from None
        except BaseException:
            self.shutdown()
            raise
        self.use_triton = self.workers[0].use_triton
        self.lora_enabled = spec.lora is not None
        logger.info("tensor parallelism: %d ranks (pids %s), %.1f MiB of weights each",
                    tp_size, ", ".join(str(w.pid) for w in self.workers),
                    self.workers[0].weight_bytes / 2**20)

    # -- the runner's methods ---------------------------------------------------------------

    def kv_cache_bytes_per_block(self) -> int:
        return self.workers[0].kv_cache_bytes_per_block

    def gpu_kv_blocks(self, gpu_memory_utilization: float, num_tokens: int) -> int:
        return min(self._call("gpu_kv_blocks", gpu_memory_utilization, num_tokens))

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._call("allocate_kv_cache", num_blocks)

    def warm_up(self) -> None:
        self._call("warm_up")

    def capture_cuda_graphs(self, max_num_seqs: int) -> None:
        self._call("capture_cuda_graphs", max_num_seqs)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self._call("execute_model", self._steps.encode(scheduler_output))[0]

    def add_lora(self, request: LoRARequest, in_flight: frozenset[int]) -> None:
        self._call("add_lora", request, in_flight)

    def remove_lora(self, lora_int_id: int) -> None:
        self._call("remove_lora", lora_int_id)

    # -- life -------------------------------------------------------------------------------

    def check_health(self) -> None:
        if self._dead is not None:
            raise WorkerDiedError(self._dead)

    def shutdown(self) -> None:
        """Ask every worker to stop, then kill what is left after a few seconds."""
        self._finalizer()

    def _call(self, method: str, *args) -> list:
        self.check_health()
        message = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a dead worker: _collect reports it
                conn.send_bytes(message)
        return self._collect()

    def _collect(self) -> list:
        """Every rank's answer, in rank order; the first error raised once all answered."""
        answers: dict[int, tuple] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            sentinels = {self.processes[r].sentinel: r for r in pending}
            ready = wait(list(pending.values()) + list(sentinels))
            for item in ready:
                rank = next((r for r, c in pending.items() if c is item), None)
                if rank is not None:
                    try:
                        answers[rank] = pending.pop(rank).recv()
                    except (EOFError, OSError):
                        pending.pop(rank, None)
                        answers[rank] = ("died", None)
            for sentinel, rank in sentinels.items():
                if sentinel in ready and rank in pending and not pending[rank].poll():
                    pending.pop(rank)
                    answers[rank] = ("died", None)
        errors = [answers[r][1] for r in sorted(answers) if answers[r][0] == "error"]
        if errors:
            raise errors[0]
        died = [r for r in sorted(answers) if answers[r][0] == "died"]
        if died:
            self._mark_dead(died[0])
            raise WorkerDiedError(self._dead)
        return [answers[r][1] for r in range(self.size)]

    def _mark_dead(self, rank: int) -> None:
        if self._dead is not None or self._closing.is_set():
            return
        process = self.processes[rank]
        process.join(0.1)
        self._dead = (f"tensor-parallel worker rank {rank} (pid {process.pid}) exited with "
                      f"code {process.exitcode}")
        logger.error("%s; stopping the other ranks", self._dead)
        for other in self.processes:
            if other.is_alive():
                other.kill()


def _watch(processes: list[multiprocessing.Process], closing: threading.Event,
           executor: weakref.ref) -> None:
    """Until shutdown: the first worker to exit marks the executor dead, which kills the rest.
    (A weak reference: this thread must not keep a dropped executor alive.)"""
    sentinels = {p.sentinel: rank for rank, p in enumerate(processes)}
    ready = wait(list(sentinels))
    alive = executor()
    if not closing.is_set() and alive is not None:
        alive._mark_dead(sentinels[ready[0]])


def _stop(processes: list[multiprocessing.Process], conns: list[Connection],
          closing: threading.Event) -> None:
    """Ask each worker to stop, wait a few seconds, kill what is left. Also run when the
    executor is garbage-collected and at the interpreter's exit (weakref.finalize)."""
    closing.set()
    message = pickle.dumps(("shutdown", ()))
    for conn in conns:
        with contextlib.suppress(OSError):  # that worker is gone already
            conn.send_bytes(message)
    deadline = time.monotonic() + _STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for conn in conns:
        conn.close()
