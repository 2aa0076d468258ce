"""What each option of resolve and resolve_all changes, pinned: an answer cached under one set of options is never
served under another, and an answer the driver could not confirm is still given, with a warning."""

from __future__ import annotations

import json

import pytest

from conftest import run_json
from gpuaffinity.sim import simulated

BUS2 = "0000:52:00.0"  # dgx-h100's GPU 2

ANSWERS = """
import json, warnings
import gpuaffinity
warnings.simplefilter("always")
first = gpuaffinity.resolve(0)
again = gpuaffinity.resolve(0, disable="cvd")
print(json.dumps({"first": [v.strategy for v in first.verdicts], "again": [v.strategy for v in again.verdicts],
                  "first_by": first.strategy, "again_by": again.strategy}))
"""


def test_resolve_with_disable_after_a_cached_answer_is_not_served_from_the_cache(sim_factory):
    out = run_json(sim_factory("dgx-h100"), ANSWERS, cvd="3,1")
    assert "cvd" in out["first"] and out["first_by"] == "cvd", out
    assert "cvd" not in out["again"] and out["again_by"] != "cvd", out


UNSURE = """
import json, sys, warnings
import gpuaffinity
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    devs = gpuaffinity.resolve_all(allow_subprocess=sys.argv[1] == "yes")
print(json.dumps({"buses": [d.pci_bus_id for d in devs], "by": [d.strategy for d in devs],
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def test_an_unsure_reading_without_the_driver_is_still_the_answer_with_a_warning(sim_factory):
    # '2a' is read as 2 by the driver's measured grammar, not by the documented one: the reading is unsure, and with
    # no child process allowed the driver cannot confirm it
    out = run_json(sim_factory("dgx-h100"), UNSURE, "no", cvd="2a")
    assert out["buses"] == [BUS2] and out["by"] == ["cvd"], out
    assert any("'2a'" in w and "is read as 2" in w for w in out["warnings"]), out


@pytest.mark.parametrize("fault", ["cuInit=999", "cuDeviceGetPCIBusId=999"])
def test_an_unsure_reading_when_the_driver_fails_is_still_the_answer_with_a_warning(fault):
    with simulated("dgx-h100", faults=[fault]) as machine:
        out = run_json(machine, UNSURE, "yes", cvd="2a")
    assert out["buses"] == [BUS2] and out["by"] == ["cvd"], out
    assert any("is read as 2" in w for w in out["warnings"]), out


DISABLE_WARNINGS = r"""
import json, os, sys, warnings
import gpuaffinity
out = []
for arg, env in json.loads(sys.argv[1]):
    if env is None:
        os.environ.pop("GPUAFFINITY_DISABLE", None)
    else:
        os.environ["GPUAFFINITY_DISABLE"] = env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpuaffinity.resolve_all(disable=arg, policy="first")
    out.append([str(w.message) for w in caught if "to disable" in str(w.message)])
print(json.dumps(out))
"""


def test_disabling_a_builtin_strategy_by_name_is_not_reported_as_unknown(sim_factory):
    """pci, cvd and torch are names to disable, from the argument or GPUAFFINITY_DISABLE: no 'nothing is named'."""
    cases = [["cvd,torch", None], [None, "pci,cvd"], ["torch", "pci"]]
    assert run_json(sim_factory("dgx-h100"), DISABLE_WARNINGS, json.dumps(cases), cvd="1,0") == [[], [], []]


def test_a_name_that_disables_nothing_is_reported_with_where_it_was_given(sim_factory):
    cases = [[None, "cvdd"], ["torchh", None], ["torchh", "cvdd"]]
    env_only, arg_only, both = run_json(sim_factory("dgx-h100"), DISABLE_WARNINGS, json.dumps(cases), cvd="1,0")
    assert env_only == ["gpuaffinity: nothing is named 'cvdd' to disable (from GPUAFFINITY_DISABLE); "
                        "strategies here: pci, torch, cvd"]
    assert arg_only == ["gpuaffinity: nothing is named 'torchh' to disable (from the disable argument); "
                        "strategies here: pci, torch, cvd"]
    assert both == ["gpuaffinity: nothing is named 'cvdd', 'torchh' to disable (from the disable argument and "
                    "GPUAFFINITY_DISABLE); strategies here: pci, torch, cvd"]


PLANNED = r"""
import json, warnings
import gpuaffinity
out = []
for call in (gpuaffinity.plan, gpuaffinity.bind):
    gpuaffinity.clear_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = call(0, memory="none", disable="torch,cvd,nope")
    out.append([rec.pci_bus_id, [str(w.message) for w in caught]])
