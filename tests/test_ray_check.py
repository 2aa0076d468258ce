"""The cluster check on a real multi-node Ray cluster on this machine, each node on its own simulated machine.

Nodes (gpuaffinity.sim.raycluster; every node's NUMA nodes are this host's first two CPUs, so binds are real):

- ``shuffled``: 8 GPUs on 2 NUMA nodes, the node started with CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2;
- ``slurm``: the same machine, but the node may open only GPUs 2 and 5 (a device cgroup; Ray counts 2);
- ``vm``: 4 GPUs with numa_node = -1 (no locality), one NUMA node holding both CPUs;
- ``broken``: 2 GPUs on 2 nodes, and a plugin that names the wrong GPU for the worker of GPU 1 only;
- ``bare``: 1 GPU, and gpuaffinity not importable in its workers;
- a node where Ray counts no GPU (``ray start --num-gpus=0``).

The truth for each row comes from the topology (which physical GPU Ray's id names, and that GPU's node), not
from gpuaffinity.  The one-line binding (the probes' default runtime environment) must put every worker of the
good nodes on its GPU's node; the check must fail on exactly the broken and bare rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CPUS
from helpers.ray_rows import probed

pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
SHUFFLE = "3,6,5,4,0,7,1,2"


def topology(path, gpus):
    """A topology file: ``gpus`` is each GPU's NUMA node (-1: none); nodes 0 and 1 are this host's two CPUs."""
    text = f'name = "{path.stem}"\n' + "".join(f'[[numa_node]]\nid = {n}\ncpus = "{c}"\n' for n, c in enumerate(CPUS))
    if all(n == -1 for n in gpus):  # a VM: one node with every CPU
        text = f'name = "{path.stem}"\n[[numa_node]]\nid = 0\ncpus = "{CPUS[0]},{CPUS[1]}"\n'
    for i, node in enumerate(gpus):
        text += (f'[[gpu]]\nuuid = "{uuid(path.stem, i)}"\npci_bus_id = "{bus(i)}"\n'
                 f'name = "NVIDIA H100 80GB HBM3"\nnuma_node = {node}\n')
    path.write_text(text)
    return path


def uuid(name, i):
    return f"GPU-{sum(map(ord, name)) % 0xffff:04x}{i:04x}-0000-0000-0000-000000000000"


def bus(i):
    return f"0000:{16 * i + 16:02x}:00.0"


LIAR = '''
import os
from gpuaffinity import Abstain, Answer, Strategy, hookimpl


class Liar(Strategy):
    """Names GPU 0 for the worker whose CUDA_VISIBLE_DEVICES is LIAR_WHEN: a misbinding on one worker only."""
    name = "liar"
    priority = 150

    def answer(self, ctx, logical_id):
        if os.environ.get("CUDA_VISIBLE_DEVICES") == os.environ.get("LIAR_WHEN"):
            return Answer(ctx.inventory.gpus[0].uuid)
        return Abstain("not this worker", quiet=True)


@hookimpl
def gpuaffinity_strategies():
    return [Liar()]
'''

BLOCK = '''
import sys


class _NoGpuaffinity:
    def find_spec(self, name, path=None, target=None):
        if name == "gpuaffinity" or name.startswith("gpuaffinity."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NoGpuaffinity())
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from gpuaffinity.sim.raycluster import RayCluster

    d = tmp_path_factory.mktemp("cluster")
    liar = d / "liar-site"
    (liar / "liar_plugin-1.0.dist-info").mkdir(parents=True)
    (liar / "liar_plugin.py").write_text(LIAR)
    (liar / "liar_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: liar-plugin\n"
                                                                  "Version: 1.0\n")
    (liar / "liar_plugin-1.0.dist-info" / "entry_points.txt").write_text("[gpuaffinity]\nliar = liar_plugin\n")
    block = d / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK)
    machines = {"shuffled": [0, 0, 0, 0, 1, 1, 1, 1], "slurm": [0, 0, 0, 0, 1, 1, 1, 1], "vm": [-1] * 4,
                "broken": [0, 1], "bare": [0]}
    topo = {name: topology(d / f"{name}.toml", gpus) for name, gpus in machines.items()}
    pythonpath = os.environ.get("PYTHONPATH", "")
    with RayCluster() as c:
        c.add_node(topo["shuffled"], env={"CUDA_VISIBLE_DEVICES": SHUFFLE})
        c.add_node(topo["slurm"], sim_args=["--gpus", "2,5", "--others", "denied"])
        c.add_node(topo["vm"])
        c.add_node(topo["broken"], env={"PYTHONPATH": f"{liar}:{pythonpath}", "LIAR_WHEN": "1"})
        c.add_node(topo["bare"], env={"PYTHONPATH": f"{block}:{pythonpath}"})  # sitecustomize: in every Python
        c.add_node(topo["vm"], ray_args=["--num-gpus=0"])  # a node where Ray counts no GPU
        c.machines = machines
        yield c


def run_check(cluster, *args):
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", "--address", cluster.address,
                           "--memory", "none", *args], capture_output=True, text=True, timeout=600)
    return proc


def node_of(row):
    """Which test machine a row is from: by its GPUs' UUIDs (bare rows have none: by elimination)."""
    gpu = row.get("gpu")
    if gpu:
        for name in ("shuffled", "slurm", "vm", "broken", "bare"):
            if gpu["uuid"].startswith(uuid(name, 0)[:8]):
                return name
    return None


