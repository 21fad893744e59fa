"""Triton kernels of rspnet, shipped as ``rspnet.kernels``.

Only ``@triton.jit`` functions and their launch constants live here; the
host code that allocates outputs and launches them (through
``torch.library.wrap_triton``) is in ``rspnet/ops``. Importing this package
requires triton; ``rspnet.ops`` imports it lazily and only when triton is
usable.
"""
