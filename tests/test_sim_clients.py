"""Unmodified pynvml, cuda.bindings, cuda.core and torch against the simulator."""

from __future__ import annotations

import pytest

from conftest import run_json
from gpuaffinity.core.cpulist import format_cpulist

RAY_ORDER = [3, 6, 5, 4, 0, 7, 1, 2]

PYNVML = r"""
import json, pynvml
pynvml.nvmlInit()
out = {"count": pynvml.nvmlDeviceGetCount(), "driver": pynvml.nvmlSystemGetDriverVersion(), "gpus": []}
for i in range(out["count"]):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    mask = pynvml.nvmlDeviceGetCpuAffinityWithinScope(h, 4, pynvml.NVML_AFFINITY_SCOPE_NODE)
    cpus = [w * 64 + b for w, word in enumerate(mask) for b in range(64) if word >> b & 1]
    nodes = pynvml.nvmlDeviceGetMemoryAffinity(h, 1, pynvml.NVML_AFFINITY_SCOPE_NODE)[0]
    same = pynvml.nvmlDeviceGetHandleByPciBusId(pci.busId)
    out["gpus"].append({"uuid": pynvml.nvmlDeviceGetUUID(h), "bus": pci.busId, "legacy": pci.busIdLegacy,
                        "name": pynvml.nvmlDeviceGetName(h), "cpus": cpus, "node_mask": nodes,
                        "by_bus_index": pynvml.nvmlDeviceGetIndex(same),
                        "by_uuid_index": pynvml.nvmlDeviceGetIndex(
                            pynvml.nvmlDeviceGetHandleByUUID(pynvml.nvmlDeviceGetUUID(h)))})
pynvml.nvmlShutdown()
print(json.dumps(out))
"""


def test_pynvml_sees_the_simulated_dgx(sim_factory):
    machine = sim_factory("dgx-h100")
    topo = machine.topology
    # NVML ignores CUDA_VISIBLE_DEVICES: a shuffled list changes nothing here
    out = run_json(machine, PYNVML, cvd=",".join(map(str, RAY_ORDER)))
    assert out["count"] == 8
    assert out["driver"] == topo.driver_version
    for i, (got, gpu) in enumerate(zip(out["gpus"], topo.gpus, strict=False)):
        assert got["uuid"] == gpu.uuid
        assert got["bus"] == "0000" + gpu.pci_bus_id.upper()
        assert got["legacy"] == gpu.pci_bus_id.upper()
        assert got["name"] == gpu.name
        assert format_cpulist(got["cpus"]) == ("0-55,112-167" if gpu.numa_node == 0 else "56-111,168-223")
        assert got["node_mask"] == 1 << gpu.numa_node
        assert got["by_bus_index"] == got["by_uuid_index"] == i


CUDA_BINDINGS = r"""
import json
from cuda.bindings import driver as d
(err,) = d.cuInit(0)
err2, n = d.cuDeviceGetCount()
devs = []
for i in range(n):
    _, bus = d.cuDeviceGetPCIBusId(32, i)
    _, uuid = d.cuDeviceGetUuid(i)
    _, busno = d.cuDeviceGetAttribute(d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, i)
    _, back = d.cuDeviceGetByPCIBusId(bus.rstrip(b"\0 "))
    devs.append([bus.rstrip(b"\0 ").decode(), uuid.bytes.hex(), busno, int(back)])
try:
    d.cuMemAlloc(16)
    missing = "present"
except Exception as e:
    missing = type(e).__name__
print(json.dumps({"init": int(err), "count": n, "devs": devs, "missing": missing}))
"""


def test_cuda_bindings_driver_follows_a_ray_shuffle(sim_factory):
    machine = sim_factory("dgx-h100")
    topo = machine.topology
    out = run_json(machine, CUDA_BINDINGS, cvd=",".join(map(str, RAY_ORDER)))
    assert out["init"] == 0 and out["count"] == 8
    for logical, (bus, uuid_hex, busno, back) in enumerate(out["devs"]):
        gpu = topo.gpus[RAY_ORDER[logical]]
        assert bus == gpu.pci_bus_id.upper()
        assert uuid_hex == gpu.uuid[4:].replace("-", "")
        assert busno == gpu.pci_fields[1]
        assert back == logical
    # functions the simulator does not provide are absent, as with an old driver
    assert out["missing"] == "FunctionNotFoundError"


CUDA_CORE = r"""
import json
from cuda.core import system
devs = [system.Device(index=i) for i in range(system.get_num_devices())]
print(json.dumps([[d.uuid, d.pci_info.bus_id, d.name] for d in devs]))
"""


def test_cuda_core_system(sim_factory):
    pytest.importorskip("cuda.core")
    machine = sim_factory("mixed-4gpu")
    out = run_json(machine, CUDA_CORE)
    assert out == [[g.uuid, "0000" + g.pci_bus_id.upper(), g.name] for g in machine.topology.gpus]


TORCH = r"""
import json, sys, torch
res = []
for i in range(int(sys.argv[1])):
    try:
        res.append(torch.cuda._get_nvml_device_index(i))
    except Exception as e:
        res.append(type(e).__name__)
print(json.dumps({"version": torch.__version__, "res": res}))
"""


def test_torch_nvml_helper_with_a_uuid_list(sim_factory):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip("this torch has no _get_nvml_device_index")
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    # full UUID, a short unique prefix and another full UUID, in shuffled order
    cvd = ",".join([gpus[6].uuid, gpus[2].uuid[:9], gpus[0].uuid])
    out = run_json(machine, TORCH, "4", cvd=cvd)
    assert out["res"][:3] == [6, 2, 0]
    assert out["res"][3] == "RuntimeError"  # torch: "device 3 is not visible"
