"""What every GPU benchmark shares: where it ran, how it times, the device's two ceilings,
the roofline floor, and where results go.

Timings on CUDA use events around the timed region after warm-up; on CPU (smoke runs of the
benchmark code itself) a host clock. The ceilings are measured, not read off a datasheet:
the copy bandwidth counts bytes read plus bytes written of a large device-to-device copy, the
matrix rate is a large bf16 product on random data (zeros run faster and would flatter it).

Results: `write_result(name, payload)` writes `benchmarks/results/gpu-<name>-<device>.json`
and, when `$OUT` is set (the lent GPU machine returns files written there), the same file
under `$OUT`. Benchmark modules import this file as `common` (benchmarks/gpu on sys.path, as
when they run as scripts).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where results are written besides $OUT; GPU_BENCH_RESULTS_DIR moves them (local trial runs).
RESULTS_DIR = Path(os.environ.get("GPU_BENCH_RESULTS_DIR") or REPO_ROOT / "benchmarks" / "results")
_START = time.perf_counter()


def log(message: str, tag: str = "gpu-bench") -> None:
    """A progress line on stderr, stamped with seconds since this process started."""
    print(f"[{tag} +{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr,
          flush=True)


def cuda_bench_main(run: Callable[[Any], dict], doc: str | None,
                    argv: list[str] | None = None) -> None:
    """The command line of a kernel benchmark run alone (run_all.py calls `run` itself):
    `--device` (default cuda), the report as JSON on stdout. A device that is not CUDA, or a
    machine without one, is a usage error naming the flag (exit 2), not a traceback."""
    import argparse

    import torch
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="a CUDA device (default: cuda)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type != "cuda" or not torch.cuda.is_available():
        parser.error(f"--device: the kernels are timed on a CUDA device, got {args.device!r}"
                     + ("" if torch.cuda.is_available() else " (and this machine has none)"))
    json.dump(run(device), sys.stdout, indent=2)
    print()


# -- where it ran --------------------------------------------------------------------------

def device_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3': a file-name part of letters, digits, '-'."""
    name = re.sub(r"^nvidia\s+", "", device_name.strip(), flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return slug or "unknown"


def _command_output(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _package_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def source_digest(root: Path = REPO_ROOT) -> str:
    """sha256 over the engine's and the benchmarks' Python sources: names the code version
    where no .git travelled with the working tree (the lent machine gets files, not history)."""
    digest = hashlib.sha256()
    for folder in ("runtime", "kernels", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    status = _command_output(["git", "status", "--porcelain"], root)
    return {
        "commit": _command_output(["git", "rev-parse", "HEAD"], root),
        "commit_date": _command_output(["git", "log", "-1", "--format=%cI"], root),
        "dirty": None if status is None else bool(status),
        "source_sha256": source_digest(root),
    }


def device_info(device: Any) -> dict[str, Any]:
    """The device, its driver and the software stack that ran the benchmark."""
    import torch
    device = torch.device(device)
    info: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "transformers": _package_version("transformers"),
        "cuda_runtime": torch.version.cuda,
        "device_type": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name, capability=f"{props.major}.{props.minor}",
            total_memory_gib=round(props.total_memory / 2**30, 2),
            multiprocessors=props.multi_processor_count,
            l2_cache_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            driver=_command_output(["nvidia-smi", "--query-gpu=driver_version",
                                    "--format=csv,noheader"]),
            slug=device_slug(props.name))
    else:
        info.update(name=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                    slug=device.type)
    return info


# -- timing --------------------------------------------------------------------------------

@dataclass(slots=True)
class Timing:
    median_ms: float
    min_ms: float
    mean_ms: float
    repeats: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Timing:
        if not samples_ms:
            raise ValueError("no timing samples")
        return cls(statistics.median(samples_ms), min(samples_ms),
                   statistics.fmean(samples_ms), len(samples_ms))


def synchronize(device: Any) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_region(fn: Callable[[], Any], device: Any, *, warmup: int = 3,
                repeats: int = 10) -> Timing:
    """Median and minimum of `repeats` calls of `fn` after `warmup` untimed ones. CUDA: an
    event pair around each call (device time, launch gaps inside `fn` included)."""
    import torch
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type != "cuda":
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return Timing.from_samples(samples)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return Timing.from_samples([start.elapsed_time(end) for start, end in events])


# -- the two ceilings ----------------------------------------------------------------------

@dataclass(slots=True)
class Ceilings:
    copy_bandwidth_gb_s: float  # bytes read + bytes written per second / 1e9
    matmul_tflop_s: float  # bf16 dense matrix product
    copy_bytes: int  # size of the copied tensor (one direction)
    matmul_n: int  # the product was n x n x n

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_copy_bandwidth(device: Any, nbytes: int | None = None) -> float:
    """GB/s of `dst.copy_(src)` for a tensor far larger than the L2, counting read + write."""
    import torch
    device = torch.device(device)
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (64 << 20))
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_region(lambda: dst.copy_(src), device, warmup=3, repeats=20)
    del src, dst
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9


def measure_matmul_tflops(device: Any, n: int | None = None) -> float:
    """TFLOP/s of an n^3 bf16 product on random data (2 n^3 operations)."""
    import torch
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 256)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device, generator=gen)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device, generator=gen)
    out = torch.empty(n, n, dtype=torch.bfloat16, device=device)
    timing = time_region(lambda: torch.mm(a, b, out=out), device, warmup=5, repeats=20)
    del a, b, out
    return 2 * n**3 / (timing.median_ms * 1e-3) / 1e12


