"""Multi-adapter LoRA: the torch path (kernels/lora.py) against a naive per-token loop in
float64, the Triton kernels (kernels/triton/lora.py, both the per-token and the grouped kernel)
against the torch path; mixed batches (segments and interleaved), zero-padded ranks, a column
slice of a wider output, argument checks; and the benchmark's accounting (it only runs on a
GPU)."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, assert_close, poisoned
from infernetes.benchmarks.gpu import bench_lora as bench
from infernetes.benchmarks.gpu.common import cuda_bench_main
from infernetes.kernels import lora as torch_lora
from infernetes.kernels.triton import lora as triton_lora

IN_FEATURES, OUT_FEATURES = 576, 960
SEGMENTS = [-1, 0, 2, 2, 2, 1, -1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 0, 0, -1]
INTERLEAVED = [2, -1, 0, 3, 1, 2, 2, -1, 3, 0, 1, 3, -1, 2, 0, 0, 1, 3, 2, -1, 1, 0, 3, 2, 1]
# Rank of each slot's adapter, zero-padded to the max_rank given with it.
RANKS = {16: [1, 4, 8, 16], 64: [64, 16, 1, 4], 96: [96, 3, 64, 8]}
# The grouped kernel takes tiles of 16 tokens: 40 tokens make three tiles, one partial.
PATTERNS = {"segments": SEGMENTS + [3] * 12, "interleaved": INTERLEAVED + INTERLEAVED[:7]}
SMALL_BATCH = [2, -1, 0, 3, 3, 1, 0]  # per-token kernel (<= PER_TOKEN_MAX_TOKENS tokens)


def _slots(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _inputs(num_tokens: int, max_rank: int, dtype: torch.dtype, in_features: int = IN_FEATURES,
            out_features: int = OUT_FEATURES, seed: int = 0):
    """x, lora_a, lora_b with each slot's rank as in RANKS (entries past it exactly 0), scaled so
    that y and the update are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = RANKS[max_rank]
    x = torch.randn(num_tokens, in_features, generator=gen)
    lora_a = torch.zeros(len(ranks), max_rank, in_features)
    lora_b = torch.zeros(len(ranks), out_features, max_rank)
    for slot, rank in enumerate(ranks):
        lora_a[slot, :rank] = torch.randn(rank, in_features, generator=gen) / in_features ** 0.5
        lora_b[slot, :, :rank] = torch.randn(out_features, rank, generator=gen) / rank ** 0.5
    return (t.to(DEVICE, dtype) for t in (x, lora_a, lora_b))


def _naive(x, base, lora_a, lora_b, token_slots, column_offset=0):
    """y and the updated base, one token at a time in float64."""
    y = torch.zeros(x.shape[0], lora_a.shape[1], dtype=torch.float64)
    expected = base.double().cpu()
    cols = slice(column_offset, column_offset + lora_b.shape[1])
    for t, slot in enumerate(token_slots.tolist()):
        if slot >= 0:
            y[t] = lora_a[slot].double().cpu() @ x[t].double().cpu()
            expected[t, cols] += lora_b[slot].double().cpu() @ y[t]
    return y, expected


def _base(num_tokens: int, total_out: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, total_out, generator=gen).to(DEVICE, dtype)


# -- the torch path against the naive loop ---------------------------------------------------

@pytest.mark.parametrize("max_rank", [16, 64])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_torch_path_matches_naive_loop(pattern, max_rank, dtype):
    token_slots = _slots(PATTERNS[pattern])
    x, lora_a, lora_b = _inputs(len(token_slots), max_rank, dtype)
    base = _base(len(token_slots), OUT_FEATURES, dtype)
    y_expected, base_expected = _naive(x, base, lora_a, lora_b, token_slots)
    out = poisoned((len(token_slots), max_rank), torch.float32)
    assert torch_lora.lora_shrink(x, lora_a, token_slots, out=out) is out
    assert_close(out, y_expected, torch.float32 if dtype == torch.float32 else dtype)
    expanded = base.clone()
    torch_lora.lora_expand(out, lora_b, token_slots, expanded)
    assert_close(expanded, base_expected, dtype)
    applied = base.clone()
    torch_lora.apply_lora(x, applied, lora_a, lora_b, token_slots)
    assert torch.equal(applied, expanded)


def test_torch_path_groups_rows_by_slot():
    groups = torch_lora.slot_groups(_slots([-1, 0, 2, 2, 2, 1, -1, 0]), num_slots=4)
    as_lists = {slot: (rows if isinstance(rows, slice) else rows.tolist())
                for slot, rows in groups}
    # Contiguous rows are a slice (no gather); scattered rows an ascending index.
    assert as_lists == {0: [1, 7], 1: slice(5, 6), 2: slice(2, 5)}


