"""The NUMA stage: where a physical GPU sits, and binding a process there. Never parses CUDA_VISIBLE_DEVICES."""
