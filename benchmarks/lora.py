"""Multi-LoRA throughput: the standard offline workload with its requests spread over 0, 1, 4
and 8 adapters, as a ratio to the base-only run of the same engine in the same process.

The workload is benchmarks/throughput.py's (its prompt maker: random prompt token ids; greedy,
ignore_eos, so every request makes exactly `--output-len` tokens). Request i uses adapter
i mod N (none when N is 0). The adapters have rank `--rank` on all seven projections of every
layer (PEFT's "all-linear"), random non-zero weights, and are written as PEFT folders
(adapter_config.json + adapter_model.safetensors) that the engine's PEFT loader reads.

One `LLM(enable_lora=True, max_loras=8, max_lora_rank=RANK)` serves every configuration: all
adapters fit in its slots, so no run waits for a slot or loads an adapter. After a warm-up
that loads them, each round runs every configuration once, so that drift on a shared machine
falls on all of them alike; the median tokens/s of each is reported. Prefix caching is off:
the same prompts run many times in this process, and every run must prefill all of them.
Last, the base-only runs again on an `LLM` without enable_lora (`lora_disabled`), which shows
what merely enabling LoRA costs.

Goal (multi-LoRA issue): with 8 adapters, at most 15% below base-only on a GPU.

Run from the repository root:
    python benchmarks/lora.py --output-json /tmp/lora.json     # SmolLM2, the standard workload
    python benchmarks/lora.py --num-prompts 8 --output-len 16 --rounds 1   # a quick check
    python benchmarks/lora.py --device cuda --shape llama-1b   # random Llama-3.2-1B weights
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infernetes.benchmarks.gpu.common import device_info, prompts_digest
from infernetes.benchmarks.gpu.models import SHAPES, write_config_folder
from infernetes.benchmarks.throughput import cpu_description, make_prompts, rate

GOAL_RATIO_8_ADAPTERS = 0.85  # on a GPU: 8 adapters at most 15% below base-only
ADAPTER_STD = 0.02  # of A and B: non-zero, small enough for bfloat16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="Hugging Face folder or .gguf "
                        "(default: embedded SmolLM2-135M-Instruct)")
    source.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="random weights of this shape (benchmarks/gpu/models.py) instead "
                             "of a checkpoint: no download, as on a machine without network")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--adapter-counts", default="0,1,4,8",
                   help="comma-separated numbers of adapters the requests are spread over; "
                        "0 (base only) is always run, as the reference of the ratios")
    p.add_argument("--rank", type=int, default=16, help="rank of every adapter")
    p.add_argument("--rounds", type=int, default=3, help="runs of each configuration")
    p.add_argument("--skip-lora-disabled", action="store_true",
                   help="skip the base-only runs on an LLM without enable_lora")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--kv-cache-memory", default="1GiB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    p.add_argument("--output-json", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    try:
        counts = sorted({0, *(int(c) for c in args.adapter_counts.split(","))})
    except ValueError:
        p.error(f"--adapter-counts: expected numbers like 0,1,4,8, got {args.adapter_counts!r}")
    if counts[0] < 0:
        p.error("--adapter-counts: a count cannot be negative")
    for name in ("num_prompts", "input_len", "output_len", "rank", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.adapter_counts = counts
    return args


# -- adapters ------------------------------------------------------------------------------------

def write_adapter(folder: Path, model_folder: Path, rank: int, seed: int,
                  std: float = ADAPTER_STD) -> Path:
    """A PEFT LoRA adapter for the model in `model_folder`: rank `rank` on all seven projections
    of every layer, A and B drawn from N(0, std)."""
    import torch
    from safetensors.torch import save_file

    from infernetes.runtime.lora.adapter import CONFIG_FILE, projection_features
    from infernetes.runtime.lora.peft_config import PROJECTION_PARENTS, PROJECTIONS
    from infernetes.runtime.model_config import ModelArchConfig

    arch = ModelArchConfig.from_folder(model_folder)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(arch.num_hidden_layers):
        for module, projection in PROJECTIONS.items():
            in_features, out_features = projection_features(arch, projection)
            prefix = f"base_model.model.model.layers.{layer}.{PROJECTION_PARENTS[module]}.{module}"
            for side, shape in (("A", (rank, in_features)), ("B", (out_features, rank))):
                tensors[f"{prefix}.lora_{side}.weight"] = (
                    torch.randn(shape, generator=generator) * std)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": "all-linear", "bias": "none", "lora_dropout": 0.0,
              "use_rslora": False, "base_model_name_or_path": str(model_folder)}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def adapter_of_request(num_requests: int, num_adapters: int) -> list[int | None]:
    """Round-robin: request i uses adapter i mod num_adapters; None (the base model) when
    there are no adapters."""
    return [i % num_adapters if num_adapters else None for i in range(num_requests)]


# -- measuring -----------------------------------------------------------------------------------

def engine_kwargs(args: argparse.Namespace, model_folder: Path) -> dict[str, Any]:
    """What the LoRA engine and the engine without LoRA share."""
    # Whole KV blocks of 16, which is also the length of the engine's warm-up pass.
    max_model_len = -(-(args.input_len + args.output_len) // 16) * 16
    return dict(model=str(model_folder), load_format="dummy" if args.shape else "auto",
                dtype=args.dtype, device=args.device, seed=args.seed, skip_tokenizer_init=True,
                max_model_len=max_model_len, enable_prefix_caching=False,
                kv_cache_memory=args.kv_cache_memory, max_num_seqs=args.max_num_seqs)


def timed_generate(llm, prompts: list[list[int]], output_len: int,
                   lora_requests: list | None = None) -> dict[str, float]:
    """Generated tokens per second of wall time of one `LLM.generate` call (it returns the
    tokens on the host, so the device has finished when the clock stops)."""
    from infernetes import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                           lora_request=lora_requests)
    wall = time.perf_counter() - start
    return rate(sum(len(o.outputs[0].token_ids) for o in outputs), wall)


def measure_with_lora(args: argparse.Namespace, model_folder: Path, adapter_folders: list[Path],
                      prompts: list[list[int]]) -> dict[int, list[dict[str, float]]]:
    """Adapter count -> one rate per round, all on one LoRA engine, rounds interleaved."""
    from infernetes import LLM, LoRARequest
    adapters = [LoRARequest(f"adapter-{i}", i + 1, str(folder))
                for i, folder in enumerate(adapter_folders)]
    llm = LLM(**engine_kwargs(args, model_folder), enable_lora=True,
              max_loras=max(len(adapters), 1), max_lora_rank=args.rank,
              max_cpu_loras=max(len(adapters), 1))

    def requests(num_adapters: int) -> list:
        return [None if a is None else adapters[a]
                for a in adapter_of_request(len(prompts), num_adapters)]

    # Warm-up: loads every adapter into its slot and runs the base and LoRA paths once.
    timed_generate(llm, prompts, 4, requests(len(adapters)))
    timed_generate(llm, prompts, 4)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.adapter_counts}
    for round_index in range(args.rounds):
        for count in args.adapter_counts:
            runs[count].append(timed_generate(llm, prompts, args.output_len, requests(count)))
            print(f"[lora] round {round_index + 1}/{args.rounds}, {count} adapters: "
                  f"{runs[count][-1]['tok_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
    return runs


def measure_without_lora(args: argparse.Namespace, model_folder: Path,
                         prompts: list[list[int]]) -> list[dict[str, float]]:
    from infernetes import LLM
    llm = LLM(**engine_kwargs(args, model_folder))
    timed_generate(llm, prompts, 4)
    return [timed_generate(llm, prompts, args.output_len) for _ in range(args.rounds)]


def median_tok_per_s(runs: list[dict[str, float]]) -> float:
    return statistics.median(r["tok_per_s"] for r in runs)


def summarize(runs: dict[int, list[dict[str, float]]],
              disabled_runs: list[dict[str, float]] | None) -> dict[str, Any]:
    """Per adapter count: the runs, their median and its ratio to the base-only median; and
    the engine without LoRA against the LoRA engine's base-only median."""
    base = median_tok_per_s(runs[0])
    configurations = {
        str(count): {"num_adapters": count, "median_tok_per_s": median_tok_per_s(count_runs),
                     "ratio_to_base_only": median_tok_per_s(count_runs) / base,
                     "runs": count_runs}
        for count, count_runs in runs.items()}
    summary: dict[str, Any] = {"configurations": configurations}
    if disabled_runs:
        disabled = median_tok_per_s(disabled_runs)
        summary["lora_disabled"] = {
            "median_tok_per_s": disabled, "runs": disabled_runs,
            "ratio_lora_base_only_to_disabled": base / disabled}
    return summary


