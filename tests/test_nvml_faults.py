"""NVML failing on any call gpuaffinity makes: the driver's answer, a warning, or one clear error line.

Never a traceback, and never a wrong or empty list given as if nothing had happened.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env
from gpuaffinity.sim import simulated

#: every NVML entry point that the inventory or the locality reads
CALLS = ["nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetPciInfo",
         "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
         "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
         "nvmlShutdown", "nvmlDeviceGetHandleByPciBusId", "nvmlDeviceGetMemoryAffinity",
         "nvmlDeviceGetCpuAffinityWithinScope"]
#: unknown error, not supported, no permission, GPU lost
CODES = [999, 3, 4, 15]


def check_one(machine, cvd, want, fault, command):
    env = child_env(machine, cvd, GPUAFFINITY_SIM_FAULTS=fault)
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", *command], env=env, capture_output=True, text=True,
                         timeout=120)
    where = f"{fault} {command}: rc={out.returncode} stderr={out.stderr!r}"
    assert "Traceback" not in out.stderr, where
    if out.returncode != 0:
        assert out.returncode == 1, where
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gpuaffinity: "), where
        return "error"
    if command[0] == "resolve":
        got = [(d["pci_bus_id"], d["mig_uuid"]) for d in json.loads(out.stdout)]
        if got != want:  # a different answer is allowed only with its warning
            assert "gpuaffinity: warning:" in out.stderr, where
            return "warned"
    return "right"


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.slow
def test_mig_machine(sim_factory, call, code):
    """mig-a100: the GPU list comes from NVML, so every call matters."""
    machine = sim_factory("mig-a100")
    gpu = machine.topology.gpus[2]
    mig = gpu.migs[1]
    outcome = check_one(machine, mig.uuid, [(gpu.pci_bus_id, mig.uuid)], f"{call}={code}", ["resolve", "--json"])
    check_one(machine, mig.uuid, None, f"{call}={code}", ["bind", "0", "--dry-run"])
    check_one(machine, mig.uuid, None, f"{call}={code}", ["doctor"])
    if call in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID"):
        assert outcome == "error"  # the list cannot be read at all


@pytest.mark.parametrize("call", CALLS)
def test_bare_metal(sim_factory, call):
    """dgx-h100: the list comes from the driver's files; NVML failing only costs the locality's second source."""
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    want = [(gpus[3].pci_bus_id, None), (gpus[1].pci_bus_id, None)]
    assert check_one(machine, "3,1", want, f"{call}=999", ["resolve", "--json"]) == "right"
    check_one(machine, "3,1", None, f"{call}=999", ["bind", "1", "--dry-run"])


def _sim_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", [["resolve"], ["bind", "0", "--", "true"], ["doctor"]])
def test_no_driver_fault_reaches_gpuaffinity_as_a_clear_error(command):
    """Issue 19: `--fault nvmlInit=9` (DRIVER_NOT_LOADED) resolved all 8 GPUs from the driver's /proc files, which a
    host without the kernel module does not have.  The simulated host now has no driver at all."""
    out = _sim_run("--fault", "nvmlInit=9", "dgx-h100", "--", sys.executable, "-m", "gpuaffinity", *command)
    assert out.returncode == 1, out.stdout
    line = out.stderr.strip().splitlines()
    assert line == ["gpuaffinity: NVML could not start (nvmlInit_v2 returned NVML error 9 (Driver Not Loaded)); "
                    "check that the NVIDIA driver is loaded (nvidia-smi should work)"]


def test_no_driver_is_a_whole_machine_state_every_program_sees():
    code = ("import os, ctypes, json\n"
            "proc = os.environ['GPUAFFINITY_PROCFS_ROOT'] + '/driver/nvidia'\n"
            "dev = sorted(os.listdir(os.environ['GPUAFFINITY_DEV_ROOT']))\n"
            "rc = ctypes.CDLL('libcuda.so.1').cuInit(0)\n"
            "print(json.dumps([os.path.exists(proc), dev, rc]))")
    out = _sim_run("--fault", "nvmlInit=9", "dgx-h100", "--", sys.executable, "-c", code)
    assert json.loads(out.stdout) == [False, [], 100]  # no /proc/driver/nvidia, no nodes, CUDA_ERROR_NO_DEVICE
    out = _sim_run("--fault", "nvmlInit=9", "--fault", "cuInit=999", "dgx-h100", "--", sys.executable, "-c", code)
    assert json.loads(out.stdout)[2] == 999  # a cuInit fault given stands
    out = _sim_run("--fault", "nvmlInit=9:1", "dgx-h100", "--", sys.executable, "-c", code)
    assert json.loads(out.stdout)[:2] == [True, ["nvidia-caps", "nvidia-uvm", "nvidia0", "nvidia1", "nvidia2",
                                                 "nvidia3", "nvidia4", "nvidia5", "nvidia6", "nvidia7", "nvidiactl"]]


def test_a_gpu_lost_fault_reaches_gpuaffinity_and_pynvml_alike():
    """Issue 19: `--fault nvmlDeviceGetHandleByIndex=15` (GPU_IS_LOST) changed nothing: the list came from /proc and
    the locality's handle came by bus id.  A lost GPU fails every handle call, and no process is placed there."""
    lost = ("gpuaffinity: GPU 0000:1b:00.0 is lost: nvmlDeviceGetHandleByPciBusId_v2 returned NVML error 15 (GPU is "
            "lost), so it has fallen off the bus")
    for command in (["resolve"], ["bind", "0", "--dry-run"]):
        out = _sim_run("--fault", "nvmlDeviceGetHandleByIndex=15", "dgx-h100", "--", sys.executable, "-m",
                       "gpuaffinity", *command)
        assert out.returncode == 1 and out.stderr.startswith(lost) and len(out.stderr.splitlines()) == 1
    out = _sim_run("--fault", "nvmlDeviceGetHandleByIndex=15", "dgx-h100", "--", sys.executable, "-m",
                   "gpuaffinity", "doctor")
    assert out.returncode == 1 and "      LOST: GPU 0000:1b:00.0 is lost" in out.stdout
    code = ("import pynvml\npynvml.nvmlInit()\n"
            "try:\n    pynvml.nvmlDeviceGetHandleByPciBusId(b'0000:1b:00.0')\nexcept pynvml.NVMLError as e:\n"
            "    print(e.value)")
    out = _sim_run("--fault", "nvmlDeviceGetHandleByIndex=15", "dgx-h100", "--", sys.executable, "-c", code)
    assert out.stdout.strip() == "15"
    # a transient failure (:TIMES) is one call failing, not a machine state: gpuaffinity never makes that call here
    out = _sim_run("--fault", "nvmlDeviceGetHandleByIndex=15:1", "dgx-h100", "--", sys.executable, "-m",
                   "gpuaffinity", "resolve", "--json")
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 8


