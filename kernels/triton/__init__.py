"""Triton GPU kernels. Each module holds one op: private `@triton.jit` kernel(s), a host
launcher that checks shapes, dtypes and strides and computes the grid, and a naive torch
reference that the tests compare with.

Importing these modules needs `triton` (in the CUDA build of torch; on CPU, tests run the
kernels under `TRITON_INTERPRET=1`, which must be set before the first import). The engine
imports them only when it runs on a CUDA device.
"""
