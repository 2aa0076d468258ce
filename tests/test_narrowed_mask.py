"""A bound process's own mask is narrower than its cpuset, on a real host and on the simulator alike: what it may
use narrows with it.  The Ray probe must judge a worker against what it could use before its binding, never the
binding itself, or an off-node worker reads as one with nothing near its GPU (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CPUS, child_env, run_json
from gpuaffinity.core.cpulist import format_cpulist

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")

ALLOWED = "import json; from gpuaffinity.numa.query import allowed_cpus; print(json.dumps(sorted(allowed_cpus())))"


def test_a_bound_process_may_use_its_binding_an_unbound_one_its_cpuset(host8, sim_factory):
    machine = sim_factory(str(host8))
    assert run_json(machine, ALLOWED) == sorted(CPUS)
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "4", "--memory", "none", "--", sys.executable,
                          "-c", ALLOWED], env=child_env(machine), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout) == [CPUS[1]], out.stderr
    # a simulated cpuset narrower than the machine, unbound: the cpuset
    from gpuaffinity.sim import simulated

    with simulated(str(host8), cpuset=str(CPUS[0])) as small:
        assert run_json(small, ALLOWED) == [CPUS[0]]


PROBE = """
import json, os, sys
from gpuaffinity import _ray_probe, ray_worker
from gpuaffinity.numa.query import allowed_cpus
from gpuaffinity.ray_check import judge
import ray
ray.get_gpu_ids = lambda: ["0"]  # Ray's answer for a task holding GPU 0
ray_worker.setup()  # the setup hook records what the worker may use before any task binds it
assert ray_worker._original_pool == allowed_cpus()
os.sched_setaffinity(0, {int(sys.argv[1])})  # then something bound it to node 1; its GPU 0 is on node 0
out = {"ray_gpu_ids": ["0"], "affinity": sorted(os.sched_getaffinity(0)), "pid": os.getpid(), "env": {},
       "error": None}
_ray_probe._facts(out, sys.argv[2])
row = judge({"node_id": "n" * 56, **out}, sys.argv[2], "none", 60)
print(json.dumps({k: row[k] for k in ("status", "bind_cpus", "worker_cpus", "problems")}))
"""


@pytest.mark.parametrize("mode", ["node", "exclusive"])
def test_the_probe_judges_an_off_node_worker_against_what_it_could_use(host8, sim_factory, mode):
    row = run_json(sim_factory(str(host8)), PROBE, str(CPUS[1]), mode, cvd="0")
    assert row["worker_cpus"] == format_cpulist(CPUS), row  # what it could use, not its binding
    assert row["bind_cpus"] == str(CPUS[0]), row  # GPU 0's node (its exclusive share: the node's one CPU)
    assert row["status"] == "off-node" and row["problems"][0].startswith(f"bound to CPUs {CPUS[1]}, off its GPU's"), row
