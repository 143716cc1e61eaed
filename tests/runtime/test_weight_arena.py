"""Parameters moved into one huge-page arena before loading: same shapes, ties kept, the
memory advised for (and, where the kernel allows, backed by) 2 MiB pages."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import nn

from infernetes.runtime.engine.weight_arena import HUGE_PAGE, place_in_huge_pages


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4096, 256, dtype=torch.bfloat16)
        self.head = nn.Linear(256, 4096, bias=False, dtype=torch.bfloat16)
        self.head.weight = self.embed.weight
        self.norm = nn.Parameter(torch.ones(7))


def _thp_for_private_memory() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[never]" not in path.read_text()


def _anon_huge_kib(start: int, end: int) -> int:
    """AnonHugePages of the mappings overlapping [start, end) in this process."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low < end and high > start
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


def test_parameters_move_into_one_arena_with_ties_kept():
    model = _Tied()
    shapes = {name: (p.shape, p.dtype) for name, p in model.named_parameters()}
    mapping = place_in_huge_pages(model)
    assert mapping is not None
    assert model.head.weight is model.embed.weight
    assert {name: (p.shape, p.dtype) for name, p in model.named_parameters()} == shapes
    pointers = sorted(p.data_ptr() for p in model.parameters())
    assert pointers[0] % HUGE_PAGE == 0  # the arena starts on a huge-page boundary
    assert all(p % 64 == 0 for p in pointers)
    # loading writes through the parameters into the arena, and reads back
    with torch.no_grad():
        model.embed.weight.copy_(torch.arange(4096 * 256).view(4096, 256) % 97)
        model.norm.fill_(3)
    assert model.head.weight[5, 7].item() == (5 * 256 + 7) % 97
    assert torch.equal(model.norm.data, torch.full((7,), 3.0))
    base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    if _thp_for_private_memory():
        assert _anon_huge_kib(base, base + len(mapping)) >= HUGE_PAGE // 1024


def test_a_model_without_parameters_needs_no_arena():
    assert place_in_huge_pages(nn.ReLU()) is None