@pytest.mark.slow
def test_the_report_is_each_machines_truth_and_fails_on_exactly_the_broken_rows(cluster):
    proc = run_check(cluster, "--json")
    assert proc.returncode == 4, proc.stderr  # some rows have problems
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["settings"]["memory"] == "none"
    rows = report["rows"]
    by_node: dict[str, list[dict]] = {}
    for row in rows:
        by_node.setdefault(row["node_id"], []).append(row)
    assert len(by_node) == 6  # every node, each with one row a GPU Ray counts (one for a node without)
    named = {}
    for node_rows in by_node.values():
        names = {node_of(r) or node_rows[0]["status"] for r in node_rows}
        assert len(names) == 1, names
        named[names.pop()] = node_rows
    assert sorted(len(r) for r in by_node.values()) == [1, 1, 2, 2, 4, 8]
    (none,) = named["no-gpus"]
    assert none["problems"] == [] and none["notes"] == ["Ray counts no GPU on this node: nothing to check"]

    # the shuffled node: Ray's id is an entry of the node's list, i.e. the physical GPU
    for row in named["shuffled"]:
        (rid,) = row["ray_gpu_ids"]
        phys = int(rid)
        assert row["env"]["CUDA_VISIBLE_DEVICES"] == rid
        assert (row["gpu"]["pci_bus_id"], row["gpu"]["uuid"]) == (bus(phys), uuid("shuffled", phys))
        assert row["numa_nodes"] == [phys // 4] and row["affinity"] == [CPUS[phys // 4]], row
        assert row["gpu"]["agreed"] == ["pci", "cvd"] and row["status"] == "ok" and row["problems"] == []
    assert sorted(int(r["ray_gpu_ids"][0]) for r in named["shuffled"]) == list(range(8))

    # the device-limited node: Ray counts the 2 GPUs it may open, numbered 0 and 1: physical GPUs 2 and 5
    assert sorted(r["gpu"]["pci_bus_id"] for r in named["slurm"]) == [bus(2), bus(5)]
    for row in named["slurm"]:
        phys = 2 if row["ray_gpu_ids"] == ["0"] else 5
        assert row["gpu"]["uuid"] == uuid("slurm", phys) and row["gpu"]["nvml_index"] == int(row["ray_gpu_ids"][0])
        assert row["affinity"] == [CPUS[phys // 4]] and row["status"] == "ok", row

    # the VM: no locality, nothing to bind to; the worker keeps both CPUs, and that is not a problem
    for row in named["vm"]:
        assert row["numa_nodes"] == [] and row["affinity"] == sorted(CPUS) and row["status"] == "ok"
        assert any("no NUMA node" in n for n in row["notes"])

    # the broken node: a plugin of priority 150 names GPU 0 for GPU 1's worker.  cvd disagrees, so the driver is
    # asked, and its answer is final (issue 19): the worker is bound next to its own GPU, and the check still says
    # that a strategy disagreed, naming both sides
    good, bad = sorted(named["broken"], key=lambda r: r["ray_gpu_ids"])
    assert good["status"] == "ok" and good["affinity"] == [CPUS[0]]
    assert bad["ray_gpu_ids"] == ["1"] and bad["status"] == "disagree", bad
    assert bad["gpu"]["driver_pci_bus_id"] == bus(1) and bad["gpu"]["strategy"] == "pci", bad
    assert bad["gpu"]["disagreed"] == ["liar"], bad
    assert bad["affinity"] == [CPUS[1]], bad  # next to the GPU the driver named, not the plugin's
    assert any("strategies disagree" in p for p in bad["problems"]), bad
    assert not any("off its GPU's node" in p for p in bad["problems"]), bad

    # the node without gpuaffinity: its row says so, with no crash
    assert "not-installed" in named, {k: [(r["status"], r.get("problems")) for r in v] for k, v in named.items()}
    (bare,) = named["not-installed"]
    assert bare["problems"] == ["the worker could not start: Ray's worker_process_setup_hook failed "
                                "(ModuleNotFoundError: No module named 'gpuaffinity'); is gpuaffinity installed on "
                                "this node?"]

    bad_rows = [r for r in rows if r["status"] not in ("ok", "no-gpus")]
    assert sorted(r["status"] for r in bad_rows) == ["disagree", "not-installed"]


@pytest.mark.slow
def test_the_table_marks_each_problem_and_says_how_many(cluster):
    proc = run_check(cluster)
    assert proc.returncode == 4
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "HOST", "RAY"]
    assert sum(" ok" in line for line in lines[1:19]) == 15
    assert sum(line.rstrip().endswith(" no-gpus") for line in lines) == 1
    assert sum(line.rstrip().endswith("DISAGREE") for line in lines) == 1
    assert sum(line.rstrip().endswith("NOT-INSTALLED") for line in lines) == 1
    assert lines[-1].startswith("6 node(s), 17 GPU worker(s) probed in ") and lines[-1].endswith(": 2 with a problem")
    assert f"{bus(1)}: PROBLEM: gpuaffinity: strategies disagree on CUDA device 0" in proc.stdout
    (bad,) = [line.split() for line in lines if line.rstrip().endswith("DISAGREE")]
    # the GPU and UUID columns are the driver's GPU; BY names who said otherwise
    assert bad[5:7] == [bus(1), uuid("broken", 1)[:12]] and bad[-4:-1] == ["pci=cvd", "vs", "liar"]
    assert "(raylet)" not in proc.stdout  # Ray's own messages stay off the report


@pytest.mark.slow
def test_without_the_binding_every_worker_with_a_node_is_unbound(cluster):
    """The same cluster, probes without the setup hook: what a Ray worker gets by default."""
    proc = run_check(cluster, "--json", "--runtime-env", "{}")
    assert proc.returncode == 4
    rows = json.loads(proc.stdout)["rows"]
    with_node = [r for r in rows if r.get("numa_nodes")]
    assert len(with_node) == 12 and all(r["status"] == "unbound" for r in with_node if node_of(r) != "broken"), \
        [(r["status"], r["problems"]) for r in with_node]
    assert all(r["affinity"] == sorted(CPUS) for r in with_node)
    assert all(p.endswith("the setup hook did not run in this worker") for r in with_node for p in r["problems"]
               if p.startswith("runs on"))
    (bare,) = [r for r in rows if r["status"] == "not-installed"]  # the probe itself runs there and says so
    assert bare["problems"] == ["gpuaffinity is not importable in this node's Ray workers (No module named "
                                "'gpuaffinity'): install it on the node"]


HOLD = r"""
import sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
(node,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU") == 1]


@ray.remote(num_gpus=1, num_cpus=0)
class Holder:
    def ping(self):
        return 1


h = Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
ray.get(h.ping.remote())
print(node, flush=True)
sys.stdin.read()  # holds the node's only GPU until the test closes stdin
"""


@pytest.mark.slow
def test_a_probe_that_cannot_be_placed_gets_a_timeout_row(cluster):
    """Another job holds the only GPU of the 1-GPU node: that row times out, the others still answer."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, cluster.address], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    try:
        node = holder.stdout.readline().strip()
        assert node, "the holder did not start"
        # 40 s: the other 16 probes start their workers meanwhile, which takes 20 s and more on 2 loaded cores
        proc = run_check(cluster, "--json", "--timeout", "40")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert proc.returncode == 4
    rows = json.loads(proc.stdout)["rows"]
    (held,) = [r for r in rows if r["node_id"] == node]
    assert held["status"] == "timeout" and held["problems"][0].startswith("no answer in 40 s: the probe was not placed")
    assert sum(r["status"] == "ok" for r in rows) == 15, [(r["status"], r["problems"]) for r in rows]  # the rest


RACE = """
import sys
import gpuaffinity.ray_check as rc
from gpuaffinity.cli import main

real, bare, other = rc._gather, sys.argv[1], sys.argv[2]


def racy(ray, refs, deadline, progress):
    \"\"\"Ray's answers, as a loaded cluster may give them: the worker that died in the setup hook reported as a
    bare death (or no answer), one good worker's answer lost (no answer)\"\"\"
    answers = real(ray, refs, deadline, progress)
    lost = False
    for i, a in enumerate(answers):
        if isinstance(a, str) and "setup_hook failed" in a:
            answers[i] = None if bare == "silent" else (
                "the probe failed: ActorDiedError: The actor died unexpectedly before finishing this task.")
        elif isinstance(a, dict) and a.get("env", {}).get("CUDA_VISIBLE_DEVICES") == other and not lost:
            answers[i], lost = (None if bare == "died" else "the probe failed: ActorDiedError: gone"), True
    return answers


rc._gather = racy
raise SystemExit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("bare", ["died", "silent"])
def test_a_worker_that_died_in_the_hook_is_named_even_where_ray_does_not_say_so(cluster, bare):
    """Where Ray notices a worker that died in the setup hook by its closed connection, the probe's error is a bare
    "actor died" (or, where the actor is placed again after each death, no answer at all): the row still says that
    gpuaffinity is missing there, from the exit the GCS recorded for that worker.  A row of another node that got
    no answer or died the same way keeps its own problem: that node's workers did not die in the hook."""
    proc = subprocess.run([sys.executable, "-c", RACE, bare, "5", "ray-check", "--address", cluster.address,
                           "--memory", "none", "--json", "--timeout", "60"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 4, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    (missing,) = [r for r in rows if r["status"] == "not-installed"]
    assert missing["problems"] == ["the worker could not start: Ray's worker_process_setup_hook failed "
                                   "(ModuleNotFoundError: No module named 'gpuaffinity'); is gpuaffinity installed "
                                   "on this node?"], missing
    assert "gpu" not in missing and "pid" not in missing  # nothing but the reason: no probe answered there
    (lost,) = [r for r in rows if r["status"] in ("timeout", "error")]
    assert lost["status"] == ("timeout" if bare == "died" else "error"), lost
    assert lost["problems"][0].startswith("no answer in 60 s" if bare == "died" else
                                          "the probe failed: ActorDiedError: gone"), lost
    assert sum(r["status"] == "ok" for r in rows) == 14 and sum(r["status"] == "disagree" for r in rows) == 1


@pytest.mark.slow
def test_errors_are_one_line_and_no_traceback(cluster, tmp_path):
    cases = [(["--address", "127.0.0.1:1"], 1, "gpuaffinity: no Ray cluster answers at "),
             (["--address", "no port"], 1, "gpuaffinity: no Ray cluster found for address 'no port': "),
             (["--address", cluster.address, "--runtime-env", "{"], 2,
              "gpuaffinity ray-check: --runtime-env is not JSON: "),
             (["--address", cluster.address, "--runtime-env", "[]"], 2,
              "gpuaffinity ray-check: --runtime-env must be a JSON object"),
             (["--address", cluster.address, "--timeout", "nan"], 2,
              "gpuaffinity ray-check: --timeout nan s: give a number"),
             (["--address", cluster.address, "--mode", "nod"], 2,
              "gpuaffinity ray-check: argument --mode: invalid choice")]
    for args, status, start in cases:
        proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", *args], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
        assert (proc.returncode, proc.stdout) == (status, ""), (args, proc.stderr)
        assert proc.stderr.startswith(start) and proc.stderr.count("\n") == 1, (args, proc.stderr)


@pytest.mark.slow
def test_the_api_refuses_a_process_already_connected_to_ray(cluster):
    code = ("import ray, sys\nfrom gpuaffinity.ray_check import check\nfrom gpuaffinity import GpuAffinityError\n"
            "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
            "try:\n    check(sys.argv[1])\nexcept GpuAffinityError as e:\n    print(e)\n"
            "print(ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", code, cluster.address], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.stdout.splitlines() == ["this process is already connected to Ray: run the check in a process of its "
                                        "own (`gpuaffinity ray-check`, or check() before ray.init)", "True"]


@pytest.mark.slow
def test_a_closed_cluster_leaves_no_process_and_no_address_behind(tmp_path):
    """Found while testing: a head started in /tmp/ray left its address there, so a later plain ray.init()
    tried to join the dead cluster; and Ray's raylet and GCS sit in process groups of their own."""
    from gpuaffinity.sim.raycluster import RayCluster, _members

    topo = topology(tmp_path / "one.toml", [0])
    before = os.path.exists("/tmp/ray/ray_current_cluster") and open("/tmp/ray/ray_current_cluster").read()
    with RayCluster() as c:
        c.add_node(topo)
        sessions = {p.pid for p in c.nodes}
        assert len(_members(sessions)) > 3  # sim run, ray start, GCS, raylet, agents...
        logs = c._logs
    assert _members(sessions, living=True) == []
    after = os.path.exists("/tmp/ray/ray_current_cluster") and open("/tmp/ray/ray_current_cluster").read()
    assert after == before and not logs.exists()


def test_judging_a_row_names_the_reason():
    from gpuaffinity.ray_check import judge

    assert judge(probed(), "node", "bind", 60)["status"] == "ok"
    # the hook could not set the memory policy: the kernel's reason comes with the row
    failed = "set_mempolicy(bind, node(s) 0) failed: EINVAL: the kernel has no such NUMA node"
    row = judge(probed(memory={"policy": "default", "nodes": []},
                       hook={"set_up": True, "said": [], "pci_bus_id": "0000:10:00.0", "failures": [failed]}),
                "node", "bind", 60)
    assert (row["status"], row["problems"]) == ("unbound", [f"memory policy is the default, not bind to its GPU's "
                                                            f"node 0: {failed}"])
    assert judge(probed(memory={"policy": "default", "nodes": []}), "node", "none", 60)["status"] == "ok"
    # no hook in the worker: every CPU, and the row says why
    row = judge(probed(affinity=list(range(8)), hook={"set_up": False, "said": [], "pci_bus_id": None,
                                                      "failures": []}), "node", "none", 60)
    assert row["problems"] == ["runs on CPUs 0-7, not bound to its GPU's node 0 (CPUs 0-3): the setup hook did not "
                               "run in this worker"]
    # bound, but elsewhere
    row = judge(probed(affinity=[4, 5], memory={"policy": "bind", "nodes": [1]}), "node", "bind", 60)
    assert row["status"] == "off-node" and len(row["problems"]) == 2
    # socket mode: the socket's CPUs are the region, memory on another node of it is not off-node
    row = judge(probed(affinity=[0, 1, 2, 3, 4, 5], bind_cpus="0-5", memory={"policy": "bind", "nodes": [1]},
                       memory_nodes=[0, 1]), "socket", "bind", 60)
    assert row["status"] == "ok"
    # no answer at all
    row = judge({"node_id": "b" * 56, "error": None}, "node", "bind", 7.5)
    assert row["status"] == "timeout" and row["problems"][0].startswith("no answer in 7.5 s")


def test_two_workers_on_one_gpu_are_both_marked():
    from gpuaffinity.ray_check import _duplicates, judge

    rows = [judge(probed(), "node", "none", 60), judge(probed(ray_gpu_ids=["1"]), "node", "none", 60),
            judge(probed(node_id="c" * 56), "node", "none", 60)]
    _duplicates(rows)
    assert [r["status"] for r in rows] == ["duplicate", "duplicate", "ok"]  # another node's GPU is another GPU
    assert rows[0]["problems"] == rows[1]["problems"] == [
        "two workers of this node resolve to GPU 0000:10:00.0 (Ray ids ['0'] and ['1']): Ray's GPU ids and "
        "CUDA_VISIBLE_DEVICES do not match"]


def test_a_nodes_rows_follow_rays_gpu_ids_whatever_gpu_each_probe_was_given():
    """Ray hands each probe whichever GPU is free when it starts, so the answers come in any order; the table
    lists a node's GPUs by Ray's ids (10 after 9), nodes in the order listed, a failed probe after its node's
    others. (The docs' recipe once printed GPU 1's row first.)"""
    from gpuaffinity.ray_check import _in_order, judge

    b, c = "b" * 56, "c" * 56
    rows = [judge(probed(node_id=b, ray_gpu_ids=[i]), "node", "none", 60) for i in ("10", "1", "9")]
    rows += [judge({"node_id": b, "host": "h", "ip": "192.0.2.3", "error": "RayActorError: died"}, "node", "none", 60)]
    rows += [judge(probed(node_id=c, ray_gpu_ids=["0"]), "node", "none", 60)]
    rows.insert(1, judge(probed(node_id=c, ray_gpu_ids=["2"]), "node", "none", 60))
    _in_order(rows)
    assert [(r["node_id"][0], r.get("ray_gpu_ids")) for r in rows] == [
        ("b", ["1"]), ("b", ["9"]), ("b", ["10"]), ("b", None), ("c", ["0"]), ("c", ["2"])]
    # nodes in the order listed (a node without GPUs among them, though its row was made first), whatever order
    # the rows came in
    none = {"node_id": c, "status": "no-gpus"}
    listed = [dict(r) for r in rows] + [none]
    listed.insert(0, listed.pop())
    _in_order(listed, [c, b])
    assert [(r["node_id"][0], r.get("ray_gpu_ids")) for r in listed] == [
        ("c", ["0"]), ("c", ["2"]), ("c", None), ("b", ["1"]), ("b", ["9"]), ("b", ["10"]), ("b", None)]
    # ids and nodes of another shape (a probe of another version, a forged answer) are ordered, not a crash: a
    # number past int()'s 4300 digits, a node id that is no string (last: no listed node is it)
    odd = [{"node_id": b, "ray_gpu_ids": v} for v in (["x"], "3", [2], ["²"], ["1" * 5000], ["1"])]
    odd.insert(0, {"node_id": [b], "ray_gpu_ids": ["0"]})
    _in_order(odd, [b])
    assert [r["ray_gpu_ids"] for r in odd] == [["1"], [2], ["1" * 5000], ["x"], ["²"], "3", ["0"]]
    from gpuaffinity.ray_check import Report, table

    shown = table(Report([judge(probed(ray_gpu_ids=[2, None]), "node", "none", 60),
                          judge(probed(ray_gpu_ids="3"), "node", "none", 60)], {}, 0))
    assert [row[2] for row in shown[1:]] == ["2,None", "3"]


def test_a_probes_failure_is_its_first_line_cut_to_300_characters():
    """What a row says of a probe that raised: the exception's type and the first line of its text, 300
    characters at most (Ray's errors carry whole tracebacks); a failed setup hook names the hook's own error."""
    from gpuaffinity.ray_check import _why

    assert _why(RuntimeError("x" * 400 + "\nsecond line")) == "the probe failed: RuntimeError: " + "x" * 300
    assert _why(RuntimeError("")) == "the probe failed: RuntimeError: "
    hook = "Traceback (most recent call last):\n  in setup hook\nValueError: " + "v" * 400
    assert _why(RuntimeError(hook)) == ("the worker could not start: Ray's worker_process_setup_hook failed "
                                        f"(ValueError: {'v' * 288})")


FULL = os.environ.get("GPUAFFINITY_TEST_FULL") == "1"


@pytest.mark.skipif(not FULL, reason="the full variant: GPUAFFINITY_TEST_FULL=1 (about 140 s on 2 cores)")
@pytest.mark.parametrize("variant", ["noset", "socket"])
@pytest.mark.slow
def test_full_four_shuffled_nodes_of_eight(tmp_path, variant):
    """The full local variant: 4 nodes of 8 GPUs, each started with its own order of CUDA_VISIBLE_DEVICES;
    under NOSET (every worker sees the node's whole list and finds its own GPU from Ray's id), and in socket
    mode.  Every one of the 32 rows must be the machine's truth and bound next to its GPU."""
    from gpuaffinity.sim.raycluster import RayCluster

    orders = [SHUFFLE, "7,6,5,4,3,2,1,0", "0,1,2,3,4,5,6,7", "4,5,6,7,0,1,2,3"]
    topo = topology(tmp_path / "shuffled.toml", [0, 0, 0, 0, 1, 1, 1, 1])
    hook = {"worker_process_setup_hook": "gpuaffinity.ray_worker.setup",
            "env_vars": {"GPUAFFINITY_RAY_MEMORY": "none", "GPUAFFINITY_RAY_MODE": "node"}}
    args = ["--json"]
    if variant == "noset":
        hook["env_vars"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
        args += ["--runtime-env", json.dumps(hook)]
    else:
        args += ["--mode", "socket"]
    with RayCluster() as c:
        for order in orders:
            c.add_node(topo, env={"CUDA_VISIBLE_DEVICES": order})
        proc = run_check(c, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["rows"]
    assert len(rows) == 32 and all(r["status"] == "ok" for r in rows)
    by_node: dict[str, list] = {}
    for r in rows:
        by_node.setdefault(r["node_id"], []).append(r)
    for node_rows in by_node.values():
        cvd = {r["env"]["CUDA_VISIBLE_DEVICES"] for r in node_rows}
        if variant == "noset":
            (node_cvd,) = cvd  # left as the node started with it, in every worker
            assert node_cvd in orders
        assert sorted(int(r["ray_gpu_ids"][0]) for r in node_rows) == list(range(8))
        for r in node_rows:
            phys = int(r["ray_gpu_ids"][0])  # Ray's id is an entry of the node's list: the physical GPU
            assert (r["gpu"]["pci_bus_id"], r["gpu"]["uuid"]) == (bus(phys), uuid("shuffled", phys))
            assert r["numa_nodes"] == [phys // 4] and r["affinity"] == [CPUS[phys // 4]], r


@pytest.mark.parametrize("status", ["unbound", "off-node", "threads-drifted", "remote-memory"])
def test_a_cluster_whose_only_problem_is_one_status_fails_the_check(status):
    """Every problem status fails the report (exit 4) and is counted in its last line, not only the worst ones."""
    from gpuaffinity.ray_check import Report, judge, render

    hooked = {"set_up": True, "said": [], "pci_bus_id": "0000:10:00.0", "failures": []}
    rows = {
        "unbound": probed(affinity=list(range(8)), hook={**hooked, "set_up": False}),
        "off-node": probed(affinity=[4, 5]),
        "threads-drifted": probed(thread_list=[(100, "main", "0-3"), (101, "pt_nccl_watchdg", "4-7")], pid=100),
        "remote-memory": probed(pages={"nodes": {"0": 1 << 20, "1": 1 << 30}, "file_nodes": {}}),
    }
    row = judge(rows[status], "node", "none", 60)
    assert row["status"] == status, row
    report = Report([row], {}, 1.0)
    assert report.ok is False
    assert render(report).splitlines()[-1].endswith(": 1 with a problem")
    fine = Report([judge(probed(), "node", "none", 60)], {}, 1.0)
    assert fine.ok is True and render(fine).splitlines()[-1].endswith("every worker bound next to its GPU")


def test_the_table_has_one_column_per_fact_and_one_line_per_gpu():
    from gpuaffinity.ray_check import Report, judge, table
    from helpers.ray_rows import probed

    rows = table(Report([judge(probed(), "node", "bind", 60)], {}, 0.1))
    assert rows[0] == ("NODE", "HOST", "RAY", "CVD", "GPU", "UUID", "NUMA", "GPU CPUS", "AFFINITY", "THREADS", "MEMORY",
                       "LOCAL", "BY", "STATUS")
    assert len(rows) == 2
    assert rows[1][:9] == ("aaaaaaaa", "h 10.0.0.1", "0", "0", "0000:10:00.0", "GPU-1", "0", "0-3", "0-3")
    assert rows[1][10:] == ("bind 0", "-", "pci=cvd", "ok")
