"""The Triton SiLU-and-multiply against the engine's in float32, on odd widths; and the small-
kernel benchmark's byte accounting and wiring (it only runs on a GPU)."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, assert_close, poisoned
from infernetes.benchmarks.gpu import bench_small_kernels as bench
from infernetes.kernels.triton.activation import reference_silu_and_mul, silu_and_mul
from infernetes.runtime.layers.activation import silu_and_mul as torch_silu_and_mul


def _x(num_tokens: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(num_tokens, 2 * d, generator=gen)).to(DEVICE, dtype)


def test_reference_is_the_engine_activation_in_float32():
    x = _x(7, 1000, torch.float32)
    assert torch.equal(reference_silu_and_mul(x), torch_silu_and_mul(x))


@pytest.mark.parametrize("num_tokens,d", [
    (1, 14336), (7, 1536), (33, 1000), (129, 1000), (7, 14336), (129, 64)])
def test_matches_reference_into_out(num_tokens, d, dtype):
    x = _x(num_tokens, d, dtype, seed=num_tokens + d)
    out = poisoned((num_tokens, d), dtype)
    assert silu_and_mul(x, out=out) is out
    assert_close(out, reference_silu_and_mul(x), dtype)


def test_allocates_out_and_reads_strided_rows(dtype):
    wide = _x(33, 1100, dtype, seed=1)  # rows of 2200, the op reads the first 2000
    x = wide[:, :2000]
    out = silu_and_mul(x)
    assert out.shape == (33, 1000) and out.dtype == dtype
    assert_close(out, reference_silu_and_mul(x), dtype)


def test_extreme_gates_stay_finite(dtype):
    x = torch.tensor([[-100.0, 0.0, 30.0, 1.0, 1.0, 1.0]], dtype=dtype, device=DEVICE)
    assert_close(silu_and_mul(x), reference_silu_and_mul(x), dtype)


def test_empty_batch():
    assert silu_and_mul(torch.empty(0, 8, device=DEVICE)).shape == (0, 4)


@pytest.mark.parametrize("name,bad", [
    ("x", lambda x, out: (x[0], out)),
    ("x", lambda x, out: (x[:, :7], out)),
    ("x", lambda x, out: (x.long(), out)),
    ("x", lambda x, out: (x.t().contiguous().t(), out)),
    ("out", lambda x, out: (x, out[:, :3])),
    ("out", lambda x, out: (x, out.half())),
    ("out", lambda x, out: (x, out.t().contiguous().t())),
])
def test_bad_inputs_raise_naming_the_argument(name, bad):
    x, out = bad(torch.randn(5, 8, device=DEVICE), torch.empty(5, 4, device=DEVICE))
    with pytest.raises(ValueError, match=f"^{name}:"):
        silu_and_mul(x, out=out)


# -- benchmarks/gpu/bench_small_kernels.py -----------------------------------------------------

def test_benchmark_bytes_at_llama_8b_decode():
    """One bf16 token of Llama-8B: what each op must read and write, counted by hand."""
    assert bench.kv_store_bytes(1, 8, 128, 2) == 2 * 2 * 8 * 128 * 2 + 8
    assert bench.rms_norm_bytes(1, 4096, 2, with_residual=False) == 3 * 4096 * 2
    assert bench.rms_norm_bytes(1, 4096, 2, with_residual=True) == 5 * 4096 * 2
    assert bench.rotary_bytes(1, 32, 8, 128, 2) == 2 * 40 * 128 * 2 + 8 + 128 * 4
    assert bench.silu_and_mul_bytes(1, 14336, 2) == 3 * 14336 * 2


def test_benchmark_bytes_scale_with_tokens():
    for fn, args in ((bench.kv_store_bytes, (8, 128, 2)),
                     (bench.rotary_bytes, (32, 8, 128, 2)),
                     (bench.silu_and_mul_bytes, (14336, 2))):
        assert fn(4096, *args) == 4096 * fn(1, *args)
    # The weight is read once per call, not per token.
    assert bench.rms_norm_bytes(64, 4096, 2, False) == (2 * 64 + 1) * 4096 * 2


def test_benchmark_cases_run_both_implementations():
    """Every case's Triton and torch closure, at a tiny shape under the interpreter."""
    shape = bench.ModelShape(hidden=96, intermediate=80, num_heads=4, num_kv_heads=2,
                             head_dim=16)
    cases = bench.build_cases(shape, 3, torch.float32, DEVICE)
    assert {c.op for c in cases} == {"store_kv_cache", "rms_norm", "rms_norm_residual",
                                     "apply_rotary", "silu_and_mul"}
    for case in cases:
        case.triton()
        case.torch()
        assert case.bytes > 0 and case.num_tokens == 3


def test_benchmark_needs_cuda():
    with pytest.raises(ValueError, match="^device:"):
        bench.run("cpu")
