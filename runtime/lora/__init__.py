"""LoRA adapters: PEFT adapter folders read into typed, validated weights (adapter.py)."""
from infernetes.runtime.lora.adapter import (
    LoRAAdapter, LoRAModuleWeights, load_lora_adapter, projection_features)
from infernetes.runtime.lora.peft_config import LoRAAdapterError

__all__ = ["LoRAAdapter", "LoRAAdapterError", "LoRAModuleWeights", "load_lora_adapter",
           "projection_features"]
