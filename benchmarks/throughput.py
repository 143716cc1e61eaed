"""Offline generation throughput: infernetes against a plain transformers baseline.

What it measures, per engine, on the same random prompt token ids and the same weights:
  * load time: constructing `LLM(...)` for infernetes, `AutoModelForCausalLM.from_pretrained`
    for transformers;
  * batched throughput: all prompts in one call (infernetes `LLM.generate`, transformers one
    batched `generate`), in generated tokens per second of wall time;
  * single-request throughput: one prompt generating `--output-len` tokens, tokens per second;
  * peak RSS: `ru_maxrss` of a fresh subprocess that ran only that engine's phase.
With `--rounds N` the engines alternate N times (infernetes, transformers, infernetes, ...) and
the report gives each figure's median, the ratios from the medians: on a shared machine, one
run of each says more about the neighbours than about the engines.
Generation is greedy and never stops early (ignore_eos / min_new_tokens), so every request makes
exactly `--output-len` tokens. Each engine gets a short untimed warm-up first. Phases run one
after another, each in its own process (this script re-invoked with a hidden `--phase`); the
parent imports neither torch nor infernetes, so it adds nothing to the children's peak RSS.

Run from the repository root:
    python benchmarks/throughput.py --num-prompts 64 --output-len 128
    python benchmarks/throughput.py --skip-transformers --output-json /tmp/bench.json
    python benchmarks/throughput.py --rounds 3 --output-json benchmarks/results/x.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
from statistics import median
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PHASES = ("infernetes", "transformers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None,
                   help="Hugging Face folder or .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--kv-cache-memory", default="1GiB")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-single", action="store_true", help="skip the single-request figures")
    p.add_argument("--output-json", default=None, help="write all results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    p.add_argument("--kernel-backend", default="auto", help="infernetes' --kernel-backend")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the engines this many times; report medians")
    p.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cpu_description() -> dict[str, Any]:
    """The processor and the instruction sets that decide half-precision GEMM speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "")
    flags = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"model": model, **{flag: f" {flag}" in info for flag in flags}}


# --- helpers used inside a phase process -------------------------------------------------------

def make_prompts(folder: Path, num_prompts: int, input_len: int, seed: int) -> list[list[int]]:
    """The same token ids for every engine: seeded, from the model config's vocabulary."""
    vocab_size = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab_size - 100) for _ in range(input_len)]
            for _ in range(num_prompts)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rate(tokens: int, seconds: float) -> dict[str, float]:
    return {"tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds}


def run_infernetes(args: argparse.Namespace, folder: Path,
                   prompts: list[list[int]]) -> dict[str, Any]:
    from infernetes.runtime.llm import LLM
    from infernetes.runtime.sampling_params import SamplingParams

    start = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
              max_num_seqs=args.max_num_seqs, kernel_backend=args.kernel_backend)
    result: dict[str, Any] = {"load_s": time.perf_counter() - start,
                              "kernel_backend": llm.engine.runner.kernels}

    def generate(batch: list[list[int]], max_tokens: int) -> dict[str, float]:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in batch], params)
        wall = time.perf_counter() - t0
        return rate(sum(len(o.outputs[0].token_ids) for o in outputs), wall)

    generate(prompts[:2], 4)  # warm-up
    result["batched"] = generate(prompts, args.output_len)
    if not args.skip_single:
        result["single"] = generate(prompts[:1], args.output_len)
    return result


def run_transformers(args: argparse.Namespace, folder: Path,
                     prompts: list[list[int]]) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.eval()
    result: dict[str, Any] = {"load_s": time.perf_counter() - start,
                              "transformers_version": transformers.__version__}
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        eos = model.generation_config.eos_token_id
        pad_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0

    def generate(batch: list[list[int]], max_tokens: int) -> dict[str, float]:
        input_ids = torch.tensor(batch, dtype=torch.long)  # equal lengths: no padding needed
        attention_mask = torch.ones_like(input_ids)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                 do_sample=False, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, pad_token_id=pad_id)
        wall = time.perf_counter() - t0
        return rate(int(out.shape[0]) * (int(out.shape[1]) - input_ids.shape[1]), wall)

    generate(prompts[:2], 4)  # warm-up
    result["batched"] = generate(prompts, args.output_len)
    if not args.skip_single:
        result["single"] = generate(prompts[:1], args.output_len)
    return result


