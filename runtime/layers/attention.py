"""The attention layer and the batch layout every attention backend reads.

The model runner orders a batch's tokens as: all decode tokens (one per sequence) first, then
each prefill chunk in turn. `AttentionMetadata` describes that layout once per step; every
layer reads it and its own KV cache. Backends: torch here, our C
kernels for decoding on CPU, Triton on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from infernetes.kernels.paged_attention import (
    gather_sequence_kv, paged_decode_attention, prefill_attention, store_kv_cache)


@dataclass(slots=True)
class PrefillChunk:
    token_start: int  # index of the chunk's first token in the batch
    num_tokens: int
    context_len: int  # tokens of this sequence already in the cache
    # [num_blocks covering context_len + num_tokens] (int64); None on the Triton path, whose
    # kernels read TritonAttentionMetadata.prefill_block_tables instead.
    block_table: torch.Tensor | None


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] (int64): where each token's K/V is written
    # The same slots as cache rows (kernels.kv_store_index), for the torch path (None on the
    # others, whose KV stores read slot_mapping itself).
    kv_store_index: torch.Tensor | None
    num_decode_tokens: int
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] (int64)
    # torch path: [num_decodes, max_blocks * block_size] additive float32
    decode_key_mask: torch.Tensor | None = None
    decode_seq_lens: torch.Tensor | None = None  # C path: [num_decodes] int64, keys incl. new
    prefills: list[PrefillChunk] = field(default_factory=list)
    # All decodes, no adapters, one rank: every layer in one call of the C kernels
    # (kernels/cpu/decoder_layer.py), on the "cpu" backend.
    fused_decode: bool = False
    # The same batch for the Triton kernels (set when the runner uses them; varlen_metadata.py).
    triton: TritonAttentionMetadata | None = None


@dataclass(slots=True)
class TritonAttentionMetadata:
    """int32 block tables and lengths, one launch for all decodes and one for all prefills."""
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int32
    decode_seq_lens: torch.Tensor | None  # [num_decodes] int32: keys incl. the new token
    prefill_block_tables: torch.Tensor | None  # [num_prefills, max_blocks] int32
    prefill_query_start_loc: torch.Tensor | None  # [num_prefills + 1] int32, from 0
    prefill_context_lens: torch.Tensor | None  # [num_prefills] int32: cached before the chunk
    prefill_max_query_len: int = 0


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 sliding_window: int | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        # Bound by the model runner once the cache is allocated: (key_cache, value_cache).
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.kernels = "torch"  # set by the model runner (kernel_backend.py)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]."""
        if self.kernels == "triton":
            from infernetes.runtime.layers.attention_triton import triton_attention
            return triton_attention(self, q, k, v, meta)
        key_cache, value_cache = self.kv_cache
        num_decode = meta.num_decode_tokens
        if self.kernels == "cpu":
            from infernetes.kernels.cpu.decode_attention import paged_decode_attention as decode
            from infernetes.kernels.cpu.kv_store import store_kv_cache as store
            store(k, v, key_cache, value_cache, meta.slot_mapping)
            if not num_decode:
                return self._prefill_attention(q, k, v, meta, torch.empty_like(q))
            decoded = decode(q[:num_decode], key_cache, value_cache, meta.decode_block_tables,
                             meta.decode_seq_lens, self.scale, self.sliding_window)
        else:
            store_kv_cache(k, v, key_cache, value_cache, meta.kv_store_index)
            if not num_decode:
                return self._prefill_attention(q, k, v, meta, torch.empty_like(q))
            decoded = paged_decode_attention(q[:num_decode], key_cache, value_cache,
                                             meta.decode_block_tables, meta.decode_key_mask,
                                             self.scale)
        if not meta.prefills:
            return decoded
        out = torch.empty_like(q)
        out[:num_decode] = decoded
        return self._prefill_attention(q, k, v, meta, out)

    def _prefill_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           meta: AttentionMetadata, out: torch.Tensor) -> torch.Tensor:
        """Each prefill chunk's rows of `out`, in torch (the CPU paths share it)."""
        key_cache, value_cache = self.kv_cache
        for chunk in meta.prefills:
            end = chunk.token_start + chunk.num_tokens
            if chunk.context_len == 0:
                keys = k[chunk.token_start:end].transpose(0, 1)
                values = v[chunk.token_start:end].transpose(0, 1)
            else:
                num_keys = chunk.context_len + chunk.num_tokens
                keys = gather_sequence_kv(key_cache, chunk.block_table, num_keys)
                values = gather_sequence_kv(value_cache, chunk.block_table, num_keys)
            out[chunk.token_start:end] = prefill_attention(
                q[chunk.token_start:end], keys, values, chunk.context_len, self.scale,
                self.sliding_window)
        return out
