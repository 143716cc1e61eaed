"""Batched multi-adapter LoRA for one linear layer, in torch: the CPU path and the reference for
the Triton kernels (kernels/triton/lora.py, same names and semantics).

Adapters live in "slots" of stacked weights, each zero-padded to `max_rank` (a padded rank adds
exact zeros), with the adapter's scaling already folded into B:
    lora_a: [num_slots, max_rank, in_features]
    lora_b: [num_slots, out_features, max_rank]
Token t uses slot `token_slots[t]` (int32); -1 means the base model alone. The update is

    y[t]    = x[t] @ lora_a[slot].T                      (shrink; float32; 0 where slot == -1)
    base[t, column_offset : column_offset + out_features] += (y[t] @ lora_b[slot].T)   (expand)

with the product in float32, added to the base layer's output (model dtype) in place. Rows with
slot -1 are left bit for bit as they were. `column_offset` points the update at one projection's
columns of a merged output (q, k or v of qkv; gate or up of gate_up).

Here tokens are grouped by slot on the host (one sort per call, hence one device sync where the
tensors live on a GPU): one matmul per distinct slot, a view where the slot's tokens are
contiguous (a prefill chunk) and a gather/scatter where they are not.
"""
from __future__ import annotations

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# (slot, rows): the tokens that use one slot, as a slice where contiguous, else an index tensor.
SlotGroups = list[tuple[int, "slice | torch.Tensor"]]


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [num_tokens, in_features]; lora_a: [num_slots, max_rank, in_features] in x's dtype;
    token_slots: [num_tokens] int32 in [-1, num_slots). out: [num_tokens, max_rank] float32 or
    None to allocate. Returns out = x @ lora_a[slot].T per token, 0 for slot -1."""
    check_shrink_args(x, lora_a, token_slots, out)
    if out is None:
        out = torch.empty((x.shape[0], lora_a.shape[1]), dtype=torch.float32, device=x.device)
    _shrink_groups(x, lora_a, slot_groups(token_slots, lora_a.shape[0]), out)
    return out


def lora_expand(y: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                base: torch.Tensor, column_offset: int = 0) -> None:
    """y: [num_tokens, max_rank] float32 (lora_shrink's output); lora_b: [num_slots,
    out_features, max_rank] in base's dtype; base: [num_tokens, total_out], updated in place:
    base[:, column_offset:column_offset + out_features] += (y @ lora_b[slot].T).to(base.dtype)
    for rows with slot >= 0."""
    check_expand_args(y, lora_b, token_slots, base, column_offset)
    target = base.narrow(1, column_offset, lora_b.shape[1])
    _expand_groups(y, lora_b, slot_groups(token_slots, lora_b.shape[0]), target)


def apply_lora(x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               token_slots: torch.Tensor, column_offset: int = 0) -> None:
    """lora_shrink then lora_expand into `base` (in place), grouping the tokens once."""
    check_apply_args(x, base, lora_a, lora_b, token_slots, column_offset)
    groups = slot_groups(token_slots, lora_a.shape[0])
    if not groups:
        return
    y = torch.empty((x.shape[0], lora_a.shape[1]), dtype=torch.float32, device=x.device)
    _shrink_groups(x, lora_a, groups, y)
    _expand_groups(y, lora_b, groups, base.narrow(1, column_offset, lora_b.shape[1]))


def slot_groups(token_slots: torch.Tensor, num_slots: int) -> SlotGroups:
    """The tokens of each slot in use, slot -1 left out; rows ascending. Raises ValueError
    (naming token_slots) for a slot outside [-1, num_slots). Grouped in numpy on the host: a
    handful of microseconds, where torch's small CPU ops cost several each."""
    slots = token_slots.cpu().numpy()
    if slots.size == 0:
        return []
    order = np.argsort(slots, kind="stable")  # stable: each slot's rows stay ascending
    sorted_slots = slots[order]
    check_slot_range(int(sorted_slots[0]), int(sorted_slots[-1]), num_slots)
    bounds = (np.flatnonzero(sorted_slots[1:] != sorted_slots[:-1]) + 1).tolist()
    groups: SlotGroups = []
    for start, end in zip([0, *bounds], [*bounds, slots.size]):
        slot = int(sorted_slots[start])
        if slot < 0:
            continue
        first_row, last_row = int(order[start]), int(order[end - 1])
        if last_row - first_row + 1 == end - start:  # contiguous: a view, no gather
            groups.append((slot, slice(first_row, last_row + 1)))
        else:
            groups.append((slot, torch.from_numpy(order[start:end]).to(token_slots.device)))
    return groups


def _shrink_groups(x: torch.Tensor, lora_a: torch.Tensor, groups: SlotGroups,
                   out: torch.Tensor) -> None:
    """out[rows] = x[rows] @ lora_a[slot].T per group, every other row 0."""
    covers_all = len(groups) == 1 and isinstance(groups[0][1], slice) and \
        groups[0][1] == slice(0, x.shape[0])
    if not covers_all:
        out.zero_()  # for the rows of slot -1
    for slot, rows in groups:
        out[rows] = x[rows].float() @ lora_a[slot].float().T


