#!/usr/bin/env python3
"""Pieces of a serving worker's first gpuaffinity call, each timed alone (torch imported, CUDA up): the probe of
whether CUDA is up, the plugin scan, and the import of each module the resolution and the plan load.

    PYTHONPATH=src python3 tools/profile_worker_bits.py
"""

import ctypes
import os
import sys
import time

import torch

try:
    torch.cuda.init()
except Exception:
    ctypes.CDLL("libcuda.so.1").cuInit(0)


def ms(t: float) -> str:
    return f"{(time.perf_counter() - t) * 1e3:7.3f} ms"


t = time.perf_counter()
lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
print("CDLL(libcuda, NOLOAD)      ", ms(t))
t = time.perf_counter()
n = ctypes.c_int(0)
rc = lib.cuDeviceGetCount(ctypes.byref(n))
print("cuDeviceGetCount           ", ms(t), rc, n.value)
t = time.perf_counter()
with open("/proc/self/maps", "rb") as f:
    size = len(f.read())
print("read /proc/self/maps       ", ms(t), size, "bytes")
before = set(sys.modules)
for mod in ("gpuaffinity", "gpuaffinity.core.settings", "gpuaffinity.core.errors", "gpuaffinity.core.record",
            "gpuaffinity.core.model", "gpuaffinity.core.cvd", "gpuaffinity.core.strategy", "gpuaffinity.core.chain",
            "gpuaffinity.core.plugins", "gpuaffinity.api", "gpuaffinity.host", "gpuaffinity.inventory",
            "gpuaffinity.resolvers", "gpuaffinity.resolvers._common", "gpuaffinity.resolvers.pci",
            "gpuaffinity.resolvers.cvd", "gpuaffinity.resolvers.torch_helper", "gpuaffinity.placement",
            "gpuaffinity.numa.sysfs", "gpuaffinity.numa.query", "gpuaffinity.numa.modes", "gpuaffinity.numa.bind",
            "gpuaffinity.core.notes", "gpuaffinity.core.cpulist"):
    t = time.perf_counter()
    __import__(mod)
    print(f"import {mod:<34}", ms(t))
from gpuaffinity.core.plugins import find_entry_points  # noqa: E402

t = time.perf_counter()
found = find_entry_points("gpuaffinity")
print("find_entry_points          ", ms(t), len(found or ()), "entry points;",
      sum(1 for e in sys.path if os.path.isdir(e or ".") for x in os.listdir(e or ".") if x.endswith(".dist-info")),
      "distributions")
from gpuaffinity.resolvers._common import cuda_initialized_here  # noqa: E402

t = time.perf_counter()
up = cuda_initialized_here()
print("cuda_initialized_here      ", ms(t), up)
import gpuaffinity  # noqa: E402

t = time.perf_counter()
gpuaffinity.resolve(0)
print("resolve(0), modules loaded ", ms(t))
t = time.perf_counter()
gpuaffinity.plan(0)
print("plan(0) after it           ", ms(t))
