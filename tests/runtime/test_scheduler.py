"""Scheduler: continuous batching under a token budget, chunked prefill, prefix-cache hits,
preemption by recompute, FCFS, stop conditions and aborts, driven step by step with a fake
model runner (see scheduler_utils.FakeRunner) that checks every block table it is handed."""
from __future__ import annotations

import random

import pytest

from infernetes.runtime.config import ConfigError

from infernetes.runtime.request import RequestStatus
from scheduler_utils import (FIRST_OUTPUT_TOKEN, FakeRunner, fake_runner_output, make_request,
                             make_scheduler, run_until_done, step)

BS = 4  # block size of every scheduler here


def expected_outputs(n: int) -> list[int]:
    """What FakeRunner's default rule samples for a request's first n output tokens."""
    return [FIRST_OUTPUT_TOKEN + i for i in range(n)]


def chunks(outputs, request_id: str) -> list[tuple[int, int, bool]]:
    """(start_position, number of tokens, sample) of each step that scheduled `request_id`."""
    return [(item.start_position, len(item.token_ids), item.sample)
            for out in outputs for item in out.scheduled if item.request_id == request_id]


def scheduled_ids(out) -> list[str]:
    return [item.request_id for item in out.scheduled]


# -- one request -------------------------------------------------------------------------------

def test_prefill_then_decode_until_max_tokens():
    sched = make_scheduler()
    runner = FakeRunner(BS)
    request = make_request("a", 5, max_tokens=3)
    sched.add_request(request)
    assert sched.num_waiting == 1 and sched.has_unfinished_requests()

    out, updates = step(sched, runner)
    [item] = out.scheduled
    assert (item.token_ids, item.start_position, item.sample) == ([1, 2, 3, 4, 5], 0, True)
    assert [(u.new_token_ids, u.finished) for u in updates] == [([FIRST_OUTPUT_TOKEN], False)]
    assert sched.num_running == 1 and sched.num_waiting == 0

    out, updates = step(sched, runner)
    [item] = out.scheduled
    assert (item.token_ids, item.start_position) == ([FIRST_OUTPUT_TOKEN], 5)
    assert not updates[0].finished

    out, updates = step(sched, runner)
    assert updates[0].finished
    assert request.output_token_ids == expected_outputs(3)
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert request.status.finish_reason == "length"
    assert not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.pool.num_blocks

    # The runner hears about the finished request once, in the next step's output.
    out = sched.schedule()
    assert out.is_empty and out.finished_request_ids == ["a"]
    assert sched.schedule().finished_request_ids == []


def test_requests_arriving_later_join_the_running_batch():
    sched = make_scheduler(max_num_batched_tokens=7)
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 3, max_tokens=5))
    out, _ = step(sched, runner)
    assert chunks([out], "a") == [(0, 3, True)]

    sched.add_request(make_request("b", [50 + i for i in range(20)], max_tokens=1))
    out, _ = step(sched, runner)
    # The running request decodes first; the newcomer's prefill gets the rest of the budget.
    assert scheduled_ids(out) == ["a", "b"]
    assert [len(item.token_ids) for item in out.scheduled] == [1, 6]
    assert out.num_scheduled_tokens == 7


