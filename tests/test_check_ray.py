"""``gpuaffinity ray-check`` and ``gpuaffinity check`` give the same row for the same Ray worker.

A local Ray cluster on a simulated machine of 2 GPUs on 2 NUMA nodes, whose nodes are this host's first two
CPUs (binds are real system calls): the ``full`` Ray node, and a ``cpuset`` node on the same machine whose
(simulated) cpuset holds only CPU 0, so GPU 1's worker there has no CPU near its GPU and cannot be bound.  Four GPU
actors (``num_gpus=1, num_cpus=0``: one a GPU) run under the one-line binding
(``ray_check.runtime_env_for("node", "preferred")``), and each, while alive:

- runs ``gpuaffinity._ray_probe.probe("node", True)`` in itself: what ray-check's probe reports from inside;
- runs ``python -m gpuaffinity check <its own pid> --json --pages`` as a child: what check reads from outside.
  The child inherits the actor's simulated machine, but its own ``CUDA_VISIBLE_DEVICES`` names the *other*
  GPU, so a check that read its own view instead of the worker's would name the wrong GPU.

The probe's answer is judged here by ``ray_check.judge`` and compared with check's row field by field.  To make
the comparison say something beyond "both ok", the full node's GPU-0 actor starts a thread that moves itself onto every
CPU (``threads-drifted``) and its GPU-1 actor holds 96 MiB of its own memory, which on this host sits on a NUMA
node other than the simulated node 1 (``remote-memory``, where the host has one memory node).  The truth for
each actor (its GPU's bus id and UUID, its node, its CPU) comes from the topology and Ray's GPU id, not from
gpuaffinity.  Then the real ``gpuaffinity ray-check --pages --json`` runs against the same cluster.

Found by this test: on the cpuset node, ray-check said GPU 1's worker was UNBOUND (no CPU of it near its GPU)
while check said it held no GPU and passed it (``no-gpu``, exit 0).  A binding that could not be planned was
recorded nowhere (the setup hook and ``gpuaffinity.bind`` recorded only a binding they applied, while
``gpuaffinity bind -- CMD`` recorded it either way), and a Ray worker that has not opened its GPU holds no device
node.  Now a planned binding is recorded whether or not it could be applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CPUS
from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from test_ray_check import bus, topology, uuid

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")

MACHINE = "pair"  # the topology's name: uuid(MACHINE, i) is GPU i's UUID


def memory_nodes():
    """The host's NUMA nodes with memory (its kernel's list)."""
    try:
        with open("/sys/devices/system/node/has_memory") as f:
            return parse_cpulist(f.read().strip())
    except OSError:
        return frozenset({0})  # a kernel without NUMA: all memory is node 0's


#: where the host has one memory node, every page of a worker is on it: the simulated node 0
ONE_NODE = memory_nodes() == {0}
HELD = 96 << 20  # the full node's GPU-1 actor's own memory: above verdict.REMOTE_FLOOR (64 MiB)
WORKERS = [("full", "0"), ("full", "1"), ("cpuset", "0"), ("cpuset", "1")]

DRIVER = r'''
import json, os, subprocess, sys, threading
import ray
from gpuaffinity import ray_check

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR",
         runtime_env=ray_check.runtime_env_for("node", "preferred"))
HELD = int(sys.argv[2])


@ray.remote(num_gpus=1, num_cpus=0)
class Worker:
    def __init__(self):
        self.gpu = str(ray.get_gpu_ids()[0])
        self.node = os.environ["PAIR_NODE"]  # which Ray node: "full" or "cpuset"
        self.held = None
        self.stop = threading.Event()

    def setup(self, cpus):
        """GPU 0's actor: a thread that moves itself onto every CPU; GPU 1's: HELD bytes of its own memory."""
        if self.node != "full":
            return threading.get_native_id(), None
        if self.gpu == "0":
            ready = threading.Event()

            def drift():
                try:
                    os.sched_setaffinity(0, set(os.sched_getaffinity(os.getpid())) | set(cpus))
                finally:
                    ready.set()
                self.stop.wait()

            self.thread = threading.Thread(target=drift, name="drifter", daemon=True)
            self.thread.start()
            assert ready.wait(60)
            return threading.get_native_id(), self.thread.native_id
        self.held = bytearray(HELD)
        for i in range(0, HELD, 4096):  # resident: every page touched
            self.held[i] = 1
        return threading.get_native_id(), None

    def both(self):
        from gpuaffinity._ray_probe import probe

        probed = probe("node", True)  # what ray-check's probe reports, in this worker
        other = "1" if self.gpu == "0" else "0"  # the checker's own CUDA_VISIBLE_DEVICES: the other GPU
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=other)
        out = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", str(os.getpid()), "--json", "--pages"],
                             env=env, capture_output=True, text=True, timeout=300)
        return {"node": self.node, "gpu": self.gpu, "pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "checker_cvd": other, "probe": probed, "rc": out.returncode, "stdout": out.stdout,
                "stderr": out.stderr[-3000:]}


workers = [Worker.remote() for _ in range(4)]  # one a GPU of the two nodes
setups = ray.get([w.setup.remote([int(c) for c in sys.argv[3:]]) for w in workers])
answers = ray.get([w.both.remote() for w in workers])
for a, (tid, drifter) in zip(answers, setups):
    a["method_tid"], a["drifter"] = tid, drifter
print(json.dumps(answers))
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray")
    from gpuaffinity.sim.raycluster import RayCluster

    topo = topology(tmp_path_factory.mktemp("pair") / f"{MACHINE}.toml", [0, 1])
    with RayCluster() as c:
        c.add_node(topo, env={"PAIR_NODE": "full"})
        c.add_node(topo, env={"PAIR_NODE": "cpuset"}, sim_args=["--cpuset", str(CPUS[0])])
        yield c


@pytest.fixture(scope="module")
def answers(cluster):
    """Each actor's probe and check, run while both actors are alive (the driver keeps them until it ends)."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, str(HELD), *map(str, CPUS)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted((a["node"], a["gpu"]) for a in out) == sorted(WORKERS)
    return {(a["node"], a["gpu"]): a for a in out}


