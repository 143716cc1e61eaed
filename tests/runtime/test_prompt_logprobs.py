"""Prompt logprobs equal transformers' log-softmax over the prompt, whatever the chunking, and a
prefix-cache hit or a preemption neither drops nor repeats a position."""
from __future__ import annotations

import random

import pytest
import torch

from infernetes import LLM, SamplingParams

NUM_TOP = 3


def _reference(folder: str, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, vocab]: row j scores prompt token j + 1."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="eager")
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def _check(output, prompt: list[int], expected: torch.Tensor) -> None:
    positions = output.prompt_logprobs
    assert len(positions) == len(prompt) and positions[0] is None
    for j, position in enumerate(positions[1:]):
        token = prompt[j + 1]
        row = expected[j]
        assert position[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert position[token].rank == int((row > row[token]).sum()) + 1
        top = row.topk(NUM_TOP).indices.tolist()
        ranked = sorted((t for t in position if position[t].rank <= NUM_TOP),
                        key=lambda t: position[t].rank)
        assert set(ranked) >= set(top[:2])  # near-ties may swap the third


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    rng = random.Random(7)
    return [rng.randrange(1, 384) for _ in range(45)]


@pytest.mark.parametrize("budget", [8, 13, 2048])
def test_prompt_logprobs_match_transformers_across_chunk_sizes(tiny_models, prompt, budget):
    folder = tiny_models["llama"]
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, max_num_batched_tokens=budget,
              enable_chunked_prefill=True, max_num_seqs=4)
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=NUM_TOP)
    [output] = llm.generate([{"prompt_token_ids": prompt}], params)
    _check(output, prompt, _reference(folder, prompt))


def test_prompt_logprobs_skip_the_prefix_cache_but_other_requests_still_hit(tiny_models,
                                                                            prompt):
    folder = tiny_models["qwen2"]
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, block_size=8)
    plain = SamplingParams(temperature=0, max_tokens=2)
    llm.generate([{"prompt_token_ids": prompt}], plain)
    [scored] = llm.generate([{"prompt_token_ids": prompt}],
                            SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=0))
    assert scored.num_cached_tokens == 0
    _check_chosen(scored, prompt, _reference(folder, prompt))
    # prompt_logprobs=0: only the prompt's own token at each position.
    assert all(len(p) == 1 for p in scored.prompt_logprobs[1:])
    [cached] = llm.generate([{"prompt_token_ids": prompt}], plain)
    assert cached.num_cached_tokens >= 40 and cached.prompt_logprobs is None


def test_preemption_during_prefill_scores_each_position_once(tiny_models, prompt):
    folder = tiny_models["mistral"]
    # 16 blocks of 4 tokens: two 45-token prompts cannot both be resident, so one is preempted.
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, block_size=4,
              num_gpu_blocks_override=16, max_model_len=64, max_num_batched_tokens=16,
              enable_chunked_prefill=True)
    other = list(reversed(prompt))
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=1)
    outputs = llm.generate([{"prompt_token_ids": p} for p in (prompt, other)], params)
    assert llm.engine.scheduler.num_preemptions > 0
    for output, p in zip(outputs, (prompt, other)):
        _check_chosen(output, p, _reference(folder, p))


def _check_chosen(output, prompt: list[int], expected: torch.Tensor) -> None:
    got = [output.prompt_logprobs[j + 1][prompt[j + 1]].logprob for j in range(len(prompt) - 1)]
    want = [expected[j, prompt[j + 1]].item() for j in range(len(prompt) - 1)]
    assert got == pytest.approx(want, abs=1e-4)


def test_prompt_logprobs_bounds():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
