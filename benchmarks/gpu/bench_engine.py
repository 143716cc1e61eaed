"""The engine on a GPU (issue 6): offline throughput against transformers, and decode step
time against the roofline.

Per model shape (random bf16 weights, `load_format="dummy"`, prompts of random token ids):
  * throughput: N requests of I prompt tokens each generating O tokens (greedy, ignore_eos),
    all added at once and stepped to the end as `LLM.generate` does; output tokens per second
    of wall time. The same prompts through transformers' batched `generate` (left padding,
    min_new_tokens = max_new_tokens) on the same GPU give the baseline and the ratio.
  * decode steps: B requests with C-token prompts are prefilled, then `engine.step()` is timed
    (synchronised) over steps in which every request decodes one token. The floor of such a
    step is max(bytes / copy bandwidth, flops / matrix rate) with the bytes and flops of
    models.decode_step_cost and both ceilings measured on this device in this run.
Each section is independent: a failure is recorded in the JSON and the rest still runs; a
section that would not fit in the time budget is skipped and says so. Progress goes to stderr.

    python benchmarks/gpu/bench_engine.py                 # full: 1B, then 8B as time allows
    python benchmarks/gpu/bench_engine.py --quick         # 1B, smaller workload
    python benchmarks/gpu/bench_engine.py --device cpu    # smoke run of this code, tiny shape
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - this folder is put on the path first
    Deadline, device_info, free_device_memory, git_info, log, make_prompts, measure_ceilings,
    prompts_digest, roofline_floor, run_section, skipped, synchronize, write_result)
from models import SHAPES, ModelShape, decode_step_cost, write_config_folder  # noqa: E402
from transformers_baseline import transformers_throughput  # noqa: E402

TAG = "bench_engine"
DTYPE_BYTES = 2  # bf16
GOAL_ENGINE_OVER_TRANSFORMERS = 5.0  # on the 1B shape
GOAL_DECODE_OVER_ROOFLINE = 1.5  # at batch 256


@dataclass(frozen=True, slots=True)
class Workload:
    num_requests: int
    input_len: int
    output_len: int


@dataclass(frozen=True, slots=True)
class Settings:
    shapes: tuple[str, ...]
    throughput: Workload
    decode_batches: tuple[int, ...]
    decode_context: int  # prompt tokens of every request in the decode-step measurement
    warmup_steps: int
    timed_steps: int
    run_transformers: bool = True
    seed: int = 0


FULL = Settings(shapes=("llama-1b", "llama-8b"), throughput=Workload(256, 512, 256),
                decode_batches=(1, 32, 256), decode_context=512, warmup_steps=5, timed_steps=20)
QUICK = Settings(shapes=("llama-1b",), throughput=Workload(64, 256, 64),
                 decode_batches=(1, 32, 256), decode_context=512, warmup_steps=3, timed_steps=10)
CPU_SMOKE = Settings(shapes=("tiny",), throughput=Workload(8, 16, 8), decode_batches=(1, 4),
                     decode_context=32, warmup_steps=2, timed_steps=3)

# Seconds a section must have left to start, per shape (the 8B's sections take longer).
_NEEDED_S = {"engine": {"llama-8b": 90.0, "default": 45.0},
             "transformers": {"llama-8b": 60.0, "default": 30.0}}
_STOP_MARGIN_S = 10.0  # a timed loop stops this long before the budget ends


def _needed(section: str, shape: ModelShape, device_type: str) -> float:
    if device_type != "cuda":
        return 0.0
    table = _NEEDED_S[section]
    return table.get(shape.name, table["default"])


# -- our engine --------------------------------------------------------------------------------

def check_dummy_load_support() -> None:
    """A clear error where the engine cannot run a shape from its config.json alone."""
    from infernetes.runtime.config import EngineConfig
    from infernetes.runtime.llm import LLM
    if "load_format" not in inspect.signature(LLM.__init__).parameters or \
            "load_format" not in getattr(EngineConfig, "__dataclass_fields__", {}):
        raise RuntimeError(
            "this engine has no load_format='dummy' (LLM(load_format=...), "
            "EngineConfig.load_format): the GPU engine benchmark runs model shapes from a "
            "config.json with random weights and cannot run without it")


def engine_capacity(shape: ModelShape, settings: Settings, block_size: int = 16
                    ) -> tuple[int, int, int]:
    """(max_model_len, KV cache bytes, max_num_seqs) that fit both measurements, no more: the
    cache is sized to need so that transformers can run on the same GPU afterwards."""
    work = settings.throughput
    decode_tokens = settings.decode_context + _decode_max_tokens(
        max(settings.decode_batches), settings)
    longest = max(work.input_len + work.output_len, decode_tokens)
    max_model_len = -(-(longest + 16) // 256) * 256  # a margin over the longest request
    blocks = max(work.num_requests * -(-(work.input_len + work.output_len) // block_size),
                 max(settings.decode_batches) * -(-decode_tokens // block_size),
                 -(-max_model_len // block_size)) + 64
    kv_bytes = blocks * block_size * shape.kv_bytes_per_token(DTYPE_BYTES)
    return max_model_len, kv_bytes, max(work.num_requests, *settings.decode_batches)


def _decode_max_tokens(batch: int, settings: Settings, budget: int = 2048) -> int:
    """Enough new tokens per request to outlast the prefill steps (counted as if decodes took
    half of each step's token budget), warm-up and timing."""
    prefill_steps = -(-batch * settings.decode_context // max(budget // 2, 1))
    return prefill_steps + settings.warmup_steps + settings.timed_steps + 16


def load_engine(folder: Path, shape: ModelShape, settings: Settings, device) -> Any:
    from infernetes import LLM
    check_dummy_load_support()
    max_model_len, kv_bytes, max_num_seqs = engine_capacity(shape, settings)
    return LLM(model=str(folder), load_format="dummy", skip_tokenizer_init=True,
               dtype="bfloat16", device=device.type, seed=settings.seed,
               max_model_len=max_model_len, kv_cache_memory=kv_bytes, max_num_seqs=max_num_seqs)


def engine_description(llm) -> dict[str, Any]:
    engine = llm.engine
    runner = engine.runner
    return {"load_s": round(engine.load_seconds, 2), "num_kv_blocks": engine.num_blocks,
            "max_model_len": engine.max_model_len,
            "max_num_seqs": engine.scheduler.config.max_num_seqs,
            "max_num_batched_tokens": engine.scheduler.config.max_num_batched_tokens,
            "kernel_backend": getattr(engine.config, "kernel_backend", None),
            "use_triton": getattr(runner, "use_triton", None),
            "cuda_graphs": getattr(runner, "decode_graphs", None) is not None,
            "enforce_eager": engine.config.enforce_eager}


def _partial_output_tokens(engine, request_id: str) -> int:
    state = getattr(engine.output_processor, "sequences", {}).get(request_id)
    return len(getattr(state, "token_ids", ()))


def engine_throughput(llm, prompts: list[list[int]], output_len: int, device,
                      deadline: Deadline) -> dict[str, Any]:
    """All requests added at once and stepped to completion (LLM.generate's loop, with a
    deadline: a run cut short reports the tokens it made and says so)."""
    from infernetes import SamplingParams
    from infernetes.runtime.sampling_params import RequestOutputKind
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    # Warm-up on other prompts: the measured ones must not find their blocks cached.
    warm_up = make_prompts(engine.arch.vocab_size, 2, len(prompts[0]), seed=-1)
    _engine_generate(engine, warm_up, 4)
    request_ids = [f"throughput-{i}" for i in range(len(prompts))]
    made: dict[str, int] = {}
    synchronize(device)
    start = time.perf_counter()
    for request_id, prompt in zip(request_ids, prompts):
        engine.add_request(request_id, prompt, params)
    steps, truncated = 0, False
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                made[output.request_id] = len(output.outputs[0].token_ids)
        steps += 1
        if deadline.remaining() < _STOP_MARGIN_S:
            truncated = True
            break
    synchronize(device)
    wall = time.perf_counter() - start
    for request_id in request_ids:
        if request_id not in made:
            made[request_id] = _partial_output_tokens(engine, request_id)
            engine.abort_request(request_id)
    output_tokens = sum(made.values())
    input_tokens = sum(len(p) for p in prompts)
    return {"requests": len(prompts), "output_tokens": output_tokens, "wall_s": round(wall, 3),
            "timing": "wall clock from the first add_request to the last step, synchronised",
            "steps": steps, "output_tok_per_s": output_tokens / wall,
            "total_tok_per_s": (input_tokens + output_tokens) / wall, "truncated": truncated}


def _engine_generate(engine, prompts: list[list[int]], max_tokens: int) -> None:
    from infernetes import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"warm-up-{time.monotonic_ns()}-{i}", prompt, params)
    while engine.has_unfinished_requests():
        engine.step()


def engine_decode_steps(llm, shape: ModelShape, batch: int, settings: Settings, device,
                        ceilings: dict[str, float], deadline: Deadline) -> dict[str, Any]:
    """Median time of `engine.step()` while all `batch` requests decode, against the floor."""
    from infernetes import SamplingParams
    from infernetes.runtime.sampling_params import RequestOutputKind
    engine = llm.engine
    context = settings.decode_context
    budget = getattr(engine.scheduler.config, "max_num_batched_tokens", None) or 2048
    params = SamplingParams(temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA,
                            max_tokens=_decode_max_tokens(batch, settings, budget))
    prompts = make_prompts(shape.vocab_size, batch, context, settings.seed + 7919 * batch)
    made = {f"decode-{batch}-{i}": 0 for i in range(batch)}
    for request_id, prompt in zip(made, prompts):
        engine.add_request(request_id, prompt, params)

    def step() -> int:
        outputs = engine.step()
        for output in outputs:
            if output.request_id in made:
                made[output.request_id] += len(output.outputs[0].token_ids)
        return len(outputs)

    try:
        prefill_steps = 0
        while min(made.values()) == 0:  # some request has not finished its prompt yet
            step()
            prefill_steps += 1
            if deadline.remaining() < _STOP_MARGIN_S:
                raise TimeoutError(f"prefill of batch {batch} outlasted the time budget")
        for _ in range(settings.warmup_steps):
            step()
        samples_ms, floors, irregular = [], [], 0
        for _ in range(settings.timed_steps):
            context_lens = [context + n for n in made.values()]
            cost = decode_step_cost(shape, context_lens, DTYPE_BYTES)
            floors.append((cost, roofline_floor(cost.total_bytes, cost.flops,
                                                ceilings["copy_bandwidth_gb_s"],
                                                ceilings["matmul_tflop_s"])))
            synchronize(device)
            start = time.perf_counter()
            advanced = step()
            synchronize(device)
            samples_ms.append((time.perf_counter() - start) * 1e3)
            irregular += advanced != batch
    finally:
        for request_id in made:
            engine.abort_request(request_id)
    return _decode_report(batch, prefill_steps, samples_ms, floors, irregular)


def _decode_report(batch: int, prefill_steps: int, samples_ms: list[float], floors: list,
                   irregular: int) -> dict[str, Any]:
    median_ms = statistics.median(samples_ms)
    floor_ms = statistics.fmean(f.floor_s for _, f in floors) * 1e3
    middle_cost, middle_floor = floors[len(floors) // 2]
    return {
        "batch": batch, "prefill_steps": prefill_steps, "timed_steps": len(samples_ms),
        "timing": "host clock around engine.step(), device synchronised before and after",
        "irregular_steps": irregular,  # steps that did not advance every request by one
        "step_ms_median": median_ms, "step_ms_min": min(samples_ms),
        "step_ms_max": max(samples_ms), "tok_per_s": batch / (median_ms * 1e-3),
        "roofline_floor_ms": floor_ms, "roofline_bound": middle_floor.bound,
        "roofline_memory_ms": middle_floor.memory_s * 1e3,
        "roofline_compute_ms": middle_floor.compute_s * 1e3,
        "step_cost_middle": middle_cost.as_dict(),
        "step_over_floor": median_ms / floor_ms}


# -- one shape, all sections -------------------------------------------------------------------

def bench_shape(shape: ModelShape, settings: Settings, device, ceilings: dict[str, float],
                deadline: Deadline, report: dict[str, Any], publish: Callable[[], None]) -> None:
    """Fills `report` (this shape's part of the result) section by section, publishing after
    each, so that a run killed from outside still leaves what it measured."""
    report["shape"] = shape.summary(DTYPE_BYTES)
    work = settings.throughput
    prompts = make_prompts(shape.vocab_size, work.num_requests, work.input_len, settings.seed)
    report["workload"] = {**asdict(work), "prompts_sha256": prompts_digest(prompts),
                          "greedy": True, "ignore_eos": True, "dtype": "bfloat16"}
    with tempfile.TemporaryDirectory(prefix=f"{shape.name}-") as tmp:
        folder = write_config_folder(shape, Path(tmp) / shape.name)
        if not deadline.allows(_needed("engine", shape, device.type)):
            report["engine"] = skipped(f"time budget: {deadline.remaining():.0f}s left")
        else:
            _bench_engine_sections(folder, shape, settings, device, ceilings, deadline,
                                   prompts, report, publish)
        free_device_memory(device)
        if device.type == "cuda":
            import torch
            report["device_memory_left_after_engine_gib"] = round(
                torch.cuda.memory_allocated(device) / 2**30, 2)
        publish()
    if not settings.run_transformers:
        report["transformers"] = skipped("run_transformers is off")
    elif not deadline.allows(_needed("transformers", shape, device.type)):
        report["transformers"] = skipped(f"time budget: {deadline.remaining():.0f}s left")
    else:
        run_section(report, "transformers", lambda: transformers_throughput(
            shape, prompts, work.output_len, device, settings.seed, deadline,
            margin_s=2 * _STOP_MARGIN_S), TAG)
    report["engine_over_transformers"] = _ratio(report)
    publish()


def _bench_engine_sections(folder, shape, settings, device, ceilings, deadline, prompts,
                           report, publish) -> None:
    holder: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        holder["llm"] = load_engine(folder, shape, settings, device)
        return engine_description(holder["llm"])

    run_section(report, "engine", load, TAG)
    publish()
    llm = holder.pop("llm", None)
    if llm is None:
        return
    try:
        run_section(report, "engine_throughput", lambda: engine_throughput(
            llm, prompts, settings.throughput.output_len, device, deadline), TAG)
        publish()
        decode = report.setdefault("decode_steps", {})
        for batch in settings.decode_batches:
            key = f"batch_{batch}"
            if deadline.remaining() < 2 * _STOP_MARGIN_S:
                decode[key] = skipped(f"time budget: {deadline.remaining():.0f}s left")
                continue
            run_section(decode, key, lambda b=batch: engine_decode_steps(
                llm, shape, b, settings, device, ceilings, deadline), TAG)
            publish()
    finally:
        del llm


def _ratio(report: dict[str, Any]) -> dict[str, Any] | None:
    ours, theirs = report.get("engine_throughput", {}), report.get("transformers", {})
    if ours.get("status") != "ok" or theirs.get("status") != "ok":
        return None
    ratio = ours["output_tok_per_s"] / theirs["output_tok_per_s"]
    caveats = [name for name, part in (("engine", ours), ("transformers", theirs))
               if part.get("truncated")]
    return {"ratio": ratio, "basis": "output tokens per second of wall time, same prompts",
            "truncated_runs": caveats}


# -- the whole benchmark -----------------------------------------------------------------------

def goals(models: dict[str, Any]) -> dict[str, Any]:
    """Issue 6's targets, each with the measured value and whether it is met (None: not
    measured in this run)."""
    def value(path: list[str]):
        node: Any = models
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    out: dict[str, Any] = {}
    ratio = value(["llama-1b", "engine_over_transformers", "ratio"])
    out["engine_over_transformers_llama-1b"] = {
        "value": ratio, "goal": f">= {GOAL_ENGINE_OVER_TRANSFORMERS}",
        "met": None if ratio is None else ratio >= GOAL_ENGINE_OVER_TRANSFORMERS}
    for name in models:
        over = value([name, "decode_steps", "batch_256", "step_over_floor"])
        out[f"decode_step_over_roofline_b256_{name}"] = {
            "value": over, "goal": f"<= {GOAL_DECODE_OVER_ROOFLINE}",
            "met": None if over is None else over <= GOAL_DECODE_OVER_ROOFLINE}
    return out


def run(device: Any = "cuda", quick: bool = False, *, budget_s: float | None = None,
        settings: Settings | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The engine benchmark on `device`; returns the result. on_update(result) is called after
    every section with the result so far (the CLI writes it to disk each time)."""
    import torch
    device = torch.device(device)
    if settings is None:
        settings = CPU_SMOKE if device.type != "cuda" else (QUICK if quick else FULL)
    deadline = Deadline(budget_s)
    result: dict[str, Any] = {"benchmark": "engine", "quick": quick,
                              "settings": asdict(settings), "budget_s": budget_s,
                              "device": device_info(device), "git": git_info(), "ceilings": None,
                              "models": {}}

    def publish() -> None:
        result["goals"] = goals(result["models"])
        if on_update is not None:
            on_update(result)

    ceilings = run_section(result, "ceilings",
                           lambda: measure_ceilings(device).as_dict(), TAG)
    publish()
    if ceilings["status"] != "ok":
        return result
    for name in settings.shapes:
        shape = SHAPES[name]
        report = result["models"].setdefault(name, {})
        try:
            bench_shape(shape, settings, device, ceilings, deadline, report, publish)
        except Exception as error:  # noqa: BLE001 - e.g. the config folder: report, go on
            report["error"] = f"{type(error).__name__}: {error}"
            log(f"{name}: FAILED {report['error']}", TAG)
        publish()
    result["elapsed_s"] = round(deadline.elapsed(), 1)
    publish()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--quick", action="store_true", help="the 1B shape, a smaller workload")
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated, from {', '.join(SHAPES)} (default: by mode)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip or cut sections that would end after this many seconds")
    p.add_argument("--no-transformers", action="store_true", help="skip the baseline")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results ($OUT too)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = CPU_SMOKE if device.type != "cuda" else (QUICK if args.quick else FULL)
    if args.shapes:
        unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
        if unknown:
            raise SystemExit(f"--shapes: unknown {unknown}; known: {', '.join(SHAPES)}")
        settings = replace(settings, shapes=tuple(args.shapes.split(",")))
    if args.no_transformers:
        settings = replace(settings, run_transformers=False)
    written: list[Path] = []

    def save(result: dict[str, Any]) -> None:
        written[:] = write_result("engine", result, args.out_dir)

    result = run(device, args.quick, budget_s=args.budget_s, settings=settings, on_update=save)
    print(json.dumps(result, indent=2, default=str))
    log(f"wrote {', '.join(map(str, written))}", TAG)


if __name__ == "__main__":
    main()
