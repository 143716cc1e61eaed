"""Turns a `SchedulerOutput` into tensors, runs the model over the paged KV cache, samples.

The batch layout the attention backends expect: decode tokens (one per sequence, with context)
first, then every prefill chunk. Decode tokens are ordered by adapter, so that each adapter's
tokens are contiguous rows (a prefill chunk is already): the LoRA kernels then take views, not
gathers. Logits are computed only for rows that sample.
"""
from __future__ import annotations

import logging
import math
import mmap
from pathlib import Path

import torch

from infernetes.kernels.paged_attention import decode_key_mask, kv_store_index
from infernetes.runtime.engine.scheduler_output import (
    ModelRunnerOutput, SampledToken, ScheduledRequest, SchedulerOutput)
from infernetes.runtime.engine.cuda_graphs import DecodeGraphs
from infernetes.runtime.engine.kernel_backend import resolve_kernel_backend
from infernetes.runtime.engine.weight_arena import place_in_huge_pages
from infernetes.runtime.engine.varlen_metadata import triton_metadata
from infernetes.runtime.layers.attention import AttentionMetadata, PrefillChunk
from infernetes.runtime.layers.logprobs import token_logprobs
from infernetes.runtime.layers.sampler import SamplingRow, sample
from infernetes.runtime.config import LoRAConfig
from infernetes.runtime.loader import initialize_dummy_weights, load_weights
from infernetes.runtime.lora.manager import LoRAManager
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.models import model_class
from infernetes.runtime.parallel.state import get_tp_group
from infernetes.runtime.request import LoRARequest

logger = logging.getLogger(__name__)

_PROMPT_LOGPROBS_SLICE = 512  # positions whose [vocab] logits are held at once


