"""Logits processors that depend on a request's own tokens: repetition, presence and frequency
penalties (vLLM's definitions) and min_tokens."""
from __future__ import annotations

import torch


def token_counts(token_lists: list[list[int]], vocab_size: int,
                 device: torch.device) -> torch.Tensor:
    """[B, vocab_size] counts of each token id in each row's list."""
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.int32, device=device)
    longest = max((len(t) for t in token_lists), default=0)
    if longest:
        # Pad with an id one past the vocabulary; its column is dropped below.
        ids = torch.tensor([t + [vocab_size] * (longest - len(t)) for t in token_lists],
                           device=device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, prompt_ids: list[list[int]],
                    output_ids: list[list[int]], repetition: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """logits: [B, V] float32, changed in place.

    repetition (per row, 1 = off) divides positive and multiplies negative logits of tokens seen
    in the prompt or output; presence and frequency subtract per output occurrence.
    """
    vocab_size = logits.shape[1]
    output_counts = token_counts(output_ids, vocab_size, logits.device)
    seen = (token_counts(prompt_ids, vocab_size, logits.device) > 0) | (output_counts > 0)
    rep = repetition.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalized, logits))
    logits -= frequency.unsqueeze(1) * output_counts
    logits -= presence.unsqueeze(1) * (output_counts > 0)
    return logits


def block_tokens(logits: torch.Tensor, rows: list[int], token_ids: list[list[int]]) -> None:
    """Forbid token_ids[i] in row rows[i] (min_tokens: no end of sequence yet)."""
    for row, ids in zip(rows, token_ids):
        if ids:
            logits[row, ids] = float("-inf")
