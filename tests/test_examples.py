"""The gpuaffinity.examples programs, run for real as modules: Ray actors, spawn workers, torchrun workers,
subprocesses; and the example plugin project (examples/gpuaffinity-launcher-plugin).

They run on a simulated 8-GPU, 2-node machine whose two nodes are this host's
first two CPUs, so every bind is a real system call that the kernel reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import CPUS, ROOT

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
PLUGIN = ROOT / "examples" / "gpuaffinity-launcher-plugin"
SHUFFLE = "3,6,5,4,0,7,1,2"


def run_example(topology, *cmd, status=0, **env):
    e = dict(os.environ, **env)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topology), "--", *cmd], env=e,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith(("{", "["))]


def node_cpu(nvml_index):
    return [CPUS[nvml_index // 4]]


@pytest.mark.parametrize("noset", [False, True])
@pytest.mark.slow
def test_ray_actors_resolve_and_bind_the_gpu_ray_assigned(host8, noset):
    pytest.importorskip("ray")
    args = [sys.executable, "-m", "gpuaffinity.examples.ray_actors"] + (["--noset"] if noset else [])
    (rows,) = json_lines(run_example(host8, *args, CUDA_VISIBLE_DEVICES=SHUFFLE, RAY_AUTH_MODE="disabled").stdout)
    assert len(rows) == 8
    assert sorted(int(r["ray_gpu_id"]) for r in rows) == list(range(8))
    for r in rows:
        # Ray's GPU ids are the entries of the driver's CUDA_VISIBLE_DEVICES: here, physical indices
        assert r["nvml_index"] == int(r["ray_gpu_id"]), r
        assert r["numa_nodes"] == [r["nvml_index"] // 4]
        assert r["bound_cpus"] == node_cpu(r["nvml_index"]) and r["failures"] == []
        if noset:
            assert r["cvd"] == SHUFFLE and r["strategy"] == "cvd"
        else:
            assert r["cvd"] == r["ray_gpu_id"]


def test_spawn_workers(host8):
    (rows,) = json_lines(run_example(host8, sys.executable, "-m", "gpuaffinity.examples.multiprocessing_workers",
                                     CUDA_VISIBLE_DEVICES=SHUFFLE).stdout)
    shuffled = [int(x) for x in SHUFFLE.split(",")]
    assert [r["nvml_index"] for r in rows] == shuffled
    assert [r["cpus"] for r in rows] == [node_cpu(i) for i in shuffled]
    assert {r["memory"] for r in rows} == {"none"}  # the example leaves the memory policy alone


def test_spawn_workers_where_one_cannot_be_resolved_print_the_others_and_fail(host8):
    """A worker for a device this process does not see dies in its binding, before it sends a row: the example
    prints the other rows, names the failed worker and exits 1, without waiting for the row that never comes."""
    proc = run_example(host8, sys.executable, "-m", "gpuaffinity.examples.multiprocessing_workers", "1", "9", "0",
                       status=1, CUDA_VISIBLE_DEVICES=SHUFFLE)
    (rows,) = json_lines(proc.stdout)
    shuffled = [int(x) for x in SHUFFLE.split(",")]
    assert [(r["device"], r["nvml_index"]) for r in rows] == [(0, shuffled[0]), (1, shuffled[1])]
    # the child's one line (no traceback), then the example's
    assert proc.stderr.splitlines()[-2:] == [
        "gpuaffinity: the process for device 9 was not started: CUDA device 9 is not visible: this process sees 8 "
        f"device(s) (0-7) with CUDA_VISIBLE_DEVICES '{SHUFFLE}'",
        "multiprocessing_workers: the worker for device(s) 9 (exit status 1) failed"], proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr


def test_spawn_workers_refuse_a_device_that_is_no_number_and_nothing_to_start(host8):
    """Bad input is one usage line and status 2; no visible device is said, status 1 (it printed [] and 0)."""
    proc = run_example(host8, sys.executable, "-m", "gpuaffinity.examples.multiprocessing_workers", "GPU-0", status=2)
    assert proc.stderr.splitlines()[-1].endswith("error: argument DEVICE: invalid int value: 'GPU-0'")
    proc = run_example(host8, sys.executable, "-W", "ignore", "-m", "gpuaffinity.examples.multiprocessing_workers",
                       status=1, CUDA_VISIBLE_DEVICES="")
    assert (proc.stdout, proc.stderr) == ("", "multiprocessing_workers: no CUDA device is visible here: nothing to "
                                              "start\n")


def test_torchrun_workers_use_local_rank(host8):
    pytest.importorskip("torch")
    # torchrun as this interpreter runs it (the torchrun script is `python -m torch.distributed.run`): the workers
    # then import the gpuaffinity under test, whichever torchrun comes first on PATH
    out = run_example(host8, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                      "-m", "gpuaffinity.examples.torchrun_worker", CUDA_VISIBLE_DEVICES="5,2", EXAMPLE_MEMORY="none")
    rows = sorted(json_lines(out.stdout), key=lambda r: r["local_rank"])
    assert [(r["local_rank"], r["nvml_index"], r["cpus"], r["failures"]) for r in rows] == [
        (0, 5, node_cpu(5), []), (1, 2, node_cpu(2), [])]


def test_subprocess_launcher(host8):
    (rows,) = json_lines(run_example(host8, sys.executable, "-m", "gpuaffinity.examples.subprocess_launcher",
                                     CUDA_VISIBLE_DEVICES="6,1").stdout)
    assert [(r["nvml_index"], r["cpus"]) for r in rows] == [(6, node_cpu(6)), (1, node_cpu(1))]
    assert all(r["cvd"].startswith("GPU-") for r in rows)


def test_example_plugin_readme_command_works(sim_factory, tmp_path):
    """examples/gpuaffinity-launcher-plugin: the doctor shows the installed plugin answering."""
    site, src = tmp_path / "site", tmp_path / "plugin"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True)
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    env = dict(machine.env, CUDA_VISIBLE_DEVICES="3,1", LAUNCHER_GPU_UUIDS=f"{gpus[3].uuid},{gpus[1].uuid}",
               PYTHONPATH=f"{site}:{machine.env.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "launcher 90" in " ".join(out.stdout.split())
    assert out.stdout.count("by launcher; confirmed: launcher, cvd agree") == 2


def test_the_ray_example_without_ray_says_so_in_one_line():
    """Found by attacking the change: the wheel does not depend on Ray, and the example ended in a traceback."""
    code = ("import runpy, sys\nsys.modules['ray'] = None  # as an environment without Ray\n"
            "sys.argv = ['ray_actors']\nrunpy.run_module('gpuaffinity.examples.ray_actors', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (1, "ray_actors: this example needs Ray in this environment: pip install "
                                               "ray\n")
