"""LoRA adapters inside the fused CPU decode layers (kernels/cpu/csrc/lora.c): a decode batch
mixing the base model and two adapters of different ranks and target modules, in slots that
interleave, equals the same step one op at a time (the layers' own LoRA kernels) and on torch
ops; base-model rows are untouched, bit for bit. Engine-level greedy equality with
transformers + peft is in test_lora_engine.py, which now decodes through these layers."""
from __future__ import annotations

import pytest
import torch

from infernetes.kernels.cpu.decoder_layer import decode_batch, decoder_layers
from infernetes.runtime.config import LoRAConfig

from cpu_steps import CONTEXTS, MANY_CONTEXTS, decode_hidden, make_runner
from lora_adapters import lora_requests, make_peft_adapter

ADAPTERS = {
    "wide": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    "narrow": dict(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"]),
}
LORA = LoRAConfig(max_loras=2, max_lora_rank=8)


@pytest.fixture(scope="module")
def adapter_folders(tiny_models, tmp_path_factory) -> dict[str, str]:
    from transformers import AutoModelForCausalLM
    folders = {}
    for seed, (name, args) in enumerate(ADAPTERS.items()):
        base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
        folder = tmp_path_factory.mktemp(f"fused-lora-{name}")
        make_peft_adapter(base, args, folder, seed=40 + seed, std=0.2)
        folders[name] = str(folder)
    return folders


# 70 short sequences, 56 of them on one adapter: more than one chunk of a slot's tokens
# (IFN_LORA_CHUNK, 48), each a GEMM (12 rows and more).
CHUNKED_CONTEXTS = [1 + i % 7 for i in range(70)]


def _names(count: int) -> list[str | None]:
    """Every slot's rows interleaved: base, wide, narrow, wide, base, narrow, ... for a few
    sequences; for many, mostly wide, with every tenth base and every tenth narrow."""
    if count == 1:
        return ["wide"]
    if count > 20:
        return [None if i % 10 == 0 else "narrow" if i % 10 == 5 else "wide"
                for i in range(count)]
    cycle = [None, "wide", "narrow", "wide", None, "narrow"]
    return [cycle[i % len(cycle)] for i in range(count)]


@pytest.mark.parametrize("contexts", [[30], CONTEXTS, MANY_CONTEXTS, CHUNKED_CONTEXTS],
                         ids=["one", "rows", "many", "chunks"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_layers_add_each_tokens_adapter(tiny_models, adapter_folders, dtype, contexts):
    folder = tiny_models["llama"]
    names = _names(len(contexts))
    adapters = lora_requests(names, adapter_folders)
    runner = make_runner(folder, dtype, "cpu", LORA)
    fused = decode_hidden(runner, True, contexts, adapters)
    one_op_at_a_time = decode_hidden(runner, False, contexts, adapters)
    torch_ops = decode_hidden(make_runner(folder, dtype, "torch", LORA), False, contexts,
                              adapters)
    scale = torch_ops.abs().max().item()
    # Half precision: two layers of roundings in another order, a few ulps apart.
    tolerance = dict(atol=0.03 * scale, rtol=0.03) if dtype != torch.float32 else \
        dict(atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(fused, torch_ops, **tolerance)
    torch.testing.assert_close(fused, one_op_at_a_time, **tolerance)

    base_only = decode_hidden(make_runner(folder, dtype, "cpu", LORA), True, contexts, None)
    for row, name in enumerate(names):
        if name is None:  # the same products, no adapter: not a bit changed
            assert torch.equal(fused[row], base_only[row]), row
        else:  # the adapter moved the row far beyond the tolerance
            assert (fused[row] - base_only[row]).abs().max() > 0.1 * scale, (row, name)


def test_token_slots_outside_the_layers_slots_are_refused(tiny_models, adapter_folders):
    runner = make_runner(tiny_models["llama"], torch.float32, "cpu", LORA)
    model = runner.model.model
    stack = model.decoder_stack()
    assert stack.lora_slots == LORA.max_loras
    hidden = torch.zeros(1, stack.hidden)
    one = torch.zeros(1, dtype=torch.int64)

    def batch(slots: list[int], dtype=torch.int32):
        return decode_batch(one, one, one.view(1, 1), one + 1, model.rotary.cos_sin,
                            torch.tensor(slots, dtype=dtype))

    with pytest.raises(ValueError, match=r"token_slots: values must lie in \[-1, num_slots=2\)"):
        decoder_layers(stack, batch([2]), hidden, None)
    with pytest.raises(ValueError, match=r"token_slots: values must lie"):
        decoder_layers(stack, batch([-2]), hidden, None)
    with pytest.raises(ValueError, match="token_slots: expected a contiguous int32"):
        batch([0], torch.int64)
    plain = make_runner(tiny_models["llama"], torch.float32, "cpu").model.model.decoder_stack()
    with pytest.raises(ValueError, match=r"values must lie in \[-1, num_slots=0\)"):
        decoder_layers(plain, batch([0]), hidden, None)  # no adapters: no slot at all