# -- token budget and sequence limit ----------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_random_workload_respects_limits_and_finishes_every_request(seed):
    rng = random.Random(seed)
    max_model_len = 40
    max_num_seqs = rng.randint(1, 6)
    sched = make_scheduler(  # from just one longest request's worth of blocks to 1.6 times that
        num_blocks=rng.randint(max_model_len // BS, 16),
        max_num_seqs=max_num_seqs, max_num_batched_tokens=rng.randint(1, 24),
        enable_caching=rng.random() < 0.7, max_model_len=max_model_len)
    runner = FakeRunner(BS)
    shared = [rng.randrange(1, 500) for _ in range(12)]
    requests, room = [], {}
    for i in range(12):
        prompt = shared[:rng.randint(0, 12)] + [rng.randrange(1, 500)
                                                 for _ in range(rng.randint(1, 14))]
        request = make_request(f"r{i}", prompt, max_tokens=rng.randint(1, 20))
        requests.append(request)
        room[request.request_id] = min(request.sampling_params.max_tokens,
                                       max_model_len - len(prompt))

    for i, request in enumerate(requests):  # some arrive while others run
        sched.add_request(request)
        if i % 3 == 2:
            step(sched, runner)
    run_until_done(sched, runner, max_steps=3000)  # step() checks the budget and max_num_seqs

    for request in requests:
        assert request.output_token_ids == expected_outputs(room[request.request_id])
        assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert sched.kv.num_free_blocks == sched.kv.pool.num_blocks
    assert not sched.requests


def test_budget_and_max_num_seqs_are_both_filled_when_there_is_work():
    sched = make_scheduler(max_num_seqs=3, max_num_batched_tokens=10)
    runner = FakeRunner(BS)
    for i in range(5):
        sched.add_request(make_request(f"r{i}", [10 * i + j for j in range(1, 9)], max_tokens=4))

    out, _ = step(sched, runner)
    assert scheduled_ids(out) == ["r0", "r1"]
    assert [len(item.token_ids) for item in out.scheduled] == [8, 2]
    out, _ = step(sched, runner)
    assert scheduled_ids(out) == ["r0", "r1", "r2"]
    assert [len(item.token_ids) for item in out.scheduled] == [1, 6, 3]
    assert sched.num_running == 3 and sched.num_waiting == 2
    for _ in range(3):
        out, _ = step(sched, runner)
        assert len(out.scheduled) <= 3 and sched.num_running <= 3
        assert out.num_scheduled_tokens <= 10


# -- chunked prefill ---------------------------------------------------------------------------

def test_long_prompt_is_prefilled_in_chunks_and_samples_only_at_the_end():
    sched = make_scheduler(max_num_batched_tokens=7)
    runner = FakeRunner(BS)
    request = make_request("a", 20, max_tokens=2)
    sched.add_request(request)

    out1, updates1 = step(sched, runner)
    out2, updates2 = step(sched, runner)
    assert updates1 == [] and updates2 == []
    assert request.output_token_ids == []
    assert request.num_computed_tokens == 14
    out3, updates3 = step(sched, runner)
    assert [u.new_token_ids for u in updates3] == [[FIRST_OUTPUT_TOKEN]]
    outputs = [out1, out2, out3] + run_until_done(sched, runner)

    assert chunks(outputs, "a") == [(0, 7, False), (7, 7, False), (14, 6, True), (20, 1, True)]
    assert out1.scheduled[0].token_ids == list(range(1, 8))
    assert request.output_token_ids == expected_outputs(2)


def test_without_chunked_prefill_a_prompt_waits_until_it_fits_whole():
    sched = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False,
                           max_model_len=8)
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 4, max_tokens=3))
    sched.add_request(make_request("b", [50 + i for i in range(8)], max_tokens=1))
    sched.add_request(make_request("c", [90], max_tokens=1))  # would fit, but arrived later

    outputs = run_until_done(sched, runner)
    assert [scheduled_ids(out) for out in outputs] == [["a"], ["a"], ["a"], ["b"], ["c"]]
    assert chunks(outputs, "b") == [(0, 8, True)]


def test_with_chunked_prefill_the_same_prompt_uses_the_leftover_budget():
    sched = make_scheduler(max_num_batched_tokens=8)
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 4, max_tokens=3))
    sched.add_request(make_request("b", [50 + i for i in range(8)], max_tokens=1))

    outputs = run_until_done(sched, runner)
    assert chunks(outputs, "b") == [(0, 4, False), (4, 4, True)]
    assert scheduled_ids(outputs[0]) == ["a", "b"]


# -- prefix cache ------------------------------------------------------------------------------

def test_prefix_hit_skips_the_cached_tokens():
    sched = make_scheduler()
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 10, max_tokens=2))
    run_until_done(sched, runner)

    second = make_request("b", list(range(1, 9)) + [77, 78, 79], max_tokens=2)
    sched.add_request(second)
    outputs = run_until_done(sched, runner)
    first_item = outputs[0].scheduled[0]
    assert (first_item.start_position, first_item.token_ids) == (8, [77, 78, 79])
    assert second.num_cached_tokens == 8
    assert second.output_token_ids == expected_outputs(2)
    stats = sched.kv.prefix_cache_stats
    assert (stats.queries, stats.hits) == (10 + 11, 8)


