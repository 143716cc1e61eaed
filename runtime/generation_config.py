"""Defaults from a checkpoint's generation_config.json, applied as vLLM's `--generation-config
auto` applies them: they replace SamplingParams' own defaults, never a value the user set."""
from __future__ import annotations

import json
from pathlib import Path

# generation_config.json key -> SamplingParams field
_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def read_generation_config(source: str, model_folder: Path) -> dict:
    """-> {"defaults": {field: value}, "eos_token_ids": [...]}; source: auto | vllm | folder."""
    if source == "vllm":
        return {"defaults": {}, "eos_token_ids": []}
    folder = model_folder if source == "auto" else Path(source)
    path = folder / "generation_config.json"
    if not path.is_file():
        if source != "auto":
            raise FileNotFoundError(f"--generation-config: no generation_config.json in {folder}")
        return {"defaults": {}, "eos_token_ids": []}
    raw = json.loads(path.read_text())
    defaults = {ours: raw[theirs] for theirs, ours in _FIELDS.items() if raw.get(theirs) is not None}
    if raw.get("do_sample") is False:
        defaults["temperature"] = 0.0
    eos = raw.get("eos_token_id")
    return {"defaults": defaults,
            "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or [])}
