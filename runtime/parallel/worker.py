"""One tensor-parallel rank: a process that joins the group, builds its shard of the model (a
ModelRunner) and runs the calls the engine sends it, in order, until told to stop.

Protocol over the worker's end of a multiprocessing Pipe: the engine sends pickled
`(method, args)` (a step's SchedulerOutput as a StepDelta: what changed since the last); the
worker answers every call with `("ok", result)` or `("error",
exception)`. Its first message, unasked, is `("ok", WorkerInfo)` once the model is loaded (or
the error that stopped it). A failure in a call that runs collectives (a step, the KV cache,
warm-up) leaves the group unusable, so the worker reports it and exits; the engine sees the
exit and stops the other ranks. Adapter loading runs no collective and only reports.

The worker dies with the process that started it (PR_SET_PDEATHSIG on Linux) and when its pipe
closes, so no exit of the engine leaves ranks behind. It ignores SIGINT and SIGTERM, which a
terminal, `pkill` or a service manager may send to every process of the server at once: the
engine decides when its workers stop, after the server has drained its requests.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from infernetes.runtime.config import LoRAConfig
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.parallel.step_delta import StepDecoder, StepDelta

# Calls that run no collective: their failure harms nothing else, and the worker goes on.
RECOVERABLE_CALLS = frozenset({"add_lora", "remove_lora"})
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """A ModelRunner's constructor arguments, sent to every rank."""
    arch: ModelArchConfig
    folder: Path
    dtype: torch.dtype
    device_type: str
    max_model_len: int
    block_size: int
    load_format: str
    seed: int
    kernel_backend: str
    lora: LoRAConfig | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a rank reports once its shard is loaded."""
    rank: int
    pid: int
    use_triton: bool
    weight_bytes: int  # of its parameters
    checkpoint_bytes_read: int
    kv_cache_bytes_per_block: int


def worker_main(rank: int, size: int, store_port: int, backend: str, spec: RunnerSpec,
                conn: Connection) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from infernetes.runtime.engine.model_runner import ModelRunner
    from infernetes.runtime.parallel.state import init_tensor_parallel
    try:
        if spec.device_type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:  # the ranks share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
            device = torch.device("cpu")
        init_tensor_parallel(rank, size, store_port, backend)
        torch.manual_seed(spec.seed)
        runner = ModelRunner(spec.arch, spec.folder, spec.dtype, device, spec.max_model_len,
                             spec.block_size, spec.load_format, spec.seed, spec.kernel_backend,
                             spec.lora)
        conn.send(("ok", WorkerInfo(rank, os.getpid(), runner.use_triton, runner.weight_bytes,
                                    runner.checkpoint_bytes_read,
                                    runner.kv_cache_bytes_per_block())))
    except BaseException as e:  # noqa: BLE001 - whatever stopped the start-up, the engine says
        traceback.print_exc()
        _send(conn, ("error", portable_error(e)))
        sys.exit(1)
    _serve(_DeltaStepRunner(runner), conn)


class _DeltaStepRunner:
    """The rank's ModelRunner, whose steps arrive as StepDeltas (runtime/parallel/step_delta.py)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.decoder = StepDecoder()

    def execute_model(self, delta: StepDelta):
        return self.runner.execute_model(self.decoder.decode(delta))

    def __getattr__(self, name: str):
        return getattr(self.runner, name)


def _serve(runner, conn: Connection) -> None:
    while True:
        try:
            method, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the engine is gone
            sys.exit(1)
        if method == "shutdown":
            _send(conn, ("ok", None))
            torch.distributed.destroy_process_group()
            return
        try:
            result = getattr(runner, method)(*args)
        except Exception as e:  # noqa: BLE001 - reported to the engine, which raises it
            if method not in RECOVERABLE_CALLS:
                traceback.print_exc()
            _send(conn, ("error", portable_error(e)))
            if method not in RECOVERABLE_CALLS:
                sys.exit(1)
            continue
        _send(conn, ("ok", result))


def portable_error(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else one of its base kind (a
    ValueError stays a ValueError: it fails one request, not the engine) with its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - exceptions whose __init__ takes other arguments
        kind = ValueError if isinstance(error, ValueError) else RuntimeError
        return kind(f"{type(error).__name__}: {error}")


def _send(conn: Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, OSError):  # the engine is gone
        sys.exit(1)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl
            sys.exit(1)