def test_prefix_hit_within_the_same_step():
    sched = make_scheduler()
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 10, max_tokens=1))
    sched.add_request(make_request("b", list(range(1, 9)) + [77, 78, 79], max_tokens=1))
    out, _ = step(sched, runner)
    assert [(i.request_id, i.start_position, len(i.token_ids)) for i in out.scheduled] == [
        ("a", 0, 10), ("b", 8, 3)]
    assert out.scheduled[1].block_ids[:2] == out.scheduled[0].block_ids[:2]


def test_identical_prompt_still_computes_its_last_token():
    sched = make_scheduler()
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 8, max_tokens=1))
    run_until_done(sched, runner)
    sched.add_request(make_request("b", 8, max_tokens=1))
    outputs = run_until_done(sched, runner)
    assert chunks(outputs, "b") == [(4, 4, True)]


def test_without_prefix_caching_every_prompt_starts_at_zero():
    sched = make_scheduler(enable_caching=False)
    runner = FakeRunner(BS)
    sched.add_request(make_request("a", 10, max_tokens=1))
    sched.add_request(make_request("b", 10, max_tokens=1))
    outputs = run_until_done(sched, runner)
    assert chunks(outputs, "a") == chunks(outputs, "b") == [(0, 10, True)]


def test_lora_requests_do_not_share_cached_blocks():
    sched = make_scheduler()
    runner = FakeRunner(BS)
    sched.add_request(make_request("base", 10, max_tokens=1))
    sched.add_request(make_request("lora", 10, max_tokens=1, lora_id=3))
    sched.add_request(make_request("lora_again", 10, max_tokens=1, lora_id=3))
    outputs = run_until_done(sched, runner)
    assert chunks(outputs, "lora") == [(0, 10, True)]
    assert chunks(outputs, "lora_again") == [(8, 2, True)]


# -- FCFS --------------------------------------------------------------------------------------

def test_requests_are_admitted_and_scheduled_in_arrival_order():
    sched = make_scheduler(max_num_seqs=2)
    runner = FakeRunner(BS)
    for i, max_tokens in enumerate([1, 3, 2, 1]):
        sched.add_request(make_request(f"r{i}", [10 * i + j for j in range(1, 5)],
                                       max_tokens=max_tokens))
    outputs = run_until_done(sched, runner)
    assert [scheduled_ids(out) for out in outputs] == [
        ["r0", "r1"],
        ["r1", "r2"],  # running requests first, then the next in line
        ["r1", "r2"],
        ["r3"],
    ]
    finished = [rid for out in outputs + [sched.schedule()] for rid in out.finished_request_ids]
    assert finished == ["r0", "r1", "r2", "r3"]


def test_a_later_short_prompt_does_not_overtake_a_long_one():
    sched = make_scheduler(max_num_batched_tokens=6)
    runner = FakeRunner(BS)
    sched.add_request(make_request("long", 14, max_tokens=1))
    sched.add_request(make_request("short", [99], max_tokens=1))
    outputs = run_until_done(sched, runner)
    assert [scheduled_ids(out) for out in outputs] == [["long"], ["long"], ["long", "short"]]


# -- preemption --------------------------------------------------------------------------------

def tiny_cache_scheduler(**kwargs):
    """8 blocks of 4 tokens: room for two of these requests at their full length, not four."""
    sched = make_scheduler(num_blocks=8, max_num_batched_tokens=16, max_model_len=32, **kwargs)
    requests = [make_request(f"r{i}", [100 * i + j for j in range(1, 7)], max_tokens=10)
                for i in range(4)]
    for request in requests:
        sched.add_request(request)
    return sched, requests


