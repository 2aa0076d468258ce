"""gpuaffinity.nvml_lite gives pynvml's answers: the same C calls, held side by side on simulated machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_json

TOOL = Path(__file__).resolve().parent.parent / "tools" / "nvml_lite_check.py"
SIDE_BY_SIDE = TOOL.read_text()  # the same script validate_real runs on real GPUs


@pytest.mark.parametrize("preset", ["dgx-h100", "mixed-4gpu", "h200x4-vm", "mig-a100", "slurm-2of8", "busy-dgx"])
def test_the_lite_calls_answer_as_pynvml_does(sim_factory, preset):
    out = run_json(sim_factory(preset), SIDE_BY_SIDE)
    assert out["buses"] and out["lite"] == out["pynvml"] and out["equal"] is True
    assert out["list_lite"] == out["list_pynvml"] and [row[2] for row in out["list_lite"]] == out["buses"]
    if preset == "mig-a100":  # the MIG instances, read both ways
        assert [len(row[4]) for row in out["list_lite"]] == [3, 0, 2, 0] and out["list_lite"][0][5] is True
    assert any(row[0] for row in out["lite"]) or preset == "h200x4-vm"  # node masks are read, not empty
    procs = [row[3] for row in out["lite"]]  # the processes with a CUDA context, read both ways
    if preset == "busy-dgx":
        mib = 1 << 20
        assert procs == [[], [], [[4101, 30720 * mib]], [], [[4401, 8192 * mib]], [[4201, 65536 * mib]],
                         [[4301, 20480 * mib]], []]
    else:
        assert procs == [[]] * len(out["buses"])
    assert out["missing"] == ["nvmlDeviceGetHandleByPciBusId_v2", 6]  # NVML_ERROR_NOT_FOUND, as pynvml gets
    assert out["after"] == len(out["buses"])  # our shutdown left pynvml's own session working


def test_without_the_library_it_says_so(sim_factory):
    machine = sim_factory("dgx-h100")
    code = ("import json\nfrom gpuaffinity.nvml_lite import NvmlLiteError, Session\n"
            "try:\n    Session()\n    print(json.dumps('loaded'))\n"
            "except NvmlLiteError as e:\n    print(json.dumps([e.call, e.code, str(e)]))\n")
    out = run_json(machine, code, LD_LIBRARY_PATH="/nonexistent")
    assert out == ["loading libnvidia-ml.so.1", -1, "loading libnvidia-ml.so.1 returned NVML error -1"]


OLD_DRIVER_C = r"""
/* An NVML from before MIG and the affinity-scope calls: the list calls only.  One GPU. */
#include <string.h>
typedef struct { char legacy[16]; unsigned domain, bus, device, pciDeviceId, pciSubSystemId; char busId[32]; } pci_t;
static int gpu;
#define API __attribute__((visibility("default")))
API int nvmlInit_v2(void) { return 0; }
API int nvmlShutdown(void) { return 0; }
API int nvmlDeviceGetCount_v2(unsigned *n) { *n = 1; return 0; }
API int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) { if (i) return 2; *h = &gpu; return 0; }
API int nvmlDeviceGetHandleByPciBusId_v2(const char *b, void **h) { (void)b; *h = &gpu; return 0; }
#ifndef OLDER_STILL
API int nvmlDeviceGetPciInfo_v3(void *h, pci_t *p) {
    (void)h; memset(p, 0, sizeof *p); strcpy(p->busId, "00000000:3B:00.0"); return 0; }
#endif
API int nvmlDeviceGetUUID(void *h, char *s, unsigned n) {
    (void)h; strncpy(s, "GPU-0ld00000-0000-0000-0000-000000000000", n); return 0; }
API int nvmlDeviceGetName(void *h, char *s, unsigned n) { (void)h; strncpy(s, "Tesla V100", n); return 0; }
"""

OLD_DRIVER_PY = r"""
import json
from gpuaffinity.inventory import read_inventory_nvml
from gpuaffinity.numa.query import nvml_affinity
from gpuaffinity.nvml_lite import NvmlLiteError, Session
inv = read_inventory_nvml()
with Session() as nv:
    try:
        nv.mig_mode(nv.handle_by_index(0))
        missing = None
    except NvmlLiteError as e:
        missing = [e.call, e.code]
print(json.dumps({"gpus": [[g.uuid, g.pci_bus_id, g.mig_enabled, len(g.migs)] for g in inv.gpus],
                  "affinity": {k: [sorted(x) for x in v] for k, v in nvml_affinity(["0000:3b:00.0"]).items()},
                  "missing": missing}))
"""


def test_an_old_driver_without_the_mig_and_scope_calls(tmp_path):
    """A library that lacks a function (a driver older than MIG, or than the scoped affinity calls) is NVML's
    FUNCTION_NOT_FOUND, as pynvml reports it: the GPU list reads "no MIG", locality has no NVML answer (sysfs
    gives it), and nothing escapes as AttributeError."""
    import shutil
    import subprocess
    import sys

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "old.c"
    src.write_text(OLD_DRIVER_C)
    subprocess.run([cc, "-shared", "-fPIC", "-fvisibility=hidden", "-o", str(tmp_path / "libnvidia-ml.so.1"),
                    str(src)], check=True)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.run([sys.executable, "-c", OLD_DRIVER_PY], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out["gpus"] == [["GPU-0ld00000-0000-0000-0000-000000000000", "0000:3b:00.0", False, 0]]
    assert out["affinity"] == {}
    assert out["missing"] == ["nvmlDeviceGetMigMode", 13]


def test_a_driver_older_than_the_list_calls_says_so(tmp_path):
    """Without a function the GPU list needs (nvmlDeviceGetPciInfo_v3 here): one line saying the driver is too
    old, not "check that the driver is loaded"."""
    import shutil
    import subprocess
    import sys

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "old.c"
    src.write_text(OLD_DRIVER_C)
    subprocess.run([cc, "-shared", "-fPIC", "-fvisibility=hidden", "-DOLDER_STILL", "-o",
                    str(tmp_path / "libnvidia-ml.so.1"), str(src)], check=True)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tmp_path), "GPUAFFINITY_INVENTORY": "nvml",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ("gpuaffinity: this NVIDIA driver's NVML has no nvmlDeviceGetPciInfo_v3: the driver is "
                           "older than the calls gpuaffinity makes; upgrade the driver\n")
