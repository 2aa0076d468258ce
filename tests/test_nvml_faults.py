"""NVML failing on any call gpuaffinity makes: the driver's answer, a warning, or one clear error line.

Never a traceback, and never a wrong or empty list given as if nothing had happened.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env

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