class ModelRunner:
    def __init__(self, arch: ModelArchConfig, folder: Path, dtype: torch.dtype,
                 device: torch.device, max_model_len: int, block_size: int,
                 load_format: str = "auto", seed: int = 0, kernel_backend: str = "auto",
                 lora: LoRAConfig | None = None):
        self.arch = arch
        self.dtype = dtype
        self.device = device
        self.block_size = block_size
        self.max_model_len = max_model_len
        with torch.device(device):
            self.model = model_class(arch)(arch, dtype, max_model_len)
        # On CPU, weights live in huge pages (weight_arena.py), placed before they are written.
        self._weight_arena = place_in_huge_pages(self.model) if device.type == "cpu" else None
        self.checkpoint_bytes_read = 0  # what this rank read of the checkpoint
        if load_format == "dummy":
            initialize_dummy_weights(self.model, seed)
        else:
            self.checkpoint_bytes_read = load_weights(self.model, folder)
        self.model.eval()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        # "torch", "triton" or "cpu"; every layer with a `kernels` attribute follows it.
        self.kernels = resolve_kernel_backend(kernel_backend, device)
        for module in self.model.modules():
            if hasattr(module, "kernels"):
                module.kernels = self.kernels
        self.attention_layers = self.model.attention_layers()
        self.sliding_window = arch.sliding_window
        self._generators: dict[str, torch.Generator] = {}
        self.num_blocks = 0
        self.decode_graphs: DecodeGraphs | None = None
        self.lora = None if lora is None else LoRAManager(
            self.model, arch, lora.max_loras, lora.max_lora_rank,
            lora.max_cpu_loras or lora.max_loras, dtype, device, self.kernels)

    @property
    def use_triton(self) -> bool:
        return self.kernels == "triton"

    # -- KV cache ---------------------------------------------------------------------------

    def kv_cache_bytes_per_block(self) -> int:
        layer = self.attention_layers[0]
        per_token = 2 * layer.num_kv_heads * layer.head_dim * self.dtype.itemsize
        return per_token * self.block_size * len(self.attention_layers)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Zero-filled, because attention reads (masked) slots that were never written: the
        mask cannot hide a NaN left in memory. On CPU the zeros come from an anonymous mapping,
        so pages count towards memory only once a block is first written."""
        self.num_blocks = num_blocks
        self._kv_mappings = []
        for layer in self.attention_layers:
            shape = (num_blocks, layer.num_kv_heads, self.block_size, layer.head_dim)
            layer.kv_cache = (self._zeros(shape), self._zeros(shape))

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        mapping = mmap.mmap(-1, math.prod(shape) * self.dtype.itemsize)
        self._kv_mappings.append(mapping)
        return torch.frombuffer(mapping, dtype=self.dtype).view(shape)

    def gpu_kv_blocks(self, gpu_memory_utilization: float, num_tokens: int) -> int:
        """KV blocks that fit in `gpu_memory_utilization` of the GPU besides the weights and
        the peak of a forward pass over `num_tokens` prompt tokens."""
        total = torch.cuda.get_device_properties(self.device).total_memory
        peak = self.profile_peak_memory(num_tokens)
        return int(total * gpu_memory_utilization - peak) // self.kv_cache_bytes_per_block()

    def profile_peak_memory(self, num_tokens: int) -> int:
        """GPU bytes in use at the peak of a forward pass over `num_tokens` prompt tokens."""
        num_blocks = -(-num_tokens // self.block_size)
        self.allocate_kv_cache(num_blocks)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._forward_dummy(num_tokens)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        for layer in self.attention_layers:
            layer.kv_cache = None
        torch.cuda.empty_cache()
        return peak

    def capture_cuda_graphs(self, max_num_seqs: int) -> None:
        """Decode batches replay CUDA graphs from now on (GPU, Triton kernels only)."""
        if self.device.type != "cuda" or not self.use_triton:
            raise ValueError("CUDA graphs need a CUDA device and the Triton kernels")
        graphs = DecodeGraphs(self.model, self.device, max_num_seqs,
                              -(-self.max_model_len // self.block_size), self.lora)
        graphs.capture()
        self.decode_graphs = graphs

    def warm_up(self, num_tokens: int = 16) -> None:
        """One forward pass, so that the first request does not pay for lazy initialisation."""
        self._forward_dummy(min(num_tokens, self.num_blocks * self.block_size,
                                self.max_model_len))

    def _forward_dummy(self, num_tokens: int) -> None:
        item = ScheduledRequest("__warm_up__", [0] * num_tokens, 0,
                                list(range(-(-num_tokens // self.block_size))), False,
                                None, [], [])
        with torch.inference_mode():
            input_ids, positions, meta, _ = self._prepare([item])
            self.model(input_ids, positions, meta)

    # -- life (as runtime/parallel/executor.py's, whose workers are processes) ---------------

    def check_health(self) -> None:
        """In this process, the runner lives as long as the engine."""

    def shutdown(self) -> None:
        """Nothing to stop: no worker processes."""

    # -- adapters ---------------------------------------------------------------------------

    @property
    def lora_enabled(self) -> bool:
        return self.lora is not None

    def add_lora(self, request: LoRARequest, in_flight: frozenset[int]) -> None:
        """Read the adapter into CPU memory (LoRAAdapterError, a ValueError, when broken).
        in_flight: the adapters of unfinished requests, which stay in memory."""
        self.lora.pinned = in_flight
        self.lora.adapter(request)

    def remove_lora(self, lora_int_id: int) -> None:
        self.lora.remove(lora_int_id)

    # -- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in scheduler_output.finished_request_ids:
            self._generators.pop(request_id, None)
        if scheduler_output.is_empty:
            return ModelRunnerOutput({})
        items = sorted(scheduler_output.scheduled, key=_batch_order)
        input_ids, positions, meta, logits_index = self._prepare(items)
        if self.lora is not None:
            self.lora.pinned = scheduler_output.lora_ids_in_flight
            self.lora.activate([(s.lora_request, len(s.token_ids)) for s in items])
        meta.fused_decode = self._fuses_decode(meta)
        hidden = None
        if self.decode_graphs is not None and not meta.prefills:
            hidden = self.decode_graphs.run(input_ids, positions, meta)
        if hidden is None:
            hidden = self.model(input_ids, positions, meta)
        prompt_logprobs = self._prompt_logprobs(items, hidden)
        sampling = [s for s in items if s.sample]
        if not sampling:
            return ModelRunnerOutput({}, prompt_logprobs)
        # As many (increasing) indices as rows: every row, in order (a decode-only step).
        if len(logits_index) == hidden.shape[0]:
            rows_to_score = hidden
        else:
            rows_to_score = hidden.index_select(0, torch.tensor(logits_index, device=self.device))
        logits = self.model.compute_logits(rows_to_score)
        if logits is None:  # a tensor-parallel rank other than the first: rank 0 samples
            return ModelRunnerOutput({})
        logits = logits.float()
        rows = [SamplingRow(s.sampling_params, s.prompt_token_ids, s.output_token_ids,
                            self._generator(s)) for s in sampling]
        sampled = sample(logits, rows)
        return ModelRunnerOutput({s.request_id: t for s, t in zip(sampling, sampled)},
                                 prompt_logprobs)

    def _prompt_logprobs(self, items: list[ScheduledRequest], hidden: torch.Tensor
                         ) -> dict[str, list[SampledToken]]:
        """Score prompt tokens by the logits of the positions before them, in slices so that
        a long chunk never holds [tokens, vocab] logits at once."""
        out: dict[str, list[SampledToken]] = {}
        token_start = 0
        for item in items:
            first = item.prompt_logprobs_start
            end = min(item.start_position + len(item.token_ids),
                      len(item.prompt_token_ids) - 1)
            if first >= 0:
                scored: list[SampledToken] = []
                num_top = item.sampling_params.prompt_logprobs
                for lo in range(first, end, _PROMPT_LOGPROBS_SLICE):
                    hi = min(lo + _PROMPT_LOGPROBS_SLICE, end)
                    rows = hidden[token_start + lo - item.start_position:
                                  token_start + hi - item.start_position]
                    logits = self.model.compute_logits(rows)
                    if logits is None:  # not rank 0, which alone scores
                        continue
                    scored += token_logprobs(logits.float(),
                                             item.prompt_token_ids[lo + 1:hi + 1],
                                             [num_top] * (hi - lo))
                out[item.request_id] = scored
            token_start += len(item.token_ids)
        return out

    def _fuses_decode(self, meta: AttentionMetadata) -> bool:
        """Whether the layers run in one call of the C kernels: decodes only (adapters
        included), one rank (the fused layers have no all-reduce inside)."""
        return self.kernels == "cpu" and not meta.prefills and get_tp_group().size == 1

    def _generator(self, item: ScheduledRequest) -> torch.Generator | None:
        seed = item.sampling_params.seed
        if seed is None:
            return None
        generator = self._generators.get(item.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self._generators[item.request_id] = generator
        return generator

    def _prepare(self, items: list[ScheduledRequest]):
        """Host lists of the batch, then the tensors and attention metadata the kernel
        backend reads."""
        size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_index: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        chunks: list[tuple[int, int, int, list[int]]] = []  # token start, tokens, context, blocks
        for item in items:
            start, num = item.start_position, len(item.token_ids)
            token_start = len(input_ids)
            input_ids.extend(item.token_ids)
            blocks = item.block_ids
            if num == 1 and start > 0:
                positions.append(start)
                slots.append(blocks[start // size] * size + start % size)
                decode_tables.append(blocks)
                decode_lens.append(start + 1)
            else:
                end = start + num
                positions.extend(range(start, end))
                slots.extend(blocks[p // size] * size + p % size for p in range(start, end))
                chunks.append((token_start, num, start, blocks[:-(-end // size)]))
            if item.sample:
                logits_index.append(token_start + num - 1)
        meta = self._attention_metadata(slots, decode_tables, decode_lens, chunks)
        return (torch.tensor(input_ids, dtype=torch.long, device=self.device),
                torch.tensor(positions, dtype=torch.long, device=self.device),
                meta, logits_index)

    def _attention_metadata(self, slots: list[int], decode_tables: list[list[int]],
                            decode_lens: list[int],
                            chunks: list[tuple[int, int, int, list[int]]]) -> AttentionMetadata:
        slot_mapping = torch.tensor(slots, dtype=torch.long, device=self.device)
        if self.use_triton:
            meta = AttentionMetadata(slot_mapping, slot_mapping, len(decode_tables),
                                     prefills=[PrefillChunk(s, n, c, None)
                                               for s, n, c, _ in chunks])
            meta.triton = triton_metadata(decode_tables, decode_lens,
                                          [blocks for *_, blocks in chunks],
                                          [c for _, _, c, _ in chunks],
                                          [n for _, n, _, _ in chunks], self.device)
            return meta
        torch_kernels = self.kernels == "torch"
        meta = AttentionMetadata(
            slot_mapping=slot_mapping,
            kv_store_index=kv_store_index(slot_mapping, self.attention_layers[0].num_kv_heads,
                                          self.block_size) if torch_kernels else None,
            num_decode_tokens=len(decode_tables),
            prefills=[PrefillChunk(s, n, c, torch.tensor(blocks, dtype=torch.long,
                                                          device=self.device))
                      for s, n, c, blocks in chunks])
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            meta.decode_block_tables = torch.tensor(
                [t + [0] * (width - len(t)) for t in decode_tables], dtype=torch.long,
                device=self.device)
            if torch_kernels:
                meta.decode_key_mask = decode_key_mask(decode_lens, width * self.block_size,
                                                       self.sliding_window).to(self.device)
            else:
                meta.decode_seq_lens = torch.tensor(decode_lens, dtype=torch.long)
        return meta


def _batch_order(item: ScheduledRequest) -> tuple[bool, int]:
    """Decode tokens first, grouped by adapter; then prefill chunks (stable: in order)."""
    decode = _is_decode(item)
    return (not decode, item.lora_id if decode else 0)


def _is_decode(item: ScheduledRequest) -> bool:
    return len(item.token_ids) == 1 and item.start_position > 0