def test_torch_path_rejects_slots_out_of_range():
    x, lora_a, _ = _inputs(3, 16, torch.float32)
    for bad in ([0, 4, 1], [0, -2, 1]):
        with pytest.raises(ValueError, match="^token_slots:"):
            torch_lora.lora_shrink(x, lora_a, _slots(bad))


# -- the Triton kernels against the torch path -----------------------------------------------

def _check_triton_against_torch(token_slots, max_rank, dtype, per_token, in_features=IN_FEATURES,
                                out_features=OUT_FEATURES, column_offset=0, total_out=None):
    num_tokens = len(token_slots)
    x, lora_a, lora_b = _inputs(num_tokens, max_rank, dtype, in_features, out_features)
    total_out = total_out or out_features
    y_expected = torch_lora.lora_shrink(x, lora_a, token_slots)
    out = poisoned((num_tokens, max_rank), torch.float32)
    assert triton_lora.lora_shrink(x, lora_a, token_slots, out=out, per_token=per_token) is out
    assert_close(out, y_expected, torch.float32 if dtype == torch.float32 else dtype)

    base = _base(num_tokens, total_out, dtype)
    expected = base.clone()
    torch_lora.lora_expand(y_expected, lora_b, token_slots, expected, column_offset)
    actual = base.clone()
    triton_lora.lora_expand(y_expected, lora_b, token_slots, actual, column_offset,
                            per_token=per_token)
    assert_close(actual, expected, dtype)
    # Columns outside the slice and rows without an adapter: untouched, bit for bit.
    cols = torch.zeros(total_out, dtype=torch.bool, device=DEVICE)
    cols[column_offset:column_offset + out_features] = True
    untouched = (token_slots < 0)[:, None] | ~cols[None, :]
    assert torch.equal(actual[untouched], base[untouched])


@pytest.mark.parametrize("max_rank", [16, 64])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_grouped_kernel_matches_torch_path(pattern, max_rank, dtype):
    _check_triton_against_torch(_slots(PATTERNS[pattern]), max_rank, dtype, per_token=False)


@pytest.mark.parametrize("max_rank", [16, 64])
def test_per_token_kernel_matches_torch_path(max_rank, dtype):
    _check_triton_against_torch(_slots(SMALL_BATCH), max_rank, dtype, per_token=True)


def test_launcher_picks_by_num_tokens(dtype):
    """The default choice at both sides of PER_TOKEN_MAX_TOKENS gives the torch path's result."""
    limit = triton_lora.PER_TOKEN_MAX_TOKENS
    assert [triton_lora._tile_rows(n, None) for n in (1, limit, limit + 1, 256, 257)] == \
        [1, 1, 16, 16, 64]
    for num_tokens in (triton_lora.PER_TOKEN_MAX_TOKENS, triton_lora.PER_TOKEN_MAX_TOKENS + 1):
        _check_triton_against_torch(_slots(PATTERNS["segments"][:num_tokens]), 16, dtype,
                                    per_token=None, out_features=160)


@pytest.mark.parametrize("per_token", [True, False])
def test_rank_above_one_tile(per_token, dtype):
    """max_rank 96 > MAX_BLOCK_R: shrink over two rank tiles, expand in two rank steps."""
    _check_triton_against_torch(_slots(SMALL_BATCH), 96, dtype, per_token, out_features=64)


@pytest.mark.parametrize("per_token", [True, False])
def test_column_offset_updates_one_slice_of_a_wider_output(per_token, dtype):
    """k of a merged qkv output: columns 960..1152 of 1344 (q 960 | k 192 | v 192)."""
    _check_triton_against_torch(_slots(SMALL_BATCH), 16, dtype, per_token, out_features=192,
                                column_offset=960, total_out=1344)


@pytest.mark.parametrize("per_token", [True, False])
def test_shrink_split_over_in_features(per_token, dtype):
    """One program's worth of tokens: the shrink splits in_features and sums the partials."""
    split_k, _ = triton_lora.choose_split_k(1, 1536, 256 if per_token else 64, num_sms=1)
    assert split_k == 2  # what this test exercises (the interpreter counts as one SM)
    token_slots = _slots([1]) if per_token else _slots([1, 3, -1, 3])  # one program of each
    _check_triton_against_torch(token_slots, 16, dtype, per_token, in_features=1536,
                                out_features=64)


