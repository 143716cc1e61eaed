"""What the engine hands back: one `RequestOutput` per request, with n `CompletionOutput`s."""
from __future__ import annotations

from dataclasses import dataclass, field

# token id -> Logprob, for one position: the sampled token and the top alternatives.
LogprobsAtPosition = dict[int, "Logprob"]


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int  # 1 = the most likely token
    decoded_token: str | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[LogprobsAtPosition] | None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    # With SamplingParams.prompt_logprobs: one entry per prompt token, None for the first.
    prompt_logprobs: list[LogprobsAtPosition | None] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
