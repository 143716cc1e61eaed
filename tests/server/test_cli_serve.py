"""`infernetes serve` as a user runs it: flags it cannot honour stop it at start with their
name; SIGTERM lets in-flight requests finish, then the process exits 0."""
from __future__ import annotations

import json
import signal
import subprocess
import threading

import httpx
import pytest

from live_server import SERVE, start_serve_process


@pytest.mark.parametrize("flags,named", [
    (["--lora-modules", "sql=/nowhere"], "--lora-modules needs --enable-lora"),
    (["--lora-modules", "sql"], "--lora-modules: expected NAME=PATH"),
    (["--enable-lora", "--max-loras", "0"], "--max-loras must be at least 1"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size 2: the model's 9 attention heads"),
    (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size"),
    (["--tool-call-parser", "hermes"], "--tool-call-parser"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--max-model-len", "1"], "--max-model-len"),
])
def test_unsupported_or_bad_flags_fail_at_start_naming_them(flags, named):
    result = subprocess.run(SERVE + flags, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert named in result.stderr


def test_sigterm_drains_in_flight_requests_then_exits_zero():
    process, url = start_serve_process(["--dtype", "float32", "--max-model-len", "1024",
                                        "--kv-cache-memory", "128MiB"])
    try:
        events: list[str] = []
        first_chunk = threading.Event()

        def stream():
            body = {"prompt": "Count to a hundred:", "max_tokens": 48, "ignore_eos": True,
                    "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(60)
        process.send_signal(signal.SIGTERM)
        reader.join(60)
        assert events[-1] == "[DONE]"
        finals = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finals[-1] == "length"
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
