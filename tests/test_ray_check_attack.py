"""Defects found by attacking `gpuaffinity ray-check` and `sim.raycluster`, each a test (every one failed on the
code it was found on).  The first group needs no Ray cluster; the rest start one small local node."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import CPUS
from helpers.ray_rows import probed

# --- no cluster needed ---------------------------------------------------------------------------------------

def test_table_does_not_pass_terminal_escapes_from_workers():
    """A node started with CUDA_VISIBLE_DEVICES='1,\\x1b[31mEVIL\\x1b]0;PWNED\\x07' (or any worker value) puts raw
    escape sequences in the operator's terminal: the RAY and CVD columns are printed as is (ray_check.table)."""
    from gpuaffinity.ray_check import Report, judge, render

    evil = "\x1b[31mEVIL\x1b]0;PWNED\x07\nFAKE ROW"
    row = judge(probed(ray_gpu_ids=[evil], env={"CUDA_VISIBLE_DEVICES": evil}, host="h\x1b[2J"), "node", "bind", 60)
    text = render(Report([row], {}, 1.0))
    assert "\x1b" not in text and "\x07" not in text
    assert len(text.splitlines()) == 3  # header, one row, the verdict: a newline in a value adds no line


def test_a_mistyped_setup_hook_is_not_reported_as_gpuaffinity_missing():
    """--runtime-env '{"worker_process_setup_hook": "gpuaffinity.ray_worker.setupp"}' (a typo) gave every row
    NOT-INSTALLED and 'is gpuaffinity installed on this node?' (ray_check._why: any hook error that mentions
    'gpuaffinity'; judge maps that hint to not-installed)."""
    from gpuaffinity.ray_check import _why, judge

    text = ("Failed to execute the setup hook method, gpuaffinity.ray_worker.setupp\nTraceback ...\n"
            "AttributeError: module 'gpuaffinity.ray_worker' has no attribute 'setupp'")
    row = judge({"node_id": "a" * 56, "error": _why(RuntimeError(text))}, "node", "bind", 60)
    assert row["status"] == "error", row
    text = ("Failed to execute the setup hook method\nModuleNotFoundError: No module named 'gpuaffinity.nosuchmod'")
    row = judge({"node_id": "a" * 56, "error": _why(RuntimeError(text))}, "node", "bind", 60)
    assert row["status"] == "error", row


def test_a_memory_policy_other_than_the_one_asked_is_a_problem():
    """Workers with GPUAFFINITY_RAY_MEMORY=preferred, checked with --memory bind: judged ok (judge only checks
    that the policy is not 'default')."""
    from gpuaffinity.ray_check import judge

    row = judge(probed(memory={"policy": "preferred", "nodes": [0]}), "node", "bind", 60)
    assert row["status"] != "ok", row
    row = judge(probed(memory={"policy": "interleave", "nodes": [0]}), "node", "preferred", 60)
    assert row["status"] != "ok", row


def test_socket_mode_checks_memory_at_all():
    """--mode socket skips the memory check entirely (`and mode != "socket"`): memory bound to a node of another
    socket is ok."""
    from gpuaffinity.ray_check import judge

    row = judge(probed(memory={"policy": "bind", "nodes": [7]}), "socket", "bind", 60)
    assert row["status"] != "ok", row


def test_exclusive_mode_judges_against_the_gpus_share(tmp_path):
    """--mode exclusive: two GPUs share one NUMA node of 2 CPUs; GPU 1's exclusive share is one CPU.  A worker
    running on the whole node (a node-mode binding, overlapping GPU 0's worker) is judged ok, and the GPU CPUS
    column shows the whole node: _ray_probe._facts uses loc.cpus for every mode but socket."""
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    topo = tmp_path / "one.toml"
    topo.write_text(f'name = "one"\n[[numa_node]]\nid = 0\ncpus = "{CPUS[0]},{CPUS[1]}"\n' + "".join(
        f'[[gpu]]\nuuid = "GPU-0000000{i}-0000-0000-0000-000000000000"\npci_bus_id = "0000:{16 * i + 16:02x}:00.0"\n'
        f'name = "NVIDIA H100 80GB HBM3"\nnuma_node = 0\n' for i in range(2)))
    code = ("import os, json\nfrom gpuaffinity import _ray_probe\nfrom gpuaffinity.placement import plan\n"
            "from gpuaffinity.ray_check import judge\n"
            "out = {'affinity': sorted(os.sched_getaffinity(0)), 'ray_gpu_ids': ['1'], 'node_id': 'n' * 56, "
            "'pid': 1, 'error': None}\n_ray_probe._facts(out, 'exclusive')\n"
            "share = sorted(plan(0, mode='exclusive', memory='none').bind_cpus)\n"
            "print(json.dumps([share, out['bind_cpus'], judge(out, 'exclusive', 'none', 60)['status']]))\n")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", "env",
                           "CUDA_VISIBLE_DEVICES=1", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    import json

    share, gpu_cpus, status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert share == [CPUS[1]]
    assert gpu_cpus == str(CPUS[1]) and status != "ok", (gpu_cpus, status)  # got ('0-1', 'ok')