def measure_ceilings(device: Any) -> Ceilings:
    import torch
    device = torch.device(device)
    copy_bytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    n = 8192 if device.type == "cuda" else 256  # CPU: smoke runs only
    return Ceilings(measure_copy_bandwidth(device, copy_bytes),
                    measure_matmul_tflops(device, n), copy_bytes, n)


# -- roofline --------------------------------------------------------------------------------

@dataclass(slots=True)
class RooflineFloor:
    floor_s: float
    memory_s: float  # bytes / copy bandwidth
    compute_s: float  # flops / matrix rate
    bound: str  # "memory" or "compute": the larger term

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def roofline_floor(nbytes: float, flops: float, bandwidth_gb_s: float,
                   matmul_tflop_s: float) -> RooflineFloor:
    """The least time a step can take: max(bytes / bandwidth, flops / matrix rate)."""
    if bandwidth_gb_s <= 0 or matmul_tflop_s <= 0:
        raise ValueError("ceilings must be positive")
    memory_s = nbytes / (bandwidth_gb_s * 1e9)
    compute_s = flops / (matmul_tflop_s * 1e12)
    bound = "memory" if memory_s >= compute_s else "compute"
    return RooflineFloor(max(memory_s, compute_s), memory_s, compute_s, bound)


# -- inputs and memory ---------------------------------------------------------------------

def make_prompts(vocab_size: int, num_prompts: int, length: int, seed: int) -> list[list[int]]:
    """Random token ids, away from the vocabulary's ends (special tokens), from `seed`: the
    same for every engine."""
    import random
    rng = random.Random(seed)
    low, high = min(100, vocab_size // 4), max(vocab_size - 100, vocab_size * 3 // 4)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(num_prompts)]


def prompts_digest(prompts: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()


def free_device_memory(device: Any) -> None:
    """Collect dropped models and caches and give their blocks back to the device."""
    import gc

    import torch
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# -- sections and results ------------------------------------------------------------------

def run_section(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]],
                tag: str = "gpu-bench") -> dict[str, Any]:
    """results[key] = fn() with status "ok" and seconds, or the error and its traceback:
    one failing section is reported and the others still run."""
    log(f"{key}: start", tag)
    started = time.perf_counter()
    try:
        section = {"status": "ok", **fn()}
    except Exception as error:  # noqa: BLE001 - reported in the JSON, the run goes on
        section = {"status": "error", "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc(limit=12)}
        log(f"{key}: FAILED {section['error']}", tag)
    section["seconds"] = round(time.perf_counter() - started, 2)
    results[key] = section
    log(f"{key}: {section['status']} in {section['seconds']:.1f}s", tag)
    return section


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


class Deadline:
    """Seconds left of a budget that started at construction (None: no limit)."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self._start = time.perf_counter()

    def remaining(self) -> float:
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - (time.perf_counter() - self._start)

    def allows(self, needed_s: float) -> bool:
        return self.remaining() >= needed_s

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def result_file_name(name: str, slug: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"result name {name!r} may hold only letters, digits, '.', '_', '-'")
    return f"gpu-{name}-{device_slug(slug)}.json"


def current_device_slug() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return device_slug(torch.cuda.get_device_name())
    except Exception:  # noqa: BLE001 - a slug is still needed to write the error out
        pass
    return "cpu"


def write_result(name: str, payload: dict[str, Any], out_dir: Path | str | None = None, *,
                 slug: str | None = None) -> list[Path]:
    """Write `payload` as gpu-<name>-<slug>.json into `out_dir` (default benchmarks/results)
    and into $OUT when that is set. slug: the payload's device slug, else the current
    device's. Returns the paths written."""
    if slug is None:
        slug = (payload.get("device") or {}).get("slug") or current_device_slug()
    file_name = result_file_name(name, slug)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    folders = [Path(out_dir) if out_dir is not None else RESULTS_DIR]
    if os.environ.get("OUT"):
        folders.append(Path(os.environ["OUT"]))
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file_name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # a run killed mid-write leaves the previous complete file
        if path not in written:
            written.append(path)
    return written
