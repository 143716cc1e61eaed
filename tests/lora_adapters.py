"""PEFT LoRA adapters with random non-zero weights, for the tests that compare the engine with
transformers + peft: each adapter is saved for the engine to load and kept as the reference."""
from __future__ import annotations

from pathlib import Path

import torch

from infernetes import LoRARequest


def make_peft_adapter(base, lora_args: dict, folder: str | Path, *, seed: int, std: float):
    """`base` wrapped in a LoRA adapter (`LoraConfig(**lora_args)`) whose A and B are drawn from
    N(0, std), saved to `folder`; returns the peft model in eval mode. PEFT starts B at zero,
    which would make every comparison with the base model trivial. `base` is changed in place:
    pass a model nothing else uses."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    model = get_peft_model(base, LoraConfig(**lora_args))
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                torch.nn.init.normal_(module.lora_A["default"].weight, std=std)
                torch.nn.init.normal_(module.lora_B["default"].weight, std=std)
    model.save_pretrained(folder)
    return model.eval()


def greedy_tokens(model, prompt: list[int], max_new_tokens: int,
                  eos_token_id: int | None = None) -> list[int]:
    """transformers' greedy continuation of one prompt (no padding), stopping after
    `eos_token_id` when one is given."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_token_id, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def lora_requests(names: list[str | None], folders: dict[str, str]) -> list[LoRARequest | None]:
    """One request per name (None: the base model); adapter ids follow the order of
    `folders`, starting at 1."""
    ids = {name: i + 1 for i, name in enumerate(folders)}
    return [None if name is None else LoRARequest(name, ids[name], folders[name])
            for name in names]
