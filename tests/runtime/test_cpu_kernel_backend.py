"""The "cpu" kernel backend: decode steps in fused C decoder layers against the same model on
torch ops, in half precision (float32 is compared with transformers in test_correctness.py);
how the backend is chosen, and what the runner sends where."""
from __future__ import annotations

import pytest
import torch

from infernetes.kernels.cpu.decoder_layer import DecoderStack, decode_batch, decoder_layers
from infernetes.runtime.config import ConfigError, EngineConfig
from infernetes.runtime.engine.kernel_backend import resolve_kernel_backend
from infernetes.runtime.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from infernetes.runtime.request import LoRARequest
from infernetes.runtime.sampling_params import SamplingParams

from cpu_steps import CONTEXTS, MANY_CONTEXTS, decode_hidden, make_runner, requests_for


# One sequence alone: its attention splits by query head rather than by KV head.
@pytest.mark.parametrize("contexts", [[30], CONTEXTS, MANY_CONTEXTS], ids=["one", "rows", "gemm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2"])
def test_fused_decode_layers_match_torch_ops(tiny_models, name, dtype, contexts):
    torch_hidden = decode_hidden(make_runner(tiny_models[name], dtype, "torch"), False, contexts)
    runner = make_runner(tiny_models[name], dtype, "cpu")
    fused = decode_hidden(runner, True, contexts)
    one_op_at_a_time = decode_hidden(runner, False, contexts)
    scale = torch_hidden.abs().max().item()
    # Two layers of half-precision roundings, summed in another order: a few ulps apart.
    tolerance = dict(atol=0.03 * scale, rtol=0.03)
    torch.testing.assert_close(fused, torch_hidden, **tolerance)
    torch.testing.assert_close(one_op_at_a_time, torch_hidden, **tolerance)
    torch.testing.assert_close(fused, one_op_at_a_time, **tolerance)


def test_a_stack_split_in_two_continues_from_the_residual(tiny_models):
    """The model's layers in one call equal its first layers, then the rest fed the first
    part's output and residual (the path where a stack does not start at layer 0)."""
    runner = make_runner(tiny_models["llama"], torch.bfloat16, "cpu")
    runner.execute_model(SchedulerOutput(requests_for("prefill"), sum(CONTEXTS)))
    input_ids, positions, meta, _ = runner._prepare(requests_for("decode"))
    model = runner.model.model
    batch = decode_batch(positions, meta.slot_mapping, meta.decode_block_tables,
                         meta.decode_seq_lens, model.rotary.cos_sin)
    with torch.inference_mode():
        hidden = model.embed_tokens(input_ids)
        layers = [layer.fused_weights() for layer in model.layers]
        # Each call stores the step's keys and values again: the same values, so no harm.
        whole = decoder_layers(DecoderStack(layers), batch, hidden, None)
        half = len(layers) // 2
        first = decoder_layers(DecoderStack(layers[:half]), batch, hidden, None)
        second = decoder_layers(DecoderStack(layers[half:]), batch, *first)
    assert 0 < half < len(layers)
    assert torch.equal(second[0], whole[0]) and torch.equal(second[1], whole[1])
    # The model's final norm in the same call: as RMSNorm.forward with the residual.
    norm = model.norm
    with torch.inference_mode():
        normed, summed = decoder_layers(DecoderStack(layers), batch, hidden, None, norm.weight,
                                        norm.eps)
        expected, expected_sum = norm(*whole)
    assert torch.equal(summed, expected_sum)
    torch.testing.assert_close(normed, expected, atol=0.02 * expected.abs().max().item(),
                               rtol=0.02)


