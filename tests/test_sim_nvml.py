"""The simulated libnvidia-ml.so.1 (src/gpuaffinity/sim/csrc/nvml.c), driven by the real pynvml.

The machine is a hand-written config (the line format of csrc/sim_common.h),
so every field is under the test's control; every NVML call runs in a child
process that finds the library through LD_LIBRARY_PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpuaffinity.sim.build import library_dir

pytest.importorskip("pynvml")

GPU0 = "GPU-abcdef01-2345-6789-abcd-ef0123456789"
GPU1 = "GPU-0badc0de-1111-2222-3333-444455556666"
GPU2 = "GPU-fedcba98-7654-3210-fedc-ba9876543210"
MIG0 = "MIG-11111111-aaaa-bbbb-cccc-dddddddddddd"
MIG1 = "MIG-22222222-aaaa-bbbb-cccc-eeeeeeeeeeee"

# 3 GPUs on 2 nodes: gpu0 on node 0, gpu1 (2 MIG instances) on node 1, gpu2 with no node.
CONFIG = f"""\
# hand-written for this test
driver_version 580.159.04
nvml_version 13.580.159.04
cuda_driver_version 13000
gpu {GPU0} 0000:00:06.0 0 0 6 0 0x233010de 0x16c110de 1 0 81559 9 0 132 0 NVIDIA H100 80GB HBM3
mask node_mem 1
mask socket_mem 3
mask node_cpu ff
mask socket_cpu ffff
gpu {GPU1} 0000:3b:00.0 0 0x3b 0 0 0x233510de 0x18b010de 0 1 143771 9 0 132 1 NVIDIA H200
mask node_mem 2
mask socket_mem 3
mask node_cpu ff00
mask socket_cpu ffff
mig {MIG0} 1 0 40192 60 11 NVIDIA H200 MIG 3g.71gb
mig {MIG1} 2 0 19968 32 12 NVIDIA H200 MIG 2g.35gb
gpu {GPU2} 0001:af:00.0 1 0xaf 0 0 0x20b010de 0x134f10de 2 -1 40960 8 0 108 2 NVIDIA A100-SXM4-40GB
mask node_mem 0
mask socket_mem 0
mask node_cpu 0,ff
mask socket_cpu ffffffffffffffff,ff
"""

@pytest.fixture(scope="module")
def libdir() -> Path:
    return library_dir()


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "machine.cfg"
    path.write_text(CONFIG)
    return path


def run_child(script: str, libdir: Path, **extra: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUAFFINITY_")}
    env["LD_LIBRARY_PATH"] = str(libdir)
    for k, v in extra.items():
        if v is not None:
            env[k] = v
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def child_json(script: str, libdir: Path, **extra: str | None) -> dict:
    proc = run_child(script, libdir, **extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRELUDE = """\
import ctypes, json, os
import pynvml as N

def err(fn, *args):
    try:
        fn(*args)
    except N.NVMLError as e:
        return type(e).__name__
    return "ok"

def s(v):
    return v.decode() if isinstance(v, bytes) else v

def words(arr):
    return [hex(x) for x in arr]
