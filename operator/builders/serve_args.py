"""The `infernetes serve` command line of a runtime pod, derived from the spec.

Every flag here exists in the runtime's parser (runtime/server/launch.py add_server_args,
runtime/cli_args.py add_engine_args and add_compatibility_args); a test parses the result with
those. spec.engine.extraArgs come last, so argparse's last-one-wins lets them override ours,
except the flags the pod's ports and probes depend on.
"""
from __future__ import annotations

from infernetes.operator.builders.adapters import lora_modules
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import MAX_ADAPTERS_PER_STEP

RUNTIME_PORT = 8000  # the container port, named "http"; the Service's targetPort and probes
# Flags that would break the pod's wiring if extraArgs overrode them.
RESERVED_FLAGS = ("--host", "--port")


def serve_args(isvc: InferenceService, config: OperatorConfig, model_path: str) -> list[str]:
    """The arguments after `infernetes` (the container's command). Raises ValueError naming
    spec.engine.extraArgs when they set a reserved flag, or the source of an adapter whose
    pvc:// path is unusable."""
    spec, engine = isvc.spec, isvc.spec.engine
    _check_extra_args(engine.extra_args)
    args = ["serve", model_path,
            "--host", "0.0.0.0", "--port", str(RUNTIME_PORT),
            "--served-model-name", isvc.served_name,
            # cuda when GPUs are asked for: a pod whose GPU is not visible fails loudly
            # instead of running the model on its CPUs.
            "--device", "cuda" if spec.resources.gpus > 0 else "cpu",
            "--dtype", engine.dtype.value,
            "--max-num-seqs", str(engine.max_num_seqs),
            "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
            "--enable-prefix-caching" if engine.enable_prefix_caching
            else "--no-enable-prefix-caching",
            "--drain-timeout", str(config.drain_timeout_seconds)]
    if spec.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    return args + _lora_args(isvc) + list(engine.extra_args)


def _lora_args(isvc: InferenceService) -> list[str]:
    """Every adapter of the spec stays in CPU memory (the runtime's default --max-cpu-loras is
    --max-loras): adapters are small, and steps switching between more than
    MAX_ADAPTERS_PER_STEP of them then never read a file."""
    spec = isvc.spec
    if not spec.adapters:
        return []
    max_loras = min(len(spec.adapters), MAX_ADAPTERS_PER_STEP)
    args = ["--enable-lora", "--lora-modules", *lora_modules(spec),
            "--max-loras", str(max_loras)]
    if len(spec.adapters) > max_loras:
        args += ["--max-cpu-loras", str(len(spec.adapters))]
    if spec.engine.max_lora_rank is not None:
        args += ["--max-lora-rank", str(spec.engine.max_lora_rank)]
    return args


def _check_extra_args(extra_args: list[str]) -> None:
    for arg in extra_args:
        flag = arg.split("=", 1)[0]
        if flag in RESERVED_FLAGS:
            raise ValueError(f"spec.engine.extraArgs: {flag} is set by the operator (the "
                             f"Service and the probes use port {RUNTIME_PORT}); remove it")
