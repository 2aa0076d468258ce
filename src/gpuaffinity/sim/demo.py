"""What goes wrong without gpuaffinity, shown on whatever machine this runs on.

For every CUDA device this process sees, it prints the physical GPU the CUDA
driver says it is (by PCI bus id, matched to NVML) next to the GPU you get by
passing the logical index straight to ``nvmlDeviceGetHandleByIndex``, the
mistake many launchers make, and the NUMA node each one sits on.

Run it on a simulated machine with a Ray-style shuffled CUDA_VISIBLE_DEVICES:

    CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2 gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.sim.demo
"""

from __future__ import annotations

import ctypes
import os
import sys


def _node(bus_id: str) -> str:
    root = os.environ.get("GPUAFFINITY_SYSFS_ROOT", "/sys")
    try:
        with open(os.path.join(root, "bus/pci/devices", bus_id.lower(), "numa_node")) as f:
            return f.read().strip()
    except OSError:
        return "?"


def main() -> int:
    import pynvml

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        print("no CUDA driver (libcuda.so.1) here: run this under `gpuaffinity sim run`", file=sys.stderr)
        return 1
    rc = cuda.cuInit(0)
    if rc != 0:
        print(f"cuInit failed with CUDA error {rc} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
              file=sys.stderr)
        return 1
    n = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(n))
    pynvml.nvmlInit()
    try:
        print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}  "
              f"CUDA_DEVICE_ORDER={os.environ.get('CUDA_DEVICE_ORDER', '<unset>')}")
        print("cuda  physical (by PCI bus id)     node | naive nvmlDeviceGetHandleByIndex(cuda)  node")
        wrong = 0
        for i in range(n.value):
            buf = ctypes.create_string_buffer(32)
            cuda.cuDeviceGetPCIBusId(buf, 32, i)
            bus = buf.value.decode()
            real = pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode()))
            naive_bus = ""
            if i < pynvml.nvmlDeviceGetCount():
                naive_bus = pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).busIdLegacy
                naive_bus = naive_bus.decode() if isinstance(naive_bus, bytes) else naive_bus
            mark = "" if naive_bus.lower() == bus.lower() else "  <- wrong GPU"
            if mark and _node(naive_bus) != _node(bus):
                mark += ", wrong NUMA node"
            wrong += bool(mark)
            print(f"{i:>4}  nvml {real} {bus.lower():<14}  {_node(bus):>6} | nvml {i} {naive_bus.lower():<14}"
                  f"  {_node(naive_bus):>6}{mark}")
        print(f"{wrong} of {n.value} devices would be pinned to the wrong GPU by the naive mapping.")
    finally:
        pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
