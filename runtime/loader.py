"""Weights from a Hugging Face folder into a model built from its config.

safetensors files (one, or sharded with `model.safetensors.index.json`) are read tensor by
tensor with plain reads into one reused buffer, not memory-mapped: mapped file pages count as
the process's own memory until the file is closed, which would add the whole checkpoint (often
float32, twice the model's size in bf16) to the peak. `pytorch_model*.bin` is read when no
safetensors exist. Each parameter's own `weight_loader` places the tensor (packing and
tensor-parallel slicing live there).
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def iterate_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs; a tensor is valid only until the next one is yielded."""
    for path in files:
        if path.suffix == ".safetensors":
            yield from _read_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        if any(entry["dtype"] not in _SAFETENSORS_DTYPES for entry in header.values()):
            with safe_open(str(path), framework="pt") as st:  # rarer dtypes: the library's reader
                for name in st.keys():
                    yield name, st.get_tensor(name)
            return
        data_start = 8 + header_size
        buffer = bytearray()
        # In file order, so the reads are sequential.
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            size = end - begin
            if len(buffer) < size:
                buffer = bytearray(size)
            view = memoryview(buffer)[:size]
            f.seek(data_start + begin)
            if f.readinto(view) != size:
                raise ValueError(f"{path} is truncated: tensor {name!r} is incomplete")
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            tensor = torch.frombuffer(view, dtype=dtype) if size else torch.empty(0, dtype=dtype)
            yield name, tensor.view(entry["shape"])


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


def initialize_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights in place of a checkpoint (`--load-format dummy`): matrices ~ N(0, 0.02),
    norm scales 1, biases 0, drawn on the parameters' device from `seed`."""
    generator = None
    with torch.no_grad():
        for name, param in model.named_parameters():
            if generator is None or generator.device != param.device:
                generator = torch.Generator(device=param.device).manual_seed(seed)
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()
