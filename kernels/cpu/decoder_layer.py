"""A model's Llama decoder layers for a batch of decode tokens in one call
(csrc/decoder_layer.c): the CPU counterpart of a captured CUDA graph, for batches of a few
sequences, with or without LoRA adapters.

`DecoderLayerWeights` points at one layer's parameters and KV cache (built once, after the
cache is allocated; parameters never move after loading); `DecoderStack` holds the layers in
order; `DecodeBatch` points at one step's positions and block tables (built once per step,
shared by every layer). With adapters, each layer also points at its projections' LoRA slot
weights (runtime/lora/manager.py: fixed tensors, refilled in place) and the batch at its
tokens' slots. The reference is runtime/models/llama.py's LlamaDecoderLayer.forward
on the torch kernels, layer after layer.
"""
from __future__ import annotations

import ctypes

import torch

from collections.abc import Sequence

from infernetes.kernels.cpu.launch import check_int64, dtype_code, num_threads
from infernetes.kernels.cpu.library import library
from infernetes.kernels.lora import check_slot_range

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float

# The projections an adapter may touch, in the order of the C layer's lora_a / lora_b arrays.
LORA_PARTS = ("q", "k", "v", "o", "gate", "up", "down")

# (lora_a, lora_b) of one projection: [num_slots, rank, in_features], [num_slots,
# out_features, rank] (kernels/lora.py's layout).
LoRASlotWeights = tuple[torch.Tensor, torch.Tensor]


class DecoderLayerWeights(ctypes.Structure):
    _fields_ = [("hidden", _I64), ("num_heads", _I64), ("num_kv_heads", _I64),
                ("head_dim", _I64), ("intermediate", _I64), ("block_size", _I64),
                ("sliding_window", _I64), ("eps", _F32), ("scale", _F32),
                ("input_norm", _P), ("post_norm", _P), ("qkv_weight", _P), ("qkv_bias", _P),
                ("o_weight", _P), ("o_bias", _P), ("gate_up_weight", _P), ("gate_up_bias", _P),
                ("down_weight", _P), ("down_bias", _P), ("key_cache", _P), ("value_cache", _P),
                ("lora_rank", _I64), ("lora_a", _P * len(LORA_PARTS)),
                ("lora_b", _P * len(LORA_PARTS))]


class DecodeBatch(ctypes.Structure):
    _fields_ = [("num_tokens", _I64), ("max_blocks", _I64), ("positions", _P),
                ("slot_mapping", _P), ("block_tables", _P), ("seq_lens", _P), ("cos_sin", _P),
                ("token_slots", _P)]


