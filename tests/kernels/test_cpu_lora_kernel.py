"""The cpu backend's LoRA (kernels/cpu/lora.py, csrc/lora.c) against the torch path
(kernels/lora.py) part by part: a merged projection's parts at their column offsets of a wider
output, slots in segments and interleaved, more tokens of one slot than a chunk (48), ranks
zero-padded, strided rows of x, in float32, bfloat16 and float16; rows without an adapter and
columns outside the parts left bit for bit; argument checks."""
from __future__ import annotations

import pytest
import torch

from infernetes.kernels import lora as torch_lora
from infernetes.kernels.cpu import library
from infernetes.kernels.cpu.lora import apply_lora_parts
from infernetes.runtime.gguf_convert import cache_root

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) for outputs of magnitude ~1: the update is rounded to the dtype before the sum,
# so an update on either side of a rounding boundary moves the result by one ulp.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 1.6e-2),
             torch.float16: (2e-3, 2e-3)}
HIDDEN = 72
# (out_features, used rank) of each part, as q, k, v of a small qkv projection
PARTS = [(64, 8), (24, 3), (24, 1)]
PATTERNS = {
    "segments": [-1, 0, 2, 2, 2, 1, -1] + [3] * 60 + [1, 1, 0, -1],  # 60 of slot 3: 2 chunks
    "interleaved": [2, -1, 0, 3, 1, 2, 2, -1, 3, 0, 1, 3, -1, 2, 0, 0, 1, 3, 2, -1, 1],
    "one": [1],
    "base-only": [-1, -1, -1],
}


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    return library.load(cache_root() / "kernels")


def _problem(num_tokens: int, dtype: torch.dtype, max_rank: int = 8, leading: int = 5,
             trailing: int = 7, seed: int = 0):
    """x as a strided view, base [num_tokens, leading + parts + trailing], and per part
    (lora_a, lora_b, column_offset) with 4 slots, ranks zero-padded to max_rank."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(num_tokens, HIDDEN + 16, generator=gen).to(dtype)
    x = wide[:, 3:3 + HIDDEN]  # rows of stride HIDDEN + 16
    total = leading + sum(out for out, _ in PARTS) + trailing
    base = torch.randn(num_tokens, total, generator=gen).to(dtype)
    parts, offset = [], leading
    for out_features, rank in PARTS:
        lora_a = torch.zeros(4, max_rank, HIDDEN)
        lora_b = torch.zeros(4, out_features, max_rank)
        for slot in range(4):
            used = max(1, rank - slot)
            lora_a[slot, :used] = torch.randn(used, HIDDEN, generator=gen) / HIDDEN ** 0.5
            lora_b[slot, :, :used] = torch.randn(out_features, used, generator=gen)
        parts.append((lora_a.to(dtype), lora_b.to(dtype), offset))
        offset += out_features
    return x, base, parts


def _slots(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_matches_the_torch_path_part_by_part(pattern, dtype):
    token_slots = _slots(PATTERNS[pattern])
    x, base, parts = _problem(len(token_slots), dtype)
    expected = base.clone()
    for lora_a, lora_b, offset in parts:
        torch_lora.apply_lora(x, expected, lora_a, lora_b, token_slots, offset)
    got = base.clone()
    apply_lora_parts(x, got, parts, token_slots)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol)
    with_adapter = token_slots >= 0
    assert torch.equal(got[~with_adapter], base[~with_adapter])  # no adapter: untouched
    lo, hi = parts[0][2], parts[-1][2] + parts[-1][1].shape[1]
    assert torch.equal(got[:, :lo], base[:, :lo]) and torch.equal(got[:, hi:], base[:, hi:])
    if with_adapter.any():  # and the adapters did change their rows
        assert (got[with_adapter, lo:hi].float() - base[with_adapter, lo:hi].float()
                ).abs().max() > 0.1


def test_empty_batch_is_a_no_op():
    x, base, parts = _problem(0, torch.float32)
    before = base.clone()
    apply_lora_parts(x, base, parts, _slots([]))
    assert torch.equal(base, before)


@pytest.mark.parametrize("change,named", [
    ("slot-too-high", r"token_slots: values must lie in \[-1, num_slots=4\)"),
    ("slot-too-low", r"token_slots: values must lie"),
    ("mixed-ranks", "lora_a: every part must have one rank"),
    ("strided-base", "x, base: expected unit stride"),
    ("column-offset", "column_offset:"),
    ("base-dtype", "lora_b: dtype"),
])
def test_bad_arguments_are_named(change, named):
    x, base, parts = _problem(4, torch.float32)
    token_slots = _slots([0, 1, -1, 3])
    if change == "slot-too-high":
        token_slots = _slots([0, 4, -1, 3])
    elif change == "slot-too-low":
        token_slots = _slots([0, -2, -1, 3])
    elif change == "mixed-ranks":
        a, b, offset = parts[1]
        parts[1] = (a[:, :4].contiguous(), b[:, :, :4].contiguous(), offset)
    elif change == "strided-base":
        base = torch.zeros(base.shape[1], base.shape[0]).t()
    elif change == "column-offset":
        parts[2] = (parts[2][0], parts[2][1], base.shape[1] - 3)
    elif change == "base-dtype":
        base = base.to(torch.float16)
    with pytest.raises(ValueError, match=named):
        apply_lora_parts(x, base, parts, token_slots)
