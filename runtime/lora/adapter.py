"""A PEFT LoRA adapter folder read into typed per-module weights the engine can apply.

A module's update to a projection's output is `x @ a.T @ b.T`, i.e. `b @ a` added to the base
weight; PEFT's scaling (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA) is folded into `b`
so the engine never sees it. Every module's shapes are checked against the base model's
projection, so a mismatched adapter fails at load time, never at the first request.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from infernetes.runtime.loader import iterate_weights
from infernetes.runtime.lora.peft_config import (
    PROJECTION_PARENTS, PROJECTIONS, LoRAAdapterConfig, LoRAAdapterError, parse_peft_config)
from infernetes.runtime.model_config import ModelArchConfig

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# The names PEFT's save_pretrained writes, e.g.
# `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`. Also accepted: without the
# `base_model.model.` (or the inner `model.`) prefix, and with the `.default` adapter-name infix
# a raw state_dict of a PeftModel carries.
_TENSOR_NAME = re.compile(
    r"(?:base_model\.model\.)?(?:model\.)?layers\.(?P<layer>\d+)\.(?P<parent>self_attn|mlp)\."
    r"(?P<module>\w+)\.lora_(?P<side>[AB])(?:\.default)?\.weight")

_Fail = Callable[[str], LoRAAdapterError]  # problem -> the error naming adapter and file


@dataclass(frozen=True, eq=False, slots=True)
class LoRAModuleWeights:
    a: torch.Tensor  # [rank, in_features]
    b: torch.Tensor  # [out_features, rank], scaling folded in


@dataclass(frozen=True, eq=False, slots=True)
class LoRAAdapter:
    name: str
    path: str
    rank: int
    # (layer index, projection) -> weights, projection in "q", "k", "v", "o", "gate", "up",
    # "down". A projection missing from a layer has no update there.
    modules: dict[tuple[int, str], LoRAModuleWeights]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for m in self.modules.values() for t in (m.a, m.b))


def projection_features(arch: ModelArchConfig, projection: str) -> tuple[int, int]:
    """(in_features, out_features) of one of the base model's projections, unpacked."""
    q_size = arch.num_attention_heads * arch.head_dim
    kv_size = arch.num_key_value_heads * arch.head_dim
    hidden, intermediate = arch.hidden_size, arch.intermediate_size
    return {
        "q": (hidden, q_size), "k": (hidden, kv_size), "v": (hidden, kv_size),
        "o": (q_size, hidden),
        "gate": (hidden, intermediate), "up": (hidden, intermediate),
        "down": (intermediate, hidden),
    }[projection]


def load_lora_adapter(path: str | Path, name: str, arch: ModelArchConfig, max_rank: int,
                      dtype: torch.dtype = torch.float32) -> LoRAAdapter:
    """Read, validate and convert to `dtype` the adapter in folder `path`, served as `name`.

    Raises LoRAAdapterError for anything that cannot be served: a missing or broken file, an
    unsupported PEFT feature, rank above `max_rank`, or weights that do not fit `arch`.
    """
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    config = _read_config(config_path, name, arch)
    if config.rank > max_rank:
        raise LoRAAdapterError(name, config_path,
                               f"rank {config.rank} exceeds --max-lora-rank {max_rank}")
    weights_path = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights_path is None:
        raise LoRAAdapterError(name, folder, f"no {' or '.join(WEIGHT_FILES)} in the folder")
    pairs = _read_lora_tensors(weights_path, name, config, arch)
    modules = {}
    for (layer, projection), sides in sorted(pairs.items()):
        problem = _check_module(sides, config.rank, projection_features(arch, projection))
        if problem:
            raise LoRAAdapterError(name, weights_path,
                                   f"layer {layer} {projection}_proj: {problem}")
        # Scaled in float32, then converted: the scaled B may overflow a half dtype.
        module = LoRAModuleWeights(a=sides["A"].to(dtype),
                                   b=(sides["B"] * config.scaling).to(dtype))
        if not (torch.isfinite(module.a).all() and torch.isfinite(module.b).all()):
            raise LoRAAdapterError(name, weights_path,
                                   f"layer {layer} {projection}_proj overflows {dtype}")
        modules[(layer, projection)] = module
    return LoRAAdapter(name=name, path=str(folder), rank=config.rank, modules=modules)


