"""`LLM("hf://...")` and `infernetes serve hf://...`: the model is fetched once into the local
cache and served under its Hub id; fetch failures end the command with the typed reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from infernetes import LLM, SamplingParams
from infernetes.runtime.cli import main
from infernetes.runtime.config import ConfigError
from infernetes.runtime.download.failures import EXIT_CODES, DownloadFailure
from infernetes.runtime.model_source import default_served_name, hub_uri


def _publish(fake_hub, tiny_models, repo_id: str) -> Path:
    folder = Path(tiny_models["llama"])
    fake_hub.add_repo(repo_id, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    return folder


def test_llm_fetches_an_hf_model_once_and_matches_the_local_folder(fake_hub, tiny_models,
                                                                   monkeypatch, tmp_path):
    monkeypatch.setenv("INFERNETES_CACHE", str(tmp_path / "cache"))
    folder = _publish(fake_hub, tiny_models, "org/tiny-llama")
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompt = [{"prompt_token_ids": [5, 17, 33, 2]}]
    hub = LLM("hf://org/tiny-llama", dtype="float32", skip_tokenizer_init=True)
    local = LLM(str(folder), dtype="float32", skip_tokenizer_init=True)
    assert (hub.generate(prompt, params)[0].outputs[0].token_ids
            == local.generate(prompt, params)[0].outputs[0].token_ids)
    assert hub.engine.served_model_name == "org/tiny-llama"
    assert hub.engine.model_folder == tmp_path / "cache" / "hub" / "org--tiny-llama--main"
    gets = len(fake_hub.requests)
    LLM("hf://org/tiny-llama", revision="main", dtype="float32", skip_tokenizer_init=True)
    assert len(fake_hub.requests) == gets  # the cached copy: no request at all


def test_serve_reports_a_missing_hub_model_by_reason(fake_hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("INFERNETES_CACHE", str(tmp_path / "cache"))
    code = main(["serve", "hf://org/no-such-model", "--port", "0"])
    assert code == EXIT_CODES[DownloadFailure.NotFound]
    err = capsys.readouterr().err
    assert "NotFound" in err and "org/no-such-model" in err


def test_revision_flag_and_uri():
    assert hub_uri("hf://org/m", "v2") == "hf://org/m@v2"
    assert hub_uri("hf://org/m@v2", "v2") == "hf://org/m@v2"
    assert hub_uri("hf://org/m@v1", None) == "hf://org/m@v1"
    with pytest.raises(ConfigError, match="--revision v2 contradicts"):
        hub_uri("hf://org/m@v1", "v2")
    assert default_served_name("hf://Qwen/Qwen2.5-7B-Instruct@main") == "Qwen/Qwen2.5-7B-Instruct"


def test_revision_is_refused_for_local_models(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--revision", "main"]) == 2
    assert "--revision applies to hf:// models only" in capsys.readouterr().err
