"""tools/validate_real.py and tools/probe_real_driver.py: the real-GPU proof's own rules, run on the simulator.

The tools record and judge real drivers; here they run against the simulator only to check that they
refuse what they must and judge as documented.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REAL_DATA, ROOT, child_env, load_tool

VALIDATE = load_tool("validate_real")
SMI = ["0, GPU-aaaa, 00000000:00:06.0, H200, 580", "1, GPU-bbbb, 00000000:00:07.0, H200, 580"]


def case(truth, error=0):
    return {"truth": truth, "truth_error": error}


def dev(bus, nvml, uuid, inventory="nvml", fallback=False):
    return {"pci_bus_id": bus, "nvml_index": nvml, "fallback": fallback, "inventory": inventory,
            "verdicts": {"cvd": uuid}}


def test_judging_is_strict():
    judge = VALIDATE.judge
    # the driver shows no device: only an empty list without an error is right; a crash never is
    assert judge({"devices": []}, case(None, 100), SMI, "nvml")[0]
    assert not judge({"error": "crashed", "message": "Traceback"}, case(None, 100), SMI, "nvml")[0]
    assert not judge({"error": "NoDriverError", "exit_status": 1}, case(None, 100), SMI, "nvml")[0]
    # cuInit refuses the variables: the documented error with its documented status, nothing else
    assert judge({"error": "InvalidVisibleDevicesError", "exit_status": 1}, case(None, 101), SMI, "nvml")[0]
    assert not judge({"error": "InvalidVisibleDevicesError", "exit_status": 2}, case(None, 101), SMI, "nvml")[0]
    assert not judge({"error": "crashed"}, case(None, 101), SMI, "nvml")[0]
    assert not judge({"devices": []}, case(None, 101), SMI, "nvml")[0]
    # devices: the driver's buses, NVML's index for them, every strategy right, the list from where it must be
    right = {"devices": [dev("0000:00:07.0", 1, "GPU-bbbb")]}
    assert judge(right, case(["0000:00:07.0"]), SMI, "nvml") == (True, [("cvd", True)])
    assert not judge(right, case(["0000:00:07.0"]), SMI, "procfs+device-nodes")[0]  # listed from the wrong source
    assert not judge({"devices": [dev("0000:00:07.0", 0, "GPU-bbbb")]}, case(["0000:00:07.0"]), SMI, "nvml")[0]
    assert judge({"devices": [dev("0000:00:07.0", 1, "GPU-aaaa")]}, case(["0000:00:07.0"]), SMI, "nvml") == (
        False, [("cvd", False)])
    # a fallback counts only with its warning
    quiet = {"devices": [dev("0000:00:07.0", 1, "GPU-bbbb", fallback=True)]}
    assert not judge(quiet, case(["0000:00:07.0"]), SMI, "nvml")[0]
    assert judge(dict(quiet, warnings=["gpuaffinity: ..."]), case(["0000:00:07.0"]), SMI, "nvml")[0]


@pytest.mark.slow
def test_a_dry_run_on_the_simulator_and_its_counts_derived_again(sim_factory, tmp_path):
    """The captured machine, a few recorded cases: every run right, and --summarize re-derives the same counts."""
    data = json.loads((REAL_DATA / "cvd_cases.json").read_text())
    keep = {"ray_reorder", "dup", "negative", "uuid_two", "trailing_chars"}
    data["cases"] = [c for c in data["cases"] if c["label"] in keep]
    truth = tmp_path / "cvd_cases.json"
    truth.write_text(json.dumps(data))
    machine = sim_factory("h200x4-vm")
    env = child_env(machine, PYTHONPATH=str(ROOT / "src"))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "validate_real.py"), str(out), "--truth", str(truth),
                          "--no-bench", "--no-hidden"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # 5 values x 2 orders x 3 policies, + 5 with torch imported where torch is installed (not in the notorch env)
    has_torch = importlib.util.find_spec("torch") is not None
    n = 35 if has_torch else 30
    assert f"[full] resolution: {n}/{n} runs match the driver" in run.stdout
    assert ("torch is not importable here" in run.stdout) is (not has_torch)
    assert "[full] nvml_lite against pynvml: equal on 4 GPU(s)" in run.stdout
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "validate_real.py"), "--summarize", str(out)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert f"[full] resolution: {n}/{n} runs match the driver" in again.stdout
    recs = json.loads((out / "full" / "resolve_cases.json").read_text())
    assert len(recs) == n and all(r["ok"] for r in recs)  # every per-run record is kept


def test_the_probe_refuses_to_record_a_simulated_driver(sim_factory, tmp_path):
    machine = sim_factory("dgx-h100")
    out = tmp_path / "probe"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "probe_real_driver.py"), str(out)],
                         env=child_env(machine), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip() == ("probe_real_driver: refusing to record: GPUAFFINITY_SIM_CONFIG is set; this tool "
                                  "records a real driver only")
    assert not out.exists()
    # the library alone, without the variable, gives it away too
    env = {k: v for k, v in child_env(machine).items() if k != "GPUAFFINITY_SIM_CONFIG"}
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "probe_real_driver.py"), str(out)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "gpuaffinity's simulated library" in run.stderr
    assert not os.path.exists(out)
