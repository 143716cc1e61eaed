"""On a GPU: the engine (Triton kernels, with and without CUDA graphs) gives transformers'
greedy tokens for random-weight models of each architecture, on the same GPU."""
from __future__ import annotations

import random

import pytest
import torch

from infernetes import LLM, SamplingParams

ARCHITECTURES = ["llama", "mistral", "qwen2"]


def _hf_greedy_on_gpu(folder: str, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="eager").cuda()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            generated = model.generate(ids, attention_mask=torch.ones_like(ids),
                                       do_sample=False, max_new_tokens=max_new, pad_token_id=0)
            out.append(generated[0, len(prompt):].tolist())
    return out


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda-graphs", "eager"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_equals_transformers_on_the_gpu(tiny_models, name, enforce_eager):
    rng = random.Random(5)
    prompts = [[rng.randrange(1, 384) for _ in range(n)] for n in (1, 5, 17, 40, 63)]
    expected = _hf_greedy_on_gpu(tiny_models[name], prompts, 16)
    llm = LLM(tiny_models[name], dtype="float32", device="cuda", skip_tokenizer_init=True,
              enforce_eager=enforce_eager, max_num_seqs=8, kv_cache_memory="64MiB")
    assert llm.engine.runner.use_triton
    assert (llm.engine.runner.decode_graphs is None) == enforce_eager
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outputs] == expected
