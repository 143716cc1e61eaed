"""Which adapters sit in the fast slots (`--max-loras`), chosen least-recently-used.

Pure bookkeeping: the engine copies an adapter's weights into the slot this returns, and the
scheduler asks `can_place` before admitting a request, so that one step never needs more
slots than exist. An adapter used by a request in the current batch is never evicted.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    slot: int
    evicted: int | None  # the adapter id whose slot this was, if any
    loaded: bool  # False when the adapter was already in the slot (no copy needed)


class LoRASlots:
    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError(f"--max-loras must be at least 1, got {num_slots}")
        self.num_slots = num_slots
        self._slot_of: OrderedDict[int, int] = OrderedDict()  # adapter id -> slot, LRU first

    def slot_of(self, lora_id: int) -> int | None:
        return self._slot_of.get(lora_id)

    def resident(self) -> list[int]:
        return list(self._slot_of)

    def can_place(self, lora_id: int, in_use: set[int]) -> bool:
        """Whether `lora_id` can have a slot while the adapters in `in_use` keep theirs."""
        if lora_id in self._slot_of or len(self._slot_of) < self.num_slots:
            return True
        return any(other not in in_use for other in self._slot_of)

    def place(self, lora_id: int, in_use: set[int]) -> Placement:
        """A slot for `lora_id`: its own, a free one, or the least recently used one not in
        `in_use`. Raises RuntimeError when every slot is in use (check `can_place` first)."""
        if lora_id in self._slot_of:
            self._slot_of.move_to_end(lora_id)
            return Placement(self._slot_of[lora_id], None, loaded=False)
        if len(self._slot_of) < self.num_slots:
            taken = set(self._slot_of.values())
            slot = next(s for s in range(self.num_slots) if s not in taken)
            self._slot_of[lora_id] = slot
            return Placement(slot, None, loaded=True)
        victim = next((other for other in self._slot_of if other not in in_use), None)
        if victim is None:
            raise RuntimeError(f"all {self.num_slots} LoRA slots are in use by this batch")
        slot = self._slot_of.pop(victim)
        self._slot_of[lora_id] = slot
        return Placement(slot, victim, loaded=True)

    def remove(self, lora_id: int) -> int | None:
        """Forget an unloaded adapter; returns the slot it freed."""
        return self._slot_of.pop(lora_id, None)
