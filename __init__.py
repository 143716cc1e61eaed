"""Infernetes: run open LLMs on Kubernetes.

The offline API is importable from the top: `from infernetes import LLM, SamplingParams`.
Names are resolved lazily so that `import infernetes.operator` does not pull in torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "LLM": "infernetes.runtime.llm",
    "SamplingParams": "infernetes.runtime.sampling_params",
    "RequestOutput": "infernetes.runtime.outputs",
    "CompletionOutput": "infernetes.runtime.outputs",
    "LoRARequest": "infernetes.runtime.request",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'infernetes' has no attribute {name!r}")
    return getattr(import_module(module), name)
