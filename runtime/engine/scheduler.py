"""Continuous batching under one token budget per step, with chunked prefill and preemption.

There are no prefill and decode phases: every request has `num_computed_tokens` and
`num_tokens`, and each step gives each request some of the budget to close that gap. Running
requests go first, in arrival order (FCFS); waiting ones are admitted while budget, sequence
slots and KV blocks last. When a running request cannot get a block, the latest-arrived running
request is preempted: its blocks are freed and it waits to be recomputed (its full blocks usually
survive in the prefix cache). No request is ever dropped.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from infernetes.runtime.config import SchedulerConfig
from infernetes.runtime.engine.kv_cache_manager import KVCacheManager
from infernetes.runtime.engine.scheduler_output import (
    ModelRunnerOutput, SampledToken, ScheduledRequest, SchedulerOutput)
from infernetes.runtime.request import Request, RequestStatus


@dataclass(slots=True)
class RequestUpdate:
    """What one step did to one request: the tokens it gained and whether it is done."""
    request: Request
    new_token_ids: list[int]
    new_samples: list[SampledToken]
    finished: bool


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache_manager: KVCacheManager,
                 max_model_len: int):
        self.config = config.for_context(max_model_len)
        self.kv = kv_cache_manager
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_since_last_step: list[str] = []
        self.num_preemptions = 0

    # -- queues -----------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> None:
        """End requests from outside the step (abort, stop string found by the detokenizer)."""
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished():
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, status)

    def lora_ids_in_flight(self) -> frozenset[int]:
        """The adapters of unfinished requests (none while LoRA is off)."""
        if not self.config.max_loras:
            return frozenset()
        return frozenset(r.lora_id for r in self.requests.values() if r.lora_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- one step ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []
        adapters: set[int] = set()  # the adapters this step uses: at most max_loras

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            if not self._adapter_fits(request, adapters):
                i += 1  # it keeps its blocks and runs in a later step
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            if request in preempted:
                break
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new
            adapters.add(request.lora_id)
            i += 1

        # Admitting new work while memory is short would only cause more preemption.
        while (self.waiting and budget > 0 and not preempted
               and len(self.running) < self.config.max_num_seqs):
            request = self.waiting[0]
            if not self._adapter_fits(request, adapters):
                break
            # Prompt logprobs need the logits of every prompt position: no prefix-cache hit.
            computed_blocks, num_cached = (([], 0) if request.needs_prompt_logprobs
                                           else self.kv.get_computed_blocks(request))
            num_new = request.num_tokens - num_cached
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.kv.allocate_slots(request, num_new, computed_blocks) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens < 0:  # first admission: count the prefix lookup once
                request.num_cached_tokens = num_cached
                request.first_scheduled_time = time.monotonic()
                self.kv.record_prefix_lookup(request.num_tokens, num_cached)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new
            adapters.add(request.lora_id)

        finished, self._finished_since_last_step = self._finished_since_last_step, []
        return SchedulerOutput(
            scheduled=scheduled,
            num_scheduled_tokens=self.config.max_num_batched_tokens - budget,
            finished_request_ids=finished,
            preempted_request_ids=[r.request_id for r in preempted],
            lora_ids_in_flight=self.lora_ids_in_flight(),
        )

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           runner_output: ModelRunnerOutput) -> list[RequestUpdate]:
        updates: list[RequestUpdate] = []
        for item in scheduler_output.scheduled:
            request = self.requests[item.request_id]
            request.num_computed_tokens += len(item.token_ids)
            if item.prompt_logprobs_start >= 0:
                request.prompt_logprobs.extend(runner_output.prompt_logprobs[item.request_id])
            if not item.sample:
                continue
            sample = runner_output.sampled[item.request_id]
            request.output_token_ids.append(sample.token_id)
            status = self._check_stop(request, sample.token_id)
            if status is not None:
                self.running.remove(request)
                self._finish(request, status)
            updates.append(RequestUpdate(request, [sample.token_id], [sample],
                                         status is not None))
        return updates

    # -- internals --------------------------------------------------------------------------

    def _adapter_fits(self, request: Request, adapters: set[int]) -> bool:
        """Whether the step can take one more request without needing more adapter slots
        than exist (the base model, id 0, needs none)."""
        lora_id, limit = request.lora_id, self.config.max_loras
        return (lora_id == 0 or limit == 0 or lora_id in adapters
                or len(adapters - {0}) < limit)

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.token_ids(start, start + num_new),
            start_position=start,
            block_ids=self.kv.block_ids(request.request_id),
            sample=start + num_new == request.num_tokens,
            sampling_params=request.sampling_params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            lora_id=request.lora_id,
            lora_request=request.lora_request,
            prompt_logprobs_start=_prompt_logprobs_start(request, start, start + num_new),
        )

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id in params.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv.free(request)
        del self.requests[request.request_id]
        self._finished_since_last_step.append(request.request_id)


def _prompt_logprobs_start(request: Request, start: int, end: int) -> int:
    """Where this chunk's prompt logprobs begin, or -1 when it has none left to report (a
    recompute after preemption scores nothing twice)."""
    have = len(request.prompt_logprobs)
    return have if request.needs_prompt_logprobs and start <= have < end else -1
