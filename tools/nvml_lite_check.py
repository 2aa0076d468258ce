#!/usr/bin/env python3
"""gpuaffinity.nvml_lite against pynvml on this machine's GPUs: the same questions, both ways, side by side.

Prints one JSON object: the GPU list both ways (index, UUID, bus id, name, MIG mode and the MIG instances with
their ids: ``gpuaffinity.inventory.read_inventory_nvml`` against the same calls through pynvml), each GPU's
locality answers both ways (memory and CPU affinity at node scope, the GPU memory's NUMA node or the error,
the processes with a CUDA context there: [pid, bytes or None] or the error),
what a lookup of a bus with no GPU gives, whether pynvml still works after nvml_lite's shutdown, and ``equal``.
tests/test_numa_nvml_lite.py runs it on simulated machines; tools/validate_real.py on real GPUs, in every view
it sets up.

    python3 tools/nvml_lite_check.py
"""

from __future__ import annotations

import json

import pynvml

from gpuaffinity.core.model import normalize_bus_id
from gpuaffinity.nvml_lite import NvmlLiteError, Session


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
    try:
        out.append([[p.pid, p.usedGpuMemory] for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h)])
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
    try:
        out.append([[pid, used] for pid, used in nv.compute_processes(h)])
    except NvmlLiteError as e:
        out.append(f"error {e.code}")
    return out


def their_list() -> list:
    """The GPU list through pynvml, call for call what read_inventory_nvml asks."""
    rows = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            mode = pynvml.nvmlDeviceGetMigMode(h)[0]
        except pynvml.NVMLError as e:
            if e.value not in (3, 13):
                raise
            mode = 0
        migs = []
        if mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                except pynvml.NVMLError as e:
                    if e.value in (4, 6):
                        continue
                    raise
                migs.append([text(pynvml.nvmlDeviceGetUUID(m)), pynvml.nvmlDeviceGetGpuInstanceId(m),
                             pynvml.nvmlDeviceGetComputeInstanceId(m)])
        rows.append([i, text(pynvml.nvmlDeviceGetUUID(h)), normalize_bus_id(text(pynvml.nvmlDeviceGetPciInfo(h).busId)),
                     text(pynvml.nvmlDeviceGetName(h)), sorted(migs, key=lambda m: (m[1], m[2])),
                     mode == pynvml.NVML_DEVICE_MIG_ENABLE])
    return rows


def our_list() -> list:
    from gpuaffinity.inventory import read_inventory_nvml

    return [[g.nvml_index, g.uuid, g.pci_bus_id, g.name, [[m.uuid, m.gpu_instance, m.compute_instance]
                                                         for m in g.migs], g.mig_enabled]
            for g in read_inventory_nvml().gpus]


def main() -> int:
    mine_list = our_list()
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
    reference, reference_list = [theirs(b) for b in buses], their_list()
    print(json.dumps({"buses": buses, "pynvml": reference, "lite": mine, "missing": missing,
                      "list_pynvml": reference_list, "list_lite": mine_list,
                      "after": pynvml.nvmlDeviceGetCount(),
                      "equal": mine == reference and mine_list == reference_list}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
