"""gpuaffinity.ray_worker on a real local Ray: one line in ray.init binds every GPU task and actor.

The simulated machine's two NUMA nodes are this host's first two CPUs (as in test_examples.py), so every bind
is a real system call, read back in the worker with sched_getaffinity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CPUS

pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
SHUFFLE = "3,6,5,4,0,7,1,2"

DRIVER = r"""
import json, os, sys
import ray

noset = sys.argv[1] == "noset"
if noset:
    os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
env = {k: v for k, v in os.environ.items() if k.startswith(("GPUAFFINITY_", "LD_", "RAY_EXPERIMENTAL"))}
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
         runtime_env={"env_vars": env, "worker_process_setup_hook": "gpuaffinity.ray_worker.setup"})


def seen():
    import gpuaffinity
    from gpuaffinity import ray_worker
    rec = ray_worker.last()
    ids = [str(i) for i in ray.get_gpu_ids()]
    entries = (os.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")
    logical = [entries.index(i) for i in ids] if noset else list(range(len(ids)))
    return {"pid": os.getpid(), "ids": ids, "affinity": sorted(os.sched_getaffinity(0)),
            "nvml": [gpuaffinity.resolve(i).nvml_index for i in logical],
            "bound_nodes": list(rec.numa_nodes) if rec else None, "failures": rec.failures if rec else None,
            "hook": [what for what, _s in ray_worker.timings]}


@ray.remote(num_cpus=1)
def task():
    return seen()


@ray.remote(num_gpus=3, num_cpus=0)
class Blocker:
    def ping(self):
        return 1


@ray.remote(num_gpus=1, num_cpus=0)
class Actor:
    def __init__(self):
        self.init = seen()

    def both(self):
        return [self.init, seen()]


try:
    blocker = Blocker.remote()
    ray.get(blocker.ping.remote())
    out = {"tasks": [ray.get(task.options(num_gpus=g).remote()) for g in (1, 1, 2, 0, 1)]}
    actor = Actor.remote()
    out["actor"] = ray.get(actor.both.remote())
finally:
    ray.shutdown()
print(json.dumps(out))
"""


@pytest.mark.parametrize("noset", [False, True])
@pytest.mark.slow
def test_every_task_and_actor_is_bound_to_its_gpus(host8, noset):
    # this host has one real NUMA node: the simulated node 1's memory policy would be EINVAL, so CPUs only
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=SHUFFLE, RAY_AUTH_MODE="disabled", GPUAFFINITY_RAY_MEMORY="none")
    env.pop("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable,
                           "-c", DRIVER, "noset" if noset else "set"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    gpu_tasks = [t for t in out["tasks"] if t["ids"]]
    # each worker's own sequence: a task with its worker's last GPUs needs nothing done, any other is bound.  (Run
    # alone, one worker served all four: bound, same GPUs, bound, bound.  Ray does not promise one worker, so
    # the expectation follows whichever worker served each task.)
    last: dict[int, list[str]] = {}
    for t in gpu_tasks:
        expected = "same GPUs" if last.get(t["pid"]) == t["ids"] else "bound"
        assert t["hook"][-1] == expected and t["hook"][0] == "setup", (t["hook"], expected)
        last[t["pid"]] = t["ids"]
    assert len(gpu_tasks) - len(last) >= 1  # some worker served more than one of them: the rebinding ran
    for t in gpu_tasks + out["actor"]:
        # Ray's ids are entries of the node's list: physical indices here; the GPU resolved is that one
        assert t["nvml"] == [int(i) for i in t["ids"]], t
        nodes = sorted({n // 4 for n in t["nvml"]})
        assert t["bound_nodes"] == nodes and t["failures"] == [], t
        assert t["affinity"] == sorted(CPUS[n] for n in nodes), t
    (cpu_task,) = [t for t in out["tasks"] if not t["ids"]]
    assert cpu_task["bound_nodes"] is None and cpu_task["affinity"] == sorted(os.sched_getaffinity(0))
    assert out["actor"][0] == out["actor"][1]  # bound before __init__, and still in its methods


def test_ray_ids_to_cuda_indices():
    from gpuaffinity.ray_worker import logical_ids

    assert logical_ids(["4", "0"], "4,0", noset=False) == [0, 1]  # Ray set the variable to its ids, in order
    assert logical_ids(["4", "0"], SHUFFLE, noset=True) == [3, 4]  # entries of the node's list: positions
    assert logical_ids(["4"], None, noset=True) == [4]  # the node's variable unset: ids are indices
    with pytest.raises(ValueError, match=r"^Ray's GPU id '9' is not in CUDA_VISIBLE_DEVICES='3,6'$"):
        logical_ids(["9"], "3,6", noset=True)


def test_a_ray_without_the_hook_point_says_so_and_binds_nothing(capsys, monkeypatch):
    """A later Ray that renamed the per-task function: one line on stderr, nothing wrapped, nothing raised."""
    import ray._private.utils as ray_utils

    from gpuaffinity import ray_worker

    monkeypatch.delattr(ray_utils, "set_visible_accelerator_ids")
    ray_worker.setup()
    err = capsys.readouterr().err
    assert err.startswith("gpuaffinity: this Ray has no ray._private.utils.set_visible_accelerator_ids") and \
        err.count("\n") == 1


@pytest.mark.slow
def test_the_benchmark_runs_and_prints_its_table(host8, tmp_path):
    """benchmarks/bench_ray_worker.py, run (not timed): its table and its JSON."""
    bench = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_ray_worker.py")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable, bench,
                           "--tasks", "1", "--json", str(tmp_path / "b.json")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["what", "n", "median", "max"]
    assert any(line.startswith("hook: setup") for line in lines)
    assert any(line.startswith("hook: bound") for line in lines)
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["tasks"]) == 2 and data["medians_ms"]["bound"] > 0


SEQUENCE = r"""
import json, os
import ray
from gpuaffinity.numa.bind import get_mempolicy

cpus = sorted(os.sched_getaffinity(0))
env = {k: v for k, v in os.environ.items() if k.startswith(("GPUAFFINITY_", "LD_"))}
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
         runtime_env={"env_vars": env, "worker_process_setup_hook": "gpuaffinity.ray_worker.setup"})


