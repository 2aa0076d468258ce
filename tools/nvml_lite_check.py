#!/usr/bin/env python3
"""gpuaffinity.numa.nvml_lite against pynvml on this machine's GPUs: the same questions, both ways, side by side.

Prints one JSON object: the bus ids NVML lists, pynvml's answers and nvml_lite's for each (memory affinity and
CPU affinity at node scope, the GPU memory's NUMA node or the error), what a lookup of a bus with no GPU gives,
whether pynvml still works after nvml_lite's shutdown, and ``equal``.  tests/test_numa_nvml_lite.py runs it on
simulated machines; tools/validate_real.py on real GPUs, in every view it sets up.

    python3 tools/nvml_lite_check.py
"""

from __future__ import annotations

import json

import pynvml

from gpuaffinity.core.model import normalize_bus_id
from gpuaffinity.numa.nvml_lite import NvmlLiteError, Session


def text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def bits(words: list[int]) -> list[int]:
    return sorted(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)


def theirs(bus: str) -> list:
    h = pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
    out: list = [bits(pynvml.nvmlDeviceGetMemoryAffinity(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)),
                 bits(pynvml.nvmlDeviceGetCpuAffinityWithinScope(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE))]
    try:
        out.append(pynvml.nvmlDeviceGetNumaNodeId(h))
    except pynvml.NVMLError as e:
        out.append(f"error {e.value}")
    return out


def ours(nv: Session, bus: str) -> list:
    h = nv.handle(bus)
    out: list = [sorted(nv.memory_affinity(h)), sorted(nv.cpu_affinity(h))]
    try:
        out.append(nv.numa_node_id(h))
    except NvmlLiteError as e:
        out.append(f"error {e.code}")
    return out


def main() -> int:
    pynvml.nvmlInit()
    buses = [normalize_bus_id(text(pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).busId))
             for i in range(pynvml.nvmlDeviceGetCount())]
    with Session() as nv:
        mine = [ours(nv, b) for b in buses]
        try:
            nv.handle("0000:ff:1f.7")
            missing = None
        except NvmlLiteError as e:
            missing = [e.call, e.code]
    reference = [theirs(b) for b in buses]
    print(json.dumps({"buses": buses, "pynvml": reference, "lite": mine, "missing": missing,
                      "after": pynvml.nvmlDeviceGetCount(), "equal": mine == reference}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
