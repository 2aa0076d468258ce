"""gpuaffinity.numa.nvml_lite gives pynvml's answers: the same C calls, held side by side on simulated machines."""

from __future__ import annotations

import pytest

from conftest import run_json

SIDE_BY_SIDE = r"""
import json, pynvml
from gpuaffinity.numa.nvml_lite import NvmlLiteError, Session
pynvml.nvmlInit()
from gpuaffinity.core.model import normalize_bus_id
def text(v):
    return v.decode() if isinstance(v, bytes) else v
buses = [normalize_bus_id(text(pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).busId))
         for i in range(pynvml.nvmlDeviceGetCount())]
def bits(words):
    return sorted(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)
def theirs(bus):
    h = pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
    out = [bits(pynvml.nvmlDeviceGetMemoryAffinity(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)),
           bits(pynvml.nvmlDeviceGetCpuAffinityWithinScope(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE))]
    try:
        out.append(pynvml.nvmlDeviceGetNumaNodeId(h))
    except pynvml.NVMLError as e:
        out.append(f"error {e.value}")
    return out
def ours(nv, bus):
    h = nv.handle(bus)
    out = [sorted(nv.memory_affinity(h)), sorted(nv.cpu_affinity(h))]
    try:
        out.append(nv.numa_node_id(h))
    except NvmlLiteError as e:
        out.append(f"error {e.code}")
    return out
with Session() as nv:
    mine = [ours(nv, b) for b in buses]
    try:
        nv.handle("0000:ff:1f.7")
        missing = None
    except NvmlLiteError as e:
        missing = [e.call, e.code]
print(json.dumps({"buses": buses, "pynvml": [theirs(b) for b in buses], "lite": mine, "missing": missing,
                  "after": pynvml.nvmlDeviceGetCount()}))
"""


@pytest.mark.parametrize("preset", ["dgx-h100", "mixed-4gpu", "h200x4-vm", "mig-a100", "slurm-2of8"])
def test_the_lite_calls_answer_as_pynvml_does(sim_factory, preset):
    out = run_json(sim_factory(preset), SIDE_BY_SIDE)
    assert out["buses"] and out["lite"] == out["pynvml"]
    assert any(row[0] for row in out["lite"]) or preset == "h200x4-vm"  # node masks are read, not empty
    assert out["missing"] == ["nvmlDeviceGetHandleByPciBusId_v2", 6]  # NVML_ERROR_NOT_FOUND, as pynvml gets
    assert out["after"] == len(out["buses"])  # our shutdown left pynvml's own session working


def test_without_the_library_it_says_so(sim_factory):
    machine = sim_factory("dgx-h100")
    code = ("import json\nfrom gpuaffinity.numa.nvml_lite import NvmlLiteError, Session\n"
            "try:\n    Session()\n    print(json.dumps('loaded'))\n"
            "except NvmlLiteError as e:\n    print(json.dumps([e.call, e.code, str(e)]))\n")
    out = run_json(machine, code, LD_LIBRARY_PATH="/nonexistent")
    assert out == ["loading libnvidia-ml.so.1", -1, "loading libnvidia-ml.so.1 returned NVML error -1"]
