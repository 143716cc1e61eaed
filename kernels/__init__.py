"""Attention and fused ops. Each op has a torch implementation (the reference, and the CPU path);
Triton GPU kernels slot in beside them with the same signatures."""
