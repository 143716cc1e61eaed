"""Adapters in the engine: loaded from disk into CPU memory (LRU, up to `max_cpu_loras`),
copied into the fast slots the layers read (LRU, `max_loras`), and, per step, a slot index for
every token of the batch (-1: the base model).

Each base projection that adapters may touch carries a `LoRALayerState` with its stacked slot
weights (`lora_a: [max_loras, max_rank, in]`, `lora_b: [max_loras, out, max_rank]`, zero
padded); after the base matmul the layer adds its adapters (`apply_parts`, every part at once)
for the tokens that have a slot.
Merged projections (qkv, gate_up) hold one entry per part, at its column offset.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from infernetes.runtime.lora.adapter import LoRAAdapter, load_lora_adapter
from infernetes.runtime.lora.sharding import shard_module, sharded_features
from infernetes.runtime.lora.slots import LoRASlots
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.parallel.state import get_tp_group
from infernetes.runtime.request import LoRARequest

# Which projections each merged layer holds, in output-column order.
_LAYER_PARTS = {"qkv_proj": ("q", "k", "v"), "o_proj": ("o",),
                "gate_up_proj": ("gate", "up"), "down_proj": ("down",)}


@dataclass
class _Part:
    projection: str
    column_offset: int
    lora_a: torch.Tensor  # [max_loras, max_rank, in_features]
    lora_b: torch.Tensor  # [max_loras, out_features, max_rank]


@dataclass
class LoRALayerState:
    """What one base projection needs to add the batch's adapters to its output."""
    manager: LoRAManager
    layer: int
    parts: list[_Part] = field(default_factory=list)
    # (lora_a, lora_b, column_offset) of each part, as the kernels take them
    targets: list[tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=list)

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """x: [num_tokens, in]; out: [num_tokens, out_total], updated in place."""
        token_slots = self.manager.token_slots
        if token_slots is not None:
            self.manager.apply_parts(x, out, self.targets, token_slots)


