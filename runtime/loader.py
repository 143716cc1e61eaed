"""Weights from a Hugging Face folder into a model built from its config.

safetensors files (one, or sharded with `model.safetensors.index.json`) are read tensor by
tensor with plain reads, not memory-mapped: mapped file pages count as the process's own memory
until the file is closed, which would add the whole checkpoint (often float32, twice the
model's size in bf16) to the peak. A tensor is read only when a parameter's `weight_loader`
asks for it, and only the slice asked for (CheckpointTensor), so a tensor-parallel rank reads
about 1/N of the checkpoint. `pytorch_model*.bin` is read when no safetensors exist. Each
parameter's own `weight_loader` places the tensor (packing and tensor-parallel slicing live
there).
"""
from __future__ import annotations

import json
import math
import os
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


class CheckpointTensor:
    """A tensor of a safetensors file, read only when asked for, whole or in part: a
    tensor-parallel rank reads the rows (or, of a matrix, the columns) its shard needs and
    never the rest. `narrow` and `shape` are those of torch.Tensor, so weight loaders take a
    CheckpointTensor or a plain tensor alike."""

    def __init__(self, file, offset: int, dtype: torch.dtype, shape: list[int], name: str,
                 counter: list[int]):
        self.file, self.offset, self.dtype, self.name = file, offset, dtype, name
        self.shape = torch.Size(shape)
        self._counter = counter  # [bytes read so far], shared by one iteration's tensors

    def dim(self) -> int:
        return len(self.shape)

    def read(self) -> torch.Tensor:
        if not self.shape:  # a scalar
            out = torch.empty((), dtype=self.dtype)
            self._read_into(out, self.offset)
            return out
        return self.narrow(0, 0, self.shape[0])

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        if not 0 <= start <= start + length <= self.shape[dim]:
            raise ValueError(f"{self.name}: cannot take [{start}, {start + length}) of "
                             f"dimension {dim} of size {self.shape[dim]}")
        if dim == 0:
            return self._read_rows(start, length)
        if dim == 1 and self.dim() == 2:
            return self._read_columns(start, length)
        return self.read().narrow(dim, start, length)

    def _read_rows(self, start: int, length: int) -> torch.Tensor:
        """Rows [start, start + length): one read."""
        row_shape = self.shape[1:]
        out = torch.empty(length, *row_shape, dtype=self.dtype)
        self._read_into(out, self.offset + start * math.prod(row_shape) * self.dtype.itemsize)
        return out

    def _read_columns(self, start: int, length: int) -> torch.Tensor:
        """Per row, one read of the columns [start, start + length)."""
        rows, width = self.shape
        item = self.dtype.itemsize
        out = torch.empty(rows, length, dtype=self.dtype)
        for row in range(rows):
            self._read_into(out[row], self.offset + (row * width + start) * item)
        return out

    def _read_into(self, target: torch.Tensor, position: int) -> None:
        """target: contiguous; filled from the file's bytes at `position`."""
        view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
        size = view.nbytes
        if size and os.preadv(self.file.fileno(), [view], position) != size:
            raise ValueError(f"{self.file.name} is truncated: tensor {self.name!r} is "
                             f"incomplete")
        self._counter[0] += size


def iterate_checkpoint(files: list[Path], counter: list[int] | None = None
                       ) -> Iterator[tuple[str, CheckpointTensor | torch.Tensor]]:
    """(name, tensor) pairs, a safetensors tensor as a CheckpointTensor, valid until the next
    pair. counter: [bytes], increased by what is read from safetensors files."""
    counter = [0] if counter is None else counter
    for path in files:
        if path.suffix == ".safetensors":
            yield from _read_safetensors(path, counter)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def iterate_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, each tensor read whole."""
    for name, tensor in iterate_checkpoint(files):
        yield name, as_tensor(tensor)


def as_tensor(tensor: CheckpointTensor | torch.Tensor) -> torch.Tensor:
    return tensor.read() if isinstance(tensor, CheckpointTensor) else tensor


def _read_safetensors(path: Path, counter: list[int]
                      ) -> Iterator[tuple[str, CheckpointTensor | torch.Tensor]]:
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
        file_size = os.fstat(f.fileno()).st_size
        # In file order, so that whole reads are sequential.
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            if data_start + end > file_size:
                raise ValueError(f"{path} is truncated: tensor {name!r} is incomplete")
            if end - begin != math.prod(entry["shape"]) * dtype.itemsize:
                raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes, which do "
                                 f"not match its shape {entry['shape']} and dtype {dtype}")
            yield name, CheckpointTensor(f, data_start + begin, dtype, entry["shape"], name,
                                         counter)


def load_weights(model: nn.Module, folder: Path) -> int:
    """Returns the bytes read from safetensors files."""
    params = dict(model.named_parameters())
    counter = [0]
    packed: dict[str, tuple[str, int | str]] = getattr(model, "packed_modules_mapping", {})
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    loaded: set[str] = set()
    for name, tensor in iterate_checkpoint(checkpoint_files(folder), counter):
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
                param.data.copy_(as_tensor(tensor))
            elif shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
        loaded.add(target)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"the checkpoint in {folder} lacks weights for: {', '.join(missing[:8])}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    return counter[0]


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
