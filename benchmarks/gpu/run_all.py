"""Everything a lent GPU should run, in one call that ends inside a time budget.

Steps, each a child process under coreutils `timeout` (so a hang costs its own slot, not the
run), in this order:
  1. device: name, driver, versions, git, and the two measured ceilings -> gpu-device-*.json
  2. tests: pytest of tests/kernels, tests/runtime/test_correctness.py and tests/gpu (if
     present), natively (TRITON_INTERPRET unset), stopping at the first failure
  3. kernel benchmarks: bench_decode_attention, bench_prefill_attention, bench_small_kernels,
     where those files exist: their `run(device) -> dict`, written as gpu-<name>-*.json
  4. multi-LoRA throughput: benchmarks/lora.py's `run(device)` -> gpu-lora_engine-*.json
  5. engine: bench_engine.py with the seconds left (it skips or cuts what would not fit)
Then a summary (gpu-summary-*.json) and a table of the figures that matter, printed last.
Results go to benchmarks/results/ and to $OUT when set.

    python benchmarks/gpu/run_all.py                  # ~9 minutes on an H100/H200
    python benchmarks/gpu/run_all.py --quick --skip-tests
    python benchmarks/gpu/run_all.py --bench bench_small_kernels   # one module, in-process
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GPU_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GPU_DIR))
from common import (  # noqa: E402 - this folder is put on the path first
    REPO_ROOT, RESULTS_DIR, current_device_slug, device_info, git_info, log,
    measure_ceilings, result_file_name, write_result)

TAG = "run_all"
KERNEL_BENCHES = ("bench_decode_attention", "bench_prefill_attention", "bench_small_kernels")
# Benchmarks that live outside this folder: result name -> module with `run(device) -> dict`.
OTHER_BENCHES = {"lora_engine": "infernetes.benchmarks.lora"}
TEST_PATHS = ("tests/kernels", "tests/runtime/test_correctness.py", "tests/gpu")
DEFAULT_BUDGET_S = 530.0  # the device tool allows 600 s per command; leave room to exit
ENGINE_MIN_S = 240.0  # earlier steps' limits never eat into this
CAPS_S = {"device": 60.0, "tests": 150.0, "kernel_bench": 60.0, "lora_engine": 120.0}
KERNEL_BENCH_MIN_S = 20.0
LORA_ENGINE_MIN_S = 45.0


@dataclass(slots=True)
class StepResult:
    name: str
    status: str  # ok | failed | timeout | skipped
    returncode: int | None
    seconds: float
    limit_s: float | None
    note: str = ""


# -- the children's environment --------------------------------------------------------------

def child_env() -> dict[str, str]:
    """Children import `infernetes` from this checkout, run Triton natively, and never try
    the network (the lent machine has none)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    shim = _package_shim()
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, env.get("PYTHONPATH")]))
    return env