def kinds(problems):
    """The kind of each problem text, as gpuaffinity.verdict writes them (the status it stands for)."""
    out = set()
    for text in problems:
        if text.startswith(("runs on CPUs", "memory policy is", "none of the worker's CPUs")):
            out.add("unbound")
        elif text.startswith("bound to CPUs") or text.startswith("memory ") and " off its GPU's " in text:
            out.add("off-node")
        elif " threads may run off its GPU's CPUs " in text:
            out.add("threads-drifted")
        elif "% of its memory (" in text:
            out.add("remote-memory")
        else:
            out.add(f"other: {text[:80]}")
    return out


def judged(answer):
    """The probe's answer as ray-check judges it (the base fields ray-check adds for the node, then the answer)."""
    from gpuaffinity import ray_check

    probed = answer["probe"]
    assert probed["error"] is None, probed["error"]
    base = {"node_id": probed["node_id"], "host": probed["host"], "ip": probed["ip"]}
    return ray_check.judge({**base, **probed}, "node", "preferred", 60)


def checked(answer):
    assert answer["rc"] in (0, 4), answer["stderr"]
    report = json.loads(answer["stdout"])
    (row,) = report["rows"]
    assert row["pid"] == answer["pid"] and report["settings"]["pages"] is True
    return row


@pytest.mark.slow
@pytest.mark.parametrize("worker", WORKERS, ids="-".join)
def test_ray_checks_probe_and_check_give_the_same_row(answers, worker):
    a = answers[worker]
    gpu = worker[1]
    ray_row, row = judged(a), checked(a)
    assert a["cvd"] == gpu and a["checker_cvd"] != gpu  # the checker's own variable names the other GPU
    assert row["source"] == "binding" and row["binding"]["how"] == "in-process"  # the setup hook's memfd
    for key in ("status", "pci_bus_id", "uuid", "numa_nodes", "bind_cpus", "memory_nodes", "affinity", "memory"):
        assert ray_row[key] == row[key], (key, ray_row[key], row[key])
    assert ray_row["threads"]["off"] == row["threads"]["off"]
    # the pages are read twice, a moment apart: the same share on the GPU's node within a small tolerance
    assert ray_row["pages"]["local"] is not None and row["pages"]["local"] is not None
    assert abs(ray_row["pages"]["local"] - row["pages"]["local"]) <= 0.02, (ray_row["pages"], row["pages"])
    assert abs(ray_row["pages"]["total"] - row["pages"]["total"]) <= 16 << 20, (ray_row["pages"], row["pages"])
    assert kinds(ray_row["problems"]) == kinds(row["problems"]), (ray_row["problems"], row["problems"])
    assert not any(k.startswith("other") for k in kinds(row["problems"])), row["problems"]
    assert (a["rc"] == 0) == (row["status"] == "ok")


