"""Weights from a Hugging Face folder into a model built from its config.

safetensors files (one, or sharded with `model.safetensors.index.json`) are memory-mapped and
copied tensor by tensor, so peak memory stays near the model's own size; `pytorch_model*.bin`
is read the same way when no safetensors exist. Each parameter's own `weight_loader` places
the tensor (packing and tensor-parallel slicing live there).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    return files


def iterate_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def load_weights(model: nn.Module, folder: Path) -> None:
    params = dict(model.named_parameters())
    packed: dict[str, tuple[str, int | str]] = getattr(model, "packed_modules_mapping", {})
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    loaded: set[str] = set()
    for name, tensor in iterate_weights(checkpoint_files(folder)):
        if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
            continue
        target, shard_id = name, None
        for ckpt_name, (our_name, shard) in packed.items():
            if f".{ckpt_name}." in name:
                target, shard_id = name.replace(f".{ckpt_name}.", f".{our_name}."), shard
                break
        param = params.get(target)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of "
                             f"{type(model).__name__}")
        loader = getattr(param, "weight_loader", None)
        with torch.no_grad():
            if loader is None:
                param.data.copy_(tensor)
            elif shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
        loaded.add(target)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"the checkpoint in {folder} lacks weights for: {', '.join(missing[:8])}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
