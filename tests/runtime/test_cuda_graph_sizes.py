"""Which CUDA graphs are captured, and which one a decode batch replays (the pure part; the
capture itself runs on a GPU, in tests/gpu)."""
from __future__ import annotations

import pytest

from infernetes.runtime.engine.cuda_graphs import capture_sizes, padded_size


@pytest.mark.parametrize("max_num_seqs, expected", [
    (1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20]),
    (256, [1, 2, 4] + list(range(8, 257, 8))), (1000, [1, 2, 4] + list(range(8, 257, 8))),
])
def test_capture_sizes(max_num_seqs, expected):
    assert capture_sizes(max_num_seqs) == expected


@pytest.mark.parametrize("num_seqs, expected", [(1, 1), (3, 4), (5, 8), (9, 16), (256, 256),
                                                (257, None)])
def test_a_batch_replays_the_next_captured_size(num_seqs, expected):
    assert padded_size(num_seqs, capture_sizes(256)) == expected
