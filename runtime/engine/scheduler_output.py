"""The contract between the scheduler and the model runner: plain data, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infernetes.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from infernetes.runtime.request import LoRARequest


@dataclass(slots=True)
class ScheduledRequest:
    request_id: str
    # Tokens whose keys/values this step computes: positions [start_position, + len(token_ids)).
    token_ids: list[int]
    start_position: int
    # The request's whole block table; covers every position computed up to the end of the step.
    block_ids: list[int]
    # True when the chunk reaches the last known token, so the step samples the next one.
    sample: bool
    sampling_params: SamplingParams
    # Shared with the request, not copied: the sampler reads them for penalties and min_tokens.
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    lora_id: int = 0
    lora_request: LoRARequest | None = None
    # When >= 0: also score prompt tokens from position prompt_logprobs_start + 1 up to the end
    # of the chunk, each by the logits of the position before it (sampling_params.prompt_logprobs).
    prompt_logprobs_start: int = -1


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_scheduled_tokens: int
    # Requests that left the batch since the last step: the runner drops their state.
    finished_request_ids: list[str] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)
    # Adapters of every unfinished request: the runner keeps them in CPU memory.
    lora_ids_in_flight: frozenset[int] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class SampledToken:
    token_id: int
    logprob: float
    # (token id, logprob) of the most likely tokens, best first, when logprobs were asked for.
    top_logprobs: list[tuple[int, float]] | None = None
    rank: int = 1  # rank of the sampled token in the model's distribution


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled: dict[str, SampledToken]
    # request id -> the chunk's prompt tokens after the first, scored by the position before each.
    prompt_logprobs: dict[str, list[SampledToken]] = field(default_factory=dict)
