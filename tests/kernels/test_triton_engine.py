"""The engine on the Triton kernels (attention, KV store, RMSNorm, rotary, SiLU-and-mul): the
same greedy tokens as transformers, through chunked prefill, prefix-cache hits and decode, for
each architecture. On CPU the kernels run in Triton's interpreter; on a GPU, natively."""
from __future__ import annotations

import random

import pytest
import torch

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


def test_lora_on_triton_kernels_equals_transformers_plus_peft(tiny_models, tmp_path):
    """A mixed batch (base, two adapters of different ranks and targets) through the Triton
    LoRA kernels the engine uses on GPUs."""
    from transformers import AutoModelForCausalLM

    from lora_adapters import greedy_tokens, lora_requests, make_peft_adapter

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                    attn_implementation="eager")

    specs = {"wide": dict(r=8, lora_alpha=16, target_modules="all-linear"),
             "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])}
    peft_models = {name: make_peft_adapter(base(), args, tmp_path / name, seed=i, std=0.3)
                   for i, (name, args) in enumerate(specs.items())}
    rng = random.Random(8)
    names = [None, "wide", "qv", "wide"]
    prompts = [[rng.randrange(1, 384) for _ in range(n)] for n in (5, 12, 3, 20)]
    reference = base().eval()
    expected = [greedy_tokens(reference if n is None else peft_models[n], p, 4)
                for p, n in zip(prompts, names)]
    llm = LLM(tiny_models["llama"], dtype="float32", device=DEVICE.type, kernel_backend="triton",
              skip_tokenizer_init=True, enable_lora=True, max_loras=2, max_lora_rank=8)
    from infernetes.kernels.triton import lora as triton_lora
    assert llm.engine.runner.lora.apply_lora is triton_lora.apply_lora
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                           lora_request=lora_requests(names, {n: str(tmp_path / n)
                                                              for n in specs}))
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert expected[1] != greedy_tokens(reference, prompts[1], 4)  # the adapter matters