"""

MAIN = """\
N.nvmlInit()
out = {"ours": hasattr(N.nvmlLib, "gpuaffinitySimCallCount")}
out["count"] = N.nvmlDeviceGetCount()
out["driver"] = s(N.nvmlSystemGetDriverVersion())
out["nvml"] = s(N.nvmlSystemGetNVMLVersion())
out["cuda"] = [N.nvmlSystemGetCudaDriverVersion(), N.nvmlSystemGetCudaDriverVersion_v2()]
gpus = []
for i in range(out["count"]):
    h = N.nvmlDeviceGetHandleByIndex(i)
    g = {"uuid": s(N.nvmlDeviceGetUUID(h)), "name": s(N.nvmlDeviceGetName(h)),
         "index": N.nvmlDeviceGetIndex(h), "minor": N.nvmlDeviceGetMinorNumber(h),
         "serial": s(N.nvmlDeviceGetSerial(h)), "brand": N.nvmlDeviceGetBrand(h),
         "cc": list(N.nvmlDeviceGetCudaComputeCapability(h)), "arch": N.nvmlDeviceGetArchitecture(h),
         "board": N.nvmlDeviceGetBoardId(h), "multi": N.nvmlDeviceGetMultiGpuBoard(h),
         "compute_mode": N.nvmlDeviceGetComputeMode(h), "persist": N.nvmlDeviceGetPersistenceMode(h)}
    p = N.nvmlDeviceGetPciInfo(h)
    g["pci"] = [s(p.busId), s(p.busIdLegacy), p.domain, p.bus, p.device, hex(p.pciDeviceId), hex(p.pciSubSystemId)]
    legacy = N.nvmlPciInfo_v2_t()
    for fn in ("nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v2"):
        assert N._nvmlGetFunctionPointer(fn)(h, ctypes.byref(legacy)) == 0
        g[fn] = [s(legacy.busId), legacy.domain, legacy.bus, legacy.device]
    ext = N.nvmlPciInfoExt_v1_t()
    ext.version = N.nvmlPciInfoExt_v1
    N.nvmlDeviceGetPciInfoExt(h, ctypes.byref(ext))
    g["ext"] = [ext.version, s(ext.busId), ext.baseClass, ext.subClass, ext.domain, ext.bus]
    ext.version = 0x1000000
    g["ext_badver"] = err(N.nvmlDeviceGetPciInfoExt, h, ctypes.byref(ext))
    m = N.nvmlDeviceGetMemoryInfo(h)
    m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
    g["mem"] = [m.total, m.free, m.used, m2.total, m2.reserved, m2.free, m2.used]
    g["mem_badver"] = err(N.nvmlDeviceGetMemoryInfo, h, 1)
    g["node_mem"] = words(N.nvmlDeviceGetMemoryAffinity(h, 1, 0))
    g["socket_mem"] = words(N.nvmlDeviceGetMemoryAffinity(h, 1, 1))
    g["node_cpu"] = words(N.nvmlDeviceGetCpuAffinityWithinScope(h, 2, 0))
    g["socket_cpu"] = words(N.nvmlDeviceGetCpuAffinityWithinScope(h, 2, 1))
    g["cpu"] = words(N.nvmlDeviceGetCpuAffinity(h, 20))
    g["bad_scope"] = [err(N.nvmlDeviceGetMemoryAffinity, h, 1, 2), err(N.nvmlDeviceGetCpuAffinityWithinScope, h, 1, 7)]
    g["numa"] = err(N.nvmlDeviceGetNumaNodeId, h)
    g["mig_mode"] = N.nvmlDeviceGetMigMode(h)
    g["max_mig"] = N.nvmlDeviceGetMaxMigDeviceCount(h)
    g["is_mig"] = N.nvmlDeviceIsMigDeviceHandle(h).value
    g["gi"] = err(N.nvmlDeviceGetGpuInstanceId, h)
    g["ci"] = err(N.nvmlDeviceGetComputeInstanceId, h)
    g["parent"] = err(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h)
    g["fan"] = err(N.nvmlDeviceGetFanSpeed, h)
    gpus.append(g)
out["gpus"] = gpus
out["index_beyond"] = err(N.nvmlDeviceGetHandleByIndex, 3)

def by_bus(text):
    try:
        return N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId(text))
    except N.NVMLError as e:
        return type(e).__name__
out["bus"] = {t: by_bus(t) for t in ["00000000:00:06.0", "0000:00:06.0", "00:06.0", "00000000:00:06",
    "0000:3B:00.0", "0000:3b:00.0", "3b:00.0", "00000001:AF:00.0", "0001:af:00.0",
    "0000:00:07.0", "0000:00:06.1", "0001:3b:00.0",
    "", "zz", "0000:00:06.0x", "0000:00:06.0 ", "0000:00:00:06.0", "0000:000:06.0", "x0000:00:06.0"]}

