"""The real driver in a process that could open only some GPUs, replayed: simulator, grammar and gpuaffinity.

Each folder ``tests/data/restricted-*`` was recorded by tools/probe_real_driver.py inside
tools/hide_gpus.py on a lent host (docs/validation.md): on a 2x H200 host (run 6), GPU 0's device node absent
from a read-only /dev, or present with mode 000 and the probe running as nobody; on a one-GPU H100 host
(run 11, issue 21), the only GPU's.  ``shape.json`` says which.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import CUDA_VARS, child_env
from gpuaffinity.core.cvd import GpuIdentity, apply_cvd
from gpuaffinity.sim import simulated
from gpuaffinity.sim.topology import make_process
from test_resolve import CHILD
from test_sim_cuda import COMPARED, PROBE, captured_topology

DATA = Path(__file__).with_name("data")
FOLDERS = sorted(DATA.glob("restricted-*"))


def shape_of(folder: Path):
    shape = json.loads((folder / "shape.json").read_text())
    topo = captured_topology(DATA / shape["machine"])
    return topo, replace(topo, process=make_process(topo, gpus=shape["gpus"], others=shape["others"]))


def cases_of(folder: Path) -> tuple[dict, list[dict]]:
    data = json.loads((folder / "cvd_cases.json").read_text())
    return data, data["cases"]


def test_the_recordings_are_what_they_claim():
    """Recorded with GPUs hidden: the driver's list is shorter than the host's, and hidden GPUs were named.  On the
    one-GPU host (issue 21), the only GPU is hidden: the driver lists none."""
    assert len(FOLDERS) == 4
    for folder in FOLDERS:
        host, _ = shape_of(folder)
        data, cases = cases_of(folder)
        assert len(data["uuids"]) == (0 if len(host.gpus) == 1 else 1) < len(host.gpus)
        assert data["hidden_uuids"] and set(data["hidden_uuids"]) <= {g.uuid for g in host.gpus}
        assert {c["label"] for c in cases} >= {"hidden0_uuid", "hidden0_prefix", "uuid_prefix_ambiguous"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
@pytest.mark.slow
def test_simulator_and_grammar_equal_the_restricted_driver(folder):
    _, topo = shape_of(folder)
    data, cases = cases_of(folder)
    visible = [GpuIdentity(u) for u in data["uuids"]]
    with simulated(topo, base_env=dict(os.environ)) as machine:
        def replay(case):
            proc = subprocess.run([sys.executable, "-c", PROBE.CHILD, json.dumps(data["bus_ids"])],
                                  env=child_env(machine, case["cvd"], case["order"]), capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout.strip().splitlines()[-1])
        with cf.ThreadPoolExecutor(4) as ex:
            got = list(ex.map(replay, cases))
    for case, sim in zip(cases, got, strict=True):
        where = f"{case['label']} {case['order']}"
        for key in COMPARED:
            assert sim[key] == case[key], f"{where}: {key}: simulator {sim[key]!r} != real {case[key]!r}"
        res = apply_cvd(case["cvd"], visible, device_order=case["order"], hidden=data["hidden_uuids"])
        assert (res.gpus, res.error) == ([data["bus_ids"].index(d["pci_bus_id"]) for d in case.get("devices", [])],
                                         case["cuInit"]), where


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_gpuaffinity_equals_the_restricted_driver(folder):
    """Every recorded case under first and verify (strict on the cases that name a hidden GPU): the driver's
    devices, or its refusal; never an answer mapped into the host's list."""
    _, topo = shape_of(folder)
    data, cases = cases_of(folder)
    cases = [c for c in cases if c["order"] is not None and not c["label"].startswith("order_")]
    combos = [[c["cvd"], c["order"], {"policy": p}] for c in cases for p in ("first", "verify")]
    combos += [[c["cvd"], c["order"], {"policy": "strict"}] for c in cases
               if "hidden" in c["label"] or "prefix" in c["label"]]
    with simulated(topo, base_env=dict(os.environ)) as machine:
        env = {k: v for k, v in machine.env.items() if k not in CUDA_VARS}
        proc = subprocess.run([sys.executable, CHILD, json.dumps(combos)], env=env, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr
    by = {(c["cvd"], c["order"]): c for c in cases}
    for (cvd, order, opts), rec in zip(combos, json.loads(proc.stdout.strip().splitlines()[-1]), strict=True):
        case = by[(cvd, order)]
        where = f"{case['label']} {order} {opts['policy']}: {rec}"
        if case["cuInit"] == 101:
            assert rec.get("error") == "InvalidVisibleDevicesError", where
            continue
        assert "error" not in rec, where
        assert [d["pci_bus_id"] for d in rec["devices"]] == [d["pci_bus_id"].lower() for d in
                                                             case.get("devices", [])], where
        assert all(d["nvml_index"] == 0 and d["inventory"] == "nvml" for d in rec["devices"]), where
