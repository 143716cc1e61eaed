"""Token embedding and LM head, split by vocabulary across tensor-parallel ranks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infernetes.kernels.cpu.linear import linear as linear_cpu
from infernetes.runtime.layers.cpu_matmul import should_upcast, uses_cpu_kernel
from infernetes.runtime.parallel.state import get_tp_group


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.tp = get_tp_group()
        self.vocab_size = vocab_size
        self.shard_size = -(-vocab_size // self.tp.size)
        self.vocab_start = self.tp.rank * self.shard_size
        self.weight = nn.Parameter(torch.zeros(self.shard_size, hidden_size, dtype=dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        """loaded: a tensor or a CheckpointTensor; only this rank's rows are read."""
        if loaded.shape[1] != param.shape[1]:
            raise ValueError(f"embedding of width {loaded.shape[1]} does not fit hidden size "
                             f"{param.shape[1]}")
        start = min(self.vocab_start, loaded.shape[0])
        rows = loaded.narrow(0, start, min(self.shard_size, loaded.shape[0] - start))
        param.data[:rows.shape[0]].copy_(rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.shard_size)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states to logits over the vocabulary; may share its weight with the embedding.

    On CPUs without native half-precision GEMM (see cpu_matmul), batches use an fp32 copy of
    the weight, made on first use: converting this largest matrix at every step would cost more
    than the product.
    """

    _weight_fp32: torch.Tensor | None = None
    kernels = "torch"  # set by the model runner (kernel_backend.py)

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Logits [..., vocab_size]; with tensor parallelism on rank 0 only (None elsewhere):
        each rank computes its slice of the vocabulary, rank 0 gathers them."""
        if uses_cpu_kernel(hidden_states, self.kernels):
            # float32 straight away: the sampler reads float32 (the same values, rounded)
            logits = linear_cpu(hidden_states, self.weight, out_dtype=torch.float32)
        elif should_upcast(hidden_states):
            if self._weight_fp32 is None:
                self._weight_fp32 = self.weight.float()
            logits = F.linear(hidden_states.float(), self._weight_fp32)
        else:
            logits = F.linear(hidden_states, self.weight)
        logits = self.tp.gather_last_dim(logits)
        return None if logits is None else logits[..., :self.vocab_size]
