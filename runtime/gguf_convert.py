"""A `.gguf` file to a Hugging Face folder (config.json, float32 safetensors, tokenizer), once.

Quantized tensors are dequantized with the `gguf` package; llama.cpp's interleaved Q/K row order
is turned back into Hugging Face's. The tokenizer is rebuilt by transformers' GGUF converter.
The folder is cached by the file's path, size and modification time, and written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                "output": "lm_head"}


def cache_root() -> Path:
    return Path(os.environ.get("INFERNETES_CACHE", Path.home() / ".cache" / "infernetes"))


def converted_folder(gguf_path: Path) -> Path:
    """The cached Hugging Face folder for a GGUF file, converting it on first use."""
    gguf_path = gguf_path.resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    folder = cache_root() / "gguf" / f"{gguf_path.stem}-{key[:16]}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        logger.info("converting %s to a Hugging Face folder (once)", gguf_path)
        convert(gguf_path, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process converted it first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def convert(gguf_path: Path, out: Path) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    meta = {name: _field(f) for name, f in reader.fields.items()
            if not name.startswith("tokenizer.ggml.") or name.endswith("_id")}
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{gguf_path}: GGUF architecture {arch!r} is not supported; "
                         f"supported: {', '.join(_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    config = _config(meta, arch, tied="output.weight" not in names)
    num_heads, num_kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        array = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        name = _hf_name(t.name)
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute(array, num_heads)
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _unpermute(array, num_kv_heads)
        tensors[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _convert_tokenizer(gguf_path, out)


def _field(field):
    try:
        return field.contents()
    except Exception:  # a field type this gguf version cannot read: not one we need
        return None


def _config(meta: dict, arch: str, tied: bool) -> dict:
    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)
    hidden = get("embedding_length")
    num_heads = get("attention.head_count")
    return {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": get("vocab_size") or meta.get("tokenizer.ggml.vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": get("attention.head_count_kv", num_heads),
        "head_dim": get("rope.dimension_count", hidden // num_heads),
        "max_position_embeddings": get("context_length", 4096),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }


def _hf_name(name: str) -> str:
    base, _, kind = name.rpartition(".")
    if base in _TOP_TENSORS:
        return f"{_TOP_TENSORS[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{kind}"
    raise ValueError(f"unexpected GGUF tensor {name!r}")


def _unpermute(array: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of the rotary halves in Q/K rows."""
    rows = array.shape[0]
    rest = array.shape[1:]
    return (array.reshape(num_heads, rows // num_heads // 2, 2, *rest)
            .swapaxes(1, 2).reshape(rows, *rest))


def _convert_tokenizer(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out))
