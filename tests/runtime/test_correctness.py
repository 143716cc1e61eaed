"""Greedy outputs equal transformers' token for token, for each architecture, in every batch
situation the scheduler creates: mixed lengths, chunked prefill, prefix hits, preemption; on
the C kernels (fused decode layers included) and on plain torch ops."""
from __future__ import annotations

import random

import pytest

from hf_reference import hf_greedy
from infernetes import LLM, SamplingParams
from infernetes.runtime.models import llama

MAX_NEW = 20
ARCHITECTURES = ["llama", "mistral", "qwen2"]
KERNELS = ["cpu", "torch"]


def _prompts(seed: int, lengths: list[int], prefix: list[int] = ()) -> list[list[int]]:
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(1, 384) for _ in range(n)] for n in lengths]


def _greedy(llm: LLM, prompts: list[list[int]], max_tokens: int = MAX_NEW):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params)


def _llm(folder: str, kernels: str, **kwargs) -> LLM:
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, kernel_backend=kernels,
              **kwargs)
    assert llm.engine.runner.kernels == kernels
    return llm


@pytest.fixture(scope="module")
def reference(tiny_models):
    """Prompts and transformers' outputs, per architecture, computed once."""
    prompts = _prompts(0, [1, 3, 9, 16, 17, 30, 45])
    shared = _prompts(1, [2, 7, 19], prefix=_prompts(2, [37])[0])
    return {name: (prompts, hf_greedy(tiny_models[name], prompts, MAX_NEW),
                   shared, hf_greedy(tiny_models[name], shared, MAX_NEW))
            for name in ARCHITECTURES}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_mixed_lengths_in_one_batch(tiny_models, reference, name, kernels, monkeypatch):
    fused_calls = []
    fused = llama.decoder_layers
    monkeypatch.setattr(llama, "decoder_layers",
                        lambda *args: fused_calls.append(1) or fused(*args))
    prompts, expected, _, _ = reference[name]
    outputs = _greedy(_llm(tiny_models[name], kernels), prompts)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)
    # 7 sequences decode together: on the C kernels, every layer in one call
    assert bool(fused_calls) == (kernels == "cpu")


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("budget", [7, 13])
def test_chunked_prefill_at_odd_boundaries(tiny_models, reference, name, budget, kernels):
    prompts, expected, _, _ = reference[name]
    llm = _llm(tiny_models[name], kernels, max_num_batched_tokens=budget,
               enable_prefix_caching=False)
    assert [o.outputs[0].token_ids for o in _greedy(llm, prompts)] == expected


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_prefix_cache_hits(tiny_models, reference, name, kernels):
    _, _, shared, expected = reference[name]
    llm = _llm(tiny_models[name], kernels, block_size=8)
    first = _greedy(llm, shared[:1])
    rest = _greedy(llm, shared[1:])
    assert [o.outputs[0].token_ids for o in first + rest] == expected
    # The 37-token shared prefix fills four 8-token blocks.
    assert all(o.num_cached_tokens == 32 for o in rest)
    stats = llm.engine.kv_cache_manager.prefix_cache_stats
    assert stats.hits >= 64 and stats.queries > stats.hits


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forced_preemption_with_tiny_kv_cache(tiny_models, reference, name, kernels):
    prompts, expected, _, _ = reference[name]
    # 20 blocks of 4 tokens: enough for the longest request alone (65 tokens), not for all.
    llm = _llm(tiny_models[name], kernels, block_size=4, num_gpu_blocks_override=20,
               max_model_len=80)
    outputs = _greedy(llm, prompts)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.kv_cache_manager.num_free_blocks == 20


@pytest.mark.parametrize("kernels", KERNELS)
def test_same_prompt_twice_in_one_batch_shares_blocks(tiny_models, reference, kernels):
    prompts, expected, _, _ = reference["llama"]
    llm = _llm(tiny_models["llama"], kernels, block_size=4)
    outputs = _greedy(llm, [prompts[-1], prompts[-1]])
    assert [o.outputs[0].token_ids for o in outputs] == [expected[-1]] * 2
