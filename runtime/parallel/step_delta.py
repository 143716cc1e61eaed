"""What the engine sends its tensor-parallel workers at each step: the SchedulerOutput, with
each request's prompt, sampling parameters and adapter sent once (the first step that runs
it) and, after that, only the output tokens that are new since the last step that ran it.

A ScheduledRequest shares its request's whole prompt and output token lists (the sampler reads
them for penalties); pickled whole at every step they would make each step's message grow with
every context in the batch. The encoder (engine side) remembers how many output tokens each
worker has of each request; the decoder (worker side) keeps the lists and extends them, and
hands the runner ScheduledRequests equal to the engine's. Both forget a request when it appears
in `finished_request_ids`, before the step's requests are read, so an id used again after its
request finished starts afresh. The pair is pure bookkeeping: no process, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from infernetes.runtime.engine.scheduler_output import ScheduledRequest, SchedulerOutput


@dataclass(slots=True)
class CachedRequestStep:
    """One step of a request the workers have seen: what changes from step to step."""
    request_id: str
    token_ids: list[int]
    start_position: int
    block_ids: list[int]
    sample: bool
    new_output_token_ids: list[int]  # appended to the request's outputs since its last step
    prompt_logprobs_start: int


@dataclass(slots=True)
class StepDelta:
    header: SchedulerOutput  # everything but `scheduled`, which is empty here
    items: list[ScheduledRequest | CachedRequestStep]  # in the scheduler's order


class StepEncoder:
    def __init__(self) -> None:
        self._outputs_sent: dict[str, int] = {}  # request id -> output tokens the workers have

    def encode(self, scheduler_output: SchedulerOutput) -> StepDelta:
        for request_id in scheduler_output.finished_request_ids:
            self._outputs_sent.pop(request_id, None)
        items: list[ScheduledRequest | CachedRequestStep] = []
        for item in scheduler_output.scheduled:
            outputs = item.output_token_ids
            sent = self._outputs_sent.get(item.request_id)
            if sent is None or sent > len(outputs):
                items.append(item)
            else:
                items.append(CachedRequestStep(
                    item.request_id, item.token_ids, item.start_position, item.block_ids,
                    item.sample, outputs[sent:], item.prompt_logprobs_start))
            self._outputs_sent[item.request_id] = len(outputs)
        return StepDelta(replace(scheduler_output, scheduled=[]), items)


class StepDecoder:
    def __init__(self) -> None:
        self._requests: dict[str, ScheduledRequest] = {}

    def decode(self, delta: StepDelta) -> SchedulerOutput:
        for request_id in delta.header.finished_request_ids:
            self._requests.pop(request_id, None)
        scheduled = []
        for item in delta.items:
            if isinstance(item, ScheduledRequest):
                self._requests[item.request_id] = item
                scheduled.append(item)
                continue
            known = self._requests[item.request_id]
            known.output_token_ids.extend(item.new_output_token_ids)
            scheduled.append(ScheduledRequest(
                item.request_id, item.token_ids, item.start_position, item.block_ids,
                item.sample, known.sampling_params, known.prompt_token_ids,
                known.output_token_ids, known.lora_id, known.lora_request,
                item.prompt_logprobs_start))
        return replace(delta.header, scheduled=scheduled)
