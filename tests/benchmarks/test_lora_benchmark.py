"""benchmarks/lora.py: its adapters load through the engine's PEFT loader, requests spread
round-robin, ratios are to the base-only median, a run on a tiny random model writes the
JSON that is documented, and the GPU runner writes that run as gpu-lora_engine-<device>.json."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from infernetes.benchmarks import lora
from infernetes.benchmarks.gpu import models
from infernetes.runtime.lora import load_lora_adapter
from infernetes.runtime.model_config import ModelArchConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "gpu"))  # run_all imports `common` as a script

import common  # noqa: E402
import run_all  # noqa: E402


def _rate(tok_per_s: float) -> dict[str, float]:
    return {"tokens": 100, "seconds": 100 / tok_per_s, "tok_per_s": tok_per_s}


def test_adapters_load_through_the_peft_loader(tmp_path):
    model_folder = models.write_config_folder(models.TINY, tmp_path / "model")
    folder = lora.write_adapter(tmp_path / "adapter", model_folder, rank=16, seed=0)
    arch = ModelArchConfig.from_folder(model_folder)
    adapter = load_lora_adapter(folder, "a", arch, max_rank=16)
    assert adapter.rank == 16
    assert len(adapter.modules) == arch.num_hidden_layers * 7  # all-linear, every layer
    down = adapter.modules[(1, "down")]
    assert tuple(down.a.shape) == (16, arch.intermediate_size)
    assert tuple(down.b.shape) == (arch.hidden_size, 16)
    assert all(m.b.abs().min() > 0 for m in adapter.modules.values())


def test_requests_are_spread_round_robin():
    assert lora.adapter_of_request(6, 4) == [0, 1, 2, 3, 0, 1]
    assert lora.adapter_of_request(3, 1) == [0, 0, 0]
    assert lora.adapter_of_request(3, 0) == [None, None, None]


def test_ratios_are_medians_over_the_base_only_median():
    runs = {0: [_rate(100), _rate(120), _rate(110)], 8: [_rate(90), _rate(99), _rate(80)]}
    summary = lora.summarize(runs, [_rate(125), _rate(130), _rate(150)])
    eight = summary["configurations"]["8"]
    assert eight["median_tok_per_s"] == pytest.approx(90)
    assert eight["ratio_to_base_only"] == pytest.approx(90 / 110)
    assert summary["configurations"]["0"]["ratio_to_base_only"] == 1
    assert summary["lora_disabled"]["ratio_lora_base_only_to_disabled"] == pytest.approx(
        110 / 130)
    assert lora.goal(summary, "cpu") == {"value": pytest.approx(90 / 110),
                                         "goal": ">= 0.85 on a GPU", "met": None}
    assert lora.goal(summary, "cuda")["met"] is False
    assert "lora_disabled" not in lora.summarize(runs, None)


def test_bad_adapter_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        lora.parse_args(["--adapter-counts", "1,x"])
    assert "--adapter-counts" in capsys.readouterr().err
    assert lora.parse_args(["--adapter-counts", "8,1"]).adapter_counts == [0, 1, 8]


def test_script_on_a_tiny_random_model_writes_the_figures(tmp_path):
    out = tmp_path / "lora.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "lora.py"), "--shape", "tiny",
               "--device", "cpu", "--num-prompts", "4", "--input-len", "8", "--output-len",
               "4", "--rounds", "2", "--adapter-counts", "1,8", "--threads", "1",
               "--output-json", str(out)]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "8 adapters / base only" in finished.stdout
    result = json.loads(out.read_text())
    assert set(result["configurations"]) == {"0", "1", "8"}  # base only is always measured
    for count, config in result["configurations"].items():
        assert config["num_adapters"] == int(count)
        assert [r["tokens"] for r in config["runs"]] == [16, 16]  # 4 prompts x 4 tokens
        assert config["median_tok_per_s"] > 0 and config["ratio_to_base_only"] > 0
    assert result["configurations"]["0"]["ratio_to_base_only"] == 1
    assert len(result["lora_disabled"]["runs"]) == 2
    assert result["lora_disabled"]["ratio_lora_base_only_to_disabled"] > 0
    assert result["goal_8_adapters"]["met"] is None  # judged on a GPU only
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch_version"]
    assert result["machine"]["torch_threads"] == 1
    assert result["command"][1:] == command[1:]
    assert result["workload"]["num_prompts"] == 4 and result["adapters"]["rank"] == 16
    assert datetime.fromisoformat(result["timestamp"]).tzinfo is not None


def test_gpu_runner_writes_the_lora_result(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(lora, "run", lambda device: {"goal_8_adapters": {"value": 0.9}})
    run_all.bench_step("lora_engine")
    name = common.result_file_name("lora_engine", common.current_device_slug())
    written = json.loads((tmp_path / name).read_text())
    assert written["benchmark"] == "lora_engine" and written["status"] == "ok"
    assert written["result"] == {"goal_8_adapters": {"value": 0.9}}
