"""Model-runner steps for the tests of the cpu kernel backend: a batch of sequences prefilled,
then one decode token each, run fused (one C call for the layers) or one op at a time.

Imported as a plain module (`from cpu_steps import ...`): pytest puts this folder on sys.path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from infernetes.runtime.config import LoRAConfig
from infernetes.runtime.engine.model_runner import ModelRunner
from infernetes.runtime.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.request import LoRARequest
from infernetes.runtime.sampling_params import SamplingParams

BLOCK_SIZE = 4
# Context lengths of the sequences that decode together: one block, a partial block, the
# sliding window of the tiny Mistral (24) crossed.
CONTEXTS = [1, 6, 30]
# Enough sequences that the layers' products take the GEMM (12 rows and more) rather than the
# row kernel.
MANY_CONTEXTS = [1, 6, 30, 2, 9, 17, 25, 3, 11, 4, 8, 13, 29, 5]


def make_runner(folder: str, dtype: torch.dtype, kernels: str,
                lora: LoRAConfig | None = None) -> ModelRunner:
    arch = ModelArchConfig.from_folder(Path(folder))
    runner = ModelRunner(arch, Path(folder), dtype, torch.device("cpu"), 128, BLOCK_SIZE,
                         kernel_backend=kernels, lora=lora)
    runner.allocate_kv_cache(160)
    return runner


def requests_for(step: str, contexts: list[int] = CONTEXTS,
                 adapters: list[LoRARequest | None] | None = None) -> list[ScheduledRequest]:
    """Each sequence's prompt ("prefill") or its next token after the prompt ("decode"),
    sequence i with adapter adapters[i] (None: the base model)."""
    params = SamplingParams(max_tokens=4)
    requests, next_block = [], 0
    for i, length in enumerate(contexts):
        prompt = [(7 * i + 3 * p) % 300 + 1 for p in range(length)]
        blocks = list(range(next_block, next_block + length // BLOCK_SIZE + 1))
        next_block = blocks[-1] + 1
        if step == "prefill":
            request = ScheduledRequest(f"r{i}", prompt, 0, blocks, False, params, prompt, [])
        else:
            request = ScheduledRequest(f"r{i}", [5 + i], length, blocks, True, params, prompt,
                                       [5 + i])
        request.lora_request = None if adapters is None else adapters[i]
        requests.append(request)
    return requests


def decode_hidden(runner: ModelRunner, fused: bool, contexts: list[int],
                  adapters: list[LoRARequest | None] | None = None) -> torch.Tensor:
    """The final hidden states of the decode step after the prompts' prefill."""
    runner.execute_model(SchedulerOutput(requests_for("prefill", contexts, adapters),
                                         sum(contexts)))
    decode = requests_for("decode", contexts, adapters)
    input_ids, positions, meta, _ = runner._prepare(decode)
    if runner.lora is not None:
        runner.lora.activate([(r.lora_request, len(r.token_ids)) for r in decode])
    meta.fused_decode = fused
    with torch.inference_mode():
        return runner.model(input_ids, positions, meta)