def decoder_layer_weights(*, input_norm: torch.Tensor, post_norm: torch.Tensor,
                          qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                          o_weight: torch.Tensor, o_bias: torch.Tensor | None,
                          gate_up_weight: torch.Tensor, gate_up_bias: torch.Tensor | None,
                          down_weight: torch.Tensor, down_bias: torch.Tensor | None,
                          key_cache: torch.Tensor, value_cache: torch.Tensor, num_heads: int,
                          eps: float, scale: float, sliding_window: int | None,
                          lora: Sequence[LoRASlotWeights] | None = None) -> DecoderLayerWeights:
    """Shapes (one dtype, contiguous): norms [hidden]; qkv_weight [(num_heads + 2 *
    num_kv_heads) * head_dim, hidden]; o_weight [hidden, num_heads * head_dim]; gate_up_weight
    [2 * intermediate, hidden]; down_weight [hidden, intermediate]; biases [rows] or None;
    caches [num_blocks, num_kv_heads, block_size, head_dim]. lora: None, or the slot weights
    of every projection in LORA_PARTS order, all with the same slots and rank."""
    _, num_kv_heads, block_size, head_dim = key_cache.shape
    hidden = input_norm.shape[0]
    intermediate = down_weight.shape[1]
    expected = {
        "input_norm": (input_norm, (hidden,)), "post_norm": (post_norm, (hidden,)),
        "qkv_weight": (qkv_weight, ((num_heads + 2 * num_kv_heads) * head_dim, hidden)),
        "o_weight": (o_weight, (hidden, num_heads * head_dim)),
        "gate_up_weight": (gate_up_weight, (2 * intermediate, hidden)),
        "down_weight": (down_weight, (hidden, intermediate)),
        "value_cache": (value_cache, tuple(key_cache.shape)),
        "qkv_bias": (qkv_bias, (qkv_weight.shape[0],)), "o_bias": (o_bias, (hidden,)),
        "gate_up_bias": (gate_up_bias, (2 * intermediate,)), "down_bias": (down_bias, (hidden,)),
    }
    dtype_code("key_cache", key_cache)
    for name, (tensor, shape) in expected.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != shape or tensor.dtype != key_cache.dtype \
                or not tensor.is_contiguous() or tensor.device.type != "cpu":
            raise ValueError(f"{name}: expected a contiguous CPU {key_cache.dtype} tensor of "
                             f"shape {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
    if num_heads % num_kv_heads or head_dim % 2:
        raise ValueError(f"{num_heads} heads over {num_kv_heads} KV heads of width {head_dim}: "
                         f"heads must group evenly and head_dim be even")
    if not key_cache.is_contiguous():
        raise ValueError("key_cache: expected a contiguous tensor")

    def pointer(tensor: torch.Tensor | None) -> int | None:
        return None if tensor is None else tensor.data_ptr()

    weights = DecoderLayerWeights(
        hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size, sliding_window or 0,
        eps, scale, pointer(input_norm), pointer(post_norm), pointer(qkv_weight),
        pointer(qkv_bias), pointer(o_weight), pointer(o_bias), pointer(gate_up_weight),
        pointer(gate_up_bias), pointer(down_weight), pointer(down_bias), pointer(key_cache),
        pointer(value_cache))
    weights.dtype = key_cache.dtype
    weights.tensors = (key_cache, value_cache)  # kept alive with the pointers into them
    weights.lora_slots = 0
    if lora is not None:
        q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
        features = {"q": (hidden, q_width), "k": (hidden, kv_width), "v": (hidden, kv_width),
                    "o": (q_width, hidden), "gate": (hidden, intermediate),
                    "up": (hidden, intermediate), "down": (intermediate, hidden)}
        _attach_lora(weights, lora, [features[part] for part in LORA_PARTS])
    return weights


def _attach_lora(weights: DecoderLayerWeights, lora: Sequence[LoRASlotWeights],
                 features: list[tuple[int, int]]) -> None:
    """Points the layer at its adapters' slot weights, after checking their shapes."""
    if len(lora) != len(LORA_PARTS):
        raise ValueError(f"lora: expected the slot weights of {', '.join(LORA_PARTS)}, got "
                         f"{len(lora)} pairs")
    num_slots, rank = lora[0][0].shape[:2]
    for part, (lora_a, lora_b), (in_features, out_features) in zip(LORA_PARTS, lora, features):
        for name, tensor, shape in ((f"lora_a[{part}]", lora_a, (num_slots, rank, in_features)),
                                    (f"lora_b[{part}]", lora_b,
                                     (num_slots, out_features, rank))):
            if tuple(tensor.shape) != shape or tensor.dtype != weights.dtype \
                    or not tensor.is_contiguous() or tensor.device.type != "cpu":
                raise ValueError(f"{name}: expected a contiguous CPU {weights.dtype} tensor of "
                                 f"shape {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
    weights.lora_rank = rank
    for i, (lora_a, lora_b) in enumerate(lora):
        weights.lora_a[i], weights.lora_b[i] = lora_a.data_ptr(), lora_b.data_ptr()
    weights.lora_slots = num_slots
    weights.lora_tensors = tuple(lora)


def decode_batch(positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, cos_sin: torch.Tensor,
                 token_slots: torch.Tensor | None = None) -> DecodeBatch:
    """positions, slot_mapping, seq_lens: [num_tokens] int64; block_tables: [num_tokens,
    max_blocks] int64; cos_sin: [max_position, head_dim] float32; token_slots: None (no
    adapter) or each token's LoRA slot, [num_tokens] int32, -1 for the base model; all
    contiguous. Every position must be below max_position and every key's block in its table
    (the model runner guarantees both)."""
    num_tokens = positions.shape[0]
    for name, tensor, shape in (("positions", positions, (num_tokens,)),
                                ("slot_mapping", slot_mapping, (num_tokens,)),
                                ("seq_lens", seq_lens, (num_tokens,)),
                                ("block_tables", block_tables,
                                 (num_tokens, block_tables.shape[-1]))):
        check_int64(name, tensor, shape)
    if cos_sin.dtype != torch.float32 or not cos_sin.is_contiguous() or cos_sin.dim() != 2:
        raise ValueError("cos_sin: expected a contiguous float32 [max_position, head_dim]")
    if token_slots is not None and (token_slots.dtype != torch.int32
                                    or tuple(token_slots.shape) != (num_tokens,)
                                    or not token_slots.is_contiguous()):
        raise ValueError(f"token_slots: expected a contiguous int32 ({num_tokens},), got "
                         f"{token_slots.dtype} {tuple(token_slots.shape)}")
    batch = DecodeBatch(num_tokens, block_tables.shape[1], positions.data_ptr(),
                        slot_mapping.data_ptr(), block_tables.data_ptr(), seq_lens.data_ptr(),
                        cos_sin.data_ptr(),
                        None if token_slots is None else token_slots.data_ptr())
    batch.head_dim = cos_sin.shape[1]
    batch.tensors = (positions, slot_mapping, block_tables, seq_lens, cos_sin, token_slots)
    batch.slot_range = None if token_slots is None or num_tokens == 0 else \
        (int(token_slots.min()), int(token_slots.max()))
    return batch


class DecoderStack:
    """Layers that run one after another in one call, as the C array the kernel walks."""

    def __init__(self, layers: Sequence[DecoderLayerWeights]):
        if not layers:
            raise ValueError("a decoder stack needs at least one layer")
        first = layers[0]
        for i, layer in enumerate(layers):
            if layer.dtype != first.dtype or layer.hidden != first.hidden \
                    or layer.head_dim != first.head_dim:
                raise ValueError(f"layer {i}: {layer.dtype}, hidden {layer.hidden}, head_dim "
                                 f"{layer.head_dim}; layer 0: {first.dtype}, hidden "
                                 f"{first.hidden}, head_dim {first.head_dim}")
            if layer.lora_slots != first.lora_slots or layer.lora_rank != first.lora_rank:
                raise ValueError(f"layer {i}: {layer.lora_slots} LoRA slots of rank "
                                 f"{layer.lora_rank}; layer 0: {first.lora_slots} of rank "
                                 f"{first.lora_rank}")
        self.layers = tuple(layers)  # keeps each layer's tensors alive
        self.array = (DecoderLayerWeights * len(layers))(*layers)
        self.dtype, self.hidden, self.head_dim = first.dtype, first.hidden, first.head_dim
        self.lora_slots = first.lora_slots  # 0: the layers have no adapters

    def __len__(self) -> int:
        return len(self.layers)


def decoder_layers(stack: DecoderStack, batch: DecodeBatch, hidden: torch.Tensor,
                   residual: torch.Tensor | None, final_norm: torch.Tensor | None = None,
                   final_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden: [num_tokens, hidden]; residual: the same, or None when the stack starts at the
    model's first layer. Returns (the last layer's output, the new residual), as
    LlamaDecoderLayer.forward applied layer after layer; with final_norm ([hidden], the
    model's last RMSNorm weight), (norm(output + residual), output + residual) instead, as
    RMSNorm.forward with a residual: the model's forward to its end in the same call (the
    torch ops of that norm cost ~0.3 ms after the layers have flushed the caches)."""
    code = dtype_code("hidden", hidden)
    shape = (batch.num_tokens, stack.hidden)
    if tuple(hidden.shape) != shape or hidden.dtype != stack.dtype \
            or not hidden.is_contiguous():
        raise ValueError(f"hidden: expected contiguous {stack.dtype} {shape}, got "
                         f"{hidden.dtype} {tuple(hidden.shape)}")
    if batch.head_dim != stack.head_dim:
        raise ValueError(f"cos_sin: rows of {batch.head_dim}, heads of {stack.head_dim}")
    if batch.slot_range is not None:  # num_slots: the layers' LoRA slots (0: no adapters)
        check_slot_range(*batch.slot_range, stack.lora_slots)
    first_layer = residual is None
    if first_layer:
        residual = torch.empty_like(hidden)
    elif tuple(residual.shape) != shape or residual.dtype != hidden.dtype \
            or not residual.is_contiguous():
        raise ValueError(f"residual: expected contiguous {hidden.dtype} {shape}")
    if final_norm is not None and (final_norm.shape != (stack.hidden,)
                                   or final_norm.dtype != stack.dtype
                                   or not final_norm.is_contiguous()):
        raise ValueError(f"final_norm: expected a contiguous {stack.dtype} ({stack.hidden},), "
                         f"got {final_norm.dtype} {tuple(final_norm.shape)}")
    out = torch.empty_like(hidden)
    status = library().ifn_decoder_layers(
        ctypes.addressof(stack.array), len(stack), ctypes.addressof(batch), hidden.data_ptr(),
        residual.data_ptr(), out.data_ptr(), int(first_layer),
        None if final_norm is None else final_norm.data_ptr(), final_eps, code, num_threads())
    if status != 0:
        raise MemoryError("decoder_layers: out of memory for the activations")
    return out, residual
