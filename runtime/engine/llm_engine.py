"""The engine: `step()` = schedule, execute, update. Everything else is set-up and bookkeeping."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from infernetes.runtime.config import CacheConfig, ConfigError, EngineConfig, resolve_dtype
from infernetes.runtime.engine.kv_cache_manager import KVCacheManager
from infernetes.runtime.engine.model_runner import ModelRunner
from infernetes.runtime.engine.output_processor import OutputProcessor, ParentRequest
from infernetes.runtime.engine.scheduler import Scheduler
from infernetes.runtime.engine.stats import IterationStats
from infernetes.runtime.generation_config import read_generation_config
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.model_source import resolve_model_folder
from infernetes.runtime.parallel.executor import MultiprocExecutor
from infernetes.runtime.parallel.validation import check_tensor_parallel
from infernetes.runtime.parallel.worker import RunnerSpec
from infernetes.runtime.outputs import CompletionOutput, RequestOutput
from infernetes.runtime.request import LoRARequest, Request, RequestStatus
from infernetes.runtime.sampling_params import SamplingParams
from infernetes.runtime.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_CPU_DEFAULT_KV_CACHE_MEMORY = 1 << 30


class LLMEngine:
    def __init__(self, config: EngineConfig):
        started = time.perf_counter()
        self.config = config
        self.device = config.torch_device()
        self.model_folder = resolve_model_folder(config.model, config.revision)
        self.arch = ModelArchConfig.from_folder(self.model_folder)
        self.dtype = resolve_dtype(config.dtype, self.arch.torch_dtype, self.device)
        self.max_model_len = self._max_model_len()
        self.served_model_name = config.resolved_served_model_name
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer(
            Path(config.tokenizer or self.model_folder), _read_chat_template(config.chat_template))
        generation = read_generation_config(config.generation_config, self.model_folder)
        self.default_sampling = generation["defaults"]
        eos = set(self.arch.eos_token_ids) | set(generation["eos_token_ids"])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)

        torch.manual_seed(config.seed)
        cache = config.cache
        self.runner = self._make_runner()
        try:
            self._set_up_serving(cache)
        except BaseException:
            self.runner.shutdown()  # no worker process outlives a failed start
            raise
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded %s (%s) from %s: dtype %s on %s, %d KV blocks of %d tokens (%.1f MiB), "
            "max context %d tokens, in %.1f s", self.served_model_name, self.arch.architecture,
            self.model_folder, str(self.dtype).removeprefix("torch."), self.device,
            self.num_blocks, cache.block_size,
            self.num_blocks * self.runner.kv_cache_bytes_per_block() / 2**20,
            self.max_model_len, self.load_seconds)

    # -- set-up -----------------------------------------------------------------------------

    def _set_up_serving(self, cache: CacheConfig) -> None:
        """KV cache, scheduler, warm-up and CUDA graphs, once the model is loaded."""
        config = self.config
        self.num_blocks = self._num_kv_blocks()
        self.runner.allocate_kv_cache(self.num_blocks)
        self.kv_cache_manager = KVCacheManager(self.num_blocks, cache.block_size,
                                               cache.enable_prefix_caching)
        scheduler_config = config.scheduler
        if config.lora is not None:
            scheduler_config = replace(scheduler_config, max_loras=config.lora.max_loras)
        self.scheduler = Scheduler(scheduler_config, self.kv_cache_manager, self.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.log_stats = False  # set by servers that export metrics
        self.last_stats: IterationStats | None = None
        self._prefix_seen = (0, 0)
        self.runner.warm_up()
        if self.device.type == "cuda" and self.runner.use_triton and not config.enforce_eager:
            self.runner.capture_cuda_graphs(config.scheduler.max_num_seqs)

    def _make_runner(self) -> ModelRunner | MultiprocExecutor:
        """The model in this process, or split over --tensor-parallel-size worker processes
        (driven through the same methods)."""
        config = self.config
        tp_size = config.tensor_parallel_size
        check_tensor_parallel(self.arch, tp_size, self.device)
        if tp_size == 1:
            return ModelRunner(self.arch, self.model_folder, self.dtype, self.device,
                               self.max_model_len, config.cache.block_size, config.load_format,
                               config.seed, config.kernel_backend, config.lora)
        return MultiprocExecutor(RunnerSpec(
            self.arch, self.model_folder, self.dtype, self.device.type, self.max_model_len,
            config.cache.block_size, config.load_format, config.seed, config.kernel_backend,
            config.lora), tp_size)

    def _max_model_len(self) -> int:
        limit = self.arch.max_position_embeddings
        if self.arch.rope.rope_type != "default":
            limit = int(limit * self.arch.rope.factor) if self.arch.rope.rope_type == "linear" \
                else limit
        wanted = self.config.max_model_len
        if wanted is None:
            return limit
        if wanted > limit:
            raise ConfigError(f"--max-model-len {wanted} exceeds the model's maximum context "
                              f"of {limit} tokens (max_position_embeddings in config.json)")
        return wanted

    def _num_kv_blocks(self) -> int:
        cache = self.config.cache
        per_block = self.runner.kv_cache_bytes_per_block()
        if cache.num_gpu_blocks_override is not None:
            num_blocks = cache.num_gpu_blocks_override
        elif cache.kv_cache_memory is not None:
            num_blocks = cache.kv_cache_memory // per_block
        elif self.device.type == "cuda":
            num_blocks = self.runner.gpu_kv_blocks(
                cache.gpu_memory_utilization, self.config.scheduler.max_num_batched_tokens)
        else:
            num_blocks = _CPU_DEFAULT_KV_CACHE_MEMORY // per_block
        needed = -(-self.max_model_len // cache.block_size)
        if num_blocks < needed:
            raise ConfigError(
                f"the KV cache holds {num_blocks} blocks of {cache.block_size} tokens, fewer "
                f"than one request of --max-model-len {self.max_model_len} needs ({needed}); "
                f"give it more memory (--kv-cache-memory, --gpu-memory-utilization) or lower "
                f"--max-model-len")
        return num_blocks

    # -- requests ---------------------------------------------------------------------------

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer (skip_tokenizer_init is set)")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            raise ValueError("a prompt must be a string or a list of token ids")
        return prompt

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        vocab = self.arch.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt is {len(prompt_token_ids)} tokens, but this model's maximum "
                f"context length is {self.max_model_len} tokens, which leaves no room to "
                f"generate")

    def validate_params(self, params: SamplingParams) -> None:
        vocab = self.arch.vocab_size
        bad = [t for t in params.stop_token_ids if t >= vocab]
        if bad:
            raise ValueError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > vocab:
                raise ValueError(f"{name} must be at most the vocabulary size {vocab}, got "
                                 f"{value}")

    def validate_lora(self, lora_request: LoRARequest | None) -> None:
        """The adapter is read (once) at submission: a broken one fails its own request,
        never a step that other requests share (LoRAAdapterError is a ValueError)."""
        if lora_request is None:
            return
        if not self.runner.lora_enabled:
            raise ValueError(f"adapter {lora_request.lora_name!r} asked for, but LoRA is not "
                             f"enabled (--enable-lora)")
        if lora_request.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be at least 1, got {lora_request.lora_int_id}")
        self.runner.add_lora(lora_request, self.scheduler.lora_ids_in_flight())

    def remove_lora(self, lora_int_id: int) -> None:
        """Drop an adapter from memory and its slot (the caller made sure no request uses it)."""
        self.runner.remove_lora(lora_int_id)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    lora_request: LoRARequest | None = None) -> None:
        if request_id in self.output_processor.parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_token_ids = self.encode_prompt(prompt)
        self.validate_prompt(prompt_token_ids)
        self.validate_params(params)
        self.validate_lora(lora_request)
        params = params.with_eos(self.eos_token_ids)
        prompt_text = prompt if isinstance(prompt, str) else None
        completions = [CompletionOutput(i, "", [], None, None) for i in range(params.n)]
        parent = ParentRequest(request_id, prompt_text, prompt_token_ids, params, completions)
        child_ids = [request_id] if params.n == 1 else [f"{i}_{request_id}"
                                                        for i in range(params.n)]
        self.output_processor.add_request(parent, child_ids)
        for index, child_id in enumerate(child_ids):
            child_params = params if params.n == 1 else params.for_sample(index)
            self.scheduler.add_request(Request(child_id, prompt_token_ids, child_params,
                                               lora_request=lora_request))

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request (e.g. its client went away); its KV blocks go back to the pool."""
        child_ids = self.output_processor.child_ids(request_id)
        self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)
        return self.output_processor.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def check_health(self) -> None:
        """Raises when the engine cannot serve (a tensor-parallel worker died)."""
        self.runner.check_health()

    def shutdown(self) -> None:
        """Stop the worker processes, if any; the engine is unusable afterwards."""
        self.runner.shutdown()

    # -- the loop ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One iteration; with `log_stats`, what it did is left in `last_stats`."""
        stats = IterationStats() if self.log_stats else None
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.execute_model(scheduler_output)
        updates = self.scheduler.update_from_output(scheduler_output, runner_output)
        outputs, stopped = self.output_processor.process(updates, stats)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        if stats is not None:
            self._fill_scheduler_stats(stats, len(scheduler_output.preempted_request_ids))
            self.last_stats = stats
        return outputs

    def _fill_scheduler_stats(self, stats: IterationStats, num_preemptions: int) -> None:
        prefix = self.kv_cache_manager.prefix_cache_stats
        stats.num_running = self.scheduler.num_running
        stats.num_waiting = self.scheduler.num_waiting
        stats.kv_cache_usage = self.kv_cache_manager.usage()
        stats.num_preemptions = num_preemptions
        stats.prefix_cache_queries = prefix.queries - self._prefix_seen[0]
        stats.prefix_cache_hits = prefix.hits - self._prefix_seen[1]
        self._prefix_seen = (prefix.queries, prefix.hits)


def _read_chat_template(value: str | None) -> str | None:
    """--chat-template takes a file path or the template itself."""
    if value is None:
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            return path.read_text()
    except OSError:  # a template string too long to be a path
        pass
    if "{" not in value:
        raise ConfigError(f"--chat-template: {value!r} is neither a file nor a Jinja template")
    return value
