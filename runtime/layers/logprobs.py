"""Log-probabilities of chosen tokens, their ranks and the most likely alternatives.

Shared by the sampler (the token it just sampled) and prompt logprobs (each prompt token, as
predicted by the position before it). Values are those of the raw model distribution.
"""
from __future__ import annotations

import torch

from infernetes.runtime.engine.scheduler_output import SampledToken


def token_logprobs(logits: torch.Tensor, token_ids: list[int],
                   num_top: list[int]) -> list[SampledToken]:
    """logits: [N, V] float32; for row i, the logprob and rank of token_ids[i] and the
    num_top[i] most likely tokens (best first)."""
    logprobs = torch.log_softmax(logits, dim=-1)
    ids = torch.tensor(token_ids, dtype=torch.long, device=logits.device).unsqueeze(1)
    chosen = logprobs.gather(1, ids)
    ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()
    chosen_list = chosen.squeeze(1).tolist()
    most = max(num_top, default=0)
    top_values = top_ids = None
    if most > 0:
        values, indices = logprobs.topk(most, dim=-1)
        top_values, top_ids = values.tolist(), indices.tolist()
    out = []
    for i, (token_id, k) in enumerate(zip(token_ids, num_top)):
        top = list(zip(top_ids[i][:k], top_values[i][:k])) if k > 0 else None
        out.append(SampledToken(token_id, chosen_list[i], top, ranks[i]))
    return out