@pytest.mark.parametrize("enable_caching", [True, False])
def test_preemption_under_a_tiny_kv_cache_loses_nothing(enable_caching):
    sched, requests = tiny_cache_scheduler(enable_caching=enable_caching)
    runner = FakeRunner(BS)
    victims = []
    while sched.has_unfinished_requests():
        assert len(victims) < 500
        running_before = [r.request_id for r in sched.running]
        out, _ = step(sched, runner)
        if out.preempted_request_ids:
            # Victims are the latest arrivals among the running requests, latest first.
            assert out.preempted_request_ids == running_before[::-1][:len(out.preempted_request_ids)]
            # Nothing new is admitted in a step that had to preempt.
            assert set(scheduled_ids(out)) <= set(running_before)
        victims.extend(out.preempted_request_ids)

    assert victims and sched.num_preemptions == len(victims)
    for request in requests:
        assert request.output_token_ids == expected_outputs(10)
        assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert sum(r.num_preemptions for r in requests) == len(victims)
    assert sched.kv.num_free_blocks == 8
    assert all(block.ref_cnt == 0 for block in sched.kv.pool.blocks)


def test_victim_goes_back_first_in_line_and_nothing_is_admitted_while_memory_is_short():
    sched = make_scheduler(num_blocks=4, max_num_batched_tokens=5, max_model_len=16)
    runner = FakeRunner(BS)
    a = make_request("a", 4, max_tokens=10)
    b = make_request("b", [50 + i for i in range(12)], max_tokens=2)  # preempted mid-prefill
    c = make_request("c", [90, 91], max_tokens=1)
    for request in (a, b, c):
        sched.add_request(request)
    outputs = run_until_done(sched, runner)

    preempting = [out for out in outputs if out.preempted_request_ids]
    assert preempting and all(out.preempted_request_ids == ["b"] for out in preempting)
    # The budget left over in those steps would fit b again (or c), but nobody is admitted.
    assert all(scheduled_ids(out) == ["a"] for out in preempting)
    # b arrived before c, so it is recomputed before c gets its first step.
    first_step = {rid: min(i for i, out in enumerate(outputs) if rid in scheduled_ids(out))
                  for rid in "abc"}
    b_prefilled = min(i for i, out in enumerate(outputs)
                      for item in out.scheduled if item.request_id == "b" and item.sample)
    assert first_step["c"] >= b_prefilled
    assert (a.output_token_ids, b.output_token_ids, c.output_token_ids) == (
        expected_outputs(10), expected_outputs(2), expected_outputs(1))
    assert sched.kv.num_free_blocks == 4


def test_preempted_request_is_recomputed_from_the_start():
    sched, requests = tiny_cache_scheduler(enable_caching=False)
    runner = FakeRunner(BS)
    while True:
        out, _ = step(sched, runner)
        if out.preempted_request_ids:
            break
    victim = sched.requests[out.preempted_request_ids[0]]
    assert victim.status == RequestStatus.PREEMPTED
    assert victim.num_computed_tokens == 0
    assert sched.kv.block_ids(victim.request_id) == []
    assert sched.waiting[0] is victim  # first in line to come back
    outputs_so_far = list(victim.output_token_ids)
    assert outputs_so_far  # it had generated tokens, which are kept

    while victim.request_id not in scheduled_ids(out):
        out, _ = step(sched, runner)
    [item] = [i for i in out.scheduled if i.request_id == victim.request_id]
    assert item.start_position == 0
    assert item.token_ids == (victim.prompt_token_ids + outputs_so_far)[:len(item.token_ids)]

    run_until_done(sched, runner)
    assert all(r.output_token_ids == expected_outputs(10) for r in requests)
    assert sched.kv.num_free_blocks == 8


def test_preempted_request_reuses_its_own_cached_blocks():
    # 6 blocks, two requests growing to 4 blocks each: the later one is preempted, and the head
    # of its prefix (freed after its tail) is still cached when it comes back.
    sched = make_scheduler(num_blocks=6, max_num_batched_tokens=16, max_model_len=24)
    runner = FakeRunner(BS)
    requests = [make_request(f"r{i}", [100 * i + j for j in range(1, 9)], max_tokens=8)
                for i in range(2)]
    for request in requests:
        sched.add_request(request)
    outputs = run_until_done(sched, runner)

    assert [rid for out in outputs for rid in out.preempted_request_ids] == ["r1"]
    for request in requests:
        # Each chunk continues where the last one ended, except the first one after a
        # preemption, which starts at a cached block boundary at or before that point.
        position, readmitted, readmissions = 0, False, []
        for out in outputs:
            readmitted |= request.request_id in out.preempted_request_ids
            for item in out.scheduled:
                if item.request_id != request.request_id:
                    continue
                if readmitted:
                    readmissions.append((item.start_position, position))
                    readmitted = False
                else:
                    assert item.start_position == position
                position = item.start_position + len(item.token_ids)
        assert position == 8 + 8 - 1  # the last sampled token is never computed
        assert request.output_token_ids == expected_outputs(8)
        assert len(readmissions) == request.num_preemptions
        for start, computed_before in readmissions:
            assert 0 < start <= computed_before and start % BS == 0
    assert requests[1].num_preemptions == 1
    assert sched.kv.num_free_blocks == 6


