"""On a GPU: multi-LoRA through the Triton kernels, with decode batches replayed from CUDA
graphs (the adapters' slots read from the graphs' static buffer) and eagerly: a mixed batch of
base and adapter requests gives transformers + peft's greedy tokens on the same GPU."""
from __future__ import annotations

import random

import pytest
import torch

from infernetes import LLM, SamplingParams
from lora_adapters import lora_requests, make_peft_adapter

ADAPTERS = {"wide": dict(r=16, lora_alpha=32, target_modules="all-linear"),
            "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])}
MAX_NEW = 12


def _base(folder: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="eager")


def _greedy_on_gpu(model, prompt: list[int]) -> list[int]:
    model = model.cuda()
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda-graphs", "eager"])
def test_mixed_lora_batch_equals_peft_on_the_gpu(tiny_models, tmp_path, enforce_eager):
    folder = tiny_models["llama"]
    models = {name: make_peft_adapter(_base(folder), args, tmp_path / name, seed=i, std=0.3)
              for i, (name, args) in enumerate(ADAPTERS.items())}
    models[None] = _base(folder).eval()
    rng = random.Random(6)
    names = [None, "wide", "qv", "wide", None, "qv"]
    prompts = [[rng.randrange(1, 384) for _ in range(rng.randrange(2, 40))] for _ in names]
    expected = [_greedy_on_gpu(models[n], p) for p, n in zip(prompts, names)]
    llm = LLM(folder, dtype="float32", device="cuda", skip_tokenizer_init=True,
              enforce_eager=enforce_eager, max_num_seqs=8, kv_cache_memory="64MiB",
              enable_lora=True, max_loras=2, max_lora_rank=16)
    assert (llm.engine.runner.decode_graphs is None) == enforce_eager
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True),
                           lora_request=lora_requests(names, {n: str(tmp_path / n)
                                                              for n in ADAPTERS}))
    assert [o.outputs[0].token_ids for o in outputs] == expected
