"""Tensor parallelism (issue 8): TP=N against TP=1 on the same random-weight model shape, in
one run, alternating the two engines round by round; medians and the ratio.

Per engine (both alive for the whole run, so neither pays the other's start-up; an idle one
only waits on its pipes):
  * throughput: R requests of I prompt tokens generating O tokens each (greedy, ignore_eos),
    output tokens per second of wall time;
  * decode step time: B requests with I-token prompts are prefilled, then `engine.step()` is
    timed over steps in which every request decodes one token (median), at each B of
    --decode-batches.
Weights are random (`load_format="dummy"`); every rank draws its own shard, so the two engines'
outputs differ and only speed is compared. On CPU the ranks share the cores (each gets
cores / N threads) and talk over gloo; on GPUs each rank has one GPU and NCCL.

    python benchmarks/gpu/bench_tensor_parallel.py --device cpu --shape llama-1b --tp 2
    python benchmarks/gpu/bench_tensor_parallel.py --device cuda --shape llama-8b --tp 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, git_info, log, make_prompts, write_result  # noqa: E402
from models import SHAPES, write_config_folder  # noqa: E402

TAG = "bench_tp"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--shape", default="llama-8b", choices=sorted(SHAPES))
    p.add_argument("--tp", type=int, default=2, help="the tensor-parallel size compared to 1")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--decode-batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kv-cache-memory", default=None, help="per rank; default: the engine's")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--output-json", default=None, help="also write the results here")
    return p.parse_args(argv)


def build(args: argparse.Namespace, folder: Path, tp: int):
    from infernetes import LLM
    started = time.perf_counter()
    llm = LLM(str(folder), dtype=args.dtype, device=args.device, load_format="dummy",
              skip_tokenizer_init=True, tensor_parallel_size=tp,
              max_num_seqs=max(args.num_requests, *decode_batches(args)),
              kv_cache_memory=args.kv_cache_memory, max_model_len=args.max_model_len)
    return llm, time.perf_counter() - started


def decode_batches(args: argparse.Namespace) -> list[int]:
    return [int(b) for b in args.decode_batches.split(",") if b]


def throughput(llm, prompts: list[list[int]], output_len: int) -> float:
    from infernetes import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    seconds = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outputs) / seconds


def decode_step_seconds(llm, prompts: list[list[int]], steps: int) -> float:
    """Median time of an engine step in which every request decodes one token."""
    from infernetes import SamplingParams
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True)
    ids = [f"decode-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
    while any(r.num_computed_tokens < len(r.prompt_token_ids)
              for r in engine.scheduler.requests.values()):
        engine.step()  # prefill (chunked), not timed
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    for request_id in ids:
        engine.abort_request(request_id)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    shape = SHAPES[args.shape]
    prompts = make_prompts(shape.vocab_size, args.num_requests, args.input_len, seed=0)
    results: dict[str, Any] = {"benchmark": TAG, "args": vars(args), "shape": shape.summary(),
                               "git": git_info()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(shape, Path(tmp) / shape.name)
        engines = {}
        for tp in (1, args.tp):
            log(f"loading TP={tp}", TAG)
            engines[tp] = build(args, folder, tp)
            throughput(engines[tp][0], prompts[:2], 4)  # warm-up, untimed
        import torch
        results["device"] = device_info(torch.device(args.device))
        figures: dict[int, dict[str, list[float]]] = {tp: {} for tp in engines}
        for round_index in range(args.rounds):
            for tp, (llm, _) in engines.items():
                log(f"round {round_index + 1}/{args.rounds}, TP={tp}", TAG)
                runs = figures[tp]
                runs.setdefault("throughput_tok_s", []).append(
                    throughput(llm, prompts, args.output_len))
                for batch in decode_batches(args):
                    runs.setdefault(f"decode_step_ms_batch{batch}", []).append(
                        1000 * decode_step_seconds(llm, prompts[:batch], args.decode_steps))
        per_tp = {}
        for tp, (llm, load_s) in engines.items():
            runner = llm.engine.runner
            workers = getattr(runner, "workers", None)
            per_tp[f"tp{tp}"] = {
                "load_s": round(load_s, 2),
                "weight_bytes_per_rank": [w.weight_bytes for w in workers] if workers
                else [runner.weight_bytes],
                **{name: {"median": statistics.median(values), "runs": values}
                   for name, values in figures[tp].items()}}
            llm.shutdown()
    base, split = per_tp["tp1"], per_tp[f"tp{args.tp}"]
    results["engines"] = per_tp
    results["ratios_tp_over_tp1"] = {
        name: split[name]["median"] / base[name]["median"]
        for name in base if isinstance(base[name], dict)}
    log(f"ratios TP={args.tp} / TP=1: {results['ratios_tp_over_tp1']}", TAG)
    write_result(f"tensor-parallel-{shape.name}-tp{args.tp}", results,
                 slug=None if args.device == "cuda" else "cpu")
    if args.output_json:
        Path(args.output_json).write_text(__import__("json").dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
