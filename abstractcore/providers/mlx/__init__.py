"""The in-process MLX provider.

Deliberately import-free: importing this package must not import MLX, because on Linux the
system BLAS has to be loaded (``blas.preload_blas``) before MLX's first import.
"""