class LoRAManager:
    def __init__(self, model: torch.nn.Module, arch: ModelArchConfig, max_loras: int,
                 max_rank: int, max_cpu_loras: int, dtype: torch.dtype, device: torch.device,
                 kernels: str = "torch"):
        self.arch, self.max_rank, self.dtype = arch, max_rank, dtype
        # The kernels every layer calls, as the model's (kernel_backend.py): Triton's on GPUs
        # (no host sync, so a decode step with adapters can be captured in a CUDA graph), the
        # C kernels' on "cpu" (all parts of a projection in one call; the fused decode layers
        # read the slots themselves), torch's otherwise. Same semantics.
        if kernels == "triton":
            from infernetes.kernels.triton.lora import apply_lora
        else:
            from infernetes.kernels.lora import apply_lora
        self.apply_lora = apply_lora  # one part (q, k, ...) at a time
        if kernels == "cpu":
            from infernetes.kernels.cpu.lora import apply_lora_parts
            self.apply_parts = apply_lora_parts
        else:
            self.apply_parts = self._apply_each_part
        self.max_cpu_loras = max(max_cpu_loras, max_loras)
        self.slots = LoRASlots(max_loras)
        self.cpu: OrderedDict[int, LoRAAdapter] = OrderedDict()  # lora_int_id -> adapter, LRU
        self.token_slots: torch.Tensor | None = None  # this step's, [num_tokens] int32
        # Adapter ids of unfinished requests (from the scheduler, each step and at each
        # submission): never dropped from CPU memory, so no step has to read a file that may
        # have gone.
        self.pinned: frozenset[int] = frozenset()
        self.device = device
        self.tp = get_tp_group()  # slot weights hold this rank's shard of each adapter
        self.states: dict[tuple[int, str], _Part] = {}
        for index, layer in enumerate(model.model.layers):
            for name, module in (("qkv_proj", layer.self_attn.qkv_proj),
                                 ("o_proj", layer.self_attn.o_proj),
                                 ("gate_up_proj", layer.mlp.gate_up_proj),
                                 ("down_proj", layer.mlp.down_proj)):
                module.lora = self._layer_state(index, name, max_loras)

    def _apply_each_part(self, x: torch.Tensor, out: torch.Tensor,
                         targets: list[tuple[torch.Tensor, torch.Tensor, int]],
                         token_slots: torch.Tensor) -> None:
        for lora_a, lora_b, column_offset in targets:
            self.apply_lora(x, out, lora_a, lora_b, token_slots, column_offset)

    def _layer_state(self, layer: int, name: str, max_loras: int) -> LoRALayerState:
        state = LoRALayerState(self, layer)
        offset = 0
        for projection in _LAYER_PARTS[name]:
            in_features, out_features = sharded_features(self.arch, projection, self.tp)
            part = _Part(projection, offset,
                         torch.zeros(max_loras, self.max_rank, in_features, dtype=self.dtype,
                                     device=self.device),
                         torch.zeros(max_loras, out_features, self.max_rank, dtype=self.dtype,
                                     device=self.device))
            state.parts.append(part)
            state.targets.append((part.lora_a, part.lora_b, offset))
            self.states[(layer, projection)] = part
            offset += out_features
        return state

    def slot_weights(self, layer: int, parts: tuple[str, ...]) -> list[tuple[torch.Tensor,
                                                                           torch.Tensor]]:
        """(lora_a, lora_b) of each projection in `parts` of one layer: the fixed tensors the
        slots are copied into, for kernels that read them directly (the fused CPU layers)."""
        return [(self.states[(layer, part)].lora_a, self.states[(layer, part)].lora_b)
                for part in parts]

    # -- adapters ---------------------------------------------------------------------------

    def adapter(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter, from CPU memory or read from disk (LoRAAdapterError if broken)."""
        adapter = self.cpu.get(request.lora_int_id)
        if adapter is None:
            adapter = load_lora_adapter(request.lora_path, request.lora_name, self.arch,
                                        self.max_rank, self.dtype)
            self.cpu[request.lora_int_id] = adapter
            pinned = self.pinned | {request.lora_int_id}
            while len(self.cpu) > self.max_cpu_loras:
                evicted = next((i for i in self.cpu
                                if i not in pinned and self.slots.slot_of(i) is None), None)
                if evicted is None:  # everything is needed now: over capacity for a while
                    break
                del self.cpu[evicted]
        self.cpu.move_to_end(request.lora_int_id)
        return adapter

    def remove(self, lora_int_id: int) -> None:
        self.cpu.pop(lora_int_id, None)
        slot = self.slots.remove(lora_int_id)
        if slot is not None:
            self._clear_slot(slot)

    # -- one step ---------------------------------------------------------------------------

    def activate(self, token_requests: list[tuple[LoRARequest | None, int]]) -> None:
        """The batch's adapters in slots, and each token's slot. token_requests: per scheduled
        request in batch order, its adapter (None: base) and its number of tokens."""
        in_use = {r.lora_int_id for r, _ in token_requests if r is not None}
        if not in_use:
            self.token_slots = None
            return
        slots: list[int] = []
        for request, num_tokens in token_requests:
            slot = -1 if request is None else self._place(request, in_use)
            slots.extend([slot] * num_tokens)
        self.token_slots = torch.tensor(slots, dtype=torch.int32, device=self.device)

    def _place(self, request: LoRARequest, in_use: set[int]) -> int:
        placement = self.slots.place(request.lora_int_id, in_use)
        if placement.loaded:
            self._fill_slot(placement.slot, self.adapter(request))
        return placement.slot

    def _fill_slot(self, slot: int, adapter: LoRAAdapter) -> None:
        self._clear_slot(slot)
        for (layer, projection), full in adapter.modules.items():
            part = self.states[(layer, projection)]
            weights = shard_module(full, self.arch, projection, self.tp)
            rank = weights.a.shape[0]
            part.lora_a[slot, :rank].copy_(weights.a)
            part.lora_b[slot, :, :rank].copy_(weights.b)

    def _clear_slot(self, slot: int) -> None:
        for part in self.states.values():
            part.lora_a[slot].zero_()
            part.lora_b[slot].zero_()
