"""Per-request sampling settings, with vLLM's field names and meanings.

Validation happens here, at the boundary: every bad value raises `ValueError` naming the field,
so a bad request is rejected before it reaches the engine.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

_GREEDY_EPSILON = 1e-5


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # every output holds everything generated so far
    DELTA = 1  # every output holds only what is new since the last one (streaming)
    FINAL_ONLY = 2  # one output, when the request finishes (offline batches)


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k cut
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # top alternatives per sampled token (the sampled one is extra)
    prompt_logprobs: int | None = None  # the same for each prompt token after the first
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Filled by the engine from the model: tokens that end generation besides stop_token_ids.
    _eos_token_ids: frozenset[int] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._validate()
        if self.temperature < _GREEDY_EPSILON:
            # Greedy: the other cuts cannot change the argmax.
            self.temperature = 0.0
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    def _validate(self) -> None:
        checks = [
            ("n", self.n >= 1, "must be at least 1"),
            ("temperature", self.temperature >= 0.0, "must be non-negative"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be -1 (disable), 0 or a positive integer"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "must be in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "must be greater than 0"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be at least 1"),
            ("min_tokens", self.min_tokens >= 0, "must be non-negative"),
            ("min_tokens", self.max_tokens is None or self.min_tokens <= self.max_tokens,
             "must be less than or equal to max_tokens"),
            ("logprobs", self.logprobs is None or self.logprobs >= 0, "must be non-negative"),
            ("prompt_logprobs", self.prompt_logprobs is None or self.prompt_logprobs >= 0,
             "must be non-negative"),
            ("stop", all(isinstance(s, str) and s for s in self.stop),
             "must be non-empty strings"),
            ("stop_token_ids", all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
             "must be non-negative integers"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name} {message}, got {getattr(self, name)!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not
                                      -2**63 <= self.seed <= 2**63 - self.n):
            raise ValueError(f"seed must be a 64-bit signed integer (leaving room for n "
                             f"samples), got {self.seed!r}")
        if self.top_k > 2**31 or any(t >= 2**63 for t in self.stop_token_ids):
            raise ValueError("top_k and stop_token_ids must be within the vocabulary's range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos_token_ids

    def with_eos(self, eos_token_ids: frozenset[int]) -> SamplingParams:
        return replace(self, _eos_token_ids=frozenset(eos_token_ids))

    def for_sample(self, index: int) -> SamplingParams:
        """The params of the index-th of n samples: one sequence each, seeds kept distinct."""
        seed = None if self.seed is None else self.seed + index
        return replace(self, n=1, seed=seed)