def test_a_decoder_stack_checks_its_layers(tiny_models):
    runner = make_runner(tiny_models["llama"], torch.bfloat16, "cpu")
    layers = [layer.fused_weights() for layer in runner.model.model.layers]
    with pytest.raises(ValueError, match="at least one layer"):
        DecoderStack([])
    other = make_runner(tiny_models["llama"], torch.float16, "cpu").model.model.layers[0]
    with pytest.raises(ValueError, match="layer 1: torch.float16"):
        DecoderStack([layers[0], other.fused_weights()])
    stack = DecoderStack(layers)
    hidden = torch.zeros(2, stack.hidden + 1, dtype=torch.bfloat16)
    batch = decode_batch(*(torch.zeros(2, dtype=torch.long) for _ in range(2)),
                         torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long),
                         runner.model.model.rotary.cos_sin)
    with pytest.raises(ValueError, match="hidden: expected contiguous torch.bfloat16"):
        decoder_layers(stack, batch, hidden, None)
    with pytest.raises(ValueError, match="final_norm: expected a contiguous torch.bfloat16"):
        decoder_layers(stack, batch, hidden[:, :-1].contiguous(), None,
                       torch.ones(stack.hidden + 1, dtype=torch.bfloat16), 1e-5)


def test_runner_fuses_every_decode_batch_on_one_rank(tiny_models):
    runner = make_runner(tiny_models["llama"], torch.float32, "cpu")
    decode = requests_for("decode")
    _, _, meta, _ = runner._prepare(decode)
    assert runner._fuses_decode(meta)
    prefill = requests_for("prefill")
    _, _, meta, _ = runner._prepare(prefill)
    assert not runner._fuses_decode(meta)
    many = [ScheduledRequest(f"m{i}", [1], 1, [0], True, SamplingParams(), [1], [1])
            for i in range(40)]
    many[7].lora_request = LoRARequest("adapter", 1)
    _, _, meta, _ = runner._prepare(many)
    assert runner._fuses_decode(meta)  # large batches and adapters too
    torch_ops = make_runner(tiny_models["llama"], torch.float32, "torch")
    _, _, meta, _ = torch_ops._prepare(decode)
    assert not torch_ops._fuses_decode(meta)


def test_backend_choice():
    cpu = torch.device("cpu")
    assert resolve_kernel_backend("auto", cpu) == "cpu"  # this machine has AVX2 and gcc
    assert resolve_kernel_backend("torch", cpu) == "torch"
    with pytest.raises(ConfigError, match="--kernel-backend cpu runs on CPU devices"):
        resolve_kernel_backend("cpu", torch.device("meta"))
    with pytest.raises(ConfigError, match="--kernel-backend must be one of"):
        EngineConfig(kernel_backend="avx")


def test_without_a_compiler_auto_falls_back_and_cpu_says_why(monkeypatch, tmp_path, caplog):
    from infernetes.kernels.cpu import library
    monkeypatch.setattr(library, "_library", None)
    monkeypatch.setenv("INFERNETES_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_kernel_backend("auto", torch.device("cpu")) == "torch"
    assert "CPU kernels unavailable" in caplog.text
    with pytest.raises(ConfigError, match="--kernel-backend cpu: no C compiler found"):
        resolve_kernel_backend("cpu", torch.device("cpu"))


def test_a_failing_compiler_is_reported_with_its_command(monkeypatch, tmp_path):
    from infernetes.kernels.cpu import library
    monkeypatch.setattr(library, "_library", None)
    monkeypatch.setenv("INFERNETES_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exists, fails every compile
    with pytest.raises(ConfigError, match="compiling the CPU kernels failed \\(false "):
        resolve_kernel_backend("cpu", torch.device("cpu"))


def test_the_cli_flag_reaches_the_engine_config():
    import argparse

    from infernetes.runtime.cli_args import add_engine_args, engine_config_from_args
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_config_from_args(parser.parse_args([]), None).kernel_backend == "auto"
    args = parser.parse_args(["--kernel-backend", "torch"])
    assert engine_config_from_args(args, None).kernel_backend == "torch"
    with pytest.raises(SystemExit):  # argparse names the flag and its choices
        parser.parse_args(["--kernel-backend", "avx512"])
