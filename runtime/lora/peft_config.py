"""A PEFT LoRA adapter's `adapter_config.json`, read into the few fields the engine uses.

Only plain LoRA on the seven linear projections of a Llama-style decoder layer is served: one
rank and one alpha for every module, no DoRA, no LoRA bias, no extra trained modules. Any
setting that would change the forward pass beyond `y += scaling * B(A(x))` is refused here, so
that a refused adapter fails at load time and never serves wrong outputs. Settings that only
matter for training (`init_lora_weights`, `lora_dropout`, the `*_config` of initialisations
such as LoftQ, EVA, CorDA) and `task_type` are ignored.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# PEFT's module name -> our projection name. The engine packs q/k/v into `qkv_proj` and
# gate/up into `gate_up_proj`; an adapter keeps them apart and the engine slices its output.
PROJECTIONS: dict[str, str] = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}
# Module name (relative to the CausalLM) of each projection, as PEFT matches target_modules.
PROJECTION_PARENTS: dict[str, str] = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}
# Modules of the base model that an adapter may target but the engine does not serve.
_UNSUPPORTED_MODULES = ("model.embed_tokens", "lm_head")

# Settings with the value under which the adapter is plain LoRA; anything else is refused.
_MUST_BE_OFF: dict[str, str] = {
    "use_dora": "DoRA (use_dora)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "fan_in_fan_out": "transposed (Conv1D-style) weights (fan_in_fan_out)",
    "lora_bias": "a bias on lora_B (lora_bias)",
    "layer_replication": "layer replication (layer_replication)",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    "target_parameters": "LoRA on parameters rather than modules (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA (use_qalora)",
}


class LoRAAdapterError(ValueError):
    """An adapter that cannot be served; the message names the adapter, the file and why."""

    def __init__(self, adapter_name: str, file: Path | str, problem: str):
        super().__init__(f"LoRA adapter {adapter_name!r}: {file}: {problem}")
        self.adapter_name = adapter_name
        self.file = str(file)
        self.problem = problem


_Fail = Callable[[str], LoRAAdapterError]  # problem -> the error naming adapter and file


@dataclass(frozen=True, slots=True)
class LoRAAdapterConfig:
    rank: int
    lora_alpha: float
    use_rslora: bool
    # Subset of PROJECTIONS' values (e.g. {"q", "v"}) that target_modules names.
    target_projections: frozenset[str]
    # Layers the adapter may have modules in; None: any layer.
    layers_to_transform: frozenset[int] | None

    @property
    def scaling(self) -> float:
        """The factor PEFT multiplies B @ A by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def parse_peft_config(raw: object, adapter_name: str, file: Path,
                      num_hidden_layers: int) -> LoRAAdapterConfig:
    """Validate the decoded `adapter_config.json` of `adapter_name` and keep what serving needs.

    layers_to_transform is supported: only those layers have modules. A regex target_modules
    is matched (re.fullmatch, as PEFT does) against the module names of a Llama-style model.
    """
    def fail(problem: str) -> LoRAAdapterError:
        return LoRAAdapterError(adapter_name, file, problem)

    if not isinstance(raw, dict):
        raise fail("expected a JSON object")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise fail(f"peft_type is {peft_type!r}; only 'LORA' adapters are supported")
    for key, feature in _MUST_BE_OFF.items():
        if raw.get(key):
            raise fail(f"{feature} is not supported (found {key}={raw[key]!r})")
    if raw.get("bias", "none") != "none":
        raise fail(f"bias={raw['bias']!r} is not supported; only bias='none' adapters are")

    rank = raw.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise fail(f"'r' must be a positive integer, got {rank!r}")
    alpha = raw.get("lora_alpha", 8)  # PEFT's default
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise fail(f"'lora_alpha' must be a number, got {alpha!r}")
    use_rslora = raw.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise fail(f"'use_rslora' must be true or false, got {use_rslora!r}")

    return LoRAAdapterConfig(
        rank=rank, lora_alpha=float(alpha), use_rslora=use_rslora,
        target_projections=_target_projections(raw, num_hidden_layers, fail),
        layers_to_transform=_layers_to_transform(raw, num_hidden_layers, fail))


def _target_projections(raw: dict, num_hidden_layers: int, fail: _Fail) -> frozenset[str]:
    targets = raw.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        return _regex_target_projections(targets, raw.get("exclude_modules"),
                                         num_hidden_layers, fail)
    if targets == "all-linear":  # PEFT: every linear layer but the output layer
        return frozenset(PROJECTIONS.values())
    if not isinstance(targets, list) or not targets or \
            not all(isinstance(t, str) for t in targets):
        raise fail(f"'target_modules' must be a non-empty list of module names or a regex, "
                   f"got {targets!r}")
    # PEFT matches an entry against the end of a module's dotted name.
    unsupported = [t for t in targets if t.rsplit(".", 1)[-1] not in PROJECTIONS]
    if unsupported:
        raise fail(f"target_modules names {', '.join(map(repr, unsupported))}, which the "
                   f"engine does not support; supported: {', '.join(PROJECTIONS)}")
    return frozenset(PROJECTIONS[t.rsplit(".", 1)[-1]] for t in targets)


def _regex_target_projections(pattern: str, exclude: object, num_hidden_layers: int,
                              fail: _Fail) -> frozenset[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise fail(f"target_modules is not a valid regex ({exc}): {pattern!r}") from None

    def targeted(module: str) -> bool:
        if regex.fullmatch(module) is None:
            return False
        if isinstance(exclude, str):
            return re.fullmatch(exclude, module) is None
        if isinstance(exclude, list):
            return not any(module == e or module.endswith(f".{e}") for e in exclude)
        return True

    unsupported = [m for m in _UNSUPPORTED_MODULES if targeted(m)]
    if unsupported:
        raise fail(f"target_modules regex {pattern!r} matches {', '.join(unsupported)}, which "
                   f"the engine does not support; supported: {', '.join(PROJECTIONS)}")
    found = frozenset(
        short for name, short in PROJECTIONS.items()
        if any(targeted(f"model.layers.{i}.{PROJECTION_PARENTS[name]}.{name}")
               for i in range(num_hidden_layers)))
    if not found:
        raise fail(f"target_modules regex {pattern!r} matches none of the supported "
                   f"projections: {', '.join(PROJECTIONS)}")
    return found


def _layers_to_transform(raw: dict, num_hidden_layers: int, fail: _Fail) -> frozenset[int] | None:
    layers = raw.get("layers_to_transform")
    if layers is None or layers == []:
        return None
    pattern = raw.get("layers_pattern")
    # Our models keep their decoder layers in `model.layers`; another pattern means another
    # architecture.
    if pattern not in (None, "", [], "layers", ["layers"]):
        raise fail(f"layers_pattern={pattern!r} is not supported; only 'layers' is")
    layers = [layers] if isinstance(layers, int) else layers
    if not isinstance(layers, list) or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise fail(f"'layers_to_transform' must be a layer index or a list of them, "
                   f"got {raw['layers_to_transform']!r}")
    out_of_range = [i for i in layers if not 0 <= i < num_hidden_layers]
    if out_of_range:
        raise fail(f"layers_to_transform names layers {out_of_range}, but the model has "
                   f"{num_hidden_layers} layers")
    return frozenset(layers)
