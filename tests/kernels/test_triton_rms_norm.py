"""The Triton RMSNorm against the engine's RMSNorm semantics, with and without the fused
residual add, on odd hidden sizes, in registers and in chunks."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, assert_close, poisoned
from infernetes.kernels.triton import rms_norm as rms_norm_module
from infernetes.kernels.triton.rms_norm import reference_rms_norm, rms_norm
from infernetes.runtime.layers.layernorm import RMSNorm

EPS = 1e-5
# Every token count and every hidden size, not every pair: the interpreter is slow.
SHAPES = [(1, 576), (1, 4096), (7, 1000), (33, 4096), (129, 576), (129, 1000)]


def _inputs(num_tokens: int, hidden: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(num_tokens, hidden, generator=gen).to(DEVICE, dtype)
    weight = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(DEVICE, dtype)
    return x, residual, weight


@pytest.mark.parametrize("with_residual", [False, True])
def test_reference_is_the_engine_layer(with_residual, dtype):
    x, residual, weight = _inputs(7, 576, dtype)
    layer = RMSNorm(576, EPS, dtype).to(DEVICE)
    layer.weight.copy_(weight)
    if with_residual:
        out, new_residual = reference_rms_norm(x, weight, EPS, residual)
        layer_out, layer_residual = layer(x, residual)
        assert torch.equal(new_residual, layer_residual)
    else:
        out, layer_out = reference_rms_norm(x, weight, EPS), layer(x)
    assert torch.equal(out, layer_out)


@pytest.mark.parametrize("num_tokens,hidden", SHAPES)
def test_without_residual(num_tokens, hidden, dtype):
    x, _, weight = _inputs(num_tokens, hidden, dtype, seed=hidden + num_tokens)
    out = poisoned((num_tokens, hidden), dtype)
    returned = rms_norm(x, weight, EPS, out=out)
    assert returned is out
    assert_close(out, reference_rms_norm(x, weight, EPS), dtype)


@pytest.mark.parametrize("num_tokens,hidden", SHAPES)
def test_with_residual_overwrites_it_in_place(num_tokens, hidden, dtype):
    x, residual, weight = _inputs(num_tokens, hidden, dtype, seed=hidden - num_tokens)
    expected_out, expected_residual = reference_rms_norm(x, weight, EPS, residual)
    residual_in = residual.clone()
    x_before = x.clone()

    out, residual_out = rms_norm(x, weight, EPS, residual_in)

    assert residual_out is residual_in  # the contract: the sum lands in the caller's tensor
    assert_close(residual_in, expected_residual, dtype)
    assert_close(out, expected_out, dtype)
    assert torch.equal(x, x_before)
    assert out.shape == x.shape and out.dtype == dtype


@pytest.mark.parametrize("with_residual", [False, True])
def test_rows_wider_than_a_block_are_walked_in_chunks(monkeypatch, with_residual, dtype):
    """hidden 1000 in 256-wide chunks: four chunks, the last one masked."""
    monkeypatch.setattr(rms_norm_module, "_MAX_BLOCK", 256)
    x, residual, weight = _inputs(7, 1000, dtype, seed=3)
    out = poisoned((7, 1000), dtype)
    if with_residual:
        expected_out, expected_residual = reference_rms_norm(x, weight, EPS, residual)
        _, residual_out = rms_norm(x, weight, EPS, residual, out=out)
        assert_close(residual_out, expected_residual, dtype)
    else:
        expected_out = reference_rms_norm(x, weight, EPS)
        rms_norm(x, weight, EPS, out=out)
    assert_close(out, expected_out, dtype)


@pytest.mark.parametrize("hidden", [16384, 20000])  # the widest in registers; then in chunks
def test_wide_rows(hidden, dtype):
    x, residual, weight = _inputs(3, hidden, dtype, seed=hidden)
    expected_out, expected_residual = reference_rms_norm(x, weight, EPS, residual)
    out, residual_out = rms_norm(x, weight, EPS, residual.clone())
    assert_close(residual_out, expected_residual, dtype)
    assert_close(out, expected_out, dtype)


def test_strided_rows_and_residual_aliasing_x(dtype):
    """x and residual as row slices of wider buffers; then x and residual the same tensor."""
    wide = torch.randn(7, 1200, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    x, residual = wide[:, :1000], wide[:, 100:1100].clone()
    weight = torch.randn(1000, generator=torch.Generator().manual_seed(6)).to(DEVICE, dtype)
    expected_out, expected_residual = reference_rms_norm(x, weight, EPS, residual)
    out, _ = rms_norm(x, weight, EPS, residual)
    assert_close(out, expected_out, dtype)
    assert_close(residual, expected_residual, dtype)

    both = wide[:, :1000].clone()
    expected_out, expected_residual = reference_rms_norm(both, weight, EPS, both)
    out, _ = rms_norm(both, weight, EPS, both)
    assert_close(out, expected_out, dtype)
    assert_close(both, expected_residual, dtype)


def test_empty_batch():
    x = torch.empty(0, 64, device=DEVICE)
    assert rms_norm(x, torch.ones(64, device=DEVICE), EPS).shape == (0, 64)


def _good_inputs():
    x, residual, weight = _inputs(3, 64, torch.float32)
    return dict(x=x, weight=weight, eps=EPS, residual=residual,
                out=torch.empty(3, 64, device=DEVICE))


@pytest.mark.parametrize("name,bad", [
    ("x", lambda a: a["x"][0]),
    ("x", lambda a: a["x"].long()),
    ("x", lambda a: a["x"].t().contiguous().t()),
    ("weight", lambda a: a["weight"][:63]),
    ("weight", lambda a: a["weight"].half()),
    ("eps", lambda a: -1.0),
    ("eps", lambda a: float("nan")),
    ("residual", lambda a: a["residual"][:2]),
    ("residual", lambda a: a["residual"].half()),
    ("out", lambda a: a["out"][:, :32]),
    ("out", lambda a: a["out"].half()),
])
def test_bad_inputs_raise_naming_the_argument(name, bad):
    args = _good_inputs()
    args[name] = bad(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        rms_norm(**args)