def _expand_groups(y: torch.Tensor, lora_b: torch.Tensor, groups: SlotGroups,
                   target: torch.Tensor) -> None:
    """target[rows] += (y[rows] @ lora_b[slot].T).to(target.dtype) per group. target is a
    column slice of the base output (a view: the update lands in the base tensor)."""
    for slot, rows in groups:
        delta = (y[rows] @ lora_b[slot].float().T).to(target.dtype)
        if isinstance(rows, slice):
            target[rows] += delta
        else:
            target.index_add_(0, rows, delta)


# -- argument checks (shared with the Triton launchers) --------------------------------------

def check_shrink_args(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor,
                      out: torch.Tensor | None) -> None:
    """Shapes, dtypes and devices of lora_shrink's arguments; ValueError naming the first bad
    one."""
    if x.dim() != 2:
        raise ValueError(f"x: expected [num_tokens, in_features], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x: dtype {x.dtype} is not one of {SUPPORTED_DTYPES}")
    num_tokens, in_features = x.shape
    if lora_a.dim() != 3 or lora_a.shape[2] != in_features or lora_a.shape[1] < 1:
        raise ValueError(f"lora_a: expected [num_slots, max_rank >= 1, in_features="
                         f"{in_features}], got shape {tuple(lora_a.shape)}")
    _check_like("lora_a", lora_a, x.dtype, x.device)
    _check_token_slots(token_slots, num_tokens, x.device)
    if out is not None:
        expected = (num_tokens, lora_a.shape[1])
        if tuple(out.shape) != expected:
            raise ValueError(f"out: expected shape {expected}, got {tuple(out.shape)}")
        _check_like("out", out, torch.float32, x.device)


def check_expand_args(y: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                      base: torch.Tensor, column_offset: int) -> None:
    """Shapes, dtypes, devices and the column range of lora_expand's arguments; ValueError
    naming the first bad one."""
    _check_base_and_lora_b(base, lora_b, token_slots, column_offset)
    expected = (base.shape[0], lora_b.shape[2])
    if tuple(y.shape) != expected:
        raise ValueError(f"y: expected shape {expected} ([num_tokens, max_rank]), got "
                         f"{tuple(y.shape)}")
    _check_like("y", y, torch.float32, base.device)


def check_apply_args(x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor,
                     lora_b: torch.Tensor, token_slots: torch.Tensor, column_offset: int) -> None:
    """apply_lora's arguments: those of the shrink and of the expand, and B's slots and rank
    matching A's."""
    check_shrink_args(x, lora_a, token_slots, None)
    if base.dim() == 2 and base.shape[0] != x.shape[0]:
        raise ValueError(f"base: expected {x.shape[0]} rows (x's num_tokens), got shape "
                         f"{tuple(base.shape)}")
    _check_base_and_lora_b(base, lora_b, token_slots, column_offset)
    if lora_b.shape[0] != lora_a.shape[0] or lora_b.shape[2] != lora_a.shape[1]:
        raise ValueError(f"lora_b: expected [num_slots={lora_a.shape[0]}, out_features, "
                         f"max_rank={lora_a.shape[1]}] (lora_a's), got shape "
                         f"{tuple(lora_b.shape)}")


def _check_base_and_lora_b(base: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                           column_offset: int) -> None:
    if base.dim() != 2:
        raise ValueError(f"base: expected [num_tokens, total_out], got shape "
                         f"{tuple(base.shape)}")
    if base.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"base: dtype {base.dtype} is not one of {SUPPORTED_DTYPES}")
    num_tokens, total_out = base.shape
    if lora_b.dim() != 3 or lora_b.shape[2] < 1:
        raise ValueError(f"lora_b: expected [num_slots, out_features, max_rank >= 1], got "
                         f"shape {tuple(lora_b.shape)}")
    _check_like("lora_b", lora_b, base.dtype, base.device)
    _check_token_slots(token_slots, num_tokens, base.device)
    out_features = lora_b.shape[1]
    if isinstance(column_offset, bool) or not isinstance(column_offset, int) or \
            column_offset < 0 or column_offset + out_features > total_out:
        raise ValueError(f"column_offset: expected an int in [0, total_out - out_features = "
                         f"{total_out - out_features}], got {column_offset!r}")


def check_slot_range(lowest: int, highest: int, num_slots: int) -> None:
    """ValueError naming token_slots unless its values, lowest..highest, lie in
    [-1, num_slots)."""
    if lowest < -1 or highest >= num_slots:
        raise ValueError(f"token_slots: values must lie in [-1, num_slots={num_slots}), got "
                         f"{lowest}..{highest}")


def _check_like(name: str, tensor: torch.Tensor, dtype: torch.dtype,
                device: torch.device) -> None:
    if tensor.dtype != dtype:
        raise ValueError(f"{name}: dtype {tensor.dtype}, expected {dtype}")
    if tensor.device != device:
        raise ValueError(f"{name}: on {tensor.device}, expected {device}")


def _check_token_slots(token_slots: torch.Tensor, num_tokens: int,
                       device: torch.device) -> None:
    if token_slots.dim() != 1 or token_slots.shape[0] != num_tokens:
        raise ValueError(f"token_slots: expected shape ({num_tokens},), got "
                         f"{tuple(token_slots.shape)}")
    _check_like("token_slots", token_slots, torch.int32, device)