def _read_config(config_path: Path, name: str, arch: ModelArchConfig) -> LoRAAdapterConfig:
    if not config_path.is_file():
        raise LoRAAdapterError(name, config_path, "missing; is this a PEFT adapter folder?")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAAdapterError(name, config_path, f"unreadable: {exc}") from exc
    return parse_peft_config(raw, name, config_path, arch.num_hidden_layers)


def _read_lora_tensors(weights_path: Path, name: str, config: LoRAAdapterConfig,
                       arch: ModelArchConfig) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """(layer, projection) -> {"A": a, "B": b}, float32 copies; names and values checked."""
    def fail(problem: str) -> LoRAAdapterError:
        return LoRAAdapterError(name, weights_path, problem)

    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for tensor_name, tensor in _iterate_file(weights_path, fail):
        layer, projection, side = _parse_tensor_name(tensor_name, fail)
        if layer >= arch.num_hidden_layers:
            raise fail(f"tensor {tensor_name!r} is for layer {layer}, but the model has "
                       f"{arch.num_hidden_layers} layers")
        if config.layers_to_transform is not None and \
                layer not in config.layers_to_transform:
            raise fail(f"tensor {tensor_name!r} is for layer {layer}, which "
                       f"layers_to_transform in {CONFIG_FILE} does not name")
        if projection not in config.target_projections:
            raise fail(f"tensor {tensor_name!r} is for {projection}_proj, which "
                       f"target_modules in {CONFIG_FILE} does not name")
        if not tensor.is_floating_point():
            raise fail(f"tensor {tensor_name!r} has dtype {tensor.dtype}, not floating point")
        if not torch.isfinite(tensor).all():
            raise fail(f"tensor {tensor_name!r} has non-finite values (inf or nan)")
        sides = pairs.setdefault((layer, projection), {})
        if side in sides:
            raise fail(f"tensor {tensor_name!r} repeats layer {layer} {projection}_proj "
                       f"lora_{side}")
        # A copy: the tensors of a .bin file are memory-mapped views of it.
        sides[side] = tensor.to(torch.float32, copy=True)
    if not pairs:
        raise fail("holds no LoRA weights")
    return pairs


def _iterate_file(weights_path: Path, fail: _Fail) -> Iterator[tuple[str, torch.Tensor]]:
    """iterate_weights, with any failure to decode the file reported as the adapter's error."""
    try:
        yield from iterate_weights([weights_path])
    except Exception as exc:  # noqa: BLE001 - the reader's errors vary by format and damage
        raise fail(f"cannot be read; truncated or corrupt? ({type(exc).__name__}: {exc})") \
            from exc


def _parse_tensor_name(tensor_name: str, fail: _Fail) -> tuple[int, str, str]:
    match = _TENSOR_NAME.fullmatch(tensor_name)
    module = match and match["module"]
    if match is None or module not in PROJECTIONS or PROJECTION_PARENTS[module] != match["parent"]:
        raise fail(f"unexpected tensor {tensor_name!r}; only lora_A/lora_B weights of "
                   f"{', '.join(PROJECTIONS)} in model.layers are supported")
    return int(match["layer"]), PROJECTIONS[module], match["side"]


def _check_module(sides: dict[str, torch.Tensor], rank: int,
                  features: tuple[int, int]) -> str | None:
    """Why the module's A [rank, in] and B [out, rank] do not fit, or None."""
    for side in "AB":
        if side not in sides:
            return f"lora_{side} is missing (lora_{'B' if side == 'A' else 'A'} is present)"
    in_features, out_features = features
    for side, expected in (("A", (rank, in_features)), ("B", (out_features, rank))):
        shape = tuple(sides[side].shape)
        if shape != expected:
            return (f"lora_{side} has shape {list(shape)}, expected {list(expected)} "
                    f"(rank {rank}, base projection {in_features} -> {out_features})")
    return None