def test_a_lost_gpu_does_not_stop_binding_another():
    """Only the GPU asked for must be usable: the others are located for the exclusive split alone.  With
    :1, the first handle asked by bus id (GPU 0000:1b:00.0, NVML's first) is the one lost."""
    def bind(gpu: str) -> subprocess.CompletedProcess:
        return _sim_run("--fault", "nvmlDeviceGetHandleByPciBusId=15:1", "dgx-h100", "--", sys.executable, "-m",
                        "gpuaffinity", "bind", gpu, "--mode", "exclusive", "--dry-run")

    out = bind("3")
    assert out.returncode == 0 and out.stdout.startswith("would bind: GPU 0000:61:00.0"), out.stderr
    out = bind("0")
    assert out.returncode == 1 and out.stderr.startswith("gpuaffinity: GPU 0000:1b:00.0 is lost")


@pytest.mark.parametrize("fault", ["cuInit=9", "nvmlDeviceGetName=15", "cuDeviceGet=15"])
def test_the_driver_or_gpu_lost_code_on_another_call_fails_that_call_alone(fault):
    """DRIVER_NOT_LOADED (9) makes a host without the driver only on nvmlInit and its variants, GPU_IS_LOST (15)
    loses every GPU only on a handle call: on any other call the code is that call failing, and the driver's
    /proc files and device nodes stay, and the libraries get that one fault alone."""
    with simulated("vm-4gpu", faults=[fault], base_env={}) as machine:
        assert machine.env["GPUAFFINITY_SIM_FAULTS"] == fault
        proc = machine.folder / "proc" / "driver" / "nvidia" / "gpus"
        assert sorted(p.name for p in proc.iterdir()) == sorted(g.pci_bus_id for g in machine.topology.gpus)
        assert len(list((machine.folder / "dev").glob("nvidia[0-9]*"))) == 4


