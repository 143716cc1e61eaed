"""The parts of the GPU benchmarks that need no GPU: model sizes and step costs (checked
against transformers' own model on the meta device), the roofline, result files, the config
folders our engine loads, and the runner's planning and summary."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

GPU_BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU_BENCH_DIR))  # the benchmarks import each other as scripts do

import bench_engine  # noqa: E402
import common  # noqa: E402
import models  # noqa: E402
import run_all  # noqa: E402
import transformers_baseline  # noqa: E402

from infernetes.runtime.model_config import ModelArchConfig  # noqa: E402


# -- sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, published", [(models.LLAMA_1B, 1_235_814_400),
                                              (models.LLAMA_8B, 8_030_261_248)])
def test_parameter_count_matches_the_published_checkpoint(shape, published):
    assert shape.param_count == published


@pytest.mark.parametrize("shape", [models.LLAMA_1B, models.LLAMA_8B, models.TINY],
                         ids=lambda s: s.name)
def test_parameter_count_matches_transformers_model(shape):
    assert shape.param_count == models.hf_param_count_on_meta(shape)


@pytest.mark.parametrize("shape", [models.LLAMA_1B, models.LLAMA_8B], ids=lambda s: s.name)
def test_matmul_parameters_are_transformers_linear_weights(shape):
    with torch.device("meta"):
        model = models._from_config(models.hf_config(shape), torch.bfloat16)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert shape.matmul_params_per_token == linear  # the LM head counted, tied or not


def test_decode_reads_every_weight_but_an_untied_embedding():
    one, eight = models.LLAMA_1B, models.LLAMA_8B
    assert one.decode_weight_params == one.param_count  # tied: the table is the LM head
    assert eight.decode_weight_params == eight.param_count - 128256 * 4096
    assert one.weight_bytes(2) == 2 * one.param_count
    assert one.kv_bytes_per_token(2) == 2 * 16 * 8 * 64 * 2 == 32768
    assert eight.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131072


def test_decode_step_cost_of_a_small_batch():
    shape = models.TINY  # 2 layers, 4 heads, 2 KV heads, head_dim 16, hidden 64, vocab 512
    cost = models.decode_step_cost(shape, [10, 20], dtype_bytes=2)
    kv_per_token = 2 * 2 * 2 * 16 * 2
    assert cost.weight_bytes == shape.param_count * 2
    assert cost.kv_bytes == (10 + 20 + 2) * kv_per_token
    assert cost.activation_bytes == 2 * 2 * 64 * 2
    assert cost.flops == 2 * shape.matmul_params_per_token * 2 + 4 * 2 * 4 * 16 * 30
    assert cost.total_bytes == cost.weight_bytes + cost.kv_bytes + cost.activation_bytes


def test_decode_at_batch_256_of_the_1b_is_memory_bound_on_an_h100():
    cost = models.decode_step_cost(models.LLAMA_1B, [512] * 256)
    floor = common.roofline_floor(cost.total_bytes, cost.flops, 3000.0, 790.0)
    # 2.47 GB of weights + 4.3 GB of keys and values at 3 TB/s: about 2.3 ms.
    assert floor.bound == "memory"
    assert floor.floor_s == pytest.approx(cost.total_bytes / 3000e9)
    assert 2.0e-3 < floor.floor_s < 2.6e-3


# -- roofline and timing -----------------------------------------------------------------------

def test_roofline_floor_takes_the_larger_term():
    memory = common.roofline_floor(nbytes=4e9, flops=5e11, bandwidth_gb_s=2000,
                                   matmul_tflop_s=500)
    assert memory.bound == "memory"
    assert (memory.floor_s, memory.memory_s, memory.compute_s) == pytest.approx(
        (2e-3, 2e-3, 1e-3))
    compute = common.roofline_floor(nbytes=1e9, flops=2e15, bandwidth_gb_s=2000,
                                    matmul_tflop_s=500)
    assert compute.bound == "compute"
    assert compute.floor_s == pytest.approx(4.0) and compute.memory_s == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        common.roofline_floor(1, 1, 0, 1)


def test_timing_statistics_and_call_count_on_cpu():
    calls = []
    timing = common.time_region(lambda: calls.append(1), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and timing.repeats == 5
    stats = common.Timing.from_samples([3.0, 1.0, 2.0, 10.0])
    assert (stats.median_ms, stats.min_ms, stats.mean_ms) == (2.5, 1.0, 4.0)


# -- results -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
                                        ("NVIDIA H200", "h200"), ("cpu", "cpu"),
                                        ("  ", "unknown")])
def test_device_slug(name, slug):
    assert common.device_slug(name) == slug


def test_write_result_without_out(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    payload = {"device": {"slug": "h100-80gb-hbm3"}, "value": 1.5}
    paths = common.write_result("engine", payload, tmp_path / "results")
    assert paths == [tmp_path / "results" / "gpu-engine-h100-80gb-hbm3.json"]
    assert json.loads(paths[0].read_text()) == payload
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [paths[0].name]


def test_write_result_also_to_out(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    paths = common.write_result("decode_attention", {"x": 1}, tmp_path / "results", slug="H200")
    assert [p.parent.name for p in paths] == ["results", "out"]
    assert all(p.name == "gpu-decode_attention-h200.json" for p in paths)
    assert all(json.loads(p.read_text()) == {"x": 1} for p in paths)
    common.write_result("decode_attention", {"x": 2}, tmp_path / "results", slug="H200")
    assert json.loads(paths[1].read_text()) == {"x": 2}  # rewritten in place, no temp left
    assert os.listdir(tmp_path / "out") == ["gpu-decode_attention-h200.json"]


def test_result_names_are_safe_for_the_device_tool():
    with pytest.raises(ValueError, match="letters"):
        common.write_result("engine/../x", {}, slug="cpu")


# -- config folders ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [models.LLAMA_1B, models.LLAMA_8B], ids=lambda s: s.name)
def test_config_folder_loads_in_our_engine(tmp_path, shape):
    folder = models.write_config_folder(shape, tmp_path / shape.name)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    arch = ModelArchConfig.from_folder(folder)
    assert (arch.architecture, arch.hidden_size, arch.num_hidden_layers,
            arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim,
            arch.intermediate_size, arch.vocab_size, arch.tie_word_embeddings) == (
        "LlamaForCausalLM", shape.hidden_size, shape.num_hidden_layers,
        shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim,
        shape.intermediate_size, shape.vocab_size, shape.tie_word_embeddings)
    assert (arch.rope.rope_type, arch.rope.theta, arch.rope.factor) == (
        "llama3", 500000.0, shape.rope_scaling["factor"])
    assert arch.torch_dtype == torch.bfloat16


# -- the engine benchmark's pure parts ---------------------------------------------------------

def test_prompts_are_reproducible_and_inside_the_vocabulary():
    a = common.make_prompts(128256, 4, 512, seed=0)
    assert a == common.make_prompts(128256, 4, 512, seed=0)
    assert a != common.make_prompts(128256, 4, 512, seed=1)
    assert all(len(p) == 512 and 100 <= min(p) and max(p) < 128156 for p in a)
    tiny = common.make_prompts(512, 2, 16, seed=0)
    assert all(0 <= t < 512 for p in tiny for t in p)


def test_left_padding():
    ids, mask = transformers_baseline.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids == [[5, 6, 7], [0, 0, 8]] and mask == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("settings", [bench_engine.FULL, bench_engine.QUICK])
def test_engine_capacity_fits_both_measurements(settings):
    shape = models.LLAMA_8B
    max_model_len, kv_bytes, max_num_seqs = bench_engine.engine_capacity(shape, settings)
    work = settings.throughput
    assert max_model_len >= work.input_len + work.output_len
    biggest = max(settings.decode_batches)
    decode_len = settings.decode_context + bench_engine._decode_max_tokens(biggest, settings)
    assert max_model_len >= decode_len
    blocks = kv_bytes // (16 * shape.kv_bytes_per_token(2))
    assert blocks >= work.num_requests * -(-(work.input_len + work.output_len) // 16)
    assert blocks >= biggest * -(-decode_len // 16)
    assert max_num_seqs >= max(work.num_requests, biggest)
    assert kv_bytes < 40 * 2**30  # leaves an 80 GB GPU room for transformers' turn


def test_goals_report_measured_values_and_unmeasured_ones():
    measured = {"llama-1b": {"engine_over_transformers": {"ratio": 6.2},
                             "decode_steps": {"batch_256": {"step_over_floor": 1.8}}},
                "llama-8b": {"decode_steps": {"batch_256": {"status": "error"}}}}
    goals = bench_engine.goals(measured)
    assert goals["engine_over_transformers_llama-1b"]["met"] is True
    assert goals["decode_step_over_roofline_b256_llama-1b"] == {
        "value": 1.8, "goal": "<= 1.5", "met": False}
    assert goals["decode_step_over_roofline_b256_llama-8b"]["met"] is None


def test_engine_benchmark_names_a_missing_dummy_load(monkeypatch):
    from infernetes.runtime import config
    fields = dict(config.EngineConfig.__dataclass_fields__)
    fields.pop("load_format")
    monkeypatch.setattr(config.EngineConfig, "__dataclass_fields__", fields)
    with pytest.raises(RuntimeError, match="load_format='dummy'"):
        bench_engine.check_dummy_load_support()


def test_a_failing_section_is_recorded_and_the_next_runs():
    results: dict = {}
    common.run_section(results, "broken", lambda: 1 / 0)
    common.run_section(results, "fine", lambda: {"value": 3})
    assert results["broken"]["status"] == "error"
    assert "ZeroDivisionError" in results["broken"]["error"]
    assert results["fine"]["status"] == "ok" and results["fine"]["value"] == 3


# -- the runner --------------------------------------------------------------------------------

def test_step_limits_leave_the_engine_its_reserve():
    assert run_all.plan_limit(cap=150, remaining=530, reserve=260) == 150
    assert run_all.plan_limit(cap=150, remaining=300, reserve=260) == 40
    assert run_all.plan_limit(cap=150, remaining=200, reserve=260) == 0


def test_summary_leaves_ratios_first():
    leaves = run_all.numeric_leaves(
        {"a": 1, "configs": [{"ms": 2.0, "ratio_to_copy": 0.8}], "flag": True}, limit=2)
    assert leaves == [("configs[0].ratio_to_copy", 0.8), ("a", 1.0)]


def test_summary_ignores_result_files_of_earlier_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS_DIR", tmp_path)
    path = tmp_path / "gpu-engine-h200.json"
    path.write_text('{"old": true}')
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert run_all.read_result("engine", "h200", since=time.time()) is None
    path.write_text('{"new": true}')
    assert run_all.read_result("engine", "h200", since=time.time() - 60) == {"new": True}
