"""Multi-LoRA on the default model, SmolLM2-135M-Instruct from its GGUF: one batch interleaves
the base model and three PEFT adapters (ranks 4, 8 and 16; different target modules; one with
rsLoRA), and every request's greedy tokens equal those of transformers + peft on the same GGUF,
dequantized by transformers, in float32. The same holds with one LoRA slot for three adapters."""
from __future__ import annotations

import copy

import pytest
import torch

from infernetes import LLM, SamplingParams
from infernetes.runtime.default_model import default_gguf_path, default_model_folder
from infernetes.runtime.tokenizer import Tokenizer
from lora_adapters import greedy_tokens, lora_requests, make_peft_adapter

# name -> LoraConfig arguments. With A and B drawn from N(0, ADAPTER_STD), each adapter changes
# the greedy tokens, and the model still writes text (clear winners, no near-ties).
ADAPTERS = {
    "qv": dict(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
    "all-rslora": dict(r=16, lora_alpha=4, use_rslora=True, target_modules="all-linear"),
    "o-mlp": dict(r=4, lora_alpha=8, target_modules=["o_proj", "gate_proj", "up_proj"]),
}
ADAPTER_STD = 0.05
# (adapter or None for the base model, prompt): interleaved, every prompt a different length.
REQUESTS = [
    (None, "The capital of France is"),
    ("qv", "Once upon a time, in a small village by the sea, there lived an old fisherman who"),
    ("all-rslora", "def fibonacci(n):"),
    ("o-mlp", "Name three prime numbers, please:"),
    ("qv", "Water boils at one hundred degrees Celsius at sea level, but on a high mountain it"),
    ("o-mlp", "The three primary colors are red, yellow and"),
    ("all-rslora", "My favourite book is about a detective who lives in London and"),
    (None, "Here is a short poem about the moon, the stars and the quiet night sky over the "
           "mountains, written for a child who cannot fall asleep after a long day:"),
]
MAX_NEW = 8


@pytest.fixture(scope="module")
def hf_base():
    """transformers' SmolLM2 from the GGUF, float32, eager attention."""
    from transformers import AutoModelForCausalLM
    gguf = default_gguf_path()
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32,
                                                attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def workload(hf_base, tmp_path_factory):
    """(adapter folders, names, prompt token ids, expected tokens per request)."""
    tokenizer = Tokenizer(default_model_folder())
    eos = tokenizer.eos_token_id
    names = [name for name, _ in REQUESTS]
    prompts = [tokenizer.encode(text) for _, text in REQUESTS]
    assert max(map(len, prompts)) < 40 and len(set(map(len, prompts))) == len(prompts)
    folders, models = {}, {}
    for seed, (name, args) in enumerate(ADAPTERS.items()):
        folder = tmp_path_factory.mktemp(f"lora-{name}")
        models[name] = make_peft_adapter(copy.deepcopy(hf_base), args, folder, seed=seed,
                                         std=ADAPTER_STD)
        folders[name] = str(folder)
    expected = [greedy_tokens(hf_base if n is None else models[n], p, MAX_NEW, eos)
                for n, p in zip(names, prompts)]
    for name in ADAPTERS:  # `any` stops at the first request the adapter changes
        assert any(greedy_tokens(hf_base, p, MAX_NEW, eos) != e
                   for n, p, e in zip(names, prompts, expected) if n == name), \
            f"adapter {name} does not change the greedy tokens: make its weights larger"
    return folders, names, prompts, expected


@pytest.mark.parametrize("max_loras", [3, 1], ids=["slots-for-all", "one-slot"])
def test_mixed_batch_equals_transformers_plus_peft(workload, max_loras):
    folders, names, prompts, expected = workload
    llm = LLM(dtype="float32", max_model_len=256, kv_cache_memory="64MiB", enable_lora=True,
              max_loras=max_loras, max_lora_rank=16, max_cpu_loras=len(ADAPTERS))
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=MAX_NEW),
                           lora_request=lora_requests(names, folders))
    assert [o.outputs[0].token_ids for o in outputs] == expected
