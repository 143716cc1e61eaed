"""CPU kernels in C (AVX2 + FMA), for decoding on CPUs: bandwidth-bound matrix-vector products
and the fused small ops around them. Built on first use by `library.load`; each op module
checks its inputs and calls the library; the torch references are the layers' own torch paths.
"""
