"""Shared fixtures: tiny random-weight checkpoints of each architecture, and transformers'
greedy outputs to compare with."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=384, max_position_embeddings=256,
            eos_token_id=None, bos_token_id=None, pad_token_id=0)


def _tiny_configs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config
    return {
        # Tied embeddings and llama3 rope scaling.
        "llama": LlamaConfig(**TINY, tie_word_embeddings=True, rope_theta=500000.0,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 32}),
        # A sliding window short enough that the tests cross it.
        "mistral": MistralConfig(**TINY, sliding_window=24),
        # Biases on Q, K and V.
        "qwen2": Qwen2Config(**TINY),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """name -> folder of a saved random-weight model (float32 safetensors, sharded)."""
    from transformers import AutoModelForCausalLM
    folders = {}
    for name, config in _tiny_configs().items():
        torch.manual_seed(1234)
        config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForCausalLM"]
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Larger weights than the default init, so logits have clear winners.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0, 0.15)
                else:
                    param.normal_(1 if param.abs().sum() > 0 else 0, 0.1)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder, max_shard_size="200KB")
        folders[name] = str(folder)
    return folders


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model in float32, as tests compare it with transformers."""
    from infernetes import LLM
    return LLM(dtype="float32", max_model_len=2048, kv_cache_memory="256MiB")
