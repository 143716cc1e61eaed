"""Helpers for the KV-cache and scheduler tests: requests, a scheduler over a small KV cache, and
a fake model runner that checks the block tables it is handed.

Imported as a plain module (`from scheduler_utils import ...`): pytest puts this folder on
sys.path because the tests have no `__init__.py`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from infernetes.runtime.config import SchedulerConfig
from infernetes.runtime.engine.kv_cache_manager import KVCacheManager
from infernetes.runtime.engine.scheduler import RequestUpdate, Scheduler
from infernetes.runtime.engine.scheduler_output import (
    ModelRunnerOutput, SampledToken, ScheduledRequest, SchedulerOutput)
from infernetes.runtime.request import LoRARequest, Request
from infernetes.runtime.sampling_params import SamplingParams

FIRST_OUTPUT_TOKEN = 1000


def make_request(request_id: str, prompt: Sequence[int] | int, *, max_tokens: int | None = 16,
                 lora_id: int | None = None, eos: int | None = None,
                 **params) -> Request:
    """A request; `prompt` is a list of token ids, or a length (tokens 1, 2, ..., n)."""
    prompt_token_ids = list(range(1, prompt + 1)) if isinstance(prompt, int) else list(prompt)
    sampling_params = SamplingParams(max_tokens=max_tokens, **params)
    if eos is not None:
        sampling_params = sampling_params.with_eos(frozenset({eos}))
    lora = None if lora_id is None else LoRARequest(f"lora{lora_id}", lora_id)
    return Request(request_id, prompt_token_ids, sampling_params, lora_request=lora)


def make_scheduler(*, num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 256,
                   max_num_batched_tokens: int | None = 2048, enable_chunked_prefill: bool = True,
                   enable_caching: bool = True, max_model_len: int = 1024) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             enable_chunked_prefill=enable_chunked_prefill)
    kv = KVCacheManager(num_blocks, block_size, enable_caching=enable_caching)
    return Scheduler(config, kv, max_model_len=max_model_len)


def fake_runner_output(out: SchedulerOutput, token_id: int = 7) -> ModelRunnerOutput:
    """The runner "samples" `token_id` for every request that samples this step."""
    return ModelRunnerOutput({item.request_id: SampledToken(token_id, 0.0)
                              for item in out.scheduled if item.sample})


def position_token(item: ScheduledRequest) -> int:
    """Default sampling rule: the n-th output token of every request is FIRST_OUTPUT_TOKEN + n,
    so a request recomputed after preemption must continue exactly where it was."""
    return FIRST_OUTPUT_TOKEN + len(item.output_token_ids)


class FakeRunner:
    """Stands in for the model runner, with a simulated paged KV cache.

    Each step it first writes every scheduled token into the slot its block table names (as the
    real runner writes all keys/values before attention reads any), then checks that every
    position each request attends to holds that request's token: a block shared through the
    prefix cache, reused after eviction, or handed to two requests at once would show up here
    as a wrong token. Then it samples `next_token(item)` for each request that samples.
    """

    def __init__(self, block_size: int,
                 next_token: Callable[[ScheduledRequest], int] = position_token):
        self.block_size = block_size
        self.next_token = next_token
        self.slots: dict[tuple[int, int], tuple[int, int]] = {}  # (block, offset) -> (lora, token)

    def _slot(self, item: ScheduledRequest, position: int) -> tuple[int, int]:
        return item.block_ids[position // self.block_size], position % self.block_size

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for item in out.scheduled:
            end = item.start_position + len(item.token_ids)
            assert len(item.block_ids) == -(-end // self.block_size), (
                f"{item.request_id}: {len(item.block_ids)} blocks for {end} tokens")
            for offset, token in enumerate(item.token_ids):
                self.slots[self._slot(item, item.start_position + offset)] = (item.lora_id, token)
        sampled = {}
        for item in out.scheduled:
            end = item.start_position + len(item.token_ids)
            expected = (item.prompt_token_ids + item.output_token_ids)[:end]
            assert item.token_ids == expected[item.start_position:]
            seen = [self.slots.get(self._slot(item, p)) for p in range(end)]
            assert seen == [(item.lora_id, t) for t in expected], (
                f"{item.request_id}: the KV cache does not hold its tokens")
            assert item.sample == (end == len(item.prompt_token_ids) + len(item.output_token_ids))
            if item.sample:
                sampled[item.request_id] = SampledToken(self.next_token(item), 0.0)
        return ModelRunnerOutput(sampled)


def step(sched: Scheduler, runner: FakeRunner) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    """One engine step, checking the limits every step must respect."""
    out = sched.schedule()
    num_tokens = sum(len(item.token_ids) for item in out.scheduled)
    assert out.num_scheduled_tokens == num_tokens
    assert num_tokens <= sched.config.max_num_batched_tokens
    assert len(out.scheduled) <= sched.num_running <= sched.config.max_num_seqs
    assert all(item.token_ids for item in out.scheduled)
    ids = [item.request_id for item in out.scheduled]
    assert len(ids) == len(set(ids))
    assert not set(ids) & set(out.preempted_request_ids)
    return out, sched.update_from_output(out, runner.execute(out))


def run_until_done(sched: Scheduler, runner: FakeRunner,
                   max_steps: int = 1000) -> list[SchedulerOutput]:
    """Step until no request is left; fails (instead of hanging) after `max_steps`."""
    outputs = []
    while sched.has_unfinished_requests():
        assert len(outputs) < max_steps, (
            f"still unfinished after {max_steps} steps: waiting "
            f"{[r.request_id for r in sched.waiting]}, running "
            f"{[r.request_id for r in sched.running]}")
        outputs.append(step(sched, runner)[0])
    return outputs