def test_without_chunked_prefill_the_budget_must_fit_the_longest_request():
    # A request recomputed after preemption (prompt plus output) must fit in one step, or it
    # would wait forever: such a configuration is refused, naming the flag.
    with pytest.raises(ConfigError, match="--max-num-batched-tokens"):
        make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False, max_model_len=20)
    # Left unset, the budget grows to the context length.
    sched = make_scheduler(max_num_batched_tokens=None, enable_chunked_prefill=False,
                           max_model_len=4096)
    assert sched.config.max_num_batched_tokens == 4096


def test_preempted_request_resumes_without_chunked_prefill():
    sched = make_scheduler(num_blocks=5, max_num_batched_tokens=20, enable_chunked_prefill=False,
                           enable_caching=False, max_model_len=20)
    runner = FakeRunner(BS)
    requests = [make_request(f"r{i}", [10 * i + j for j in range(1, 5)], max_tokens=10)
                for i in range(2)]
    for request in requests:
        sched.add_request(request)
    run_until_done(sched, runner, max_steps=200)
    assert sched.num_preemptions > 0
    assert all(r.output_token_ids == expected_outputs(10) for r in requests)


# -- stop conditions ---------------------------------------------------------------------------

EOS = 2


def run_one(request, next_token, **sched_kwargs):
    """Run one request to the end, the runner sampling `next_token(n)` as its n-th token."""
    sched = make_scheduler(**sched_kwargs)
    runner = FakeRunner(BS, next_token=lambda item: next_token(len(item.output_token_ids)))
    sched.add_request(request)
    updates = []
    while sched.has_unfinished_requests():
        assert len(updates) < 100
        updates.extend(step(sched, runner)[1])
    assert [u.finished for u in updates] == [False] * (len(updates) - 1) + [True]
    assert sched.kv.num_free_blocks == sched.kv.pool.num_blocks
    return request


def test_max_tokens_caps_the_length():
    request = run_one(make_request("a", 5, max_tokens=4, eos=EOS), lambda n: 10 + n)
    assert request.output_token_ids == [10, 11, 12, 13]
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert request.stop_reason is None


def test_eos_stops_the_request():
    request = run_one(make_request("a", 5, max_tokens=10, eos=EOS), [10, 11, EOS, 12].__getitem__)
    assert request.output_token_ids == [10, 11, EOS]
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert request.status.finish_reason == "stop"
    assert request.stop_reason is None


def test_ignore_eos_keeps_generating():
    request = run_one(make_request("a", 5, max_tokens=4, eos=EOS, ignore_eos=True),
                      lambda n: EOS)
    assert request.output_token_ids == [EOS] * 4
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_stop_token_id_stops_and_is_reported(ignore_eos):
    request = run_one(make_request("a", 5, max_tokens=10, eos=EOS, stop_token_ids=[42, 43],
                                   ignore_eos=ignore_eos), [10, 43, 11].__getitem__)
    assert request.output_token_ids == [10, 43]
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert request.stop_reason == 43


@pytest.mark.parametrize("stop", ["eos", "stop_token"])
def test_min_tokens_delays_the_stop(stop):
    token = EOS if stop == "eos" else 42
    request = run_one(make_request("a", 5, max_tokens=10, min_tokens=3, eos=EOS,
                                   stop_token_ids=[42]), lambda n: token)
    assert request.output_token_ids == [token] * 3
    assert request.status == RequestStatus.FINISHED_STOPPED


