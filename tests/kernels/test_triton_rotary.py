"""The Triton rotary embedding, in place, against the engine's rotary in float32, with default
and llama3-scaled caches at positions up to 4000."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, assert_close
from infernetes.kernels.triton.rotary import apply_rotary, reference_apply_rotary
from infernetes.runtime.layers.rotary import RotaryEmbedding
from infernetes.runtime.layers.rotary import apply_rotary as torch_apply_rotary
from infernetes.runtime.model_config import RopeConfig

MAX_POSITION = 4096
ROPES = {
    "default": RopeConfig(theta=10000.0),
    "llama3": RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),  # Llama 3.1
}
_caches: dict[tuple[str, int], torch.Tensor] = {}


def _cos_sin_cache(rope: str, head_dim: int) -> torch.Tensor:
    if (rope, head_dim) not in _caches:
        rotary = RotaryEmbedding(head_dim, MAX_POSITION, ROPES[rope])
        _caches[rope, head_dim] = rotary.cos_sin.to(DEVICE)
    return _caches[rope, head_dim]


def _inputs(num_tokens, num_heads, num_kv_heads, head_dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(DEVICE, dtype)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    positions = torch.randint(0, 4001, (num_tokens,), generator=gen)
    positions[0] = 4000 if num_tokens > 1 else 0
    return query, key, positions.to(DEVICE)


def test_reference_is_the_engine_rotary_in_float32():
    rotary = RotaryEmbedding(128, MAX_POSITION, ROPES["llama3"]).to(DEVICE)
    query, key, positions = _inputs(9, 4, 2, 128, torch.float32)
    expected_q, expected_k = reference_apply_rotary(query, key, positions, rotary.cos_sin)
    cos, sin = rotary.cos_sin_at(positions, torch.float32)
    assert torch.equal(expected_q, torch_apply_rotary(query, cos, sin))
    assert torch.equal(expected_k, torch_apply_rotary(key, cos, sin))


@pytest.mark.parametrize("rope,num_tokens,num_heads,num_kv_heads,head_dim", [
    ("llama3", 1, 32, 8, 128),  # Llama-8B decode
    ("default", 7, 8, 2, 80),
    ("llama3", 33, 6, 6, 96),  # no GQA
    ("default", 33, 8, 2, 128),
    ("llama3", 129, 4, 1, 64),
    ("llama3", 7, 4, 2, 256),
])
def test_in_place_matches_reference(rope, num_tokens, num_heads, num_kv_heads, head_dim,
                                    dtype):
    query, key, positions = _inputs(num_tokens, num_heads, num_kv_heads, head_dim, dtype,
                                    seed=num_tokens + head_dim)
    cache = _cos_sin_cache(rope, head_dim)
    expected_q, expected_k = reference_apply_rotary(query, key, positions, cache)

    apply_rotary(query, key, positions, cache)

    assert_close(query, expected_q, dtype)
    assert_close(key, expected_k, dtype)


def test_views_into_a_fused_qkv_projection_leave_values_untouched(dtype):
    """The engine's layout: q, k, v side by side in one projection output, rotated as views."""
    num_tokens, num_heads, num_kv_heads, head_dim = 33, 8, 2, 128
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    qkv = qkv.to(DEVICE, dtype)
    heads = qkv.view(num_tokens, -1, head_dim)
    query, key = heads[:, :num_heads], heads[:, num_heads:num_heads + num_kv_heads]
    positions = torch.randint(0, 4001, (num_tokens,), generator=gen).to(DEVICE)
    cache = _cos_sin_cache("llama3", head_dim)
    expected_q, expected_k = reference_apply_rotary(query, key, positions, cache)
    values_before = heads[:, num_heads + num_kv_heads:].clone()

    apply_rotary(query, key, positions, cache)

    assert_close(query, expected_q, dtype)
    assert_close(key, expected_k, dtype)
    assert torch.equal(heads[:, num_heads + num_kv_heads:], values_before)


def test_empty_batch():
    query = torch.empty(0, 4, 64, device=DEVICE)
    apply_rotary(query, query[:, :2], torch.empty(0, dtype=torch.int64, device=DEVICE),
                 _cos_sin_cache("default", 64))


def _good_inputs():
    query, key, positions = _inputs(3, 4, 2, 64, torch.float32)
    return dict(query=query, key=key, positions=positions,
                cos_sin_cache=_cos_sin_cache("default", 64))


@pytest.mark.parametrize("name,bad", [
    ("query", lambda a: a["query"][0]),
    ("query", lambda a: a["query"][..., :63]),
    ("query", lambda a: a["query"].transpose(1, 2).contiguous().transpose(1, 2)),
    ("key", lambda a: a["key"][:2]),
    ("key", lambda a: a["key"][..., :32]),
    ("key", lambda a: a["key"].long()),
    ("positions", lambda a: a["positions"].int()),
    ("positions", lambda a: a["positions"][:2]),
    ("cos_sin_cache", lambda a: a["cos_sin_cache"].half()),
    ("cos_sin_cache", lambda a: a["cos_sin_cache"][:, :32]),
])
def test_bad_inputs_raise_naming_the_argument(name, bad):
    args = _good_inputs()
    args[name] = bad(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        apply_rotary(**args)
