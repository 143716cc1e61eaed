"""Decode batches through CUDA graphs: one graph per batch size in `capture_sizes`, replayed
with the batch padded up to the next captured size.

A decode step of a small model is dominated by kernel launches; a graph replays the whole
forward pass as one launch. Everything a graph reads lives in static buffers sized for the
largest batch: token ids, positions, slot mapping (padding rows have slot -1, which the KV
store skips), int32 block tables as wide as the longest context, and key counts (padding rows
count one key of block 0: they compute garbage that nobody reads). The KV cache and the
rotary table are fixed tensors already. Sampling runs outside the graph.

With LoRA enabled, every graph includes the LoRA kernels of every projection, reading the
adapter slot weights (fixed tensors, refilled in place when adapters swap) and a static buffer
of per-token slots: -1 for base-model tokens and padding rows, whose outputs the kernels leave
untouched. A batch without adapters replays the same graphs with all slots -1.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING

import torch

from infernetes.runtime.layers.attention import AttentionMetadata, TritonAttentionMetadata

if TYPE_CHECKING:
    from infernetes.runtime.lora.manager import LoRAManager

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int, largest: int = 256) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to min(max_num_seqs, largest)."""
    top = max(1, min(max_num_seqs, largest))
    sizes = [s for s in (1, 2, 4) if s <= top] + list(range(8, top + 1, 8))
    if sizes[-1] != top:
        sizes.append(top)
    return sizes


def padded_size(num_seqs: int, sizes: list[int]) -> int | None:
    """The captured size a batch of `num_seqs` runs as, or None when it is too large."""
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, device: torch.device, max_num_seqs: int,
                 max_blocks_per_seq: int, lora: LoRAManager | None = None):
        self.model = model
        self.lora = lora
        self.sizes = capture_sizes(max_num_seqs)
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32,
                                        device=device)
        self.seq_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self.token_slots = torch.full((largest,), -1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _metadata(self, size: int) -> AttentionMetadata:
        slots = self.slot_mapping[:size]
        meta = AttentionMetadata(slots, slots, size)
        meta.triton = TritonAttentionMetadata(self.block_tables[:size], self.seq_lens[:size],
                                              None, None, None)
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest size first, all graphs in one memory pool."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            meta = self._metadata(size)
            args = (self.input_ids[:size], self.positions[:size], meta)
            if self.lora is not None:  # the LoRA kernels read this buffer at every replay
                self.lora.token_slots = self.token_slots[:size]
            self.model(*args)  # warm-up: lazy initialisation and Triton compilation
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.model(*args)
            self.graphs[size] = graph
        if self.lora is not None:
            self.lora.token_slots = None
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batches of %s sequences in %.1f s",
                    ",".join(map(str, self.sizes)), time.perf_counter() - started)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor | None:
        """The hidden states of a decode-only batch, or None when it has no graph (too large,
        or a block table wider than the buffers)."""
        num_seqs = input_ids.shape[0]
        size = padded_size(num_seqs, self.sizes)
        tables = meta.triton.decode_block_tables
        if size is None or size not in self.graphs or tables.shape[1] > self.block_tables.shape[1]:
            return None
        self.input_ids[:num_seqs].copy_(input_ids)
        self.positions[:num_seqs].copy_(positions)
        self.slot_mapping[:num_seqs].copy_(meta.slot_mapping)
        self.slot_mapping[num_seqs:size].fill_(-1)
        self.block_tables[:num_seqs, :tables.shape[1]].copy_(tables)
        self.seq_lens[:num_seqs].copy_(meta.triton.decode_seq_lens)
        self.seq_lens[num_seqs:size].fill_(1)
        if self.lora is not None:
            if self.lora.token_slots is None:  # no adapter in this batch
                self.token_slots[:size].fill_(-1)
            else:
                self.token_slots[:num_seqs].copy_(self.lora.token_slots)
                self.token_slots[num_seqs:size].fill_(-1)
        self.graphs[size].replay()
        return self.outputs[size][:num_seqs]