@ray.remote(num_cpus=1)
def task(narrow_to=None):
    from gpuaffinity import ray_worker
    got = {"pid": os.getpid(), "ids": [str(i) for i in ray.get_gpu_ids()], "affinity": sorted(os.sched_getaffinity(0)),
           "mempolicy": get_mempolicy()[0], "hook": [w for w, _s in ray_worker.timings][-1]}
    if narrow_to is not None:  # the task changes its own mask, as user code may
        os.sched_setaffinity(0, {narrow_to})
    return got


try:
    out = [ray.get(task.options(num_gpus=1).remote(cpus[1])), ray.get(task.options(num_gpus=1).remote()),
           ray.get(task.options(num_gpus=2).remote())]
finally:
    ray.shutdown()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_no_stale_binding_when_a_task_changes_its_mask_or_the_next_gpu_has_no_node(host8, tmp_path):
    """Found by attacking the hook: (1) a task that narrowed its own mask made the next task on the same GPU
    skip its binding and run off its node; (2) after GPU 0 (node 0), a task holding GPU 0 and GPU 1, which has
    no node (numa_node -1), kept a memory policy over node 0 alone.  Memory is bound where every GPU has a
    node, and reset to the default otherwise."""
    topo = tmp_path / "host8n.toml"
    text = host8.read_text()
    gpu1 = text.index('uuid = "GPU-00000001')
    at = text.index("numa_node = 0", gpu1)
    topo.write_text(text[:at] + "numa_node = -1" + text[at + len("numa_node = 0"):])
    env = dict(os.environ, RAY_AUTH_MODE="disabled", GPUAFFINITY_RAY_MEMORY="bind")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", sys.executable, "-c",
                           SEQUENCE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again, no_node = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["ids"] == again["ids"] == ["0"] and no_node["ids"] == ["0", "1"]
    # Ray reused the worker for all three in every run measured, which is what makes the stale paths run; it does
    # not promise to, and in a fresh worker the same expectations hold (bound, or the default policy)
    assert first["affinity"] == again["affinity"] == [CPUS[0]]  # rebound, though the GPU was the same
    assert again["hook"] == "bound"
    assert (first["mempolicy"], again["mempolicy"]) == (2, 2)  # MPOL_BIND, node 0
    assert no_node["mempolicy"] == 0  # the default policy, not node 0's alone


STATES = r"""
import json, os
import ray
from gpuaffinity import ray_worker

ids = []
ray.get_gpu_ids = lambda: list(ids)  # Ray's answer for the task at hand; the binding itself is real
ray_worker.setup()  # notes this worker's own mask
out = []
for gpus, mode in ((["0"], None), (["5"], "nod"), (["0"], None), ([], None)):
    ids[:] = gpus
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    else:  # Ray puts the node's variable back for a task without GPUs
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    if mode:
        os.environ["GPUAFFINITY_RAY_MODE"] = mode
    try:
        ray_worker.rebind()
        error = None
    except ValueError as e:
        error = str(e)
    os.environ.pop("GPUAFFINITY_RAY_MODE", None)
    rec = ray_worker.last()
    out.append({"error": error, "affinity": sorted(os.sched_getaffinity(0)),
                "last_nodes": list(rec.memory_nodes) if rec else None,
                "mempolicy": __import__("gpuaffinity.numa.bind", fromlist=["x"]).get_mempolicy()[0]})
print(json.dumps(out))
"""


