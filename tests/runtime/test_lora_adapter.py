"""Loading PEFT LoRA adapters: the weights match PEFT's own delta, and every adapter the engine
cannot serve is refused at load time with a message naming the adapter, the file and why."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from infernetes.runtime.lora import LoRAAdapterError, load_lora_adapter
from infernetes.runtime.model_config import ModelArchConfig

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHORT = {name: name.removesuffix("_proj") for name in ALL_PROJECTIONS}

# name -> (base model, whether to write safetensors, LoraConfig arguments)
ADAPTERS = {
    "llama-qv": ("llama", True, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "mistral-all-rslora": ("mistral", True, dict(r=8, lora_alpha=16, use_rslora=True,
                                                 target_modules=ALL_PROJECTIONS)),
    "qwen2-down": ("qwen2", True, dict(r=4, lora_alpha=3, target_modules=["down_proj"])),
    "llama-all-bin": ("llama", False, dict(r=8, lora_alpha=32, target_modules="all-linear")),
    "llama-regex": ("llama", True, dict(r=4, lora_alpha=8, use_rslora=True,
                                        target_modules=r".*\.(k_proj|up_proj)")),
    "mistral-layer1": ("mistral", True, dict(r=4, lora_alpha=8, layers_to_transform=[1],
                                             target_modules=["q_proj", "o_proj"])),
}


@dataclasses.dataclass
class SavedAdapter:
    folder: Path
    arch: ModelArchConfig
    # (layer, projection) -> PEFT's delta weight [out_features, in_features]
    deltas: dict[tuple[int, str], torch.Tensor]


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory) -> dict[str, SavedAdapter]:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM
    saved = {}
    for seed, (name, (model, safe, lora_args)) in enumerate(ADAPTERS.items()):
        base = AutoModelForCausalLM.from_pretrained(tiny_models[model], dtype=torch.float32)
        peft_model = get_peft_model(base, LoraConfig(**lora_args))
        torch.manual_seed(seed)
        deltas = {}
        with torch.no_grad():
            for module_name, module in peft_model.named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                # PEFT starts B at zero, which would make every comparison trivial.
                torch.nn.init.normal_(module.lora_A["default"].weight, std=0.5)
                torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
                parts = module_name.split(".")
                layer = int(parts[parts.index("layers") + 1])
                deltas[(layer, SHORT[parts[-1]])] = module.get_delta_weight("default").clone()
        folder = tmp_path_factory.mktemp(name)
        peft_model.save_pretrained(folder, safe_serialization=safe)
        saved[name] = SavedAdapter(folder, ModelArchConfig.from_folder(Path(tiny_models[model])),
                                   deltas)
    return saved


@pytest.fixture
def llama_qv(adapters, tmp_path) -> SavedAdapter:
    """A copy of the llama q/v adapter that a test may break."""
    saved = adapters["llama-qv"]
    folder = tmp_path / "adapter"
    shutil.copytree(saved.folder, folder)
    return dataclasses.replace(saved, folder=folder)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_tensors(folder: Path, edit) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _load(saved: SavedAdapter, arch: ModelArchConfig | None = None, max_rank: int = 16):
    return load_lora_adapter(saved.folder, "my-adapter", arch or saved.arch, max_rank)


# --- what PEFT writes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ADAPTERS)
def test_b_times_a_equals_peft_delta_weight(adapters, name):
    saved = adapters[name]
    safetensors = ADAPTERS[name][1]
    assert (saved.folder / "adapter_model.safetensors").is_file() == safetensors
    assert (saved.folder / "adapter_model.bin").is_file() != safetensors
    adapter = load_lora_adapter(saved.folder, name, saved.arch, max_rank=8)
    assert adapter.name == name and adapter.path == str(saved.folder)
    assert adapter.rank == ADAPTERS[name][2]["r"]
    assert adapter.modules.keys() == saved.deltas.keys()
    for key, module in adapter.modules.items():
        assert module.a.shape[0] == module.b.shape[1] == adapter.rank
        torch.testing.assert_close(module.b @ module.a, saved.deltas[key], rtol=1e-5, atol=1e-5)


def test_module_sets_follow_target_modules_and_layers(adapters):
    def keys(name):
        return set(_load(adapters[name]).modules)
    assert keys("llama-qv") == {(i, p) for i in range(2) for p in ("q", "v")}
    assert keys("qwen2-down") == {(0, "down"), (1, "down")}
    assert keys("llama-all-bin") == {(i, SHORT[p]) for i in range(2) for p in ALL_PROJECTIONS}
    assert keys("llama-regex") == {(i, p) for i in range(2) for p in ("k", "up")}
    assert keys("mistral-layer1") == {(1, "q"), (1, "o")}


def test_tensors_are_converted_to_the_requested_dtype(adapters):
    saved = adapters["mistral-all-rslora"]
    full = _load(saved)
    half = load_lora_adapter(saved.folder, "half", saved.arch, max_rank=8, dtype=torch.bfloat16)
    assert half.num_bytes * 2 == full.num_bytes
    # 2 layers x (A [8, in] + B [out, 8]) in float32.
    arch = saved.arch
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    h, m = arch.hidden_size, arch.intermediate_size
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + m) + (m + h)
    assert full.num_bytes == 2 * 8 * per_layer * 4
    for key, module in half.modules.items():
        assert module.a.dtype == module.b.dtype == torch.bfloat16
        torch.testing.assert_close(module.b.float(), full.modules[key].b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("prefix", ["base_model.model.model.", "base_model.model.", "model."])
def test_name_variants_load_the_same_weights(llama_qv, prefix):
    def rename(tensors):
        for name in list(tensors):
            new = name.replace("base_model.model.model.", prefix)
            tensors[new.replace(".weight", ".default.weight")] = tensors.pop(name)
    _edit_tensors(llama_qv.folder, rename)
    adapter = _load(llama_qv)
    for key, module in adapter.modules.items():
        torch.testing.assert_close(module.b @ module.a, llama_qv.deltas[key], rtol=1e-5, atol=1e-5)


# --- refusals -----------------------------------------------------------------------------------

def _refused(saved: SavedAdapter, match: str, file: str = "adapter_config.json", **kwargs):
    with pytest.raises(LoRAAdapterError, match=match) as info:
        _load(saved, **kwargs)
    message = str(info.value)
    assert "'my-adapter'" in message and file in message, message
    return message


def test_rank_above_max_lora_rank_is_refused(adapters):
    message = _refused(adapters["mistral-all-rslora"], "--max-lora-rank", max_rank=4)
    assert "rank 8 exceeds --max-lora-rank 4" in message


@pytest.mark.parametrize("changes, match", [
    ({"use_dora": True}, r"DoRA \(use_dora\) is not supported"),
    ({"modules_to_save": ["lm_head"]}, r"modules_to_save"),
    ({"rank_pattern": {"q_proj": 8}}, r"per-module ranks \(rank_pattern\)"),
    ({"alpha_pattern": {"v_proj": 4}}, r"per-module alphas \(alpha_pattern\)"),
    ({"fan_in_fan_out": True}, r"fan_in_fan_out"),
    ({"lora_bias": True}, r"lora_bias"),
    ({"bias": "lora_only"}, r"bias='lora_only' is not supported"),
    ({"peft_type": "LOHA"}, r"peft_type is 'LOHA'; only 'LORA'"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, r"'embed_tokens', which the engine"),
    ({"target_modules": ["lm_head"]}, r"'lm_head', which the engine"),
    ({"target_modules": r".*(q_proj|lm_head)"}, r"matches lm_head, which the engine"),
    ({"target_modules": r".*\.mlp\.(fc1|fc2)"}, r"matches none of the supported projections"),
    ({"target_modules": None}, r"'target_modules' must be"),
    ({"layers_to_transform": [0], "layers_pattern": "blocks"}, r"layers_pattern='blocks'"),
    ({"layers_to_transform": [0, 5]}, r"layers \[5\], but the model has 2 layers"),
    ({"r": 0}, r"'r' must be a positive integer"),
    ({"lora_alpha": "big"}, r"'lora_alpha' must be a number"),
])
def test_unsupported_config_is_refused(llama_qv, changes, match):
    _edit_config(llama_qv.folder, **changes)
    _refused(llama_qv, match)


def test_ignored_settings_do_not_matter(llama_qv):
    _edit_config(llama_qv.folder, init_lora_weights="gaussian", task_type="SEQ_CLS",
                 lora_dropout=0.3, layers_pattern="layers", layers_to_transform=None)
    assert set(_load(llama_qv).modules) == {(i, p) for i in range(2) for p in ("q", "v")}


def test_tensors_disagreeing_with_config_are_refused(llama_qv):
    _edit_config(llama_qv.folder, layers_to_transform=[1])
    _refused(llama_qv, r"layer 0, which layers_to_transform .* does not name",
             file="adapter_model.safetensors")
    _edit_config(llama_qv.folder, layers_to_transform=None, target_modules=["q_proj"])
    _refused(llama_qv, r"v_proj, which target_modules .* does not name",
             file="adapter_model.safetensors")


def test_shapes_are_checked_against_the_base_model(adapters):
    saved = adapters["llama-qv"]
    wide = dataclasses.replace(saved.arch, hidden_size=128)
    message = _refused(saved, r"lora_A has shape \[4, 64\], expected \[4, 128\]",
                       file="adapter_model.safetensors", arch=wide)
    assert "layer 0 q_proj" in message
    fewer_kv_heads = dataclasses.replace(saved.arch, num_key_value_heads=1)
    _refused(saved, r"layer 0 v_proj: lora_B has shape \[32, 4\], expected \[16, 4\]",
             file="adapter_model.safetensors", arch=fewer_kv_heads)
    mlp = dataclasses.replace(adapters["qwen2-down"].arch, intermediate_size=64)
    _refused(adapters["qwen2-down"], r"down_proj: lora_A has shape \[4, 96\], expected \[4, 64\]",
             file="adapter_model.safetensors", arch=mlp)
    one_layer = dataclasses.replace(saved.arch, num_hidden_layers=1)
    _refused(saved, r"for layer 1, but the model has 1 layers",
             file="adapter_model.safetensors", arch=one_layer)


def test_ranks_disagreeing_with_r_are_refused(llama_qv):
    _edit_config(llama_qv.folder, r=2)
    _refused(llama_qv, r"lora_A has shape \[4, 64\], expected \[2, 64\]",
             file="adapter_model.safetensors")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"),
     r"layer 1 v_proj: lora_B is missing"),
    (lambda t: t.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
     r"layer 0 q_proj: lora_A is missing"),
    (lambda t: t.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)}),
     r"unexpected tensor 'base_model.model.lm_head.lora_A.weight'"),
    (lambda t: t.update({"base_model.model.model.layers.0.mlp.q_proj.lora_A.weight":
                         torch.zeros(4, 64)}), r"unexpected tensor"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias":
                         torch.zeros(64)}), r"unexpected tensor"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight":
                         torch.zeros(4, 64)}), r"repeats layer 0 q_proj lora_A"),
    (lambda t: t["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
     .__setitem__((3, 1), float("nan")), r"non-finite values"),
    (lambda t: t["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
     .__setitem__((0, 0), float("inf")), r"non-finite values"),
    (lambda t: t.update({name: t[name].to(torch.int32) for name in list(t)}),
     r"not floating point"),
    (lambda t: t.clear(), r"holds no LoRA weights"),
])
def test_bad_tensors_are_refused(llama_qv, edit, match):
    _edit_tensors(llama_qv.folder, edit)
    _refused(llama_qv, match, file="adapter_model.safetensors")


def test_values_that_overflow_the_dtype_are_refused(llama_qv):
    _edit_tensors(llama_qv.folder, lambda t: t[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].__setitem__(
        (0, 0), 1e6))
    _load(llama_qv)  # fine in float32
    with pytest.raises(LoRAAdapterError, match=r"layer 0 q_proj overflows torch.float16"):
        load_lora_adapter(llama_qv.folder, "my-adapter", llama_qv.arch, 16, torch.float16)


@pytest.mark.parametrize("keep_bytes", [0, 5, 200, -100])
def test_truncated_safetensors_is_refused(llama_qv, keep_bytes):
    path = llama_qv.folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes] if keep_bytes >= 0 else data[:keep_bytes])
    _refused(llama_qv, r"cannot be read", file="adapter_model.safetensors")


def test_truncated_bin_is_refused(adapters, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(adapters["llama-all-bin"].folder, folder)
    path = folder / "adapter_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    saved = dataclasses.replace(adapters["llama-all-bin"], folder=folder)
    _refused(saved, r"cannot be read", file="adapter_model.bin")


def test_missing_or_broken_files_are_refused(llama_qv):
    (llama_qv.folder / "adapter_model.safetensors").unlink()
    _refused(llama_qv, r"no adapter_model.safetensors or adapter_model.bin", file="adapter")
    config = llama_qv.folder / "adapter_config.json"
    config.write_text("{not json")
    _refused(llama_qv, r"unreadable")
    config.write_text("[1, 2]")
    _refused(llama_qv, r"expected a JSON object")
    config.unlink()
    _refused(llama_qv, r"missing; is this a PEFT adapter folder")
    _refused(dataclasses.replace(llama_qv, folder=llama_qv.folder / "nowhere"), r"missing")
