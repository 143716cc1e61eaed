"""Model architectures, chosen by config.json `architectures`."""
from __future__ import annotations

from torch import nn

from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.models.llama import LlamaForCausalLM

# Mistral and Qwen2 differ from Llama only in config (sliding window, QKV bias).
MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}


def model_class(config: ModelArchConfig) -> type[nn.Module]:
    return MODEL_REGISTRY[config.architecture]
