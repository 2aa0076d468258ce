"""Third-party strategies: a real distribution with an entry point, built and installed here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, child_env
from test_resolve import CHILD

PLUGIN_SRC = ROOT / "examples" / "gpuaffinity-launcher-plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """pip builds the example plugin and installs it into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # no stale build
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(src)]
    if importlib.util.find_spec("setuptools"):
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    dist = list(site.glob("gpuaffinity_launcher_plugin-*.dist-info"))
    assert dist
    assert "[gpuaffinity]\nlauncher = gpuaffinity_launcher_plugin" in (dist[0] / "entry_points.txt").read_text()
    return site


def run(machine, site, combos, **env):
    e = child_env(machine, **env)
    e["PYTHONPATH"] = f"{site}:{e.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, CHILD, json.dumps(combos)], env=e, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_plugin_takes_priority_then_is_disabled_by_name(sim_factory, plugin_site):
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    record = ",".join(gpus[i].uuid for i in (3, 1))
    used, disabled_env, disabled_arg = run(
        machine, plugin_site,
        [("3,1", None, {}), ("3,1", "PCI_BUS_ID", {}), ("3,1", None, {"disable": ["launcher"]})],
        LAUNCHER_GPU_UUIDS=record)
    assert [d["strategy"] for d in used["devices"]] == ["launcher", "launcher"]
    assert used["devices"][0]["agreed"] == ["launcher", "cvd"] and used["warnings"] == []
    assert [d["nvml_index"] for d in used["devices"]] == [3, 1]
    assert [d["strategy"] for d in disabled_arg["devices"]] == ["cvd", "cvd"]
    assert "launcher" not in disabled_arg["devices"][0]["verdicts"]
    (by_env,) = run(machine, plugin_site, [("3,1", None, {})], LAUNCHER_GPU_UUIDS=record,
                    GPUAFFINITY_DISABLE="launcher")
    assert [d["strategy"] for d in by_env["devices"]] == ["cvd", "cvd"]
    assert disabled_env["devices"][0]["strategy"] == "launcher"


def test_a_wrong_plugin_is_caught_by_verify_and_refused_by_strict(sim_factory, plugin_site):
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    stale = ",".join(gpus[i].uuid for i in (0, 1))  # the launcher's record is wrong for device 0
    verify, strict = run(machine, plugin_site, [("3,1", None, {}), ("3,1", None, {"policy": "strict"})],
                         LAUNCHER_GPU_UUIDS=stale)
    d0 = verify["devices"][0]
    # the cheap cvd disagrees with the plugin, so the driver is asked, and its answer is final (issue 19)
    assert (d0["strategy"], d0["nvml_index"], d0["disagreed"]) == ("pci", 3, ["launcher"])
    assert d0["verdicts"]["pci"][1] is True  # the disagreement made the ground truth run
    [(category, message)] = verify["warnings"]
    assert category == "DisagreementWarning"
    assert "launcher says NVML 0" in message and "cvd says NVML 3" in message and "pci says NVML 3" in message
    assert strict["error"] == "ConflictError" and "strict policy refuses" in strict["message"]


def test_strict_conflict_has_its_own_exit_status(sim_factory, plugin_site):
    machine = sim_factory("dgx-h100")
    env = child_env(machine, cvd="3", LAUNCHER_GPU_UUIDS=machine.topology.gpus[0].uuid)
    env["PYTHONPATH"] = f"{plugin_site}:{env.get('PYTHONPATH', '')}"
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--policy", "strict"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3
    assert out.stderr.startswith("gpuaffinity: strategies disagree on CUDA device 0")
    doctor = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "launcher 90" in " ".join(doctor.stdout.split())
    assert "DISAGREEMENT" in doctor.stdout


@pytest.mark.parametrize("group", ["console_scripts", "pytest11", "gpuaffinity"])
def test_fast_entry_point_scan_matches_importlib_metadata(group):
    from importlib.metadata import entry_points

    from gpuaffinity.core.plugins import find_entry_points
    found = find_entry_points(group)
    assert found is not None
    assert sorted({(p.name, p.target) for p in found}) == sorted({(e.name, e.value) for e in entry_points(group=group)})
    dists = {e.name: (e.dist.name, e.dist.version) for e in entry_points(group=group)}
    for p in found:  # the distribution each came from, named as its metadata names it
        assert (p.distribution.replace("_", "-").lower(), p.version) == (
            dists[p.name][0].replace("_", "-").lower(), dists[p.name][1])
