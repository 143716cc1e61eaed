"""Bad input gets a clear error and leaves the engine serving."""
from __future__ import annotations

import json
import shutil

import pytest

from infernetes import LLM, SamplingParams
from infernetes.runtime.config import ConfigError


def test_prompt_longer_than_context_names_the_numbers(smollm2):
    with pytest.raises(ValueError, match=r"3000 tokens.*2048"):
        smollm2.generate({"prompt_token_ids": [5] * 3000}, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.generate({"prompt_token_ids": [10**7]}, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="empty"):
        smollm2.generate({"prompt_token_ids": []}, SamplingParams(max_tokens=4))
    # Nothing was left behind, and the engine still works.
    assert not smollm2.engine.has_unfinished_requests()
    out = smollm2.generate("Hello", SamplingParams(temperature=0, max_tokens=3))
    assert len(out[0].outputs[0].token_ids) == 3


def test_a_bad_prompt_in_a_batch_rejects_the_batch_before_it_runs(smollm2):
    free = smollm2.engine.kv_cache_manager.num_free_blocks
    with pytest.raises(ValueError):
        smollm2.generate(["fine", {"prompt_token_ids": [5] * 5000}], SamplingParams())
    assert smollm2.engine.kv_cache_manager.num_free_blocks == free


def test_unknown_architecture(tiny_models, tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model architecture.*GPT2LMHeadModel"):
        LLM(str(folder), skip_tokenizer_init=True)


def test_missing_files(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM(str(tmp_path / "nowhere"))
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(f"{tiny_models['qwen2']}/config.json", folder)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        LLM(str(folder), skip_tokenizer_init=True)
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        LLM(str(tmp_path / "model.gguf"))


@pytest.mark.parametrize("kwargs,flag", [
    ({"max_model_len": 100000}, "--max-model-len"),
    ({"dtype": "int8"}, "--dtype"),
    ({"block_size": 12}, "--block-size"),
    ({"max_num_seqs": 0}, "--max-num-seqs"),
    ({"kv_cache_memory": "lots"}, "kv_cache_memory"),
    ({"num_gpu_blocks_override": 2}, "--max-model-len"),
])
def test_bad_engine_settings_name_the_flag(tiny_models, kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        LLM(tiny_models["llama"], skip_tokenizer_init=True, **kwargs)


def test_a_context_shorter_than_the_warm_up_pass_still_serves(tiny_models):
    llm = LLM(tiny_models["llama"], skip_tokenizer_init=True, max_model_len=8)
    out = llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=5,
                                                                        ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 5