def goal(summary: dict[str, Any], device_type: str) -> dict[str, Any]:
    eight = summary["configurations"].get("8")
    value = eight["ratio_to_base_only"] if eight else None
    return {"value": value, "goal": f">= {GOAL_RATIO_8_ADAPTERS} on a GPU",
            "met": None if value is None or device_type != "cuda"
            else value >= GOAL_RATIO_8_ADAPTERS}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration of the benchmark; returns the figures and where they were taken."""
    import torch

    from infernetes.runtime.model_source import resolve_model_folder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(args.device).type
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        model_folder = (write_config_folder(SHAPES[args.shape], Path(tmp) / args.shape)
                        if args.shape else resolve_model_folder(args.model))
        prompts = make_prompts(model_folder, args.num_prompts, args.input_len, args.seed)
        adapter_folders = [write_adapter(Path(tmp) / f"adapter-{i}", model_folder, args.rank,
                                         seed=args.seed + i)
                           for i in range(max(args.adapter_counts))]
        runs = measure_with_lora(args, model_folder, adapter_folders, prompts)
        gc.collect()
        if device_type == "cuda":
            torch.cuda.empty_cache()  # the LoRA engine's memory, for the next engine
        disabled = (None if args.skip_lora_disabled
                    else measure_without_lora(args, model_folder, prompts))
    summary = summarize(runs, disabled)
    return {  # the figures first: the GPU runner's summary lists numbers in this order
        "benchmark": "lora",
        **summary,
        "goal_8_adapters": goal(summary, device_type),
        "model": f"random weights of shape {args.shape}" if args.shape else str(model_folder),
        "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "prompts_sha256": prompts_digest(prompts),
                     "greedy": True, "ignore_eos": True, "dtype": args.dtype},
        "adapters": {"rank": args.rank, "target_modules": "all-linear",
                     "assignment": "request i uses adapter i mod N"},
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "command": [sys.executable, *sys.argv],
        "settings": vars(args),
        "machine": {"cpu_count": os.cpu_count(), "cpu": cpu_description(),
                    "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": device_info(args.device)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(device: Any = "cuda") -> dict[str, Any]:
    """For benchmarks/gpu/run_all.py: the standard workload on random Llama-3.2-1B weights on
    a GPU; elsewhere a seconds-long smoke run of this code on the tiny shape."""
    if str(device).startswith("cuda"):  # all 64 requests in one batch, fewer CUDA graphs
        return measure(parse_args(["--device", str(device), "--shape", "llama-1b",
                                   "--max-num-seqs", "64"]))
    return measure(parse_args(["--device", "cpu", "--shape", "tiny", "--num-prompts", "4",
                               "--output-len", "4", "--rounds", "1"]))


def report(result: dict[str, Any]) -> None:
    work = result["workload"]
    print(f"\n{work['num_prompts']} prompts x {work['input_len']} input tokens -> "
          f"{work['output_len']} output tokens, dtype {work['dtype']}, rank "
          f"{result['adapters']['rank']}, {result['settings']['device']}, "
          f"{result['machine']['cpu_count']} CPUs")
    header = f"{'adapters':<22}{'median tok/s':>14}{'ratio to base':>15}  runs tok/s"
    print(header)
    print("-" * len(header))
    for config in result["configurations"].values():
        runs = ", ".join(f"{r['tok_per_s']:.1f}" for r in config["runs"])
        print(f"{config['num_adapters']:<22}{config['median_tok_per_s']:>14.1f}"
              f"{config['ratio_to_base_only']:>15.3f}  {runs}")
    disabled = result.get("lora_disabled")
    if disabled:
        runs = ", ".join(f"{r['tok_per_s']:.1f}" for r in disabled["runs"])
        print(f"{'LoRA not enabled':<22}{disabled['median_tok_per_s']:>14.1f}{'':>15}  {runs}")
        print(f"\nbase only with LoRA enabled / LoRA not enabled: "
              f"{disabled['ratio_lora_base_only_to_disabled']:.3f}")
    goal_8 = result["goal_8_adapters"]
    if goal_8["value"] is not None:
        met = {True: "met", False: "not met", None: "not judged off a GPU"}[goal_8["met"]]
        print(f"8 adapters / base only: {goal_8['value']:.3f} (goal {goal_8['goal']}: {met})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    report(result)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.output_json}")


if __name__ == "__main__":
    main()
