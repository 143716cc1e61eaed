"""What every endpoint needs: the engine, the served name, limits and defaults."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from infernetes.runtime.engine.async_engine import AsyncLLM
from infernetes.runtime.request import LoRARequest
from infernetes.runtime.server.adapters import AdapterRegistry, LoRAModule
from infernetes.runtime.server.errors import OpenAIError
from infernetes.runtime.server.metrics import Metrics
from infernetes.runtime.server.reasoning import ReasoningParser
from infernetes.runtime.tokenizer import Tokenizer


@dataclass
class ServingContext:
    engine: AsyncLLM
    served_model_name: str
    api_keys: list[str] = field(default_factory=list)
    metrics: Metrics | None = None
    max_num_queued_requests: int | None = None  # beyond it: 503 with Retry-After
    system_fingerprint: str = "infernetes-0.1.0"
    # Splits chat completions into reasoning_content and content (--reasoning-parser).
    reasoning_parser: ReasoningParser | None = None
    adapters: AdapterRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.adapters = AdapterRegistry(self.served_model_name)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    @property
    def sampling_defaults(self) -> dict:
        return self.engine.engine.default_sampling

    def admit(self, num_requests: int = 1) -> None:
        """503 when the waiting queue is full, so clients back off instead of piling up."""
        limit = self.max_num_queued_requests
        if limit is not None and self.engine.num_waiting() + num_requests > limit:
            if self.metrics is not None:
                self.metrics.reject("queue_full")
            raise OpenAIError(503, f"the server is at its queue limit of {limit} waiting "
                                   f"requests; retry later", headers={"Retry-After": "1"})

    def check_model(self, model: str | None) -> LoRARequest | None:
        """The adapter `model` names (None: the base model); 404 for an unknown name."""
        return self.adapters.resolve(model)

    async def load_adapter(self, module: LoRAModule) -> LoRARequest:
        """Reads and checks the adapter in the engine thread; a broken one is refused (400)
        and nothing else changes."""
        if not self.engine.engine.runner.lora_enabled:
            raise OpenAIError(400, "LoRA is not enabled on this server (--enable-lora)",
                              "lora_name")
        if module.base_model_name not in (None, self.served_model_name):
            raise OpenAIError(400, f"base_model_name {module.base_model_name!r} is not the "
                                   f"served model {self.served_model_name!r}",
                              "base_model_name")
        request = self.adapters.new_request(module.name, module.path)
        try:
            await self.engine.call(lambda engine: engine.validate_lora(request))
        except ValueError as e:
            raise OpenAIError(400, str(e), "lora_path") from None
        self.adapters.add(request)
        self._count_adapters()
        return request

    async def unload_adapter(self, name: str) -> None:
        request = self.adapters.remove(name)
        await self.engine.call(lambda engine: engine.remove_lora(request.lora_int_id))
        self._count_adapters()

    async def track(self, adapter: LoRARequest | None, stream: AsyncIterator
                    ) -> AsyncIterator:
        """`stream`, counted as in flight on `adapter` while it runs (unload refuses then)."""
        with self.adapters.using(adapter):
            self._count_adapters()
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()
        self._count_adapters()

    def _count_adapters(self) -> None:
        if self.metrics is not None:
            self.metrics.adapters.set(len(self.adapters.adapters))
            self.metrics.adapters_running.set(
                sum(1 for n in self.adapters.in_flight.values() if n > 0))

    def check_length(self, num_prompt_tokens: int, max_tokens: int | None,
                     what: str = "prompt") -> int:
        """The max_tokens to use; 400 when prompt plus completion exceed the context."""
        limit = self.max_model_len
        if max_tokens is None:
            if num_prompt_tokens >= limit:
                raise OpenAIError(400, f"This model's maximum context length is {limit} "
                                       f"tokens. However, your {what} is {num_prompt_tokens} "
                                       f"tokens, which leaves no room for a completion.",
                                  what)
            return limit - num_prompt_tokens
        if num_prompt_tokens + max_tokens > limit:
            raise OpenAIError(400, f"This model's maximum context length is {limit} tokens. "
                                   f"However, you requested {num_prompt_tokens + max_tokens} "
                                   f"tokens ({num_prompt_tokens} in the {what}, {max_tokens} "
                                   f"in the completion). Please reduce the length of the "
                                   f"{what} or completion.", what)
        return max_tokens
