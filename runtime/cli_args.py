"""Engine flags, with vLLM's names and meanings, shared by every `infernetes` command.

Each flag is documented here, once; `engine_config_from_args` turns them into typed configs,
which check the values and name the flag in any error."""
from __future__ import annotations

import argparse

from infernetes.runtime.config import (
    DTYPE_CHOICES, KERNEL_BACKENDS, CacheConfig, ConfigError, EngineConfig, LoRAConfig,
    SchedulerConfig, parse_size)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--tokenizer", help="tokenizer folder, if not the model's")
    g.add_argument("--enable-lora", action="store_true",
                   help="serve LoRA adapters (--lora-modules, /v1/load_lora_adapter)")
    g.add_argument("--max-loras", type=int, default=1,
                   help="adapters one batch may use at once (fast slots)")
    g.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank")
    g.add_argument("--max-cpu-loras", type=int,
                   help="adapters kept in CPU memory (default: --max-loras)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="split the model over this many GPUs (worker processes; on CPU, "
                        "processes sharing the cores)")
    g.add_argument("--enforce-eager", action="store_true",
                   help="run decode batches eagerly on GPU, without CUDA graphs")
    g.add_argument("--kernel-backend", default="auto", choices=KERNEL_BACKENDS,
                   help="auto: Triton on GPU, our C kernels on CPU (built with the system C "
                        "compiler on first use; torch's ops when that fails); torch: plain "
                        "torch ops; cpu, triton: insist on one")
    g.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="dummy: random weights (seeded by --seed), for benchmarking a model "
                        "shape from its config.json alone")
    g.add_argument("--revision", help="branch, tag or commit of an hf:// model (default: main, "
                                      "or the @REVISION in its URI)")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights and activations; auto takes the checkpoint's (float16 "
                        "becomes bfloat16 on CPU)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--seed", type=int, default=0, help="seed of the engine's random state")
    g.add_argument("--max-model-len", type=int,
                   help="longest prompt + output, in tokens; default: the model's own limit")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=True, help="reuse the KV cache of shared prompt prefixes")
    g.add_argument("--kv-cache-memory", help="KV cache size, e.g. 2GiB (default on CPU: 1GiB; "
                                             "on GPU, --gpu-memory-utilization decides)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights, activations and KV cache")
    g.add_argument("--num-gpu-blocks-override", type=int,
                   help="exact number of KV-cache blocks (testing)")
    g.add_argument("--max-num-seqs", type=int, default=256,
                   help="most sequences in one batch")
    g.add_argument("--max-num-batched-tokens", type=int,
                   help="token budget of one engine step (default: 2048, or the context "
                        "length when chunked prefill is disabled)")
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=True, help="split long prompts across steps")
    g.add_argument("--chat-template", help="Jinja chat template, or a file holding one")
    g.add_argument("--generation-config", default="auto",
                   help="sampling defaults: auto (the model's generation_config.json), "
                        "vllm (none), or a folder")


def engine_config_from_args(args: argparse.Namespace, model: str | None) -> EngineConfig:
    cache = CacheConfig(
        block_size=args.block_size, enable_prefix_caching=args.enable_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory=None if args.kv_cache_memory is None
        else parse_size(args.kv_cache_memory, "--kv-cache-memory"),
        num_gpu_blocks_override=args.num_gpu_blocks_override)
    scheduler = SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                max_num_batched_tokens=args.max_num_batched_tokens,
                                enable_chunked_prefill=args.enable_chunked_prefill)
    return EngineConfig(
        model=model, tokenizer=args.tokenizer, revision=args.revision,
        load_format=args.load_format, enforce_eager=args.enforce_eager,
        kernel_backend=args.kernel_backend,
        dtype=args.dtype, device=args.device, tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed, max_model_len=args.max_model_len, chat_template=args.chat_template,
        generation_config=args.generation_config, cache=cache, scheduler=scheduler,
        lora=LoRAConfig(args.max_loras, args.max_lora_rank, args.max_cpu_loras)
        if args.enable_lora else None)


# vLLM flags that this version does not implement yet: accepted by the parser so that the error
# names them and says why, instead of argparse's generic "unrecognized arguments".
_NOT_YET = {
    "--pipeline-parallel-size": "pipeline parallelism",
    "--enable-auto-tool-choice": "tool calling", "--tool-call-parser": "tool calling",
    "--quantization": "quantized weights",
    "--speculative-config": "speculative decoding", "--kv-cache-dtype": "KV-cache dtypes",
}
# vLLM flags whose meaning already holds here.
_ACCEPTED = {
    "--trust-remote-code": "only built-in architectures run; no remote code is executed",
    "--disable-log-requests": "requests are not logged",
    "--enable-reasoning": "older vLLM's switch; --reasoning-parser alone turns reasoning on",
}


def add_compatibility_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("vLLM compatibility")
    for flag, feature in _NOT_YET.items():
        g.add_argument(flag, nargs="?", const=True, default=None,
                       help=f"not supported yet ({feature}): the server refuses to start")
    for flag, why in _ACCEPTED.items():
        g.add_argument(flag, action="store_true", help=f"accepted: {why}")


def check_compatibility_args(args: argparse.Namespace) -> None:
    """Refuse to start on a flag we cannot honour, naming it (a size-1 parallelism is fine)."""
    for flag, feature in _NOT_YET.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is None or (flag.endswith("parallel-size") and str(value) == "1"):
            continue
        raise ConfigError(f"{flag} is not supported yet ({feature} is not implemented in "
                          f"this version)")
