"""RMSNorm, optionally fused with the residual add that precedes it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.kernels = "torch"  # set by the model runner (kernel_backend.py)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: norm(x). With it: (norm(x + residual), x + residual)."""
        if self.kernels == "triton":
            from infernetes.kernels.triton.rms_norm import rms_norm
            return rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = x + residual
            residual = x
        # Normalized in float32, scaled in the model's dtype, as the reference implementations.
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        out = self.weight * normed.to(x.dtype)
        return out if residual is None else (out, residual)
