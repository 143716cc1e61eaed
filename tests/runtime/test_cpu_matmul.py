"""Half-precision products on CPUs without native half GEMM: batches run in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from infernetes import SamplingParams
from infernetes.runtime.layers import cpu_matmul


def test_upcast_product_equals_fp32_product_rounded(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "cpu_has_native_half_gemm", lambda: False)
    gen = torch.Generator().manual_seed(0)
    # Different shapes one after another: the shared buffer grows and is viewed correctly.
    for rows, inputs, outputs in [(4, 33, 17), (9, 80, 130), (5, 7, 3)]:
        x = torch.randn(rows, inputs, generator=gen).to(torch.bfloat16)
        w = torch.randn(outputs, inputs, generator=gen).to(torch.bfloat16)
        b = torch.randn(outputs, generator=gen).to(torch.bfloat16)
        out = cpu_matmul.linear(x, w, b)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, F.linear(x.float(), w.float(), b.float()).to(torch.bfloat16))


def test_single_rows_and_fp32_take_the_plain_path(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "cpu_has_native_half_gemm", lambda: False)
    assert not cpu_matmul.should_upcast(torch.zeros(1, 8, dtype=torch.bfloat16))
    assert not cpu_matmul.should_upcast(torch.zeros(64, 8, dtype=torch.float32))
    assert cpu_matmul.should_upcast(torch.zeros(64, 8, dtype=torch.bfloat16))
    monkeypatch.setattr(cpu_matmul, "cpu_has_native_half_gemm", lambda: True)
    assert not cpu_matmul.should_upcast(torch.zeros(64, 8, dtype=torch.bfloat16))


def test_bfloat16_engine_answers_sensibly_in_batches():
    from infernetes import LLM
    llm = LLM(dtype="bfloat16", max_model_len=1024, kv_cache_memory="64MiB")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    outputs = llm.chat([question] * 6, SamplingParams(temperature=0, max_tokens=12))
    texts = {o.outputs[0].text for o in outputs}
    assert len(texts) == 1 and "Paris" in texts.pop()
