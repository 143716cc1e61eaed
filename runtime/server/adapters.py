"""The LoRA adapters a server offers: name -> LoRARequest, from --lora-modules at start and
from /v1/load_lora_adapter at run time, with the requests in flight for each (an adapter in
use cannot be unloaded)."""
from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count

from infernetes.runtime.request import LoRARequest
from infernetes.runtime.server.errors import OpenAIError


@dataclass(frozen=True)
class LoRAModule:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoRAModule:
    """One --lora-modules value: NAME=PATH, or vLLM's JSON form
    {"name": ..., "path": ..., "base_model_name": ...}."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return LoRAModule(str(data["name"]), str(data["path"]),
                              data.get("base_model_name"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--lora-modules: cannot read {text!r} as "
                             f'{{"name": ..., "path": ...}} ({e})') from None
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules: expected NAME=PATH or a JSON object, got {text!r}")
    return LoRAModule(name, path)


@dataclass
class AdapterRegistry:
    served_model_name: str
    adapters: dict[str, LoRARequest] = field(default_factory=dict)
    in_flight: Counter = field(default_factory=Counter)
    _ids: count = field(default_factory=lambda: count(1))

    def new_request(self, name: str, path: str) -> LoRARequest:
        if name == self.served_model_name or name in self.adapters:
            raise OpenAIError(400, f"an adapter or model named {name!r} is already loaded",
                              "lora_name")
        return LoRARequest(name, next(self._ids), path)

    def add(self, request: LoRARequest) -> None:
        self.adapters[request.lora_name] = request

    def resolve(self, model: str | None) -> LoRARequest | None:
        """The adapter a request's `model` names; None for the base model; 404 otherwise."""
        if model is None or model == self.served_model_name:
            return None
        adapter = self.adapters.get(model)
        if adapter is None:
            raise OpenAIError(404, f"The model `{model}` does not exist.", "model")
        return adapter

    @contextmanager
    def using(self, adapter: LoRARequest | None):
        """Counts a request in flight on `adapter` while the block runs."""
        if adapter is None:
            yield
            return
        self.in_flight[adapter.lora_name] += 1
        try:
            yield
        finally:
            self.in_flight[adapter.lora_name] -= 1

    def remove(self, name: str) -> LoRARequest:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise OpenAIError(404, f"no adapter named {name!r} is loaded", "lora_name")
        if self.in_flight[name] > 0:
            raise OpenAIError(400, f"adapter {name!r} has {self.in_flight[name]} request(s) "
                                   f"in flight; unload it once they finish", "lora_name")
        return self.adapters.pop(name)
