"""Single-sequence decoding on CPU against its memory-bandwidth bound.

Decoding one sequence reads every weight once per token, so a token cannot take less than
(weight bytes) / (memory bandwidth). This measures, in one process:
  * the machine's read bandwidth: a sum over a 512 MiB float32 tensor on all torch threads;
  * the bytes one decode step must read: every linear layer's weight and the LM head;
  * the decode step of one sequence (median over `--steps` steps after a `--context`-token
    prompt), for each kernel backend in turn, alternating over `--rounds` rounds;
and reports each backend's step time, tokens/s, effective bandwidth (weight bytes / step time)
and its fraction of the bound. Machine noise moves the absolute figures; the alternation keeps
the backends' ratio honest.

    python benchmarks/cpu_decode.py --dtype bfloat16 --backends cpu,torch --rounds 5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--backends", default="cpu,torch", help="kernel backends to compare")
    p.add_argument("--context", type=int, default=32, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output-json", default=None)
    return p.parse_args()


def read_bandwidth_gbs(repeats: int = 9) -> float:
    import torch
    data = torch.ones(128 << 20)  # 512 MiB of float32: far beyond any cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / median(times) / 1e9


def weight_bytes_per_token(llm) -> int:
    """Bytes of every matrix a decode step multiplies by: the linear layers and the LM head."""
    from infernetes.runtime.layers.linear import LinearBase
    model = llm.engine.runner.model
    linear = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                 if isinstance(m, LinearBase))
    head = model.lm_head.weight
    return linear + head.numel() * head.element_size()


def decode_step_seconds(llm, context: int, steps: int) -> float:
    """Median engine step time while one sequence decodes (the prompt's step excluded)."""
    from infernetes.runtime.sampling_params import SamplingParams
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    engine.add_request(f"bench-{time.monotonic_ns()}", list(range(100, 100 + context)), params)
    engine.step()  # the prompt
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    args = parse_args()
    from infernetes import LLM
    backends = args.backends.split(",")
    engines = {b: LLM(model=args.model, dtype=args.dtype, kv_cache_memory="256MiB",
                      kernel_backend=b) for b in backends}
    for backend, llm in engines.items():
        if llm.engine.runner.kernels != backend:
            raise SystemExit(f"--backends {backend}: the engine runs "
                             f"{llm.engine.runner.kernels} here")
    nbytes = weight_bytes_per_token(next(iter(engines.values())))
    bandwidth = read_bandwidth_gbs()
    steps: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(args.rounds):
        for backend, llm in engines.items():
            steps[backend].append(decode_step_seconds(llm, args.context, args.steps))
    bound_ms = nbytes / (bandwidth * 1e9) * 1e3
    print(f"weights read per token: {nbytes / 1e6:.1f} MB; read bandwidth {bandwidth:.1f} GB/s "
          f"-> bound {bound_ms:.2f} ms/token ({1e3 / bound_ms:.0f} tok/s)")
    results = {}
    for backend, times in steps.items():
        step = median(times)
        results[backend] = {"step_ms": step * 1e3, "tok_per_s": 1 / step,
                            "effective_gbs": nbytes / step / 1e9,
                            "fraction_of_bound": bound_ms / (step * 1e3),
                            "rounds_ms": [t * 1e3 for t in times]}
        r = results[backend]
        print(f"{backend:>6}: {r['step_ms']:.2f} ms/step, {r['tok_per_s']:.1f} tok/s, "
              f"{r['effective_gbs']:.1f} GB/s of weights, {r['fraction_of_bound']:.0%} of bound")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({
            "settings": vars(args), "weight_bytes_per_token": nbytes,
            "read_bandwidth_gbs": bandwidth, "bound_ms": bound_ms, "results": results},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