def test_torch_path_column_offset_and_untouched_rows(dtype):
    token_slots = _slots(SMALL_BATCH)
    x, lora_a, lora_b = _inputs(len(token_slots), 16, dtype, out_features=192)
    base = _base(len(token_slots), 1344, dtype)
    _, expected = _naive(x, base, lora_a, lora_b, token_slots, column_offset=960)
    actual = base.clone()
    torch_lora.apply_lora(x, actual, lora_a, lora_b, token_slots, column_offset=960)
    assert_close(actual, expected, dtype)
    assert torch.equal(actual[:, :960], base[:, :960])
    assert torch.equal(actual[:, 1152:], base[:, 1152:])
    assert torch.equal(actual[token_slots < 0], base[token_slots < 0])


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_all_base_batch_leaves_base_bit_for_bit(impl, dtype):
    ops = torch_lora if impl == "torch" else triton_lora
    token_slots = _slots([-1] * 20)
    x, lora_a, lora_b = _inputs(20, 16, dtype, out_features=192)
    base = _base(20, 192, dtype)
    before = base.clone()
    ops.apply_lora(x, base, lora_a, lora_b, token_slots)
    assert torch.equal(base, before)
    out = poisoned((20, 16), torch.float32)
    ops.lora_shrink(x, lora_a, token_slots, out=out)
    assert torch.equal(out, torch.zeros_like(out))


def test_strided_rows_and_apply_lora(dtype):
    """x as a column slice of a wider tensor (rows of stride 700); apply_lora equals shrink then
    expand of the torch path."""
    token_slots = _slots(PATTERNS["interleaved"][:20])
    wide, lora_a, lora_b = _inputs(20, 16, dtype, in_features=700, out_features=160)
    x = wide[:, :IN_FEATURES]
    lora_a = lora_a[:, :, :IN_FEATURES].contiguous()
    base = _base(20, 160, dtype)
    expected = base.clone()
    torch_lora.apply_lora(x, expected, lora_a, lora_b, token_slots)
    triton_lora.apply_lora(x, base, lora_a, lora_b, token_slots)
    assert_close(base, expected, dtype)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_batch(impl):
    ops = torch_lora if impl == "torch" else triton_lora
    x, lora_a, lora_b = _inputs(0, 16, torch.float32, out_features=32)
    assert ops.lora_shrink(x, lora_a, _slots([])).shape == (0, 16)
    ops.apply_lora(x, torch.empty(0, 32, device=DEVICE), lora_a, lora_b, _slots([]))


def test_choose_split_k_from_shapes():
    # One decode token on an H100 (132 SMs): split down to MIN_K_PER_SPLIT columns.
    assert triton_lora.choose_split_k(1, 4096, 256, 132) == (16, 256)
    assert triton_lora.choose_split_k(1, 14336, 256, 132) == (28, 512)
    # Enough programs already (a prefill): no split.
    assert triton_lora.choose_split_k(512, 4096, 64, 132) == (1, 4096)
    # Never an empty split: (split_k - 1) * k_per_split < in_features.
    for in_features in (576, 960, 1000, 1536, 14336):
        split_k, k_per_split = triton_lora.choose_split_k(1, in_features, 64, 132)
        assert (split_k - 1) * k_per_split < in_features <= split_k * k_per_split
        assert k_per_split % 64 == 0


# -- argument checks -------------------------------------------------------------------------

def _good_args():
    x, lora_a, lora_b = _inputs(5, 16, torch.float32, in_features=24, out_features=40)
    return dict(x=x, lora_a=lora_a, lora_b=lora_b, token_slots=_slots([0, -1, 3, 3, 1]),
                y=torch.zeros(5, 16, device=DEVICE), base=torch.zeros(5, 48, device=DEVICE),
                out=torch.zeros(5, 16, device=DEVICE), column_offset=8)


BAD_ARGS = [  # (argument named, what replaces it)
    ("x", lambda a: a["x"][0]),
    ("x", lambda a: a["x"].long()),
    ("lora_a", lambda a: a["lora_a"][:, :, :20]),
    ("lora_a", lambda a: a["lora_a"].half()),
    ("lora_a", lambda a: a["lora_a"][0]),
    ("token_slots", lambda a: a["token_slots"].long()),
    ("token_slots", lambda a: a["token_slots"][:4]),
    ("out", lambda a: a["out"][:, :8]),
    ("out", lambda a: a["out"].half()),
    ("y", lambda a: a["y"][:, :8]),
    ("y", lambda a: a["y"].half()),
    ("lora_b", lambda a: a["lora_b"].half()),
    ("lora_b", lambda a: a["lora_b"][0]),
    ("base", lambda a: a["base"][0]),
    ("base", lambda a: a["base"].long()),
    ("column_offset", lambda a: -1),
    ("column_offset", lambda a: 9),
    ("column_offset", lambda a: 8.0),
]
LAYOUT_ARGS = [  # the Triton launchers also need unit stride along the last dimension
    ("x", lambda a: a["x"].t().contiguous().t()),
    ("lora_b", lambda a: a["lora_b"].transpose(1, 2).contiguous().transpose(1, 2)),
    ("base", lambda a: a["base"].t().contiguous().t()),
]


