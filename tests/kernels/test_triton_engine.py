"""The engine on the Triton kernels (attention, KV store, RMSNorm, rotary, SiLU-and-mul): the
same greedy tokens as transformers, through chunked prefill, prefix-cache hits and decode, for
each architecture. On CPU the kernels run in Triton's interpreter; on a GPU, natively."""
from __future__ import annotations

import random

import pytest

from hf_reference import hf_greedy
from infernetes import LLM, SamplingParams
from kernel_testing import DEVICE

ARCHITECTURES = ["llama", "mistral", "qwen2"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_equals_transformers_on_triton_kernels(tiny_models, name):
    rng = random.Random(3)
    shared = [rng.randrange(1, 384) for _ in range(20)]
    prompts = [[rng.randrange(1, 384) for _ in range(n)] for n in (1, 9, 30)]
    prompts += [shared + [rng.randrange(1, 384) for _ in range(n)] for n in (3, 11)]
    expected = hf_greedy(tiny_models[name], prompts, 8)
    # A 16-token budget splits the longer prompts into chunks; 8-token blocks let the two
    # prompts with a shared prefix hit the prefix cache.
    llm = LLM(tiny_models[name], dtype="float32", device=DEVICE.type, kernel_backend="triton",
              skip_tokenizer_init=True, block_size=8, max_num_batched_tokens=16,
              enable_chunked_prefill=True)
    assert llm.engine.runner.use_triton
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = llm.generate([{"prompt_token_ids": p} for p in prompts[:4]], params)
    last = llm.generate([{"prompt_token_ids": prompts[4]}], params)
    assert [o.outputs[0].token_ids for o in first + last] == expected
    assert last[0].num_cached_tokens >= 16