@pytest.mark.slow
@pytest.mark.parametrize("worker", WORKERS, ids="-".join)
def test_both_rows_are_the_machines_truth(answers, worker):
    """Ray's id is the physical GPU (the nodes were started without CUDA_VISIBLE_DEVICES): its bus id and UUID
    from the topology, its node (GPU i on node i), and the one CPU of that node, where the worker may use it."""
    i = int(worker[1])
    a = answers[worker]
    for row in (judged(a), checked(a)):
        assert (row["pci_bus_id"], row["uuid"]) == (bus(i), uuid(MACHINE, i)), row
        assert row["numa_nodes"] == [i] and row["memory_nodes"] == [i], row
        if worker == ("cpuset", "1"):  # CPU 1 is outside its cpuset: nothing to bind to, it keeps its mask
            assert row["bind_cpus"] == "" and row["affinity"] == sorted(CPUS), row
        else:
            assert row["bind_cpus"] == str(CPUS[i]) and row["affinity"] == [CPUS[i]], row


@pytest.mark.slow
def test_each_actors_own_faults_are_found_by_both(answers):
    """GPU 0's actor: its main thread is bound, one thread moved itself onto both CPUs.  GPU 1's: bound, with
    96 MiB resident on the host's memory node."""
    zero, one = answers["full", "0"], answers["full", "1"]
    for row in (judged(zero), checked(zero)):
        (off,) = row["threads"]["off"]
        assert off["tid"] == zero["drifter"] != zero["pid"], row  # (its kernel name is the process's: Ray's title)
        assert off["cpus"] == format_cpulist(CPUS), off
        assert "threads-drifted" in kinds(row["problems"]), row["problems"]
        if ONE_NODE:  # the only memory node is node 0: GPU 0's worker is on its node, and so are its pages
            assert row["status"] == "threads-drifted" and row["pages"]["local"] == 1.0, row
    for row in (judged(one), checked(one)):
        assert row["threads"]["off"] == [], row
        assert row["pages"]["total"] >= HELD, row["pages"]
        if ONE_NODE:
            # preferred to node 1, which the host has not: the hook could not set it (its failure is on the
            # row), and every page is on node 0
            assert row["memory"]["policy"] == "default" and row["pages"]["local"] == 0.0, row
            assert kinds(row["problems"]) == {"unbound", "remote-memory"}, row["problems"]
            assert row["status"] == "unbound" and "set_mempolicy(preferred, node(s) 1) failed" in \
                row["problems"][0], row["problems"]


@pytest.mark.slow
def test_a_worker_that_could_not_be_bound_is_unbound_in_both(answers):
    """The cpuset node's GPU-1 worker: no CPU of its cpuset is near its GPU, so the hook planned a binding it could
    not apply.  ray-check says UNBOUND; check, reading the recorded (unapplied) binding, says the same, where it
    said ``no-gpu`` before (the worker holds no device node: nothing else names its GPU from outside)."""
    a = answers["cpuset", "1"]
    ray_row, row = judged(a), checked(a)
    assert row["source"] == "binding" and row["binding"]["applied"] is False, row
    assert row["binding"]["pci_bus_id"] == bus(1) and row["binding"]["bind_cpus"] == "", row["binding"]
    assert any("no CPU to bind to" in f for f in row["binding"]["failures"]), row["binding"]
    for r in (ray_row, row):
        assert r["status"] == "unbound" and r["problems"][0].startswith("none of the worker's CPUs ("), r
        assert r["problems"][0].endswith(f"is near GPU {bus(1)}: nothing to bind to (the node's cpuset excludes "
                                         "them)"), r["problems"]
    assert a["rc"] == 4


