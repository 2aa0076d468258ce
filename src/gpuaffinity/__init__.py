"""gpuaffinity: which physical GPU is CUDA device N, and which NUMA node and CPUs sit next to it.

Importing this package loads no torch, no CUDA and no NVML.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
