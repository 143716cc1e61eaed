"""Typed engine configuration. Each setting is documented once, where the CLI defines it
(runtime/cli_args.py); here each config checks its own values and names the flag on error."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a dtype or device is made: the CLI and the
    import torch   # operator (which shares it) start without it

_DTYPE_NAMES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                "float16": "float16", "half": "float16"}
DTYPE_CHOICES = ("auto", *_DTYPE_NAMES)
LOAD_FORMATS = ("auto", "dummy")
KERNEL_BACKENDS = ("auto", "torch", "triton", "cpu")  # runtime/engine/kernel_backend.py
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag."""


def parse_size(text: str | int, flag: str) -> int:
    """'4GiB', '512M', '1g', or a byte count, to bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if not match:
            raise ConfigError(f"{flag}: cannot read {text!r} as a size such as '2GiB' or '512MiB'")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if value <= 0:
        raise ConfigError(f"{flag} must be positive, got {text!r}")
    return value


def resolve_dtype(dtype: str | torch.dtype, model_dtype: torch.dtype | None,
                  device: torch.device) -> torch.dtype:
    """'auto' takes the checkpoint's dtype; float16 becomes bfloat16 on CPU, where it is slow."""
    import torch
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, _DTYPE_NAMES[dtype])
    resolved = model_dtype if model_dtype in (torch.float32, torch.bfloat16, torch.float16) \
        else torch.bfloat16
    if device.type == "cpu" and resolved == torch.float16:
        return torch.bfloat16
    return resolved


@dataclass(slots=True)
class CacheConfig:
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None  # bytes; on CPU the default is 1 GiB
    num_gpu_blocks_override: int | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.block_size <= 256 and self.block_size & (self.block_size - 1) == 0):
            raise ConfigError(f"--block-size must be a power of two from 1 to 256, "
                              f"got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], "
                              f"got {self.gpu_memory_utilization}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ConfigError(f"--num-gpu-blocks-override must be at least 1, "
                              f"got {self.num_gpu_blocks_override}")


@dataclass(slots=True)
class LoRAConfig:
    """--enable-lora and its limits (vLLM's meanings)."""
    max_loras: int = 1  # adapters one step can use (fast slots)
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept in CPU memory; default max_loras

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ConfigError(f"--max-loras must be at least 1, got {self.max_loras}")
        if not 1 <= self.max_lora_rank <= 512:
            raise ConfigError(f"--max-lora-rank must be in [1, 512], got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ConfigError(f"--max-cpu-loras ({self.max_cpu_loras}) must be at least "
                              f"--max-loras ({self.max_loras})")


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    # None: 2048 with chunked prefill; without it, enough for the longest request.
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    max_loras: int = 0  # distinct adapters one step may use; 0: no limit (LoRA off)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ConfigError(f"--max-num-batched-tokens must be at least 1, "
                              f"got {self.max_num_batched_tokens}")

    def for_context(self, max_model_len: int) -> SchedulerConfig:
        """The budget resolved and checked against the longest request.

        Without chunked prefill a request (or one recomputed after preemption, prompt plus
        output) must fit in one step, or it would wait forever.
        """
        budget = self.max_num_batched_tokens
        if budget is None:
            budget = 2048 if self.enable_chunked_prefill else max(2048, max_model_len)
        elif not self.enable_chunked_prefill and budget < max_model_len:
            raise ConfigError(
                f"--max-num-batched-tokens ({budget}) is smaller than --max-model-len "
                f"({max_model_len}) with chunked prefill disabled: long requests could never "
                f"be scheduled; raise it, lower --max-model-len or enable chunked prefill")
        return SchedulerConfig(self.max_num_seqs, budget, self.enable_chunked_prefill,
                               self.max_loras)


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # None: the embedded default model
    tokenizer: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    served_model_name: str | None = None
    generation_config: str = "auto"  # "auto" | "vllm" | a folder
    chat_template: str | None = None
    skip_tokenizer_init: bool = False  # prompts are token ids; outputs carry no text
    # "auto": the checkpoint's weights; "dummy": random weights from `seed` (benchmarks of
    # model shapes with only a config.json, as vLLM's --load-format dummy).
    load_format: str = "auto"
    enforce_eager: bool = False  # no CUDA graphs for decode batches
    # runtime/engine/kernel_backend.py: "auto" (Triton on CUDA, our C kernels on CPU), "torch",
    # "cpu"; "triton" on CPU runs the kernels in Triton's interpreter (TRITON_INTERPRET=1).
    kernel_backend: str = "auto"
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora: LoRAConfig | None = None  # None: adapters off
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.tensor_parallel_size, bool) or \
                not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            raise ConfigError(f"--tensor-parallel-size must be a positive integer, got "
                              f"{self.tensor_parallel_size!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"--max-model-len must be at least 2, got {self.max_model_len}")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, "
                              f"got {self.dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ConfigError(f"--load-format must be one of {', '.join(LOAD_FORMATS)}, got "
                              f"{self.load_format!r}")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ConfigError(f"--kernel-backend must be one of "
                              f"{', '.join(KERNEL_BACKENDS)}, got {self.kernel_backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def resolved_served_model_name(self) -> str:
        """--served-model-name, else a name derived from the model path or hub id."""
        from infernetes.runtime.model_source import default_served_name
        return self.served_model_name or default_served_name(self.model)

    def torch_device(self) -> torch.device:
        import torch
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA device is available")
        return torch.device(self.device)
