"""Online serving benchmark: streams requests at an OpenAI-compatible server and times them.

Per request: TTFT (to the first chunk with text), inter-token latency (gaps between text-bearing
chunks, spread over the tokens of a chunk when chunks carry several), end-to-end latency, output
tokens (from the final `usage` chunk). Requests ask for exactly `--output-len` tokens (ignore_eos);
completions prompts are `--input-len` random token ids, chat prompts `--input-len` random words
(plus the chat template). Failures (non-200, broken streams, timeouts) are counted, not raised;
the exit status is 2 when any request failed, 1 when the benchmark could not run.

Run from the repository root:
    python benchmarks/serve.py --launch --concurrency-sweep 1,8,32 --num-requests 32 \\
        --output-len 128 -- --dtype bfloat16
    python benchmarks/serve.py --base-url http://127.0.0.1:8000 --endpoint chat \\
        --request-rate 4 --num-requests 64 --output-json /tmp/serve.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

WORDS = "the cat sat on a mat and looked at red sun over blue sea while birds sang".split()
TOKEN_IDS = (1000, 10000)  # random prompt ids come from here: clear of special tokens


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float = 0.0  # seconds, like e2e and itl
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # after it: `infernetes serve` args
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the first id of /v1/models")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8, help="most requests in flight")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests/s, Poisson arrivals (default inf: all at once)")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 (greedy) matches benchmarks/throughput.py's offline workload")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--output-json", default=None)
    p.add_argument("--launch", action="store_true",
                   help="start `infernetes serve` on a free port (args after -- go to it)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="wait for /health")
    p.add_argument("--concurrency-sweep", default=None, help="e.g. 1,8,32: one run per level")
    args = p.parse_args(argv[:cut])
    args.server_args = argv[cut + 1:]
    if args.server_args and not args.launch:
        p.error("arguments after -- need --launch")
    args.url = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    return args


def make_payload(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "max_tokens": args.output_len,
                            "temperature": args.temperature,
                            "ignore_eos": True, "stream": True,
                            "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        words = " ".join(rng.choice(WORDS) for _ in range(args.input_len))
        body["messages"] = [{"role": "user", "content": words}]
    else:
        body["prompt"] = [rng.randrange(*TOKEN_IDS) for _ in range(args.input_len)]
    return body


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Result:
    res, start = Result(), time.perf_counter()
    times: list[float] = []  # arrival of each chunk that carries text
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            res.error = f"HTTP {response.status_code}: {response.text[:200]}"
            return res
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                res.error = f"stream error: {str(chunk['error'])[:200]}"
                return res
            if chunk.get("usage"):
                res.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                res.output_tokens = chunk["usage"].get("completion_tokens", 0)
            for choice in chunk.get("choices") or []:
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                if text:
                    times.append(time.perf_counter())
        else:
            res.error = "stream ended without [DONE]"
            return res
    res.e2e = time.perf_counter() - start
    if not times:
        res.error = "no tokens streamed"
        return res
    res.ttft = times[0] - start
    res.output_tokens = res.output_tokens or len(times)
    per_chunk = max(1.0, res.output_tokens / len(times))  # tokens a chunk carries, on average
    res.itl = [(b - a) / per_chunk for a, b in zip(times, times[1:])]
    res.ok = True
    return res


async def guarded(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                  sem: asyncio.Semaphore, timeout: float) -> Result:
    async with sem:
        try:
            return await asyncio.wait_for(one_request(client, url, body), timeout)
        except asyncio.TimeoutError:
            return Result(error=f"timed out after {timeout:g}s")
        except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
            return Result(error=f"{type(e).__name__}: {e}"[:200])


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values]
    qs = {"median": 50, "p95": 95, "p99": 99}
    return {"mean": sum(ms) / len(ms) if ms else None,
            **{k: percentile(ms, q) if ms else None for k, q in qs.items()}}


async def run_benchmark(args: argparse.Namespace, client: httpx.AsyncClient,
                        concurrency: int) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}:{concurrency}")  # fresh prompts per level: no cache hits
    bodies = [make_payload(args, rng) for _ in range(args.num_requests)]
    sem = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[Result]] = []
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        if i and math.isfinite(args.request_rate):  # Poisson arrivals
            await asyncio.sleep(rng.expovariate(args.request_rate))
        tasks.append(asyncio.create_task(guarded(client, args.url, body, sem, args.timeout)))
    results = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    return {
        "concurrency": concurrency, "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:10], "duration_s": duration,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "ttft_ms": summary_ms([r.ttft for r in ok]),
        "itl_ms": summary_ms([x for r in ok for x in r.itl]),
        "e2e_ms": summary_ms([r.e2e for r in ok]),
    }


def print_run(run: dict[str, Any]) -> None:
    print(f"\n== concurrency {run['concurrency']}: {run['completed']} ok, {run['failed']} failed"
          f" in {run['duration_s']:.2f}s ==")
    print(f"  requests/s {run['request_throughput']:.2f} | output tok/s "
          f"{run['output_throughput']:.1f} | total tok/s {run['total_token_throughput']:.1f}")
    print(f"  {'ms':<5}{'mean':>10}{'median':>10}{'p95':>10}{'p99':>10}")
    for name in ("ttft", "itl", "e2e"):
        cells = [f"{v:>10.2f}" if v is not None else f"{'-':>10}"
                 for v in run[f"{name}_ms"].values()]
        print(f"  {name.upper():<5}" + "".join(cells))
    print("".join(f"  error: {err}\n" for err in run["errors"]), end="")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    levels = ([int(x) for x in args.concurrency_sweep.split(",")] if args.concurrency_sweep
              else [args.concurrency])
    key = os.environ.get("INFERNETES_API_KEY") or os.environ.get("VLLM_API_KEY")  # as the server
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(args.timeout, connect=10.0),
                                 trust_env=False) as client:  # trust_env: no proxies
        deadline = time.monotonic() + args.startup_timeout
        while True:  # wait for /health
            if args.proc is not None and args.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {args.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in time")
            try:
                if (await client.get("/health", timeout=5)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        if args.model is None:
            args.model = (await client.get("/v1/models")).json()["data"][0]["id"]
        warm = make_payload(args, random.Random(-1)) | {"max_tokens": 4}  # untimed warm-up
        await guarded(client, args.url, warm, asyncio.Semaphore(1), args.timeout)
        print(f"{args.model} at {args.base_url}{args.url}: {args.num_requests} requests, input "
              f"{args.input_len}, output {args.output_len}, rate {args.request_rate}/s")
        runs = []
        for level in levels:
            runs.append(await run_benchmark(args, client, level))
            print_run(runs[-1])
    settings = {k: v for k, v in vars(args).items() if k != "proc"}
    settings["request_rate"] = args.request_rate if math.isfinite(args.request_rate) else "inf"
    return {"timestamp": datetime.now(timezone.utc).isoformat(),
            "command": [sys.executable] + sys.argv, "settings": settings, "runs": runs}


def main() -> int:
    args = parse_args()
    args.proc, log = None, None
    if args.launch:
        with socket.socket() as sock:  # a free loopback port
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args.base_url = f"http://127.0.0.1:{port}"
        log = tempfile.NamedTemporaryFile(prefix="infernetes-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "infernetes.runtime.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), *args.server_args]
        print("launching:", " ".join(cmd), f"(log: {log.name})")
        args.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        report = asyncio.run(main_async(args))
    except (RuntimeError, httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        print(f"benchmark aborted: {type(e).__name__}: {e}", file=sys.stderr)
        if log is not None:
            print(Path(log.name).read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    finally:
        if args.proc is not None and args.proc.poll() is None:
            args.proc.send_signal(signal.SIGTERM)
            try:
                args.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                args.proc.kill()
                args.proc.wait()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.output_json}")
    return 0 if all(r["failed"] == 0 for r in report["runs"]) else 2


if __name__ == "__main__":
    sys.exit(main())
