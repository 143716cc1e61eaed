"""What every endpoint needs: the engine, the served name, limits and defaults."""
from __future__ import annotations

from dataclasses import dataclass, field

from infernetes.runtime.engine.async_engine import AsyncLLM
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

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.served_model_name:
            raise OpenAIError(404, f"The model `{model}` does not exist.", "model")

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
