"""Loading Hugging Face folders: shards, dtypes, generation_config.json defaults."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from infernetes import LLM, SamplingParams
from infernetes.runtime.loader import checkpoint_files, iterate_weights

PROMPT = {"prompt_token_ids": [5, 9, 17, 33, 2, 71]}


def test_sharded_checkpoint_reads_every_tensor_exactly(tiny_models):
    from safetensors import safe_open
    files = checkpoint_files(__import__("pathlib").Path(tiny_models["qwen2"]))
    assert len(files) > 1  # the fixture saves small shards, with an index
    ours = {name: tensor.clone() for name, tensor in iterate_weights(files)}
    theirs = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            theirs.update({name: f.get_tensor(name) for name in f.keys()})
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_follows_float32_closely(tiny_models, dtype):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    reference = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True)
    half = LLM(tiny_models["llama"], dtype=dtype, skip_tokenizer_init=True)
    assert half.engine.dtype == getattr(torch, dtype)
    expected = reference.generate([PROMPT] * 4, params)[0].outputs[0]
    for out in half.generate([PROMPT] * 4, params):  # a batch: the fp32-upcast path on CPU
        got = out.outputs[0]
        # The first token comes from near-identical logits; later ones may legitimately drift.
        assert got.token_ids[0] == expected.token_ids[0]
        first = got.token_ids[0]
        assert abs(got.logprobs[0][first].logprob - expected.logprobs[0][first].logprob) < 0.1


def test_generation_config_supplies_defaults(tiny_models, tmp_path):
    folder = tmp_path / "with-defaults"
    shutil.copytree(tiny_models["mistral"], folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "max_new_tokens": 5, "eos_token_id": [3, 4]}))
    llm = LLM(str(folder), dtype="float32", skip_tokenizer_init=True)
    defaults = llm.get_default_sampling_params()
    assert defaults.temperature == 0.0 and defaults.max_tokens == 5
    assert {3, 4} <= llm.engine.eos_token_ids
    out = llm.generate(PROMPT)[0].outputs[0]
    assert len(out.token_ids) <= 5
    # --generation-config vllm ignores the file.
    plain = LLM(str(folder), dtype="float32", skip_tokenizer_init=True, generation_config="vllm")
    assert plain.get_default_sampling_params().max_tokens == 16


def test_dummy_load_format_needs_only_config_json(tiny_models, tmp_path):
    """`--load-format dummy`: a model shape from its config.json alone, seeded, finite."""
    shutil.copy(f"{tiny_models['qwen2']}/config.json", tmp_path / "config.json")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompt = [{"prompt_token_ids": [3, 1, 4, 1, 5]}]
    runs = [LLM(str(tmp_path), load_format="dummy", seed=seed, skip_tokenizer_init=True,
                dtype="float32").generate(prompt, params)[0].outputs[0].token_ids
            for seed in (7, 7)]
    assert runs[0] == runs[1] and len(runs[0]) == 6
    with pytest.raises(ValueError, match="--load-format must be one of auto, dummy"):
        LLM(str(tmp_path), load_format="random", skip_tokenizer_init=True)


def test_checkpoint_slices_read_only_what_they_cover(tmp_path):
    """A rank's rows or columns of a tensor equal the slices of the whole, for every shape a
    checkpoint may hold (scalars and empty tensors too); bytes read are counted."""
    from safetensors.torch import save_file

    from infernetes.runtime.loader import iterate_checkpoint
    tensors = {"matrix": torch.randn(6, 5), "scalar": torch.tensor(3.5),
               "empty": torch.zeros(4, 0), "cube": torch.randn(2, 3, 4).bfloat16()}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    counter = [0]
    for name, lazy in iterate_checkpoint([path], counter):
        whole = tensors[name]
        assert torch.equal(lazy.read(), whole)
        if name in ("matrix", "cube"):
            assert torch.equal(lazy.narrow(0, 1, 1), whole[1:2])
            assert torch.equal(lazy.narrow(1, 1, 2), whole.narrow(1, 1, 2))
    counter[0] = 0
    for name, lazy in iterate_checkpoint([path], counter):  # valid until the next one
        if name == "matrix":
            lazy.narrow(1, 0, 2)
    assert counter[0] == 6 * 2 * 4  # two float32 columns of six rows, nothing else