print(json.dumps(out))
"""


def test_plan_and_bind_resolve_under_the_disable_they_are_given(sim_factory):
    machine = sim_factory("dgx-h100")
    planned, bound = run_json(machine, PLANNED, cvd="1,0")
    assert planned == bound
    assert planned[0] == machine.topology.gpus[1].pci_bus_id
    assert planned[1] == ["gpuaffinity: nothing is named 'nope' to disable (from the disable argument); "
                          "strategies here: pci"]


DRIVER_COUNT = r"""
import json, warnings
import gpuaffinity
out = {}
for policy in ("verify", "strict", "first"):
    gpuaffinity.clear_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            got = [[d.pci_bus_id, d.strategy] for d in gpuaffinity.resolve_all(policy=policy)]
        except gpuaffinity.GpuAffinityError as e:
            got = f"{type(e).__name__}: {e}"
    out[policy] = [got, [f"{w.category.__name__}: {w.message}" for w in caught]]
print(json.dumps(out))
"""


def test_the_drivers_count_replaces_an_unsure_reading_it_disagrees_with(sim_factory):
    """NVML wrongly reports MIG mode off on mig-a100's GPUs 0 and 2, which the driver's /proc shows with instances:
    the GPU list is in doubt, so the reading (4 whole GPUs) is unsure, and the CUDA driver shows 2 devices (GPU 0's
    first instance, GPU 1; GPU 2 in MIG mode ends the list, one MIG device a process). verify takes the driver's
    count and says so, strict refuses to choose, first does not ask the driver."""
    machine = sim_factory("mig-a100")
    buses = [g.pci_bus_id for g in machine.topology.gpus]
    out = run_json(machine, DRIVER_COUNT, GPUAFFINITY_SIM_FAULTS="nvmlDeviceGetMigMode=3")
    devices, warned = out["verify"]
    assert devices == [[buses[0], "pci"], [buses[1], "pci"]], out
    assert len(warned) == 1, out
    assert warned[0].startswith("DisagreementWarning: gpuaffinity: the CUDA driver (pci) shows 2 device(s) for "
                                "CUDA_VISIBLE_DEVICES=None, where the grammar on this process's GPU list reads 4 "
                                "(its reading rests on a GPU list in doubt: "), out
    assert warned[0].endswith("; using the driver's count"), out
    error, warned = out["strict"]
    assert error.startswith("ConflictError: gpuaffinity: the CUDA driver (pci) shows 2 device(s)") and error.endswith(
        "; the strict policy refuses to choose") and warned == [], out
    devices, warned = out["first"]
    assert devices == [[b, "cvd"] for b in buses] and warned == [], out


def test_no_reading_note_is_given_for_a_reading_the_drivers_count_replaced(sim_factory):
    """The reading's notes describe the grammar's reading of the variable; where the CUDA driver's count replaced
    that reading, they describe a list this process does not get, so only the disagreement is said. On mig-a100
    with NVML wrongly reporting MIG mode off, ``0,1,2,3x`` reads as 4 whole GPUs (entry 3 read as 3, its ``x``
    ignored: a note, where the reading stands), while the driver shows 2 devices."""
    machine = sim_factory("mig-a100")
    buses = [g.pci_bus_id for g in machine.topology.gpus]
    out = run_json(machine, DRIVER_COUNT, GPUAFFINITY_SIM_FAULTS="nvmlDeviceGetMigMode=3",
                   CUDA_VISIBLE_DEVICES="0,1,2,3x")
    devices, warned = out["verify"]
    assert devices == [[buses[0], "pci"], [buses[1], "pci"]], out
    assert [w.split(":")[0] for w in warned] == ["DisagreementWarning"], out
    # where the reading stands ('first' does not ask the driver), the same variable gets its note
    devices, warned = out["first"]
    assert len(devices) == 4, out
    assert warned == ["VisibleDevicesWarning: gpuaffinity: CUDA_VISIBLE_DEVICES='0,1,2,3x': entry 3 ('3x') is read as "
                      "3: the driver takes the digits and ignores the rest ('x')"], out


def test_the_driver_refusing_the_variable_while_it_counts_is_its_own_error(sim_factory):
    """On mig-a100 with NVML wrongly reporting MIG mode off, the reading is unsure and the driver is asked only
    for its count; it refuses ``1,1`` (a device named twice), and that refusal is the error, told as cuInit's
    return code. 'first' does not ask the driver, and the grammar's own reading refuses it."""
    machine = sim_factory("mig-a100")
    out = run_json(machine, DRIVER_COUNT, GPUAFFINITY_SIM_FAULTS="nvmlDeviceGetMigMode=3", CUDA_VISIBLE_DEVICES="1,1")
    driver = ("InvalidVisibleDevicesError: the CUDA driver refuses CUDA_VISIBLE_DEVICES='1,1' with CUDA_DEVICE_ORDER="
              "None (cuInit returned CUDA_ERROR_INVALID_DEVICE): a device is named twice, or the order is not "
              "FASTEST_FIRST or PCI_BUS_ID; fix the variable")
    assert out["verify"] == [driver, []] and out["strict"] == [driver, []], out
    assert out["first"] == ["InvalidVisibleDevicesError: the CUDA driver refuses CUDA_VISIBLE_DEVICES='1,1' with "
                            "CUDA_DEVICE_ORDER=None: a device is named twice (cuInit fails with "
                            "CUDA_ERROR_INVALID_DEVICE); fix the variable", []], out
