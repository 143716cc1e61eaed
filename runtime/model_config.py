"""The architecture of a checkpoint, read from its config.json into typed fields.

Both config styles are read: older checkpoints' `rope_theta` + `rope_scaling`, and the newer
`rope_parameters`. Missing fields take each architecture's published defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Defaults of the transformers configuration class of each architecture.
_ARCH_DEFAULTS: dict[str, dict] = {
    "LlamaForCausalLM": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "MistralForCausalLM": {"rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
                           "sliding_window": 4096},
    "Qwen2ForCausalLM": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
                         "qkv_bias": True},
}
SUPPORTED_ARCHITECTURES = tuple(_ARCH_DEFAULTS)


@dataclass(slots=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(slots=True)
class ModelArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    torch_dtype: torch.dtype | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelArchConfig:
        architectures = raw.get("architectures") or []
        known = [a for a in architectures if a in _ARCH_DEFAULTS]
        if not known:
            raise ValueError(
                f"unsupported model architecture {architectures or raw.get('model_type')!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        arch = known[0]
        defaults = _ARCH_DEFAULTS[arch]
        num_heads = raw["num_attention_heads"]
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r} in config.json")
        sliding_window = raw.get("sliding_window", defaults.get("sliding_window"))
        if arch == "Qwen2ForCausalLM":
            if raw.get("use_sliding_window"):
                raise ValueError("Qwen2 with use_sliding_window=true is not supported")
            sliding_window = None
        eos = raw.get("eos_token_id")
        dtype_name = raw.get("torch_dtype") or raw.get("dtype")
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            rms_norm_eps=raw.get("rms_norm_eps", defaults["rms_norm_eps"]),
            max_position_embeddings=raw.get("max_position_embeddings",
                                            defaults["max_position_embeddings"]),
            rope=_read_rope(raw),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            qkv_bias=raw.get("attention_bias", defaults.get("qkv_bias", False)),
            o_bias=raw.get("attention_bias", False),
            mlp_bias=raw.get("mlp_bias", False),
            sliding_window=sliding_window,
            hidden_act=hidden_act,
            torch_dtype=_TORCH_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
        )

    @classmethod
    def from_folder(cls, folder: Path) -> ModelArchConfig:
        path = folder / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in model folder {folder}")
        return cls.from_dict(json.loads(path.read_text()))


def _read_rope(raw: dict) -> RopeConfig:
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"unsupported rope scaling type {rope_type!r} in config.json; "
                         f"supported: default, linear, llama3")
    rope = RopeConfig(theta=float(theta), rope_type=rope_type)
    for name in ("factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings"):
        if name in params:
            setattr(rope, name, type(getattr(rope, name))(params[name]))
    return rope
