"""Multi-LoRA in the engine: one batch mixes the base model and several adapters (different
ranks and target modules), each request's greedy tokens equal transformers + peft's; with
fewer slots than adapters, requests wait for a slot and all complete correctly."""
from __future__ import annotations

import random

import pytest
import torch

from infernetes import LLM, LoRARequest, SamplingParams
from lora_adapters import greedy_tokens, lora_requests, make_peft_adapter

# name -> LoraConfig arguments (ranks and target modules differ)
ADAPTERS = {
    "sql": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
    "chat": dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
    "tiny": dict(r=2, lora_alpha=2, target_modules=["o_proj", "gate_proj", "up_proj"]),
}
MAX_NEW = 10


@pytest.fixture(scope="module")
def peft_adapters(tiny_models, tmp_path_factory):
    """name -> (folder, peft model for the reference), on the tiny Llama."""
    from transformers import AutoModelForCausalLM
    made = {}
    for seed, (name, args) in enumerate(ADAPTERS.items()):
        base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                    attn_implementation="eager")
        folder = tmp_path_factory.mktemp(f"lora-{name}")
        # std 0.3: strong enough to change the greedy tokens
        made[name] = (str(folder), make_peft_adapter(base, args, folder, seed=100 + seed,
                                                     std=0.3))
    return made


def _workload(tiny_models, peft_adapters):
    """(prompt, adapter name or None) pairs, interleaved, and their reference outputs."""
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                attn_implementation="eager").eval()
    rng = random.Random(11)
    names = [None, "sql", "chat", "tiny", "sql", None, "chat", "tiny"]
    prompts = [[rng.randrange(1, 384) for _ in range(rng.randrange(3, 30))] for _ in names]
    expected = [greedy_tokens(base if n is None else peft_adapters[n][1], p, MAX_NEW)
                for p, n in zip(prompts, names)]
    return names, prompts, expected


@pytest.mark.parametrize("max_loras", [3, 1], ids=["slots-for-all", "one-slot"])
def test_mixed_batch_equals_transformers_plus_peft(tiny_models, peft_adapters, max_loras):
    names, prompts, expected = _workload(tiny_models, peft_adapters)
    requests = lora_requests(names, {n: folder for n, (folder, _) in peft_adapters.items()})
    llm = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True,
              enable_lora=True, max_loras=max_loras, max_lora_rank=8, max_cpu_loras=3)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True),
                           lora_request=requests)
    got = [o.outputs[0].token_ids for o in outputs]
    assert got == expected
    base_only = [e for e, n in zip(expected, names) if n is None]
    assert any(e != base_only[0] for e in expected), "the adapters changed nothing"


def test_adapter_errors_fail_their_request_only(tiny_models, peft_adapters, tmp_path):
    llm = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True,
              enable_lora=True, max_lora_rank=4)
    params = SamplingParams(temperature=0, max_tokens=2)
    prompt = [{"prompt_token_ids": [1, 2, 3]}]
    with pytest.raises(ValueError, match="rank 8 exceeds --max-lora-rank 4"):
        llm.generate(prompt, params, LoRARequest("sql", 1, peft_adapters["sql"][0]))
    with pytest.raises(ValueError, match="adapter_config.json"):
        llm.generate(prompt, params, LoRARequest("missing", 2, str(tmp_path / "nothing")))
    assert len(llm.generate(prompt, params)[0].outputs[0].token_ids) == 2  # still serving
    plain = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        plain.generate(prompt, params, LoRARequest("tiny", 3, peft_adapters["tiny"][0]))
