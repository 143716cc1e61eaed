"""What one engine step did, for metrics: plain data, built by the engine, read by exporters."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FinishedRequestStats:
    finish_reason: str
    lora_name: str
    num_prompt_tokens: int
    num_generation_tokens: int
    e2e_seconds: float  # arrival to finish
    queue_seconds: float  # arrival to first scheduled


@dataclass(slots=True)
class IterationStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    num_preemptions: int = 0  # in this step
    prefix_cache_queries: int = 0  # tokens looked up in this step
    prefix_cache_hits: int = 0
    num_prompt_tokens: int = 0  # prompts of requests that got their first token this step
    num_generation_tokens: int = 0
    # (lora name, seconds) per observation
    time_to_first_token: list[tuple[str, float]] = field(default_factory=list)
    inter_token_latency: list[tuple[str, float]] = field(default_factory=list)
    finished: list[FinishedRequestStats] = field(default_factory=list)
