"""tools/ray_facts.py on a real local Ray over the simulated DGX: what Ray sets in a GPU worker, and when.

These facts decide how gpuaffinity can bind Ray workers (docs/ray.md): if a Ray release changes them, this
test says which.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, child_env

pytest.importorskip("ray")

SHUFFLED = "3,6,5,4,0,7,1,2"


def facts(machine, noset: bool, cvd: str | None) -> dict:
    env = child_env(machine, cvd, PYTHONPATH=str(ROOT / "src"))
    env.pop("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, str(ROOT / "tools" / "ray_facts.py"), *(["--noset"] if noset else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize(("noset", "cvd"), [(False, None), (False, SHUFFLED), (True, SHUFFLED)])
@pytest.mark.slow
def test_what_ray_sets_and_when(sim_factory, noset, cvd):
    f = facts(sim_factory("dgx-h100"), noset, cvd)
    assert f["gpus"] == 8 and len(f["blocker_gpu_ids"]) == 3
    node = cvd.split(",") if cvd else [str(i) for i in range(8)]
    # the setup hook runs before any GPU is assigned: no ids, and only the variable the node started with
    assert f["setup_hook"] and all(h["gpu_ids"] == [] and h["cvd"] == cvd for h in f["setup_hook"])
    gpu_tasks = [t for t in f["tasks"] if t["num_gpus"]]
    # a worker process serves GPU tasks in turn, with other GPUs each time: binding belongs to the task.  (In
    # every run alone one worker served all four; Ray does not promise that, so this asks for one reuse.)
    by_pid: dict[int, set] = {}
    for t in gpu_tasks:
        by_pid.setdefault(t["pid"], set()).add(tuple(t["gpu_ids"]))
    assert any(len(ids) > 1 for ids in by_pid.values()), by_pid
    assert [len(t["gpu_ids"]) for t in gpu_tasks] == [1, 2, 1, 1]  # 1, 2, 0.5 (a whole id), 1
    assert not set(f["blocker_gpu_ids"]) & {i for t in gpu_tasks for i in t["gpu_ids"]}
    for t in gpu_tasks + [f["actor_2_gpus"]["init"], f["actor_2_gpus"]["method"]]:
        assert set(t["gpu_ids"]) <= set(node)  # Ray's ids are entries of the node's list, not positions in it
        if noset:
            assert t["cvd"] == cvd  # left alone: the ids must be mapped to positions by the worker
        else:
            assert t["cvd"] == ",".join(t["gpu_ids"])  # Ray sets the variable to its ids, in its own order
    # an actor's GPUs are set before its constructor runs, and stay
    actor = f["actor_2_gpus"]
    assert actor["init"] == actor["method"] and len(actor["init"]["gpu_ids"]) == 2
    # a task without GPUs gets the node's variable back (another worker process here)
    (cpu_task,) = [t for t in f["tasks"] if t["num_gpus"] == 0]
    assert cpu_task["gpu_ids"] == [] and cpu_task["cvd"] == cvd
    assert os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES") is None
