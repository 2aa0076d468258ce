"""Where torch's helper answers differently from the driver, the chain must still be right.

Each case below is one where torch.cuda._get_nvml_device_index (2.11 on the
real H200s, 2.13 here) disagrees with the CUDA driver (docs/compat.md).  With
torch imported, gpuaffinity must give the driver's answer, or the driver's
refusal, never torch's.
"""

from __future__ import annotations

import json

import pytest

from conftest import REAL_DATA, run_json
from test_sim_cuda import captured_topology

FOLDER = REAL_DATA.parent / "real-h200x4-2026-11-27b"
DATA = json.loads((FOLDER / "cvd_cases.json").read_text())
CASES = {c["label"]: c for c in DATA["cases"] if c["order"] == "PCI_BUS_ID"}
TORCH_WRONG = ["unset", "out_of_range", "out_of_range_mid", "out_of_range_big", "overflow_2_32",
               "overflow_2_32_plus_1", "uuid_upper_hex", "uuid_trailing_junk", "dup_after_stop", "uuid_no_dashes",
               "uuid_trailing_space", "negative_wrap", "huge", "uuid_dup_other_case"]

CHILD = r"""
import json, os, sys, warnings
import torch, gpuaffinity
warnings.simplefilter("always")
out = {}
for label, cvd in json.loads(sys.argv[1]):
    if cvd is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = cvd
    raw = []
    for i in range(5):
        try:
            raw.append(torch.cuda._get_nvml_device_index(i))
        except Exception as e:
            raw.append(type(e).__name__)
    chain = []
    with warnings.catch_warnings(record=True) as caught:
        for i in range(5):
            try:
                d = gpuaffinity.resolve(i)
                chain.append([d.nvml_index, d.strategy, list(d.agreed), list(d.disagreed)])
            except gpuaffinity.GpuAffinityError as e:
                chain.append(type(e).__name__)
    out[label] = {"torch": raw, "chain": chain, "warnings": [str(w.message) for w in caught]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def answers():
    torch = pytest.importorskip("torch")
    if not hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip(f"torch {torch.__version__} has no _get_nvml_device_index: nothing of torch's to be wrong")
    from gpuaffinity.sim import simulated
    with simulated(captured_topology(FOLDER)) as machine:
        return run_json(machine, CHILD, json.dumps([[label, CASES[label]["cvd"]] for label in TORCH_WRONG]),
                        order="PCI_BUS_ID")


@pytest.mark.parametrize("label", TORCH_WRONG)
def test_chain_gives_the_drivers_answer_not_torchs(answers, label):
    case, got = CASES[label], answers[label]
    if case["cuInit"] == 0:
        truth = [DATA["bus_ids"].index(d["pci_bus_id"]) for d in case["devices"]]
        visible = [c for c in got["chain"] if isinstance(c, list)]
        assert [c[0] for c in visible] == truth
        assert got["chain"][len(truth):] == ["DeviceNotVisibleError"] * (5 - len(truth))
        assert all(c[3] == [] for c in visible)  # torch abstained where it was wrong, so no disagreement
        # where torch (ranked first) could not answer, cvd's right answer is a fallback, and says why
        for c in visible:
            if c[1] == "cvd":
                assert any("torch: " in w for w in got["warnings"])
    else:
        error = "InvalidVisibleDevicesError" if case["cuInit"] == 101 else "DeviceNotVisibleError"
        assert got["chain"] == [error] * 5
    # the only other warnings: how the driver read the value (issue 19), for a value it reads in part or stops in
    reading = ("gpuaffinity: CUDA_VISIBLE_DEVICES=", "gpuaffinity: this process sees no CUDA device")
    assert all(w.startswith("gpuaffinity: CUDA device") and "fallback strategy 'cvd'" in w or w.startswith(reading)
               for w in got["warnings"]), got["warnings"]
    assert not any("disagree" in w for w in got["warnings"])


RAW = r"""
import json, os, sys, torch
out = {}
for label, cvd in json.loads(sys.argv[1]):
    if cvd is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = cvd
    raw = []
    for i in range(5):
        try:
            raw.append(torch.cuda._get_nvml_device_index(i))
        except Exception as e:
            raw.append(type(e).__name__)
    out[label] = raw
print(json.dumps(out))
"""


def test_torch_is_wrong_exactly_where_it_was_on_the_real_machine():
    """Every recorded value: torch's helper on the simulated copy of the machine answers exactly what torch 2.11
    answered on the real H200s (exceptions compared by type), and differs from the driver on TORCH_WRONG only."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip(f"torch {torch.__version__} has no _get_nvml_device_index")
    from gpuaffinity.sim import simulated
    recorded = {c["label"]: [a.split(":")[0] if isinstance(a, str) else a for a in c["helper"]]
                for c in json.loads((FOLDER / "torch_cases.json").read_text())}
    with simulated(captured_topology(FOLDER)) as machine:
        got = run_json(machine, RAW, json.dumps([[label, CASES[label]["cvd"]] for label in recorded]),
                       order="PCI_BUS_ID")
    assert got == recorded
    wrong = []
    for label, raw in got.items():
        case = CASES[label]
        truth = [DATA["bus_ids"].index(d["pci_bus_id"]) for d in case["devices"]] if case["cuInit"] == 0 else []
        if raw[: len(truth)] != truth or any(isinstance(a, int) for a in raw[len(truth):]):
            wrong.append(label)
    assert wrong == TORCH_WRONG


MIXED = r"""
import json, torch, gpuaffinity
d = [gpuaffinity.resolve(i) for i in range(2)]
print(json.dumps({"torch": [torch.cuda._get_nvml_device_index(i) for i in range(2)],
                  "chain": [[x.nvml_index, x.strategy] for x in d],
                  "torch_verdict": [v.result.reason for v in d[0].verdicts if v.strategy == "torch"]}))
"""


def test_integers_under_fastest_first_on_mixed_models(sim_factory):
    """torch takes integers as NVML indices; CUDA's FASTEST_FIRST puts the A100s (NVML 1, 3) first."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip("no helper in this torch")
    out = run_json(sim_factory("mixed-4gpu"), MIXED, cvd="0,1")
    assert out["torch"] == [0, 1]  # torch's answer: the A10s
    assert out["chain"] == [[1, "pci"], [3, "pci"]]  # the driver's: the A100s
    assert out["torch_verdict"][0].startswith("torch takes integers as NVML indices, wrong here")