def test_a_failed_binding_leaves_no_stale_state(host8):
    """Found by attacking the hook: after a task whose binding failed, the next task on the first task's GPU
    was taken for 'the same GPUs' and left on the full mask, and last() still named the old node.  Then a task
    without GPUs (Ray runs those in other workers in every run measured, so only here) gets the worker's own
    mask and the default memory policy back.  Memory is bound to node 0, which this host has."""
    env = dict(os.environ, GPUAFFINITY_RAY_MEMORY="bind")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable, "-c",
                           STATES], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, failed, again, no_gpu = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ok == {"error": None, "affinity": [CPUS[0]], "last_nodes": [0], "mempolicy": 2}  # MPOL_BIND
    assert failed["error"] == ("GPUAFFINITY_RAY_MODE='nod' is not one of node, socket, exclusive, llc; fix it in "
                               "the runtime environment's env_vars")
    assert failed["last_nodes"] is None and failed["affinity"] == sorted(os.sched_getaffinity(0))
    assert again == {"error": None, "affinity": [CPUS[0]], "last_nodes": [0], "mempolicy": 2}
    # a task without GPUs after a bound one: the worker's own mask and the default memory policy come back
    assert no_gpu == {"error": None, "affinity": sorted(os.sched_getaffinity(0)), "last_nodes": None,
                      "mempolicy": 0}


def test_the_timings_kept_are_bounded():
    from gpuaffinity import ray_worker

    assert ray_worker.timings.maxlen == 1000


PARTIAL = r"""
import os
import ray
from gpuaffinity import ray_worker

ray.get_gpu_ids = lambda: ["4"]  # Ray's answer for a task holding GPU 4 (node 1); the binding itself is real
os.environ["CUDA_VISIBLE_DEVICES"] = "4"
ray_worker.setup()
ray_worker.rebind()
ray_worker.rebind()  # the same failure again: said once a worker
"""


@pytest.mark.skipif(os.path.exists("/sys/devices/system/node/node1"), reason="needs a kernel with node 0 only")
def test_a_task_bound_only_in_part_is_told_once_how_to_turn_memory_binding_off(host8):
    """GPU 4 sits on the simulated node 1, which this kernel does not have: the CPUs are bound, set_mempolicy
    fails, and the worker says so on stderr once, with the fix in the runtime environment's terms (a Ray task
    has no --memory option)."""
    env = dict(os.environ, GPUAFFINITY_RAY_MEMORY="bind")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable, "-c",
                           PARTIAL], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("gpuaffinity:")]
    assert len(said) == 1, proc.stderr
    assert said[0].startswith("gpuaffinity: this Ray task is bound only in part (GPU 0000:50:00.0"), said
    assert "set_mempolicy(bind, node(s) 1) failed: EINVAL" in said[0], said
    assert "set GPUAFFINITY_RAY_MEMORY=none in the runtime environment's env_vars" in said[0], said
    assert "--memory" not in said[0], said


TWO_GPUS = r"""
import json, os
import ray
from gpuaffinity import intent, ray_worker

ray.get_gpu_ids = lambda: ["1", "6"]  # Ray's answer for a task holding two GPUs; the binding itself is real
os.environ["CUDA_VISIBLE_DEVICES"] = "1,6"
ray_worker.setup()
rec, _same = ray_worker._rebind()
print(json.dumps([rec.pci_bus_id, sorted(rec.numa_nodes), intent.current().buses]))
"""


def test_a_task_holding_two_gpus_is_recorded_for_both(host8):
    """One binding for a task's GPUs together: its record names both buses, in Ray's order, and spans both
    nodes; `gpuaffinity check` reads the same two GPUs from the process's record."""
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable, "-c",
                           TWO_GPUS], env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "0000:20:00.0,0000:70:00.0", [0, 1], ["0000:20:00.0", "0000:70:00.0"]]


OWN_POLICY = r"""
import json, os
import ray
from gpuaffinity import ray_worker
from gpuaffinity.numa.bind import MPOL_PREFERRED, get_mempolicy, set_mempolicy

ids = []
ray.get_gpu_ids = lambda: list(ids)  # Ray's answer for the task at hand; the binding itself is real
ray_worker.setup()
set_mempolicy("preferred", (0,))  # the program's own policy
out = []
for gpus in (["0"], ["4"], []):
    ids[:] = gpus
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    ray_worker.rebind()
    out.append(get_mempolicy()[0])
print(json.dumps([out, MPOL_PREFERRED]))
"""


def test_with_memory_binding_off_a_policy_the_program_set_stays(host8):
    """GPUAFFINITY_RAY_MEMORY=none: the hook binds CPUs only, and leaves the memory policy the program set itself
    (it was reset to the default before every task, though the hook had set none)."""
    env = dict(os.environ, GPUAFFINITY_RAY_MEMORY="none")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable, "-c",
                           OWN_POLICY], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    policies, preferred = json.loads(proc.stdout.strip().splitlines()[-1])
    assert policies == [preferred] * 3