def by_uuid(text):
    try:
        h = N.nvmlDeviceGetHandleByUUID(text)
    except N.NVMLError as e:
        return type(e).__name__
    if N.nvmlDeviceIsMigDeviceHandle(h).value:
        return "mig:" + s(N.nvmlDeviceGetUUID(h))
    return N.nvmlDeviceGetIndex(h)
out["uuid"] = {t: by_uuid(t) for t in [GPU0, GPU1, GPU2, GPU1[4:], MIG0, MIG1, GPU1[:12], GPU1.upper(),
    "GPU-" + GPU1[4:].upper(), "gpu-" + GPU1[4:], GPU1 + "0", GPU1 + "/", MIG0[4:], "", "GPU-",
    "MIG-" + GPU1 + "/2/0", "MIG-" + GPU1 + "/3/0", "MIG-" + GPU0 + "/1/0", "MIG-" + GPU1 + "/2/0x"]}

h1 = N.nvmlDeviceGetHandleByIndex(1)
migs = []
for j in range(2):
    m = N.nvmlDeviceGetMigDeviceHandleByIndex(h1, j)
    parent = N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
    mem = N.nvmlDeviceGetMemoryInfo(m)
    migs.append({"uuid": s(N.nvmlDeviceGetUUID(m)), "name": s(N.nvmlDeviceGetName(m)),
                 "is_mig": N.nvmlDeviceIsMigDeviceHandle(m).value,
                 "gi": N.nvmlDeviceGetGpuInstanceId(m), "ci": N.nvmlDeviceGetComputeInstanceId(m),
                 "parent": N.nvmlDeviceGetIndex(parent), "mem_total": mem.total,
                 "bus": s(N.nvmlDeviceGetPciInfo(m).busId),
                 "node_cpu": words(N.nvmlDeviceGetCpuAffinityWithinScope(m, 1, 0)),
                 "index": err(N.nvmlDeviceGetIndex, m), "mig_mode": err(N.nvmlDeviceGetMigMode, m),
                 "mig_of_mig": err(N.nvmlDeviceGetMigDeviceHandleByIndex, m, 0)})
out["migs"] = migs
out["mig_beyond"] = err(N.nvmlDeviceGetMigDeviceHandleByIndex, h1, 2)
out["mig_on_plain"] = err(N.nvmlDeviceGetMigDeviceHandleByIndex, N.nvmlDeviceGetHandleByIndex(0), 0)

addr = ctypes.cast(h1, ctypes.c_void_p).value
bad = [ctypes.cast(ctypes.c_void_p(a), N.c_nvmlDevice_t) for a in (addr + 8, addr - 4096 * 1024, 16)]
out["bad_handles"] = [err(N.nvmlDeviceGetUUID, b) for b in bad]
out["strings"] = [s(N.nvmlErrorString(c)) for c in (0, 1, 2, 6, 9, 13, 15, 19, 999, 55)]
out["str_notfound"] = str(N.NVMLError_NotFound())