@pytest.mark.slow
def test_the_ray_check_command_reports_threads_and_pages(cluster, answers):
    """The real command against the same cluster (the actors are gone with their driver: both GPUs are free):
    one row a GPU of each node, each with every thread and its pages, statuses as this host allows."""
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", "--address", cluster.address, "--pages",
                           "--json"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.returncode in (0, 4), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["settings"]["pages"] is True and report["settings"]["memory"] == "preferred"
    # the cpuset node: its workers see only CPU 0 (its probes' worker_cpus)
    rows = {("cpuset" if r["worker_cpus"] == str(CPUS[0]) else "full", r["ray_gpu_ids"][0]): r for r in report["rows"]}
    assert sorted(rows) == sorted(WORKERS) and len(report["rows"]) == 4
    for (node, gpu), row in rows.items():
        i = int(gpu)
        assert row["pci_bus_id"] == bus(i), row
        assert row["affinity"] == (sorted(CPUS) if (node, gpu) == ("cpuset", "1") else [CPUS[i]]), row
        assert row["threads"]["count"] >= 1 and row["threads"]["off"] == [], row["threads"]
        assert row["pages"]["total"] > 0 and 0 <= row["pages"]["local"] <= 1, row["pages"]
        assert "thread_list" not in row  # judged into `threads`
        assert row["status"] in ("ok", "unbound"), row
        # a probe is small (below 64 MiB of its own): never remote-memory; unbound only where the host lacks the
        # simulated node its memory should prefer, or (the cpuset node's GPU 1) no CPU of the worker is near it
        assert kinds(row["problems"]) <= {"unbound"}, row["problems"]
        assert all("set_mempolicy(preferred" in p or "nothing to bind to" in p for p in row["problems"]), row
    assert rows["cpuset", "1"]["status"] == "unbound" and proc.returncode == 4
    if ONE_NODE:
        assert [rows[w]["status"] for w in WORKERS] == ["ok", "unbound", "ok", "unbound"]
        assert [rows[w]["pages"]["local"] for w in WORKERS] == [1.0, 0.0, 1.0, 0.0]


CHECK_MYSELF = r"""
import os, subprocess, sys, warnings
import gpuaffinity
if sys.argv[1] == "in-process":
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpuaffinity.bind(1)
    assert any("not bound: no CPU to bind to" in str(w.message) for w in caught), caught
out = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", str(os.getpid()), "--json"], capture_output=True,
                     text=True, timeout=120)
sys.stderr.write(out.stderr)
sys.stdout.write(out.stdout)
sys.exit(out.returncode)
"""


@pytest.mark.parametrize("how", ["in-process", "exec"])
def test_a_binding_that_could_not_be_applied_is_recorded_in_both_forms(tmp_path, how):
    """Without Ray: a process on the same machine whose cpuset holds only CPU 0 binds for GPU 1, whose CPU is
    CPU 1, and runs on unbound (a warning).  ``gpuaffinity bind 1 -- CMD`` recorded that binding for check before
    the fix (the exec form); ``gpuaffinity.bind(1)`` did not, and check said ``no-gpu``.  Now both forms give one
    row: UNBOUND, for GPU 1, the binding not applied and why."""
    from gpuaffinity.sim import simulated

    topo = topology(tmp_path / f"{MACHINE}.toml", [0, 1])
    with simulated(topo, cpuset=str(CPUS[0])) as machine:
        cmd = [sys.executable, "-c", CHECK_MYSELF, how]
        if how == "exec":
            cmd = [sys.executable, "-m", "gpuaffinity", "bind", "1", "--", *cmd]
        proc = subprocess.run(cmd, env=machine.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["rows"]
    assert (row["status"], row["source"], row["pci_bus_id"], row["uuid"]) == \
        ("unbound", "binding", bus(1), uuid(MACHINE, 1)), row
    assert row["binding"]["how"] == how and row["binding"]["applied"] is False, row["binding"]
    assert any(f.startswith("no CPU to bind to: none of the CPUs near GPU") for f in row["binding"]["failures"])
    assert row["problems"][0].endswith(f"is near GPU {bus(1)}: nothing to bind to (the node's cpuset excludes them)")
