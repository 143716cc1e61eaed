"""Prometheus metrics, named as DESIGN.md lists them (prefix `infernetes_`, label `model_name`,
and `lora_name` on request metrics, "" for the base model). Filled from the engine's
per-step `IterationStats`, in the engine thread; served at GET /metrics."""
from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest)

from infernetes.runtime.engine.stats import IterationStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = registry = CollectorRegistry()
        self.model_name = model_name
        base, req = ["model_name"], ["model_name", "lora_name"]

        def gauge(name, doc):
            return Gauge(name, doc, base, registry=registry).labels(model_name)

        self.running = gauge("infernetes_requests_running", "Requests in the running batch.")
        self.waiting = gauge("infernetes_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("infernetes_kv_cache_usage_ratio",
                              "Fraction of KV-cache blocks held by requests (0-1).")
        self.adapters = gauge("infernetes_lora_adapters_loaded", "LoRA adapters loaded.")
        self.adapters_running = gauge("infernetes_lora_adapters_running",
                                      "LoRA adapters with requests in flight.")
        self.prompt_tokens = Counter("infernetes_prompt_tokens", "Prompt tokens processed.",
                                     base, registry=registry).labels(model_name)
        self.generation_tokens = Counter("infernetes_generation_tokens", "Tokens generated.",
                                         base, registry=registry).labels(model_name)
        self.prefix_queries = Counter("infernetes_prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache.",
                                      base, registry=registry).labels(model_name)
        self.prefix_hits = Counter("infernetes_prefix_cache_hits",
                                   "Prompt tokens found in the prefix cache.",
                                   base, registry=registry).labels(model_name)
        self.preemptions = Counter("infernetes_preemptions", "Requests preempted.",
                                   base, registry=registry).labels(model_name)
        self.success = Counter("infernetes_request_success", "Requests finished.",
                               [*req, "finish_reason"], registry=registry)
        self.rejected = Counter("infernetes_requests_rejected", "Requests turned away.",
                                [*base, "reason"], registry=registry)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, req, buckets=buckets, registry=registry)

        self.ttft = histogram("infernetes_time_to_first_token_seconds",
                              "Arrival to first output token.", _LATENCY_BUCKETS)
        self.itl = histogram("infernetes_inter_token_latency_seconds",
                             "Time between output tokens of a request.", _LATENCY_BUCKETS)
        self.e2e = histogram("infernetes_e2e_request_latency_seconds",
                             "Arrival to finish.", _LATENCY_BUCKETS)
        self.queue_time = histogram("infernetes_request_queue_time_seconds",
                                    "Arrival to first scheduled.", _LATENCY_BUCKETS)
        self.request_prompt_tokens = histogram("infernetes_request_prompt_tokens",
                                               "Prompt length of finished requests.",
                                               _TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("infernetes_request_generation_tokens",
                                                   "Output length of finished requests.",
                                                   _TOKEN_BUCKETS)
        self.adapters.set(0)
        # Families with labels appear in /metrics before their first request.
        for reason in ("stop", "length"):
            self.success.labels(model_name, "", reason)
        self.rejected.labels(model_name, "queue_full")
        for family in (self.ttft, self.itl, self.e2e, self.queue_time,
                       self.request_prompt_tokens, self.request_generation_tokens):
            family.labels(model_name, "")

    def record(self, stats: IterationStats) -> None:
        name = self.model_name
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        self.prompt_tokens.inc(stats.num_prompt_tokens)
        self.generation_tokens.inc(stats.num_generation_tokens)
        self.prefix_queries.inc(stats.prefix_cache_queries)
        self.prefix_hits.inc(stats.prefix_cache_hits)
        self.preemptions.inc(stats.num_preemptions)
        for lora, seconds in stats.time_to_first_token:
            self.ttft.labels(name, lora).observe(seconds)
        for lora, seconds in stats.inter_token_latency:
            self.itl.labels(name, lora).observe(seconds)
        for done in stats.finished:
            self.success.labels(name, done.lora_name, done.finish_reason).inc()
            self.e2e.labels(name, done.lora_name).observe(done.e2e_seconds)
            self.queue_time.labels(name, done.lora_name).observe(done.queue_seconds)
            self.request_prompt_tokens.labels(name, done.lora_name).observe(
                done.num_prompt_tokens)
            self.request_generation_tokens.labels(name, done.lora_name).observe(
                done.num_generation_tokens)

    def reject(self, reason: str) -> None:
        self.rejected.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
