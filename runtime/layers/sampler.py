"""Sampling for a batch where every row has its own settings.

Order: penalties and min_tokens on the raw logits, then greedy rows take the argmax; random rows
are divided by temperature, cut by top_k, top_p and min_p, and sampled by inverse-CDF draws
(`torch.multinomial`), one uniform number per row, each seeded row from its own generator. (An exponential race over the vocabulary needs a random number per token:
with 49k tokens and 32 rows that cost 20% of a decode step on CPU.)
Reported logprobs are those of the raw model distribution, as vLLM reports them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from infernetes.runtime.engine.scheduler_output import SampledToken
from infernetes.runtime.layers.logprobs import token_logprobs
from infernetes.runtime.layers.penalties import apply_penalties, block_tokens
from infernetes.runtime.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None  # set when params.seed is set


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> list[SampledToken]:
    """logits: [B, V] float32, one row per entry of `rows` (modified in place)."""
    params = [r.params for r in rows]
    device = logits.device
    logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    # Before penalties change the logits in place.
    raw_logits = logits[logprob_rows] if logprob_rows else None

    if any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
           for p in params):
        apply_penalties(
            logits, [r.prompt_token_ids for r in rows], [r.output_token_ids for r in rows],
            torch.tensor([p.repetition_penalty for p in params], device=device),
            torch.tensor([p.presence_penalty for p in params], device=device),
            torch.tensor([p.frequency_penalty for p in params], device=device))
    early = [i for i, r in enumerate(rows) if len(r.output_token_ids) < r.params.min_tokens]
    if early:
        block_tokens(logits, early, [sorted(rows[i].params.eos_token_ids
                                            | set(rows[i].params.stop_token_ids))
                                     for i in early])

    token_ids = logits.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        index = torch.tensor(random_rows, device=device)
        token_ids[index] = _sample_random(logits[index], [rows[i] for i in random_rows])

    token_list = token_ids.tolist()
    out = [SampledToken(token_id, float("nan")) for token_id in token_list]
    if raw_logits is not None:
        reported = token_logprobs(raw_logits, [token_list[i] for i in logprob_rows],
                                  [params[i].logprobs for i in logprob_rows])
        for i, token in zip(logprob_rows, reported):
            out[i] = token
    return out


def _sample_random(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    params = [r.params for r in rows]
    device = logits.device
    logits = logits / torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    best = logits.argmax(dim=-1)  # before the cuts below
    if any(p.top_k for p in params):
        vocab = logits.shape[1]
        k = torch.tensor([min(p.top_k, vocab) if p.top_k else vocab for p in params],
                         device=device)
        kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        # Rounding can make the first token's "mass before it" exceed a tiny top_p: it stays.
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    # Whatever the settings did, each row keeps its most likely token (all -inf would be NaN).
    probs = torch.nan_to_num(probs, nan=0.0)
    empty = probs.sum(dim=-1) <= 0
    if empty.any():
        probs[empty] = torch.nn.functional.one_hot(best[empty], probs.shape[-1]).to(probs.dtype)
    if any(p.min_p > 0 for p in params):
        min_p = torch.tensor([p.min_p for p in params], device=device).unsqueeze(1)
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    tokens = torch.empty(len(rows), dtype=torch.long, device=device)
    unseeded = [i for i, r in enumerate(rows) if r.generator is None]
    if unseeded:
        tokens[unseeded] = torch.multinomial(probs[unseeded], 1).squeeze(1)
    for i, r in enumerate(rows):
        if r.generator is not None:
            tokens[i] = torch.multinomial(probs[i], 1, generator=r.generator)[0]
    return tokens