@pytest.mark.parametrize("fault", ["nvmlInitWithFlags=9", "nvmlInit=0x9", "nvmlInit_v2=9"])
def test_no_driver_is_read_as_the_libraries_read_a_fault(fault):
    """Found by attacking the change: only the literal text nvmlInit=9 made the driver-less host, while the
    libraries also take the variants' names and any base strtol reads."""
    out = _sim_run("--fault", fault, "dgx-h100", "--", sys.executable, "-m", "gpuaffinity", "resolve")
    assert out.returncode == 1 and "Driver Not Loaded" in out.stderr
    code = ("import pynvml\ntry:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError as e:\n    print(e.value)")
    assert _sim_run("--fault", fault, "dgx-h100", "--", sys.executable, "-c", code).stdout.strip() == "9"


def test_a_lost_gpu_in_an_nvml_listed_view_is_a_gpu_lost_error_too():
    """Found by attacking the change: where the list comes from NVML (a job that may open 2 of 8 GPUs), a lost
    GPU was an InventoryError, not the GpuLostError the docs promise."""
    code = ("import gpuaffinity\ntry:\n    gpuaffinity.resolve_all()\nexcept gpuaffinity.GpuLostError as e:\n"
            "    print('lost:', e)")
    out = _sim_run("--fault", "nvmlDeviceGetHandleByIndex=0xf", "slurm-2of8", "--", sys.executable, "-c", code)
    assert out.stdout.startswith("lost: a GPU is lost: NVML failed while reading GPU 0"), out.stderr


def test_on_one_node_a_lost_gpu_is_reported_where_nvml_is_asked_anyway():
    """A host of one node asks NVML nothing for locality, so a GPU NVML calls lost (fallen off the bus) is not
    seen by resolve or bind there (CUDA fails on it by itself); doctor, the health report, asks NVML whether each
    GPU is lost and says so; where the GPU list comes from NVML, NVML says it there.  (Found by an attack: doctor
    had stopped saying LOST on one node.)"""
    fault = ("--fault", "nvmlDeviceGetHandleByPciBusId=15", "vm-4gpu", "--")
    doctor = _sim_run(*fault, sys.executable, "-m", "gpuaffinity", "doctor")
    assert doctor.returncode == 1 and doctor.stdout.count("      LOST: GPU ") == 4, doctor.stdout
    plain = _sim_run(*fault, sys.executable, "-m", "gpuaffinity", "resolve")
    assert plain.returncode == 0, plain.stderr  # the GPU list from the driver's files: NVML not started
    listed = _sim_run(*fault, "env", "GPUAFFINITY_INVENTORY=nvml", sys.executable, "-m", "gpuaffinity", "resolve")
    assert listed.returncode == 1 and "is lost" in listed.stderr, listed.stderr  # the list itself says it
    # the list from NVML, the first lookup by bus id failing: the session the list opened is asked, no start more
    once = ("--fault", "nvmlDeviceGetHandleByPciBusId=15:1", "vm-4gpu", "--", "env", "GPUAFFINITY_INVENTORY=nvml")
    asked = _sim_run(*once, sys.executable, "-m", "gpuaffinity", "resolve")
    assert asked.returncode == 1 and asked.stderr.startswith("gpuaffinity: GPU 0000:00:05.0 is lost"), asked.stderr
    assert _sim_run(*once[:3], "--", sys.executable, "-m", "gpuaffinity", "resolve").returncode == 0