def _package_shim() -> str | None:
    """The repository root is the package `infernetes`; where it is not installed (the lent
    machine gets a bare copy), a folder with a link named infernetes -> root makes it
    importable without pip. None when `infernetes` already resolves to this checkout."""
    probe = subprocess.run(
        [sys.executable, "-c", "import infernetes, os; print(os.path.realpath("
         "os.path.dirname(infernetes.__file__)))"],
        cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if probe.returncode == 0 and Path(probe.stdout.strip()) == REPO_ROOT:
        return None
    shim = Path(tempfile.mkdtemp(prefix="infernetes-path-"))
    (shim / "infernetes").symlink_to(REPO_ROOT, target_is_directory=True)
    return str(shim)


# -- steps ---------------------------------------------------------------------------------------

def run_step(name: str, argv: list[str], limit_s: float, env: dict[str, str]) -> StepResult:
    log(f"{name}: start (limit {limit_s:.0f}s): {' '.join(argv)}", TAG)
    started = time.perf_counter()
    timeout_bin = shutil.which("timeout")
    command = [timeout_bin, "-k", "10", f"{limit_s:.0f}", *argv] if timeout_bin else argv
    try:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=env,
                              timeout=None if timeout_bin else limit_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = 124
    seconds = round(time.perf_counter() - started, 1)
    status = "ok" if code == 0 else ("timeout" if code in (124, 137) else "failed")
    log(f"{name}: {status} (exit {code}) in {seconds:.1f}s", TAG)
    return StepResult(name, status, code, seconds, limit_s)


def plan_limit(cap: float, remaining: float, reserve: float) -> float:
    """A step's limit: its cap, cut so that `reserve` seconds stay for the steps after it."""
    return max(0.0, min(cap, remaining - reserve))


def test_paths() -> list[str]:
    return [p for p in TEST_PATHS if (REPO_ROOT / p).exists()]


def kernel_benches() -> list[str]:
    return [b for b in KERNEL_BENCHES if (GPU_DIR / f"{b}.py").is_file()]


def run_steps(args: argparse.Namespace) -> list[StepResult]:
    env = child_env()
    py = sys.executable
    start = time.perf_counter()

    def remaining() -> float:
        return args.budget_s - (time.perf_counter() - start)

    benches = kernel_benches()
    steps: list[StepResult] = []

    def step(name: str, argv: list[str], cap: float, reserve: float, minimum: float = 10.0):
        limit = plan_limit(cap, remaining(), reserve)
        if limit < minimum:
            steps.append(StepResult(name, "skipped", None, 0.0, limit, "no time left"))
            return
        steps.append(run_step(name, argv, limit, env))

    later_benches_s = KERNEL_BENCH_MIN_S * len(benches) + LORA_ENGINE_MIN_S
    step("device", [py, str(GPU_DIR / "run_all.py"), "--device-info"], CAPS_S["device"],
         ENGINE_MIN_S + later_benches_s)
    if args.skip_tests:
        steps.append(StepResult("tests", "skipped", None, 0.0, None, "--skip-tests"))
    else:
        step("tests", [py, "-m", "pytest", *test_paths(), "-q", "-x", "-p", "no:cacheprovider"],
             CAPS_S["tests"], ENGINE_MIN_S + later_benches_s, minimum=30.0)
    for index, bench in enumerate(benches):
        reserve = ENGINE_MIN_S + LORA_ENGINE_MIN_S + KERNEL_BENCH_MIN_S * (
            len(benches) - index - 1)
        step(bench, [py, str(GPU_DIR / "run_all.py"), "--bench", bench],
             CAPS_S["kernel_bench"], reserve, minimum=KERNEL_BENCH_MIN_S)
    missing = sorted(set(KERNEL_BENCHES) - set(benches))
    steps += [StepResult(b, "skipped", None, 0.0, None, "file not present") for b in missing]
    step("lora_engine", [py, str(GPU_DIR / "run_all.py"), "--bench", "lora_engine"],
         CAPS_S["lora_engine"], ENGINE_MIN_S, minimum=LORA_ENGINE_MIN_S)
    engine_limit = remaining() - 5.0
    engine_argv = [py, str(GPU_DIR / "bench_engine.py"), "--budget-s", f"{engine_limit - 15:.0f}"]
    step("bench_engine", engine_argv + (["--quick"] if args.quick else []), engine_limit, 0.0,
         minimum=60.0)
    return steps


# -- in-process modes (children of run_steps) ------------------------------------------------

def device_step() -> None:
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {"benchmark": "device", "device": device_info(device), "git": git_info()}
    log(f"{payload['device'].get('name')}; measuring the ceilings", "device")
    payload["ceilings"] = measure_ceilings(device).as_dict()
    paths = write_result("device", payload)
    print(json.dumps(payload, indent=2))
    log(f"wrote {', '.join(map(str, paths))}", "device")


def bench_step(module_name: str) -> None:
    """One benchmark module's run(device), with where and on what it ran: a kernel benchmark
    of this folder by module name, or one of OTHER_BENCHES by result name."""
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = module_name.removeprefix("bench_")
    payload: dict[str, Any] = {"benchmark": name, "device": device_info(device),
                               "git": git_info()}
    started = time.perf_counter()
    try:
        module = importlib.import_module(OTHER_BENCHES.get(module_name, module_name))
        payload["result"] = module.run(device)
        payload["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - written out, then the exit code says so
        import traceback
        payload.update(status="error", error=f"{type(error).__name__}: {error}",
                       traceback=traceback.format_exc(limit=12))
    payload["seconds"] = round(time.perf_counter() - started, 2)
    paths = write_result(name, payload)
    print(json.dumps(payload, indent=2, default=str)[:20000])
    log(f"{payload['status']}; wrote {', '.join(map(str, paths))}", module_name)
    if payload["status"] != "ok":
        raise SystemExit(1)


# -- summary ---------------------------------------------------------------------------------

def read_result(name: str, slug: str, since: float) -> dict[str, Any] | None:
    """This run's result file (written after `since`, a time.time()), else None: a file
    left from an earlier run must not pass for this one's."""
    path = RESULTS_DIR / result_file_name(name, slug)
    try:
        if path.stat().st_mtime < since - 1:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def numeric_leaves(node: Any, limit: int = 16) -> list[tuple[str, float]]:
    """(dotted path, number) pairs of a nested result, at most `limit`: ratios first (the
    figures goals are stated in), then the others in document order."""
    found: list[tuple[str, float]] = []

    def walk(value: Any, path: str) -> None:
        if len(found) >= 5000:
            return
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, f"{path}[{index}]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((path, float(value)))

    walk(node, "")
    def is_ratio(leaf: tuple[str, float]) -> bool:
        return "ratio" in leaf[0].rsplit(".", 1)[-1]

    return ([leaf for leaf in found if is_ratio(leaf)]
            + [leaf for leaf in found if not is_ratio(leaf)])[:limit]


def engine_lines(engine: dict[str, Any]) -> list[str]:
    lines = []
    for name, model in (engine.get("models") or {}).items():
        ours = model.get("engine_throughput", {})
        theirs = model.get("transformers", {})
        ratio = (model.get("engine_over_transformers") or {}).get("ratio")
        lines.append(f"  {name}: engine {_fmt(ours.get('output_tok_per_s'), '.0f')} tok/s"
                     f" [{ours.get('status', '-')}], transformers "
                     f"{_fmt(theirs.get('output_tok_per_s'), '.0f')} tok/s "
                     f"[{theirs.get('status', '-')}], ratio {_fmt(ratio, '.2f')}x")
        for key, d in (model.get("decode_steps") or {}).items():
            lines.append(f"    decode {key}: step {_fmt(d.get('step_ms_median'), '.2f')} ms, "
                         f"floor {_fmt(d.get('roofline_floor_ms'), '.2f')} ms "
                         f"({d.get('roofline_bound', '-')}), step/floor "
                         f"{_fmt(d.get('step_over_floor'), '.2f')} [{d.get('status')}]")
    for goal, g in (engine.get("goals") or {}).items():
        met = {True: "MET", False: "not met", None: "not measured"}[g.get("met")]
        lines.append(f"  goal {goal}: {_fmt(g.get('value'), '.2f')} (goal {g['goal']}): {met}")
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarize(steps: list[StepResult], args: argparse.Namespace,
              since: float) -> dict[str, Any]:
    slug = current_device_slug()
    device = read_result("device", slug, since) or {}
    names = [b.removeprefix("bench_") for b in KERNEL_BENCHES] + list(OTHER_BENCHES)
    results = {name: read_result(name, slug, since) for name in names}
    results["engine"] = read_result("engine", slug, since)
    goals = dict((results["engine"] or {}).get("goals") or {})
    lora = (results["lora_engine"] or {}).get("result")
    if lora:
        goals["lora_8_adapters_over_base_only"] = lora["goal_8_adapters"]
    summary = {"benchmark": "summary", "device": device.get("device", {"slug": slug}),
               "ceilings": device.get("ceilings"), "budget_s": args.budget_s,
               "steps": [asdict(s) for s in steps], "goals": goals or None}
    write_result("summary", summary)
    print("\n==== GPU benchmark summary ====")
    print(f"device: {summary['device'].get('name', slug)}")
    if device.get("ceilings"):
        c = device["ceilings"]
        print(f"ceilings: copy {c['copy_bandwidth_gb_s']:.4g} GB/s (read+write), "
              f"bf16 matmul {c['matmul_tflop_s']:.4g} TFLOP/s")
    for s in steps:
        print(f"  {s.name:<26}{s.status:<9}{s.seconds:>7.1f}s  {s.note}")
    for name, result in results.items():
        if result is None:
            continue
        if name == "engine":
            print(f"{name}:")
            print("\n".join(engine_lines(result)))
            continue
        print(f"{name}: {result.get('status')} {result.get('error', '')}")
        for path, value in numeric_leaves(result.get("result")):
            print(f"  {path}: {value:.4g}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float,
                   default=float(os.environ.get("GPU_BENCH_BUDGET_S", DEFAULT_BUDGET_S)),
                   help="seconds for all steps together (env GPU_BENCH_BUDGET_S)")
    p.add_argument("--quick", action="store_true", help="bench_engine --quick")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--device-info", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bench", default=None,
                   help="run one benchmark in-process: a kernel benchmark module of this "
                        f"folder, or {', '.join(OTHER_BENCHES)}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device_info:
        device_step()
        return
    if args.bench:
        bench_step(args.bench)
        return
    since = time.time()
    steps = run_steps(args)
    summary = summarize(steps, args, since)
    failed = [s["name"] for s in summary["steps"] if s["status"] in ("failed", "timeout")]
    if failed:
        print(f"steps that failed or timed out: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
