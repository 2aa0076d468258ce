"""A one-GPU host (issue 21): the measured grammar there, under every policy, on the captured machine.

``tests/data/real-h100x1-2026-12-06b`` was recorded on a lent one-GPU H100 VM (driver 580.159.04,
docs/validation.md run 11).  On several GPUs `GPU-` is ambiguous, so it never showed whether the driver reads
an empty prefix as naming nothing; one GPU shows that it does, while `GPU--` (dashes are skipped) names the
only GPU.  Each value below runs through gpuaffinity on the simulated copy of that machine, under every
policy, and must give what the driver gave there.
"""

from __future__ import annotations

import json

import pytest

from conftest import REAL_DATA
from gpuaffinity.sim import simulated
from test_resolve import resolve_in
from test_sim_cuda import captured_topology

FOLDER = REAL_DATA.parent / "real-h100x1-2026-12-06b"
#: the issue's table, then the forms the fourth and fifth rounds measured
LABELS = ["uuid_prefix_ambiguous", "uuid_prefix_then_empty", "int_then_empty_prefix", "tag_only", "tag_letter",
          "mig_empty", "uuid_prefix", "uuid_prefix_long", "empty_prefix_then_uuid", "uuid_then_empty_mid",
          "empty_prefix_dash", "empty_prefix_dashes", "mig_empty_dash", "uuid_prefix_two_lengths",
          "uuid_prefix_long_then_short", "mig_tag_gpu_prefix", "mig_tag_gpu_uuid", "mig_dashes_then_gpu",
          "gpu_dashes_then_prefix", "mig_tag_gpu_no_path", "mig_tag_unknown_short"]
CASES = [c for c in json.loads((FOLDER / "cvd_cases.json").read_text())["cases"]
         if c["label"] in LABELS and c["order"] is not None]


def test_the_recording_is_a_one_gpu_host_and_holds_the_issue_rows():
    data = json.loads((FOLDER / "cvd_cases.json").read_text())
    assert len(data["uuids"]) == 1 and data["hidden_uuids"] == []
    by = {c["label"]: c for c in data["cases"] if c["order"] is None}
    assert set(LABELS) <= set(by)
    # the issue's table, as the driver gave it: `GPU-` no device; `<prefix>,GPU-` and `0,GPU-` one device
    assert (by["uuid_prefix_ambiguous"]["cvd"], by["uuid_prefix_ambiguous"]["cuInit"]) == ("GPU-", 100)
    assert by["uuid_prefix_then_empty"]["count"] == 1 and by["int_then_empty_prefix"]["count"] == 1
    assert [by[x]["cuInit"] for x in ("tag_only", "tag_letter", "mig_empty")] == [100, 100, 100]
    assert by["empty_prefix_dash"]["count"] == 1 and by["uuid_prefix_two_lengths"]["cuInit"] == 101


@pytest.mark.parametrize("policy", ["first", "verify", "strict"])
def test_every_policy_gives_the_drivers_answer_on_one_gpu(policy):
    with simulated(captured_topology(FOLDER)) as machine:
        got = resolve_in(machine, [(c["cvd"], c["order"], {"policy": policy}) for c in CASES])
    for case, rec in zip(CASES, got, strict=True):
        where = f"{case['label']} {case['cvd']!r} {case['order']} {policy}: {rec}"
        if case["cuInit"] == 101:
            assert rec.get("error") == "InvalidVisibleDevicesError", where
            continue
        assert "error" not in rec, where
        assert [d["pci_bus_id"] for d in rec["devices"]] == [d["pci_bus_id"].lower()
                                                             for d in case.get("devices", [])], where
