"""gpuaffinity.nvml_lite gives pynvml's answers: the same C calls, held side by side on simulated machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_json

TOOL = Path(__file__).resolve().parent.parent / "tools" / "nvml_lite_check.py"
SIDE_BY_SIDE = TOOL.read_text()  # the same script validate_real runs on real GPUs


@pytest.mark.parametrize("preset", ["dgx-h100", "mixed-4gpu", "h200x4-vm", "mig-a100", "slurm-2of8"])
def test_the_lite_calls_answer_as_pynvml_does(sim_factory, preset):
    out = run_json(sim_factory(preset), SIDE_BY_SIDE)
    assert out["buses"] and out["lite"] == out["pynvml"] and out["equal"] is True
    assert out["list_lite"] == out["list_pynvml"] and [row[2] for row in out["list_lite"]] == out["buses"]
    if preset == "mig-a100":  # the MIG instances, read both ways
        assert [len(row[4]) for row in out["list_lite"]] == [3, 0, 2, 0] and out["list_lite"][0][5] is True
    assert any(row[0] for row in out["lite"]) or preset == "h200x4-vm"  # node masks are read, not empty
    assert out["missing"] == ["nvmlDeviceGetHandleByPciBusId_v2", 6]  # NVML_ERROR_NOT_FOUND, as pynvml gets
    assert out["after"] == len(out["buses"])  # our shutdown left pynvml's own session working


def test_without_the_library_it_says_so(sim_factory):
    machine = sim_factory("dgx-h100")
    code = ("import json\nfrom gpuaffinity.nvml_lite import NvmlLiteError, Session\n"
            "try:\n    Session()\n    print(json.dumps('loaded'))\n"
            "except NvmlLiteError as e:\n    print(json.dumps([e.call, e.code, str(e)]))\n")
    out = run_json(machine, code, LD_LIBRARY_PATH="/nonexistent")
    assert out == ["loading libnvidia-ml.so.1", -1, "loading libnvidia-ml.so.1 returned NVML error -1"]
