"""Fast LoRA slots: LRU placement that never evicts an adapter the batch is using."""
from __future__ import annotations

import pytest

from infernetes.runtime.lora.slots import LoRASlots, Placement


def test_free_slots_first_then_least_recently_used():
    slots = LoRASlots(2)
    assert slots.place(10, set()) == Placement(0, None, loaded=True)
    assert slots.place(11, set()) == Placement(1, None, loaded=True)
    assert slots.place(10, set()) == Placement(0, None, loaded=False)  # now most recent
    assert slots.place(12, set()) == Placement(1, 11, loaded=True)  # 11 was least recent
    assert slots.resident() == [10, 12]


def test_adapters_in_use_are_never_evicted():
    slots = LoRASlots(2)
    slots.place(1, set())
    slots.place(2, set())
    assert not slots.can_place(3, in_use={1, 2})
    with pytest.raises(RuntimeError, match="all 2 LoRA slots are in use"):
        slots.place(3, in_use={1, 2})
    assert slots.can_place(3, in_use={1})
    assert slots.place(3, in_use={1}) == Placement(1, 2, loaded=True)
    assert slots.can_place(1, in_use={1, 3})  # already resident


def test_remove_frees_the_slot():
    slots = LoRASlots(1)
    slots.place(5, set())
    assert slots.remove(5) == 0 and slots.remove(5) is None
    assert slots.place(6, {5}) == Placement(0, None, loaded=True)


def test_at_least_one_slot():
    with pytest.raises(ValueError, match="--max-loras must be at least 1"):
        LoRASlots(0)
