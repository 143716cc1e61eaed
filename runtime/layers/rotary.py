"""Rotary position embedding (the GPT-NeoX / Hugging Face half-rotation layout), with the
Llama 3 and linear frequency scalings."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from infernetes.runtime.model_config import RopeConfig


def _inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, rope: RopeConfig):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = _inverse_frequencies(head_dim, rope)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        # cos_sin: [max_position, head_dim] = cos | sin halves.
        self.register_buffer("cos_sin", torch.cat([freqs.cos(), freqs.sin()], dim=-1),
                             persistent=False)
        self.kernels = "torch"  # set by the model runner (kernel_backend.py)

    def for_positions(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeAtPositions:
        """What rotates this step's queries and keys, computed once, shared by every layer."""
        if self.kernels == "triton":
            return RopeAtPositions(positions=positions, cos_sin=self.cos_sin)
        cos, sin = self.cos_sin_at(positions, dtype)
        return RopeAtPositions(cos=cos, sin=sin)

    def cos_sin_at(self, positions: torch.Tensor, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [num_tokens] -> (cos, sin), each [num_tokens, 1, head_dim] in `dtype`,
        both halves equal. Computed once per step and shared by every layer."""
        cos, sin = self.cos_sin[positions].unsqueeze(1).to(dtype).chunk(2, dim=-1)
        return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, num_heads, head_dim] (queries and keys may be rotated together).
    x * cos + rotate_half(x) * sin, in x's dtype, as the Hugging Face models compute it."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass(slots=True)
class RopeAtPositions:
    """The rotation of one step: precomputed cos/sin (torch), or the positions and the cache
    the Triton kernel reads."""
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # [num_tokens] int64
    cos_sin: torch.Tensor | None = None  # [max_position, head_dim] float32

    def rotate(self, qk: torch.Tensor, num_q_heads: int) -> torch.Tensor:
        """qk: [num_tokens, num_q_heads + num_kv_heads, head_dim], queries then keys."""
        if self.positions is None:
            return apply_rotary(qk, self.cos, self.sin)
        from infernetes.kernels.triton.rotary import apply_rotary as rotary_triton
        rotary_triton(qk[:, :num_q_heads], qk[:, num_q_heads:], self.positions, self.cos_sin)
        return qk
