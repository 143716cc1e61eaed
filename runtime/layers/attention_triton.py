"""The attention layer on the Triton kernels: the KV store, one launch for every decode token
and one for every prefill chunk (variable length, over the paged cache)."""
from __future__ import annotations

import torch

from infernetes.kernels.triton.decode_attention import paged_decode_attention
from infernetes.kernels.triton.kv_store import store_kv_cache
from infernetes.kernels.triton.prefill_attention import paged_prefill_attention


def triton_attention(layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     meta) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim];
    `layer`: the Attention module (its cache, scale and window); `meta`: AttentionMetadata
    with its `triton` part set."""
    key_cache, value_cache = layer.kv_cache
    store_kv_cache(k, v, key_cache, value_cache, meta.slot_mapping)
    varlen = meta.triton
    out = torch.empty_like(q)
    num_decode = meta.num_decode_tokens
    if num_decode:
        paged_decode_attention(q[:num_decode], key_cache, value_cache,
                               varlen.decode_block_tables, varlen.decode_seq_lens, layer.scale,
                               sliding_window=layer.sliding_window, out=out[:num_decode])
    if varlen.prefill_block_tables is not None:
        paged_prefill_attention(q[num_decode:], key_cache, value_cache,
                                varlen.prefill_block_tables, varlen.prefill_query_start_loc,
                                varlen.prefill_context_lens, varlen.prefill_max_query_len,
                                layer.scale, sliding_window=layer.sliding_window,
                                out=out[num_decode:])
    return out
