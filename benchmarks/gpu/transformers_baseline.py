"""The baseline: transformers' batched `generate` of the same prompts on the same GPU.

Left padding (a decoder-only model generates after the last prompt token of every row),
greedy, `min_new_tokens = max_new_tokens` so that no row stops early, the default attention
implementation (recorded). Random weights from `from_config`, built directly on the device.
"""
from __future__ import annotations

import math
import time
from typing import Any

from common import Deadline, free_device_memory, make_prompts, synchronize
from models import ModelShape, build_hf_model


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, attention mask) padded on the left to the longest prompt."""
    width = max(len(p) for p in prompts)
    ids = [[pad_id] * (width - len(p)) + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return ids, mask


def transformers_throughput(shape: ModelShape, prompts: list[list[int]], output_len: int,
                            device, seed: int, deadline: Deadline,
                            margin_s: float = 20.0) -> dict[str, Any]:
    """Output tokens per second of one batched `generate` over all prompts. `max_time` stops
    it `margin_s` before the deadline; a run so stopped is marked truncated."""
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    model = build_hf_model(shape, device, torch.bfloat16, seed)
    synchronize(device)
    result: dict[str, Any] = {"load_s": round(time.perf_counter() - start, 2),
                              "transformers": transformers.__version__,
                              "attn_implementation": getattr(model.config,
                                                             "_attn_implementation", None)}
    pad_id = 0

    def generate(batch: list[list[int]], max_new: int, max_time: float | None = None):
        ids, mask = left_pad(batch, pad_id)
        input_ids = torch.tensor(ids, device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids,
                                 attention_mask=torch.tensor(mask, device=device),
                                 do_sample=False, max_new_tokens=max_new,
                                 min_new_tokens=max_new, pad_token_id=pad_id, max_time=max_time)
        return int(out.shape[0]), int(out.shape[1]) - input_ids.shape[1]

    try:
        generate(make_prompts(shape.vocab_size, 2, len(prompts[0]), seed=-1), 4)  # warm-up
        max_time = max(5.0, deadline.remaining() - margin_s)
        synchronize(device)
        t0 = time.perf_counter()
        rows, new_tokens = generate(prompts, output_len,
                                    None if math.isinf(max_time) else max_time)
        synchronize(device)
        wall = time.perf_counter() - t0
    finally:
        del model
        free_device_memory(device)
    result.update(requests=rows, new_tokens_per_request=new_tokens,
                  output_tokens=rows * new_tokens, wall_s=round(wall, 3),
                  output_tok_per_s=rows * new_tokens / wall,
                  truncated=new_tokens < output_len)
    if result["truncated"]:
        result["note"] = (f"stopped by max_time after {new_tokens} of {output_len} tokens: "
                          f"tokens/s over a shorter run, whose prompt share is larger, "
                          f"understates transformers")
    return result