def test_check_with_a_non_string_mode_raises_the_documented_error():
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.ray_check import check

    pytest.importorskip("ray")
    with pytest.raises(GpuAffinityError):
        check("127.0.0.1:1", mode=None)  # TypeError: 'NoneType' object is not subscriptable
    with pytest.raises(GpuAffinityError):
        check("127.0.0.1:1", timeout="5")  # TypeError from the comparison


# --- one small local cluster ----------------------------------------------------------------------------------

def _topo(path: Path) -> Path:
    path.write_text(f'name = "{path.stem}"\n' + "".join(f'[[numa_node]]\nid = {n}\ncpus = "{c}"\n'
                                                        for n, c in enumerate(CPUS))
                    + '[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-000000000000"\npci_bus_id = "0000:10:00.0"\n'
                      'name = "NVIDIA H100 80GB HBM3"\nnuma_node = 0\n')
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    pytest.importorskip("ray")
    from gpuaffinity.sim.raycluster import RayCluster

    d = tmp_path_factory.mktemp("small")
    with RayCluster() as c:
        c.add_node(_topo(d / "one.toml"))
        yield c


@pytest.mark.slow
def test_a_runtime_env_ray_refuses_is_one_line_not_a_bug(small):
    """--runtime-env '{"env_vars": {"X": 1}}': 'gpuaffinity: unexpected TypeError: ... (a bug in gpuaffinity ...)',
    exit 1 (ray_check._check catches only ConnectionError, RuntimeError, ValueError around ray.init)."""
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", "--address", small.address,
                           "--runtime-env", '{"env_vars": {"X": 1}}'], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert "unexpected" not in proc.stderr and proc.returncode == 2, (proc.returncode, proc.stderr)


@pytest.mark.slow
def test_a_callable_setup_hook_is_accepted(small):
    """Ray accepts a callable worker_process_setup_hook; check() dies in json.dumps with a TypeError."""
    code = ("import sys\nfrom gpuaffinity.ray_check import check\n"
            "def hook():\n    from gpuaffinity.ray_worker import setup; setup()\n"
            "r = check(sys.argv[1], memory='none', runtime_env={'worker_process_setup_hook': hook}, timeout=60)\n"
            "print([row['status'] for row in r.rows])\nr.to_json()\n")
    proc = subprocess.run([sys.executable, "-c", code, small.address], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.returncode == 0, proc.stderr[-600:]


@pytest.mark.slow
def test_close_removes_each_nodes_simulator_folder(tmp_path, monkeypatch):
    """RayCluster.close() SIGKILLed `gpuaffinity sim run`, which then never removed its gpuaffinity-sim-* folder
    (docs/security.md: 'one temporary folder per sim run, removed afterwards')."""
    pytest.importorskip("ray")
    from gpuaffinity.sim.raycluster import RayCluster

    tmp = Path("/tmp") / f"gpa{os.getpid()}"  # short: Ray's socket paths live under the head's temp folder
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        with RayCluster() as c:
            c.add_node(_topo(tmp_path / "one.toml"))
        assert sorted(p.name for p in tmp.iterdir()) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_a_head_under_a_longer_tmpdir_starts(tmp_path, monkeypatch):
    """TMPDIR=/tmp/attack-rc/tmp (18 characters) is enough to break the head: RayCluster puts the head's
    --temp-dir in mkdtemp() under TMPDIR and Ray's plasma socket path passes 107 bytes (OSError from
    validate_socket_filepath); RayCluster should pick a short folder for Ray's sockets."""
    pytest.importorskip("ray")
    from gpuaffinity.sim.raycluster import RayCluster

    long = Path("/tmp") / f"attack-{os.getpid()}" / "tmp"
    long.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        with RayCluster() as c:
            c.add_node(_topo(tmp_path / "one.toml"))
    finally:
        shutil.rmtree(long.parent, ignore_errors=True)
