"""/metrics exposes every family DESIGN.md names and they move with traffic; a full waiting
queue answers 503 with Retry-After."""
from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from live_server import start_server

FAMILIES = [
    "infernetes_requests_running", "infernetes_requests_waiting",
    "infernetes_kv_cache_usage_ratio", "infernetes_lora_adapters_loaded",
    "infernetes_prompt_tokens", "infernetes_generation_tokens",
    "infernetes_prefix_cache_queries", "infernetes_prefix_cache_hits",
    "infernetes_preemptions", "infernetes_request_success", "infernetes_requests_rejected",
    "infernetes_time_to_first_token_seconds", "infernetes_inter_token_latency_seconds",
    "infernetes_e2e_request_latency_seconds", "infernetes_request_queue_time_seconds",
    "infernetes_request_prompt_tokens", "infernetes_request_generation_tokens",
]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(samples, name, **labels) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_every_family_is_exported_and_moves(server):
    text = httpx.get(f"{server.url}/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert set(FAMILIES) <= names
    model = server.ctx.served_model_name
    before = scrape(server.url)
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    for _ in range(2):  # the second request hits the prefix cache
        reply = httpx.post(f"{server.url}/v1/completions", json={
            "prompt": prompt, "max_tokens": 6, "ignore_eos": True, "temperature": 0}).json()
    after = scrape(server.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert all(dict(ls).get("model_name") == model for (_, ls) in after if ls)
    assert delta("infernetes_generation_tokens_total") == 12
    assert delta("infernetes_prompt_tokens_total") == 2 * reply["usage"]["prompt_tokens"]
    assert delta("infernetes_request_success_total", finish_reason="length", lora_name="") == 2
    assert delta("infernetes_prefix_cache_queries_total") >= 2 * reply["usage"]["prompt_tokens"]
    assert delta("infernetes_prefix_cache_hits_total") >= 32
    for histogram in ("infernetes_time_to_first_token_seconds",
                      "infernetes_e2e_request_latency_seconds",
                      "infernetes_request_queue_time_seconds",
                      "infernetes_request_prompt_tokens", "infernetes_request_generation_tokens"):
        assert delta(f"{histogram}_count") == 2, histogram
    assert delta("infernetes_inter_token_latency_seconds_count") == 2 * 5
    assert value(after, "infernetes_kv_cache_usage_ratio") >= 0


def test_full_queue_gets_503_with_retry_after():
    live = start_server(max_num_queued_requests=1, max_num_seqs=1)
    try:
        engine = live.ctx.engine.engine
        long_request = {"prompt": "Count:", "max_tokens": 300, "ignore_eos": True}
        results = []
        for _ in range(2):
            threading.Thread(target=lambda: results.append(httpx.post(
                f"{live.url}/v1/completions", json=long_request, timeout=120)),
                daemon=True).start()
            time.sleep(0.3)
        deadline = time.monotonic() + 20
        while not (engine.scheduler.num_running == 1 and live.ctx.engine.num_waiting() == 1):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rejected = httpx.post(f"{live.url}/v1/completions", json=long_request)
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == 503
        assert value(scrape(live.url), "infernetes_requests_rejected_total",
                     reason="queue_full") == 1
    finally:
        for request_id in list(live.ctx.engine._streams):
            live.ctx.engine.abort(request_id)
        live.stop()


def test_gauges_and_preemptions_move_under_memory_pressure():
    """A KV cache of 16 blocks (256 tokens) and four requests that grow to 140 tokens each:
    they cannot all stay resident, so some are preempted, wait, and are recomputed."""
    per_block = 16 * 2 * 3 * 64 * 4 * 30  # tokens x K,V x KV heads x head dim x fp32 x layers
    live = start_server(max_model_len=256, kv_cache_memory=16 * per_block)
    try:
        before = scrape(live.url)
        request = {"prompt": "Tell me a long story about a fox. " * 4, "max_tokens": 100,
                   "ignore_eos": True, "temperature": 0}
        replies = []
        threads = [threading.Thread(target=lambda: replies.append(httpx.post(
            f"{live.url}/v1/completions", json=request, timeout=300))) for _ in range(4)]
        for thread in threads:
            thread.start()
        peaks = {"infernetes_requests_running": 0.0, "infernetes_requests_waiting": 0.0,
                 "infernetes_kv_cache_usage_ratio": 0.0}
        while any(thread.is_alive() for thread in threads):
            now = scrape(live.url)
            for name in peaks:
                peaks[name] = max(peaks[name], value(now, name))
            time.sleep(0.02)
        after = scrape(live.url)
        assert [r.status_code for r in replies] == [200] * 4
        assert peaks["infernetes_requests_running"] >= 2
        assert peaks["infernetes_requests_waiting"] >= 1
        assert peaks["infernetes_kv_cache_usage_ratio"] > 0.8
        preempted = (value(after, "infernetes_preemptions_total")
                     - value(before, "infernetes_preemptions_total"))
        assert preempted == live.ctx.engine.engine.scheduler.num_preemptions > 0
        assert value(after, "infernetes_requests_running") == 0
        assert value(after, "infernetes_kv_cache_usage_ratio") == 0
    finally:
        live.stop()