N.nvmlInit()
N.nvmlShutdown()
out["after_one_shutdown"] = N.nvmlDeviceGetCount()
N.nvmlShutdown()
out["after_two_shutdowns"] = err(N.nvmlDeviceGetCount)
out["third_shutdown"] = err(N.nvmlShutdown)
print(json.dumps(out))
"""


@pytest.fixture()
def result(libdir: Path, cfg: Path) -> dict:
    script = f"GPU0, GPU1, GPU2, MIG0, MIG1 = {GPU0!r}, {GPU1!r}, {GPU2!r}, {MIG0!r}, {MIG1!r}\n" + MAIN
    return child_json(script, libdir, GPUAFFINITY_SIM_CONFIG=str(cfg))


def test_system_and_enumeration(result: dict) -> None:
    assert result["ours"] is True
    assert result["count"] == 3
    assert result["driver"] == "580.159.04"
    assert result["nvml"] == "13.580.159.04"
    assert result["cuda"] == [13000, 13000]
    assert result["index_beyond"] == "NVMLError_InvalidArgument"
    g0, g1, g2 = result["gpus"]
    assert [g["uuid"] for g in result["gpus"]] == [GPU0, GPU1, GPU2]
    assert [g["name"] for g in result["gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-40GB"]
    assert [(g["index"], g["minor"], g["board"]) for g in result["gpus"]] == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert len({g["serial"] for g in result["gpus"]}) == 3
    assert all(g["serial"].isdigit() for g in result["gpus"])
    assert [g["cc"] for g in result["gpus"]] == [[9, 0], [9, 0], [8, 0]]
    assert [g["arch"] for g in result["gpus"]] == [9, 9, 7]
    for g in result["gpus"]:
        assert (g["brand"], g["multi"], g["compute_mode"], g["persist"]) == (2, 0, 0, 1)
        assert g["numa"] == "NVMLError_NotSupported"
        assert g["fan"] == "NVMLError_FunctionNotFound"
    assert g0["is_mig"] == g2["is_mig"] == g1["is_mig"] == 0


def test_pci_info(result: dict) -> None:
    g0, g1, g2 = result["gpus"]
    assert g0["pci"] == ["00000000:00:06.0", "0000:00:06.0", 0, 0, 6, "0x233010de", "0x16c110de"]
    assert g1["pci"][:5] == ["00000000:3B:00.0", "0000:3B:00.0", 0, 0x3B, 0]
    assert g2["pci"][:5] == ["00000001:AF:00.0", "0001:AF:00.0", 1, 0xAF, 0]
    for g in (g0, g1, g2):
        assert g["nvmlDeviceGetPciInfo"] == g["nvmlDeviceGetPciInfo_v2"]
        assert g["nvmlDeviceGetPciInfo"][0] == g["pci"][1]
        assert g["ext"][:4] == [0x1000040, g["pci"][0], 3, 2]
        assert g["ext_badver"] == "NVMLError_ArgumentVersionMismatch"
    assert g1["nvmlDeviceGetPciInfo"] == ["0000:3B:00.0", 0, 0x3B, 0]


def test_handle_by_pci_bus_id(result: dict) -> None:
    nf, inval = "NVMLError_NotFound", "NVMLError_InvalidArgument"
    assert result["bus"] == {
        "00000000:00:06.0": 0,
        "0000:00:06.0": 0,
        "00:06.0": 0,
        "00000000:00:06": 0,
        "0000:3B:00.0": 1,
        "0000:3b:00.0": 1,
        "3b:00.0": 1,
        "00000001:AF:00.0": 2,
        "0001:af:00.0": 2,
        "0000:00:07.0": nf,
        "0000:00:06.1": nf,
        "0001:3b:00.0": nf,
        "": inval,
        "zz": inval,
        "0000:00:06.0x": inval,
        "0000:00:06.0 ": inval,
        "0000:00:00:06.0": inval,
        "0000:000:06.0": inval,
        "x0000:00:06.0": inval,
    }


def test_handle_by_uuid(result: dict) -> None:
    nf = "NVMLError_NotFound"
    assert result["uuid"] == {
        GPU0: 0,
        GPU1: 1,
        GPU2: 2,
        GPU1[4:]: 1,
        MIG0: "mig:" + MIG0,
        MIG1: "mig:" + MIG1,
        GPU1[:12]: nf,
        GPU1.upper(): nf,
        "GPU-" + GPU1[4:].upper(): nf,
        "gpu-" + GPU1[4:]: nf,
        GPU1 + "0": nf,
        GPU1 + "/": nf,
        MIG0[4:]: nf,
        "": nf,
        "GPU-": nf,
        "MIG-" + GPU1 + "/2/0": "mig:" + MIG1,  # the older MIG form names the instance by GI/CI
        "MIG-" + GPU1 + "/3/0": nf,
        "MIG-" + GPU0 + "/1/0": nf,
        "MIG-" + GPU1 + "/2/0x": nf,
    }


def test_memory(result: dict) -> None:
    mib = 1 << 20
    for g, total_mib in zip(result["gpus"], (81559, 143771, 40960), strict=True):
        total, free, used, total2, reserved2, free2, used2 = g["mem"]
        assert total == total2 == total_mib * mib
        assert free + used == total and 0 < used <= 1024 * mib
        assert free2 + reserved2 + used2 == total2 and free2 == free
        assert g["mem_badver"] == "NVMLError_ArgumentVersionMismatch"


def test_affinity(result: dict) -> None:
    g0, g1, g2 = result["gpus"]
    assert (g0["node_mem"], g0["socket_mem"]) == (["0x1"], ["0x3"])
    assert (g1["node_mem"], g1["socket_mem"]) == (["0x2"], ["0x3"])
    assert (g2["node_mem"], g2["socket_mem"]) == (["0x0"], ["0x0"])
    assert (g0["node_cpu"], g0["socket_cpu"]) == (["0xff", "0x0"], ["0xffff", "0x0"])
    assert (g1["node_cpu"], g1["socket_cpu"]) == (["0xff00", "0x0"], ["0xffff", "0x0"])
    assert (g2["node_cpu"], g2["socket_cpu"]) == (["0x0", "0xff"], ["0xffffffffffffffff", "0xff"])
    assert g1["cpu"] == ["0xff00"] + ["0x0"] * 19
    assert g2["cpu"] == ["0x0", "0xff"] + ["0x0"] * 18
    for g in result["gpus"]:
        assert g["bad_scope"] == ["NVMLError_InvalidArgument"] * 2


def test_mig(result: dict) -> None:
    g0, g1, g2 = result["gpus"]
    assert (g0["mig_mode"], g0["max_mig"]) == ([0, 0], 0)
    assert (g1["mig_mode"], g1["max_mig"]) == ([1, 1], 7)
    for g in result["gpus"]:
        assert g["gi"] == g["ci"] == "NVMLError_NotSupported"
        assert g["parent"] == "NVMLError_InvalidArgument"
    m0, m1 = result["migs"]
    assert (m0["uuid"], m0["name"], m0["gi"], m0["ci"]) == (MIG0, "NVIDIA H200 MIG 3g.71gb", 1, 0)
    assert (m1["uuid"], m1["name"], m1["gi"], m1["ci"]) == (MIG1, "NVIDIA H200 MIG 2g.35gb", 2, 0)
    assert (m0["mem_total"], m1["mem_total"]) == (40192 << 20, 19968 << 20)
    for m in (m0, m1):
        assert (m["is_mig"], m["parent"], m["bus"], m["node_cpu"]) == (1, 1, "00000000:3B:00.0", ["0xff00"])
        assert m["index"] == m["mig_of_mig"] == "NVMLError_InvalidArgument"
        assert m["mig_mode"] == "NVMLError_NotSupported"
    assert result["mig_beyond"] == "NVMLError_NotFound"
    assert result["mig_on_plain"] == "NVMLError_NotSupported"


def test_errors_and_refcount(result: dict) -> None:
    assert result["bad_handles"] == ["NVMLError_InvalidArgument"] * 3
    assert result["strings"] == [
        "Success",
        "Uninitialized",
        "Invalid Argument",
        "Not Found",
        "Driver Not Loaded",
        "Function Not Found",
        "GPU is lost",
        "In use by another client",
        "Unknown Error",
        "Unknown Error",
    ]
    assert result["str_notfound"] == "Not Found"
    assert result["after_one_shutdown"] == 3
    assert result["after_two_shutdowns"] == "NVMLError_Uninitialized"
    assert result["third_shutdown"] == "NVMLError_Uninitialized"


def test_uninitialised_calls(libdir: Path, cfg: Path) -> None:
    out = child_json(
        """
        N._LoadNvmlLibrary()
        lib = N.nvmlLib
        c = ctypes.c_uint()
        buf = ctypes.create_string_buffer(80)
        print(json.dumps([lib.nvmlDeviceGetCount_v2(ctypes.byref(c)), lib.nvmlSystemGetDriverVersion(buf, 80),
                          lib.nvmlShutdown(), lib.nvmlInit_v2(), lib.nvmlSystemGetDriverVersion(buf, 4),
                          lib.nvmlDeviceGetCount_v2(None), lib.nvmlSystemGetDriverVersion(buf, 11),
                          buf.value.decode(), lib.nvmlShutdown(), lib.nvmlInit()]))
    """,
        libdir,
        GPUAFFINITY_SIM_CONFIG=str(cfg),
    )
    assert out == [1, 1, 1, 0, 7, 2, 0, "580.159.04", 0, 0]


def test_fault_injection(libdir: Path, cfg: Path) -> None:
    out = child_json(
        """
        print(json.dumps([err(N.nvmlInit), err(N.nvmlInit)]))
    """,
        libdir,
        GPUAFFINITY_SIM_CONFIG=str(cfg),
        GPUAFFINITY_SIM_FAULTS="nvmlInit=9",
    )
    assert out == ["NVMLError_DriverNotLoaded"] * 2
    out = child_json(
        """
        N.nvmlInit()
        first = err(N.nvmlDeviceGetHandleByIndex, 0)
        h = N.nvmlDeviceGetHandleByIndex(0)
        print(json.dumps([first, s(N.nvmlDeviceGetUUID(h)), err(N.nvmlDeviceGetHandleByIndex, 1)]))
    """,
        libdir,
        GPUAFFINITY_SIM_CONFIG=str(cfg),
        GPUAFFINITY_SIM_FAULTS="nvmlDeviceGetHandleByIndex=15:1",
    )
    assert out == ["NVMLError_GpuIsLost", GPU0, "ok"]  # pynvml spells it so (code 15)


def test_counters(libdir: Path, cfg: Path, tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    out = child_json(
        """
        for _ in range(3):
            N.nvmlInit()
        N.nvmlDeviceGetCount()
        N.nvmlDeviceGetCount()
        print(json.dumps({"pid": os.getpid(), "lib": N.nvmlLib.gpuaffinitySimCallCount(b"nvmlDeviceGetCount_v2")}))
    """,
        libdir,
        GPUAFFINITY_SIM_CONFIG=str(cfg),
        GPUAFFINITY_SIM_COUNTERS=str(counts),
    )
    assert out["lib"] == 2
    path = counts / f"{out['pid']}.nvml.counts"
    lines = dict(line.split() for line in path.read_text().splitlines())
    assert lines["nvmlInitWithFlags"] == "3"
    assert lines["nvmlDeviceGetCount_v2"] == "2"
    assert [p.name for p in counts.iterdir()] == [path.name]


def test_missing_config(libdir: Path) -> None:
    proc = run_child(
        """
        print(json.dumps([err(N.nvmlInit), err(N.nvmlInit)]))
    """,
        libdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["NVMLError_DriverNotLoaded"] * 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuaffinity simulator (nvml):"), proc.stderr


def test_malformed_config(libdir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text("gpu GPU-1 0000:00:06.0 0\n")
    proc = run_child("print(json.dumps(err(N.nvmlInit)))", libdir, GPUAFFINITY_SIM_CONFIG=str(bad))
    assert json.loads(proc.stdout) == "NVMLError_DriverNotLoaded"
    assert proc.stderr.startswith("gpuaffinity simulator (nvml): malformed line")


def test_a_fault_that_passes_is_no_state_of_the_machine():
    """``nvmlInit=9`` for good is a host without the driver (no /proc listing, cuInit fails too), and GPU_IS_LOST
    for good on a handle call loses every GPU; with ``:TIMES`` each is a passing failure of that one call, and the
    machine stays as it is."""
    from gpuaffinity.sim.machine import HANDLE_CALLS, fault_world

    assert fault_world(["nvmlInit=9"]) == (["nvmlInit=9", "cuInit=100"], True)
    assert fault_world(["nvmlInit_v2=9:1"]) == (["nvmlInit_v2=9:1"], False)
    lost, no_driver = fault_world(["nvmlDeviceGetHandleByIndex_v2=15"])
    assert not no_driver and set(lost) == {"nvmlDeviceGetHandleByIndex_v2=15"} | {f"{c}=15" for c in HANDLE_CALLS}
    assert fault_world(["nvmlDeviceGetHandleByIndex_v2=15:2"]) == (["nvmlDeviceGetHandleByIndex_v2=15:2"], False)
