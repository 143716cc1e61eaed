"""Many requests arriving, finishing and being aborted at random, on a KV cache small enough to
force preemption: nothing is lost, greedy outputs do not depend on the company a request keeps,
and every block returns to the pool."""
from __future__ import annotations

import random

from infernetes import LLM, SamplingParams
from infernetes.runtime.sampling_params import RequestOutputKind


def test_random_traffic_with_aborts_and_preemption(tiny_models):
    llm = LLM(tiny_models["qwen2"], dtype="float32", skip_tokenizer_init=True, block_size=4,
              num_gpu_blocks_override=40, max_model_len=96, max_num_batched_tokens=23,
              max_num_seqs=6)
    engine = llm.engine
    rng = random.Random(7)
    prompts, params, finals, aborted = {}, {}, {}, set()
    streamed: dict[tuple[str, int], list[int]] = {}  # delta outputs, joined per sample
    next_id = 0
    for step in range(400):
        if next_id < 40 and rng.random() < 0.4:
            request_id = f"r{next_id}"
            next_id += 1
            prompt = [rng.randrange(1, 384) for _ in range(rng.randrange(1, 40))]
            greedy = rng.random() < 0.6
            p = SamplingParams(
                temperature=0.0 if greedy else 0.9, seed=None if greedy else next_id,
                n=1 if greedy else rng.choice([1, 2]), max_tokens=rng.randrange(1, 30),
                ignore_eos=True, logprobs=rng.choice([None, 2]),
                output_kind=RequestOutputKind.DELTA if rng.random() < 0.5
                else RequestOutputKind.CUMULATIVE)
            engine.add_request(request_id, prompt, p)
            prompts[request_id], params[request_id] = prompt, p
        if step % 7 == 3 and engine.has_unfinished_requests() and rng.random() < 0.5:
            running = [r for r in prompts if r not in finals and r not in aborted]
            if running:
                victim = rng.choice(running)
                engine.abort_request(victim)
                aborted.add(victim)
        for out in engine.step():
            for c in out.outputs:
                streamed.setdefault((out.request_id, c.index), []).extend(c.token_ids)
            if out.finished:
                finals[out.request_id] = out
        if next_id >= 40 and not engine.has_unfinished_requests():
            break
    assert not engine.has_unfinished_requests()
    assert set(finals) | aborted == set(prompts)
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv_cache_manager.num_free_blocks == 40
    assert not engine.output_processor.parents and not engine.output_processor.sequences

    # Greedy, cumulative requests: the same tokens as the request alone, and the right length.
    for request_id, out in finals.items():
        p = params[request_id]
        if p.output_kind is RequestOutputKind.CUMULATIVE:
            assert len(out.outputs) == p.n
            assert all(len(c.token_ids) == p.max_tokens for c in out.outputs)
        else:  # deltas add up to whole samples
            assert all(len(streamed[request_id, i]) == p.max_tokens for i in range(p.n))
    checked = [r for r, out in finals.items() if params[r].greedy
               and params[r].output_kind is RequestOutputKind.CUMULATIVE]
    assert checked
    alone = llm.generate([{"prompt_token_ids": prompts[r]} for r in checked],
                         [SamplingParams(temperature=0, max_tokens=params[r].max_tokens,
                                         ignore_eos=True) for r in checked])
    for request_id, reference in zip(checked, alone):
        assert finals[request_id].outputs[0].token_ids == reference.outputs[0].token_ids
