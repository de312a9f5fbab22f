"""Private numba kernels: arrays in, arrays out.  Public wrappers live in engine.py."""
