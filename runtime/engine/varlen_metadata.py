"""The batch as the Triton kernels read it: int32 block tables and lengths (pure)."""
from __future__ import annotations

import torch

from infernetes.runtime.layers.attention import TritonAttentionMetadata


def triton_metadata(decode_tables: list[list[int]], decode_lens: list[int],
                    prefill_tables: list[list[int]], prefill_contexts: list[int],
                    prefill_lens: list[int], device: torch.device) -> TritonAttentionMetadata:
    """decode_tables/decode_lens: per decode token, its block table and key count;
    prefill_*: per chunk, the blocks covering it, the tokens cached before it, its length."""
    meta = TritonAttentionMetadata(None, None, None, None, None)
    if decode_tables:
        meta.decode_block_tables = _padded(decode_tables, device)
        meta.decode_seq_lens = torch.tensor(decode_lens, dtype=torch.int32, device=device)
    if prefill_tables:
        meta.prefill_block_tables = _padded(prefill_tables, device)
        starts = [0]
        for length in prefill_lens:
            starts.append(starts[-1] + length)
        meta.prefill_query_start_loc = torch.tensor(starts, dtype=torch.int32, device=device)
        meta.prefill_context_lens = torch.tensor(prefill_contexts, dtype=torch.int32,
                                                 device=device)
        meta.prefill_max_query_len = max(prefill_lens)
    return meta


def _padded(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    """[len(tables), longest] int32; padding entries are 0 and are never read (lengths)."""
    width = max(len(t) for t in tables)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32,
                        device=device)