def _call(ops, op: str, args: dict) -> None:
    if op == "shrink":
        ops.lora_shrink(args["x"], args["lora_a"], args["token_slots"], out=args["out"])
    elif op == "expand":
        ops.lora_expand(args["y"], args["lora_b"], args["token_slots"], args["base"],
                        args["column_offset"])
    else:
        ops.apply_lora(args["x"], args["base"], args["lora_a"], args["lora_b"],
                       args["token_slots"], args["column_offset"])


_USES = {"shrink": {"x", "lora_a", "token_slots", "out"},
         "expand": {"y", "lora_b", "token_slots", "base", "column_offset"},
         "apply": {"x", "lora_a", "lora_b", "token_slots", "base", "column_offset"}}


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_bad_inputs_raise_naming_the_argument(impl):
    ops = torch_lora if impl == "torch" else triton_lora
    cases = BAD_ARGS + (LAYOUT_ARGS if impl == "triton" else [])
    for op, uses in _USES.items():
        _call(ops, op, _good_args())  # the good arguments pass
        for name, bad in cases:
            if name not in uses:
                continue
            args = _good_args()
            args[name] = bad(args)
            with pytest.raises(ValueError, match=f"^{name}:"):
                _call(ops, op, args)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_apply_lora_checks_lora_b_against_lora_a(impl):
    ops = torch_lora if impl == "torch" else triton_lora
    args = _good_args()
    for bad in (args["lora_b"][:3], args["lora_b"][:, :, :8]):
        with pytest.raises(ValueError, match="^lora_b:"):
            ops.apply_lora(args["x"], args["base"], args["lora_a"], bad, args["token_slots"], 8)
    with pytest.raises(ValueError, match="^base:"):
        ops.apply_lora(args["x"], args["base"][:4], args["lora_a"], args["lora_b"],
                       args["token_slots"], 8)


# -- benchmarks/gpu/bench_lora.py ------------------------------------------------------------

def test_benchmark_spreads_adapters_over_sequences():
    assert bench.spread_slots(bench.Batch("d", 5, 1), 0) == [-1] * 5
    assert bench.spread_slots(bench.Batch("d", 5, 1), 4) == [0, 1, 2, 3, 0]
    assert bench.spread_slots(bench.Batch("p", 3, 2), 8) == [0, 0, 1, 1, 2, 2]


def test_benchmark_counts_at_llama_8b():
    qkv, o, gate_up, down = bench.LLAMA_8B_LAYERS
    assert (qkv.total_out, gate_up.total_out, down.in_features) == (6144, 28672, 14336)
    assert bench.base_flops(1, o) == 2 * 4096 * 4096
    # One token, rank 16: shrink 3 x (4096 -> 16) for q, k, v; expand 16 -> 6144.
    assert bench.lora_flops(1, qkv, 16) == 2 * 16 * (3 * 4096 + 6144)
    assert bench.lora_flops(256, down, 16) == 256 * bench.lora_flops(1, down, 16)
    # o, one bf16 token on one adapter: A and B, x, the base row read and written, y.
    assert bench.lora_bytes(1, 1, 1, o, 16, 2) == \
        (16 * 8192 + 4096 + 2 * 4096) * 2 + 2 * 16 * 4
    # Tokens without an adapter cost only their (zero) rows of y.
    assert bench.lora_bytes(4, 0, 0, o, 16, 2) == 4 * 2 * 16 * 4


def test_benchmark_cases_run_every_implementation():
    """Each closure of a case at a tiny shape (interpreter): the Triton and torch closures agree
    and differ from the base alone."""
    layer = bench.LoRALayer("qkv", 96, (64, 32, 32))
    case = bench.build_case(layer, bench.Batch("d", 5, 1), 4, rank=8, dtype=torch.float32,
                            device=DEVICE)
    case.base()
    base = case.out.clone()
    case.triton()
    triton_out = case.out.clone()
    case.torch()
    assert_close(triton_out, case.out, torch.float32)
    assert not torch.equal(triton_out, base)


def test_benchmark_needs_cuda():
    with pytest.raises(ValueError, match="^device:"):
        bench.run("cpu")


@pytest.mark.parametrize("device", ["cpu", "nonsense"])
def test_benchmark_cli_names_the_device_flag(device, capsys):
    """The kernel benchmarks' shared command line (benchmarks/gpu/common.py)."""
    with pytest.raises(SystemExit) as exit_info:
        cuda_bench_main(bench.run, bench.__doc__, ["--device", device])
    assert exit_info.value.code == 2
    assert "error: --device:" in capsys.readouterr().err