@pytest.mark.parametrize("max_tokens", [None, 50])
def test_max_model_len_caps_the_length(max_tokens):
    request = run_one(make_request("a", 5, max_tokens=max_tokens), lambda n: 10 + n,
                      max_model_len=8)
    assert request.output_token_ids == [10, 11, 12]
    assert request.num_tokens == 8
    assert request.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_fixed_token_runner_output():
    # The plainest runner: the same token for everyone who samples.
    sched = make_scheduler()
    sched.add_request(make_request("a", 3, max_tokens=2, eos=EOS))
    sched.add_request(make_request("b", 3, max_tokens=2, eos=9))
    finished = {}
    while sched.has_unfinished_requests():
        out = sched.schedule()
        for update in sched.update_from_output(out, fake_runner_output(out, token_id=9)):
            if update.finished:
                finished[update.request.request_id] = (update.request.output_token_ids,
                                                       update.request.status)
    assert finished == {"a": ([9, 9], RequestStatus.FINISHED_LENGTH_CAPPED),
                        "b": ([9], RequestStatus.FINISHED_STOPPED)}


# -- aborts and request ids --------------------------------------------------------------------

def test_aborting_waiting_and_running_requests_frees_their_blocks():
    sched = make_scheduler(max_num_seqs=2, max_num_batched_tokens=6)
    runner = FakeRunner(BS)
    requests = {rid: make_request(rid, [ord(rid) * 10 + j for j in range(1, 11)], max_tokens=5)
                for rid in "abc"}
    for request in requests.values():
        sched.add_request(request)
    step(sched, runner)  # a: 6 prompt tokens; b, c wait
    out, _ = step(sched, runner)  # a: the rest of its prompt; b: its first 2 tokens
    assert scheduled_ids(out) == ["a", "b"] and sched.num_waiting == 1
    assert sched.kv.num_free_blocks < sched.kv.pool.num_blocks

    sched.finish_requests(["b", "c", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert requests["b"].status == requests["c"].status == RequestStatus.FINISHED_ABORTED
    assert requests["b"].status.finish_reason == "abort"
    assert sched.kv.block_ids("b") == []
    assert sched.num_running == 1 and sched.num_waiting == 0

    out, _ = step(sched, runner)
    assert sorted(out.finished_request_ids) == ["b", "c"]
    assert scheduled_ids(out) == ["a"]

    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)  # twice is harmless
    assert not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.pool.num_blocks
    out = sched.schedule()
    assert out.is_empty and out.finished_request_ids == ["a"]


def test_aborting_a_preempted_request():
    sched, requests = tiny_cache_scheduler(enable_caching=False)
    runner = FakeRunner(BS)
    out, _ = step(sched, runner)
    while not out.preempted_request_ids:
        out, _ = step(sched, runner)
    victim = out.preempted_request_ids[0]
    sched.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
    assert victim not in [r.request_id for r in sched.waiting]

    outputs = run_until_done(sched, runner)
    assert victim in outputs[0].finished_request_ids
    assert all(victim not in scheduled_ids(o) for o in outputs)
    others = [r for r in requests if r.request_id != victim]
    assert all(r.output_token_ids == expected_outputs(10) for r in others)
    assert sched.kv.num_free_blocks == 8


def test_duplicate_request_id_is_rejected():
    sched = make_scheduler()
    sched.add_request(make_request("a", 3, max_tokens=1))
    with pytest.raises(ValueError, match="'a'"):
        sched.add_request(make_request("a", 4))
    assert sched.num_waiting == 1

    step(sched, FakeRunner(BS))
    assert not sched.has_unfinished_requests()
    sched.add_request(make_request("a", 4, max_tokens=1))  # free again once finished
    assert sched.num_waiting == 1


def test_duplicate_id_of_a_running_request_is_rejected():
    sched = make_scheduler()
    sched.add_request(make_request("a", 3, max_tokens=5))
    step(sched, FakeRunner(BS))
    assert sched.num_running == 1
    with pytest.raises(ValueError):
        sched.add_request(make_request("a", 3))
    assert sched.num_running == 1 and sched.num_waiting == 0
