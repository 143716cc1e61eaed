"""The offline API: `LLM(model=...).generate(prompts, params)` and `.chat(messages, params)`."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import count

from infernetes.runtime.config import (
    CacheConfig, EngineConfig, LoRAConfig, SchedulerConfig, parse_size)
from infernetes.runtime.engine.llm_engine import LLMEngine
from infernetes.runtime.outputs import RequestOutput
from infernetes.runtime.request import LoRARequest
from infernetes.runtime.sampling_params import RequestOutputKind, SamplingParams
from infernetes.runtime.tokenizer import Tokenizer

PromptType = str | list[int] | dict


class LLM:
    """An engine for batch generation in this process.

    model: a Hugging Face folder, a `.gguf` file, `hf://ORG/NAME[@REVISION]` (fetched once into
    the local cache), or None for the embedded default model.
    Other keywords mirror `infernetes serve` flags (dtype, max_model_len, kv_cache_memory, ...).
    """

    def __init__(self, model: str | None = None, *, tokenizer: str | None = None,
                 revision: str | None = None,
                 dtype: str = "auto", device: str = "auto", seed: int = 0,
                 max_model_len: int | None = None, block_size: int = 16,
                 enable_prefix_caching: bool = True, kv_cache_memory: int | str | None = None,
                 gpu_memory_utilization: float = 0.9, num_gpu_blocks_override: int | None = None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int | None = None,
                 enable_chunked_prefill: bool = True, chat_template: str | None = None,
                 generation_config: str = "auto", served_model_name: str | None = None,
                 skip_tokenizer_init: bool = False, load_format: str = "auto",
                 enforce_eager: bool = False, kernel_backend: str = "auto",
                 enable_lora: bool = False, max_loras: int = 1, max_lora_rank: int = 16,
                 max_cpu_loras: int | None = None, tensor_parallel_size: int = 1):
        cache = CacheConfig(
            block_size=block_size, enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory=None if kv_cache_memory is None
            else parse_size(kv_cache_memory, "kv_cache_memory"),
            num_gpu_blocks_override=num_gpu_blocks_override)
        scheduler = SchedulerConfig(max_num_seqs=max_num_seqs,
                                    max_num_batched_tokens=max_num_batched_tokens,
                                    enable_chunked_prefill=enable_chunked_prefill)
        self._attach(LLMEngine(EngineConfig(
            model=model, tokenizer=tokenizer, revision=revision, dtype=dtype, device=device, seed=seed,
            max_model_len=max_model_len, chat_template=chat_template,
            generation_config=generation_config, served_model_name=served_model_name,
            skip_tokenizer_init=skip_tokenizer_init, load_format=load_format,
            enforce_eager=enforce_eager, kernel_backend=kernel_backend, cache=cache,
            scheduler=scheduler, tensor_parallel_size=tensor_parallel_size,
            lora=LoRAConfig(max_loras, max_lora_rank, max_cpu_loras) if enable_lora else None)))

    @classmethod
    def from_engine_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm._attach(LLMEngine(config))
        return llm

    def _attach(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._ids = count()

    def shutdown(self) -> None:
        """Stop the engine's worker processes (tensor parallelism); also done when the LLM
        is garbage-collected or the interpreter exits."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.engine.default_sampling_params()

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
                 ) -> list[RequestOutput]:
        """prompts: a string, a list of token ids, {"prompt": ...} or {"prompt_token_ids": ...},
        or a list of these. One RequestOutput per prompt, in order. lora_request: one adapter
        for all prompts, or one (or None, the base model) per prompt; needs enable_lora."""
        return self._run(_as_prompt_list(prompts), sampling_params, lora_request)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             chat_template: str | None = None, chat_template_kwargs: dict | None = None,
             tools: list[dict] | None = None,
             lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
             ) -> list[RequestOutput]:
        """messages: one conversation (a list of {"role", "content"}) or a list of them.
        lora_request: as in `generate`, per conversation."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("chat needs a tokenizer (skip_tokenizer_init is set)")
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tools=tools,
                chat_template=chat_template, template_kwargs=chat_template_kwargs)
            prompts.append(tokenizer.encode(text, add_special_tokens=False))
        return self._run(prompts, sampling_params, lora_request)

    def _run(self, prompts: list[str | list[int]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None,
             lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None
             ) -> list[RequestOutput]:
        params_list = self._params_per_prompt(sampling_params, len(prompts))
        loras = (list(lora_request) if isinstance(lora_request, Sequence)
                 else [lora_request] * len(prompts))
        if len(loras) != len(prompts):
            raise ValueError(f"{len(loras)} lora requests for {len(prompts)} prompts")
        engine = self.engine
        encoded = [engine.encode_prompt(p) for p in prompts]
        for token_ids, lora in zip(encoded, loras):  # reject bad input before any starts
            engine.validate_prompt(token_ids)
            engine.validate_lora(lora)
        request_ids = []
        try:
            for prompt, token_ids, params, lora in zip(prompts, encoded, params_list, loras):
                request_id = str(next(self._ids))
                engine.add_request(request_id, token_ids, params, lora)
                request_ids.append(request_id)
            results: dict[str, RequestOutput] = {}
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        results[output.request_id] = output
        except BaseException:
            for request_id in request_ids:
                engine.abort_request(request_id)
            raise
        ordered = [results[r] for r in request_ids]
        for output, prompt in zip(ordered, prompts):
            output.prompt = prompt if isinstance(prompt, str) else None
        return ordered

    def _params_per_prompt(self, sampling_params, num_prompts: int) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * num_prompts
        if len(sampling_params) != num_prompts:
            raise ValueError(f"got {len(sampling_params)} sampling params for {num_prompts} "
                             f"prompts")
        return [replace(p, output_kind=RequestOutputKind.FINAL_ONLY) for p in sampling_params]


def _as_prompt_list(prompts) -> list[str | list[int]]:
    if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    result = []
    for prompt in prompts:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = prompt["prompt_token_ids"]
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        result.append(prompt)
    if not result:
        raise ValueError("no prompts given")
    return result