def run_phase(args: argparse.Namespace) -> None:
    import torch
    from infernetes.runtime.model_source import resolve_model_folder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    folder = resolve_model_folder(args.model)
    prompts = make_prompts(folder, args.num_prompts, args.input_len, args.seed)
    runner = run_infernetes if args.phase == "infernetes" else run_transformers
    result = runner(args, folder, prompts)
    result.update(peak_rss_mb=peak_rss_mb(), torch_threads=torch.get_num_threads(),
                  torch_version=torch.__version__, model_folder=str(folder),
                  prompts_sha256=hashlib.sha256(json.dumps(prompts).encode()).hexdigest())
    Path(args.result_file).write_text(json.dumps(result))


# --- the parent: runs the phases one after another and reports ---------------------------------

def phase_argv(args: argparse.Namespace) -> list[str]:
    """The user's settings as command-line flags for a phase process."""
    argv: list[str] = []
    for key, value in vars(args).items():
        if key in ("phase", "result_file", "output_json", "rounds") or value is None \
                or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def spawn_phase(phase: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv,
               "--phase", phase, "--result-file", str(result_file)]
        print(f"[{phase}] running ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(result_file.read_text())


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def tok_s(result: dict[str, Any] | None, key: str) -> float | None:
    return result[key]["tok_per_s"] if result and key in result else None


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's runs as one result: the median of each figure, every run kept."""
    result = dict(runs[0])
    for key in ("load_s", "peak_rss_mb"):
        result[key] = median([r[key] for r in runs])
    for key in ("batched", "single"):
        if key in runs[0]:
            result[key] = {**runs[0][key], "tok_per_s": median([tok_s(r, key) for r in runs])}
    result["runs"] = runs
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    print(f"\n{args.num_prompts} prompts x {args.input_len} input tokens -> {args.output_len} "
          f"output tokens, dtype {args.dtype}, {os.cpu_count()} CPUs, medians of "
          f"{args.rounds} round(s)")
    header = (f"{'engine':<13}{'load s':>8}{'batched tok/s':>15}{'single tok/s':>14}"
              f"{'peak RSS MB':>13}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<13}{fmt(r['load_s'], '.2f'):>8}{fmt(tok_s(r, 'batched'), '.1f'):>15}"
              f"{fmt(tok_s(r, 'single'), '.1f'):>14}{fmt(r['peak_rss_mb'], '.0f'):>13}")
    ours, theirs = results.get("infernetes"), results.get("transformers")
    ratios = {"batched": ratio(tok_s(ours, "batched"), tok_s(theirs, "batched")),
              "single": ratio(tok_s(ours, "single"), tok_s(theirs, "single"))}
    if theirs is not None:
        print(f"\ninfernetes / transformers: batched {fmt(ratios['batched'], '.2f')}x, "
              f"single {fmt(ratios['single'], '.2f')}x".replace("-x", "-"))
    return ratios


def main() -> None:
    args = parse_args()
    if args.phase is not None:
        run_phase(args)
        return
    child_argv = phase_argv(args)
    phases = [p for p in PHASES if not (p == "transformers" and args.skip_transformers)]
    runs: dict[str, list[dict[str, Any]]] = {phase: [] for phase in phases}
    for _ in range(args.rounds):  # one engine after another, alternating
        for phase in phases:
            runs[phase].append(spawn_phase(phase, child_argv))
    results = {phase: median_result(phase_runs) for phase, phase_runs in runs.items()}
    checksums = {r["prompts_sha256"] for r in results.values()}
    if len(checksums) != 1:
        raise RuntimeError("the engines did not get the same prompts")
    ratios = report(args, results)
    if args.output_json:
        payload = {
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "command": [sys.executable, *sys.argv],
            "torch_version": metadata.version("torch"),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_description(),
            "settings": {k: v for k, v in vars(args).items()
                         if k not in ("phase", "result_file", "output_json")},
            "results": results,
            "ratios_infernetes_over_transformers": ratios,
        }
        Path(args.output_json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.output_json}")


if __name__ == "__main__":
    main()
