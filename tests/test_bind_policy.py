"""Issue 19, items 3, 5 and 6: the default memory policy spills instead of killing, the policy in effect is
recorded (a kernel without MPOL_PREFERRED_MANY included), ``exclusive`` says loudly (or refuses) when GPUs share
CPUs, and every field name means one thing across ``resolve --json``, ``plan()``, ``bind --dry-run`` and the
Ray probe.

Binding is real here (this machine's CPUs, node 0's memory), in child processes; the simulator gives the
topologies.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import child_env
from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.numa import bind
from gpuaffinity.numa.bind import BindRecord
from helpers.forked import forked, value
from test_numa_inprocess import _seccomp_or_skip, _under

CPUS = sorted(os.sched_getaffinity(0))
ONE_NODE = not os.path.exists("/sys/devices/system/node/node1")
READBACK = ("import json, os, gpuaffinity.numa.bind as b; mode, nodes = b.get_mempolicy();"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), mode, sorted(nodes)]))")


def gpuaffinity_in(topology, *args, env=None, timeout=120):
    """``gpuaffinity ARGS`` on the simulated machine ``topology`` (a preset name or a file)."""
    return subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topology), "--", sys.executable,
                           "-m", "gpuaffinity", *args], capture_output=True, text=True, env=env, timeout=timeout)


def machine_here(tmp_path, gpus: int):
    """One node of this machine's first two CPUs, with ``gpus`` GPUs on it (PCI 0000:01:00.0, 0000:02:00.0...)."""
    path = tmp_path / f"here{gpus}.toml"
    path.write_text(f'name = "here"\n[[numa_node]]\nid = 0\ncpus = "{format_cpulist(CPUS[:2])}"\n' + "".join(
        f'[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-00000000000{i}"\npci_bus_id = "0000:0{i + 1}:00.0"\n'
        f'name = "NVIDIA H100"\nnuma_node = 0\n' for i in range(gpus)))
    return path


# ---- item 3: preferred by default ---------------------------------------------------------------------------


def test_the_default_memory_policy_is_preferred_everywhere(tmp_path):
    """Before: MPOL_BIND (2), which gets a worker OOM-killed where it would have spilled to another node."""
    out = gpuaffinity_in(machine_here(tmp_path, 1), "bind", "0", "--", sys.executable, "-c", READBACK)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[1:] == [bind.MPOL_PREFERRED, [0]]
    # --memory bind is still there, asked for by name
    out = gpuaffinity_in(machine_here(tmp_path, 1), "bind", "0", "--memory", "bind", "--", sys.executable, "-c",
                         READBACK)
    assert json.loads(out.stdout)[1:] == [bind.MPOL_BIND, [0]]
    import inspect

    from gpuaffinity import placement, ray_check
    from gpuaffinity.cli import build_parser
    assert [inspect.signature(f).parameters["memory"].default for f in (placement.plan, placement.bind,
                                                                         ray_check.check)] == ["preferred"] * 3
    assert build_parser().parse_args(["ray-check"]).memory == "preferred"
    assert build_parser().parse_args(["bind", "0", "--dry-run"]).memory == "preferred"


RAY_DEFAULT = r"""
import json, os
import ray
from gpuaffinity import ray_worker
from gpuaffinity.numa.bind import get_mempolicy

os.environ.pop("GPUAFFINITY_RAY_MEMORY", None)
ray.get_gpu_ids = lambda: ["0"]  # Ray's answer for a task holding GPU 0; the binding itself is real
os.environ["CUDA_VISIBLE_DEVICES"] = "0"
ray_worker.setup()
rec = ray_worker.rebind()
print(json.dumps([rec.memory, rec.memory_policy, get_mempolicy()[0]]))
"""


def test_the_ray_hook_prefers_by_default(tmp_path):
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "GPUAFFINITY_RAY_MEMORY"}
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(machine_here(tmp_path, 1)), "--",
                           sys.executable, "-c", RAY_DEFAULT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["preferred", "MPOL_PREFERRED", bind.MPOL_PREFERRED]


# ---- the kernel policy in effect, and the fallback where MPOL_PREFERRED_MANY is missing --------------------------


def _apply_preferred(nodes):
    rec = BindRecord(0, "0000:01:00.0", "node", "preferred", tuple(nodes), frozenset(CPUS[:1]))
    planned = rec.memory_policy
    bind.apply(rec, "error")
    return [planned, rec.memory_policy, list(rec.memory_nodes), [[str(n), getattr(n, "kind", "info")]
                                                                 for n in rec.notes], list(bind.get_mempolicy())]


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_preferred_over_several_nodes_records_the_kernel_policy_and_its_fallback():
    """Before: set_mempolicy fell back to MPOL_PREFERRED on the first node without a word, and the record said
    memory 'preferred' over both nodes."""
    # this kernel has MPOL_PREFERRED_MANY (it takes node 1 of the mask and keeps node 0, the one it has)
    assert value(forked(_apply_preferred, [0, 1])) == [
        "MPOL_PREFERRED_MANY", "MPOL_PREFERRED_MANY", [0, 1], [], [bind.MPOL_PREFERRED_MANY, [0]]]
    # a kernel without it (before 5.15) refuses mode 5 with EINVAL: made so here with a seccomp filter
    out = _seccomp_or_skip(forked(_under, "set_mempolicy", errno.EINVAL, bind.MPOL_PREFERRED_MANY,
                                  _apply_preferred, [0, 1]))
    planned, in_effect, nodes, notes, kernel = value(out)
    assert (planned, in_effect, nodes, kernel) == ("MPOL_PREFERRED_MANY", "MPOL_PREFERRED", [0],
                                                   [bind.MPOL_PREFERRED, [0]])
    assert notes == [["this kernel has no MPOL_PREFERRED_MANY (Linux 5.15 added it): memory prefers node 0 alone "
                      "(MPOL_PREFERRED), not node(s) 0-1; it still spills to the other nodes when that one is full",
                      "attention"]]
    # one node: no fallback, nothing said
    assert value(forked(_apply_preferred, [0]))[:4] == ["MPOL_PREFERRED", "MPOL_PREFERRED", [0], []]


def _refused(nodes):
    rec = BindRecord(0, "0000:01:00.0", "node", "bind", tuple(nodes), frozenset(CPUS[:1]))
    bind.apply(rec, "warn")
    return [rec.memory_applied, rec.memory_policy, rec.summary(), list(bind.get_mempolicy())]


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_a_refused_memory_policy_records_the_policy_left_in_effect():
    """set_mempolicy(MPOL_BIND, node 1) is EINVAL here: the thread keeps its default policy, and the record says
    so rather than the policy it asked for."""
    applied, policy, summary, kernel = value(forked(_refused, [1]))
    assert (applied, policy, kernel) == (False, "MPOL_DEFAULT", [bind.MPOL_DEFAULT, []])
    assert summary == f"GPU 0000:01:00.0, mode node: CPUs {CPUS[0]}, memory bind node(s) 1 (not applied)"


def test_policy_names_show_the_mode_flags():
    """Before: the flags were dropped (MPOL_PREFERRED_MANY for mode 5 | MPOL_F_STATIC_NODES) and mode 6, Linux
    6.9's MPOL_WEIGHTED_INTERLEAVE, was 'mode 6'."""
    assert bind.policy_name(bind.MPOL_PREFERRED_MANY | 1 << 15) == "MPOL_PREFERRED_MANY|MPOL_F_STATIC_NODES"
    assert bind.policy_name(bind.MPOL_INTERLEAVE | 0x4000) == "MPOL_INTERLEAVE|MPOL_F_RELATIVE_NODES"
    assert bind.policy_name(bind.MPOL_BIND | 0x2000) == "MPOL_BIND|MPOL_F_NUMA_BALANCING"
    assert bind.policy_name(6) == "MPOL_WEIGHTED_INTERLEAVE" and bind.policy_name(1 | 0x100) == "MPOL_PREFERRED|0x100"
    assert bind.policy_name(bind.MPOL_BIND) == "MPOL_BIND" and bind.policy_name(9) == "mode 9"
    assert BindRecord(0, "x", "node", "none", (0,), frozenset()).memory_policy == "none"
    assert BindRecord(0, "x", "node", "bind", (0, 1), frozenset()).memory_policy == "MPOL_BIND"


def test_doctor_shows_the_affinity_and_memory_policy_in_effect(tmp_path):
    """Before: doctor listed the allowed CPUs only, never the memory policy this process runs with."""
    topo = machine_here(tmp_path, 1)
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", sys.executable, "-m",
                          "gpuaffinity", "bind", "0", "--", sys.executable, "-m", "gpuaffinity", "doctor"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "this process is bound to" in x)
    assert line.split("this process is bound to", 1)[1].strip() == (
        f"CPUs {format_cpulist(CPUS[:2])}; memory policy MPOL_PREFERRED node(s) 0")


# ---- item 5: exclusive is exclusive, or says so ---------------------------------------------------------------


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_exclusive_with_fewer_cores_than_gpus_warns_names_the_gpus_and_refuses_under_error(tmp_path):
    """Three GPUs, two CPUs: GPU 1 and GPU 3 get the same CPU.  Before: an attention note only, exit 0 under
    --on-failure error, and nothing in the record said which GPUs share."""
    topo = machine_here(tmp_path, 3)
    shared = "0000:03:00.0"
    ran = gpuaffinity_in(topo, "bind", "0", "--mode", "exclusive", "--", sys.executable, "-c", READBACK)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)[0] == CPUS[:1]
    warning = [x for x in ran.stderr.splitlines() if x.startswith("gpuaffinity: warning:")]
    assert warning == [f"gpuaffinity: warning: exclusive is not exclusive: GPU 0000:01:00.0 gets CPUs {CPUS[0]}, as "
                       f"GPU(s) {shared} do: their node(s) 0 have fewer cores allowed here than GPUs"]
    for how in (["--on-failure", "error"], []):
        env = dict(os.environ, GPUAFFINITY_ON_FAILURE="error") if not how else None
        refused = gpuaffinity_in(topo, "bind", "0", "--mode", "exclusive", *how, "--", sys.executable, "-c",
                                 "print('ran')", env=env)
        assert refused.returncode == 1 and "ran" not in refused.stdout, (how, refused.stdout, refused.stderr)
        assert refused.stderr.strip().splitlines()[-1] == (
            f"gpuaffinity: exclusive is not exclusive: GPU 0000:01:00.0 gets CPUs {CPUS[0]}, as GPU(s) {shared} do: "
            "their node(s) 0 have fewer cores allowed here than GPUs (nothing was applied)")
    dry = gpuaffinity_in(topo, "bind", "0", "--mode", "exclusive", "--dry-run")
    assert f"  shared_with {shared}: exclusive is not exclusive" in dry.stdout, dry.stdout
    # the GPU in the middle has a CPU of its own: no warning, and it binds under error
    alone = gpuaffinity_in(topo, "bind", "1", "--mode", "exclusive", "--on-failure", "error", "--", sys.executable,
                           "-c", READBACK)
    assert alone.returncode == 0 and json.loads(alone.stdout)[0] == CPUS[1:2], alone.stderr
    assert "warning" not in alone.stderr


PLAN_SHARED = r"""
import json, warnings, gpuaffinity
from gpuaffinity.core.errors import BindError, BindWarning
rec = gpuaffinity.plan(0, mode="exclusive")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        gpuaffinity.bind(2, mode="exclusive", on_failure="error")
        refused = None
    except BindError as e:
        refused = str(e)
print(json.dumps([list(rec.shared_with), refused, [w.category.__name__ for w in caught]]))
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_plan_lists_the_gpus_sharing_the_share(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(machine_here(tmp_path, 3)), "--",
                           sys.executable, "-c", PLAN_SHARED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shared, refused, caught = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shared == ["0000:03:00.0"]
    assert refused == (f"exclusive is not exclusive: GPU 0000:03:00.0 gets CPUs {CPUS[0]}, as GPU(s) 0000:01:00.0 "
                       "do: their node(s) 0 have fewer cores allowed here than GPUs (nothing was applied)")
    assert caught == []  # refused, not warned


# ---- item 6: one meaning per field name -----------------------------------------------------------------------

FIELDS = r"""
import json, subprocess, sys, gpuaffinity
resolved = json.loads(subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--json", "2"],
                                     capture_output=True, text=True, check=True).stdout)[0]
rec = gpuaffinity.plan(2, mode="socket")
dry = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "2", "--mode", "socket", "--dry-run"],
                     capture_output=True, text=True, check=True).stdout
print(json.dumps([resolved, {"numa_nodes": list(rec.numa_nodes), "cpus": sorted(rec.cpus),
                             "bind_cpus": sorted(rec.bind_cpus), "memory_nodes": list(rec.memory_nodes),
                             "memory_policy": rec.memory_policy}, dry]))
"""


def test_one_name_one_value_across_resolve_plan_and_dry_run(sim_factory):
    """Socket mode on a sub-NUMA-clustered Xeon: the GPU sits on node 1, its socket holds nodes 0 and 1.
    Before: plan()'s numa_nodes were (0, 1) and its cpus the socket's, where resolve --json said [1] and node
    1's CPUs."""
    machine = sim_factory("xeon-snc2")
    proc = subprocess.run([sys.executable, "-c", FIELDS], env=child_env(machine), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved, planned, dry = json.loads(proc.stdout.strip().splitlines()[-1])
    shown = dict(re.findall(r"(\w+) ([^;\n]+)", "\n".join(x for x in dry.splitlines() if x.startswith("  ")
                                                         and not x.startswith("  note"))))
    assert resolved["numa_nodes"] == planned["numa_nodes"] == [1]
    assert resolved["cpus"] == format_cpulist(planned["cpus"]) == shown["cpus"] == "20-39,100-119"
    assert shown["numa_nodes"] == "1"
    # the binding's own fields: the socket's CPUs and nodes, under their own names
    assert format_cpulist(planned["bind_cpus"]) == shown["bind_cpus"] == "0-39,80-119"
    assert planned["memory_nodes"] == [0, 1] and shown["memory_nodes"] == "0-1"
    assert planned["memory_policy"] == shown["memory_policy"] == "MPOL_PREFERRED_MANY"


PROBE = r"""
import json, os, warnings
import gpuaffinity
from gpuaffinity import _ray_probe, ray_worker
from gpuaffinity.numa.query import allowed_cpus
ray_worker._original_pool = allowed_cpus()  # what the setup hook reads, before the task binds the worker
warnings.simplefilter("ignore")
gpuaffinity.bind(0, mode="exclusive")
out = {"affinity": sorted(os.sched_getaffinity(0)), "ray_gpu_ids": ["0"], "node_id": "n" * 56, "pid": 1,
       "error": None}
_ray_probe._facts(out, "exclusive")
print(json.dumps({k: out[k] for k in ("numa_nodes", "cpus", "bind_cpus", "gpu_cpus", "memory_nodes", "shared_with",
                                      "memory")}))
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_the_ray_probe_reports_the_same_names(tmp_path):
    """The probe's row: numa_nodes and cpus the GPU's (as resolve --json), bind_cpus the mode's share (before:
    gpu_cpus), the GPUs sharing it, and the kernel's name of the memory policy in effect."""
    topo = machine_here(tmp_path, 3)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", "env",
                           "CUDA_VISIBLE_DEVICES=0", sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # gpu_cpus, the name before issue 19, stays as a deprecated alias of bind_cpus (docs/ray.md)
    assert got == {"numa_nodes": [0], "cpus": format_cpulist(CPUS[:2]), "bind_cpus": str(CPUS[0]),
                   "gpu_cpus": str(CPUS[0]), "memory_nodes": [0], "shared_with": ["0000:03:00.0"],
                   "memory": {"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"}}


def test_ray_check_judges_preferred_over_several_nodes_and_its_fallback():
    from gpuaffinity.ray_check import judge
    from helpers.ray_rows import probed

    two = {"numa_nodes": [0, 1], "memory_nodes": [0, 1], "cpus": "0-7", "bind_cpus": "0-7",
           "affinity": list(range(8))}
    many = judge(probed(**two, memory={"policy": "preferred", "nodes": [0, 1], "kernel": "MPOL_PREFERRED_MANY"}),
                 "node", "preferred", 60)
    assert (many["status"], many["notes"]) == ("ok", [])
    fallback = judge(probed(**two, memory={"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"}),
                     "node", "preferred", 60)
    assert fallback["status"] == "ok" and fallback["notes"] == [
        "memory prefers node(s) 0 alone (MPOL_PREFERRED), not all of 0-1: this kernel has no MPOL_PREFERRED_MANY "
        "(Linux 5.15 added it); it still spills to the other nodes"]
    asked_bind = judge(probed(**two, memory={"policy": "preferred", "nodes": [0, 1], "kernel": "MPOL_PREFERRED_MANY"}),
                       "node", "bind", 60)
    assert asked_bind["status"] == "unbound"


def test_ray_check_says_no_node_without_contradicting_the_locality_notes():
    """Before: 'numa_node = -1, no NVML affinity', beside a locality note saying NVML named node 0."""
    from gpuaffinity.ray_check import judge
    from helpers.ray_rows import probed

    row = judge(probed(numa_nodes=[], memory_nodes=[], bind_cpus="", affinity=list(range(8)),
                       memory={"policy": "default", "nodes": [], "kernel": "MPOL_DEFAULT"}), "node", "preferred", 60)
    assert row["status"] == "ok" and row["notes"] == [
        "the GPU has no NUMA node (its locality notes say why): nothing to bind to, the worker keeps all its CPUs"]


# ---- the review of issue 19: the launch helpers ---------------------------------------------------------------

LAUNCH = r"""
import json, subprocess, sys
import gpuaffinity.launch as launch
p = launch.popen(0, [sys.executable, "-c", sys.argv[1]], mode=sys.argv[2], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
out, err = p.communicate()
print(json.dumps([p.returncode, out, err]))
"""


def _launch(topology, mode, env=None):
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topology), "--", sys.executable,
                           "-c", LAUNCH, READBACK, mode], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_launch_helpers_prefer_by_default(tmp_path):
    """Before: gpuaffinity.launch passed --memory bind (MPOL_BIND), the OOM-killing policy the rest left."""
    import inspect

    from gpuaffinity import launch
    rc, out, err = _launch(machine_here(tmp_path, 1), "node")
    assert rc == 0, err
    assert json.loads(out)[1:] == [bind.MPOL_PREFERRED, [0]]
    assert [inspect.signature(f).parameters["memory"].default for f in (
        launch.bound_command, launch.popen, launch.spawn_process, launch.initializer)] == ["preferred"] * 4


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_the_launch_helpers_leave_the_failure_policy_to_the_environment(tmp_path):
    """Before: --on-failure warn was always passed, so GPUAFFINITY_ON_FAILURE=error ran the child bound anyway
    on a CPU shared with another GPU."""
    from gpuaffinity import launch
    topo = machine_here(tmp_path, 3)
    rc, out, err = _launch(topo, "exclusive", env=dict(os.environ, GPUAFFINITY_ON_FAILURE="error"))
    assert rc == 1 and out == "", (rc, out, err)
    assert "exclusive is not exclusive" in err and "(nothing was applied)" in err
    rc, out, err = _launch(topo, "exclusive", env={k: v for k, v in os.environ.items()
                                                    if k != "GPUAFFINITY_ON_FAILURE"})
    assert rc == 0 and json.loads(out)[0] == CPUS[:1] and "warning: exclusive is not exclusive" in err
    assert "--on-failure" not in launch.bound_command(0, ["true"])
    assert launch.bound_command(0, ["true"], on_failure="error")[-4:] == ["--on-failure", "error", "--", "true"]
    import inspect
    assert {inspect.signature(f).parameters["on_failure"].default for f in (
        launch.bound_command, launch.popen, launch.spawn_process, launch.initializer)} == {None}


def test_only_none_means_the_default_failure_policy():
    """Before: on_failure=5 crashed with TypeError (a slice of an int), and "" or 0 silently meant the default."""
    from gpuaffinity.core.errors import BindError
    from gpuaffinity.placement import failure_policy
    for bad in (5, "", 0, "ERROR", False, ["error"]):
        with pytest.raises(BindError, match=r"unknown failure policy .* \(from on_failure\): choose warn or error"):
            failure_policy(bad)
    assert failure_policy("error") == "error" and failure_policy("warn") == "warn"
    env = {k: v for k, v in os.environ.items() if k != "GPUAFFINITY_ON_FAILURE"}
    code = ("import json, gpuaffinity\nout = []\nfor v in (5, '', 0):\n    try:\n"
            "        gpuaffinity.bind(0, on_failure=v); out.append('bound')\n"
            "    except Exception as e:\n        out.append(type(e).__name__ + ': ' + str(e))\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "dgx-h100", "--", sys.executable, "-c",
                           code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "BindError: unknown failure policy 5 (int) (from on_failure): choose warn or error",
        "BindError: unknown failure policy '' (from on_failure): choose warn or error",
        "BindError: unknown failure policy 0 (int) (from on_failure): choose warn or error"]
    env["GPUAFFINITY_ON_FAILURE"] = ""  # an empty variable is an unset one
    assert subprocess.run(
        [sys.executable, "-c", "import gpuaffinity.placement as p; assert p.failure_policy(None) == 'warn'"],
        env=env).returncode == 0


# ---- the review: memory none has no nodes; the planned policy is derived, an unknown one refused ----------------


def test_memory_none_has_no_memory_nodes(sim_factory):
    """Before: `bind 0 --memory none --dry-run` said `memory none node(s) 0` and `memory_nodes 0`."""
    machine = sim_factory("dgx-h100")
    code = ("import json, gpuaffinity\nr = gpuaffinity.plan(0, memory='none')\n"
            "print(json.dumps([list(r.memory_nodes), r.memory_policy, r.summary()]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(machine), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    nodes, policy, summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (nodes, policy) == ([], "none")
    assert summary == "GPU 0000:1b:00.0, mode node: CPUs 0-55,112-167 (not applied), memory none"
    dry = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "0", "--memory", "none", "--dry-run"],
                         env=child_env(machine), capture_output=True, text=True, timeout=120).stdout
    assert dry.splitlines()[0] == "would bind: GPU 0000:1b:00.0, mode node: CPUs 0-55,112-167, memory none"
    assert "; memory none; memory_nodes none; memory_policy none" in dry
    # a record built with nodes under `none` (the Ray hook's union, old callers) holds none either
    rec = BindRecord(0, "x", "node", "none", (0,), frozenset({0}))
    assert rec.memory_nodes == () and "node(s)" not in rec.summary()


def test_an_unknown_memory_policy_is_refused_and_the_planned_policy_is_never_stale():
    """Before: BindRecord(..., "interleave", ...) planned MPOL_PREFERRED, and memory_policy kept the value of
    construction time after memory or memory_nodes changed."""
    from gpuaffinity.core.errors import BindError
    for bad in ("interleave", "Preferred", None, ["bind"]):
        with pytest.raises(BindError, match="unknown memory policy .*: choose one of preferred, bind, none"):
            BindRecord(0, "x", "node", bad, (0,), frozenset({0}))
    rec = BindRecord(0, "x", "node", "preferred", (0,), frozenset({0}))
    assert rec.memory_policy == rec.planned_policy == "MPOL_PREFERRED" and rec.policy_in_effect == ""
    rec.memory_nodes = (0, 1)
    assert rec.memory_policy == "MPOL_PREFERRED_MANY"
    rec.memory = "bind"
    assert rec.memory_policy == "MPOL_BIND"
    rec.memory = "interleave"
    with pytest.raises(BindError, match="unknown memory policy 'interleave'"):
        rec.memory_policy  # noqa: B018
    # once applied, the policy in effect (recorded apart) is what memory_policy says
    applied = BindRecord(0, "x", "node", "bind", (0,), frozenset({0}), policy_in_effect="MPOL_DEFAULT")
    assert (applied.memory_policy, applied.planned_policy) == ("MPOL_DEFAULT", "MPOL_BIND")


def _applied_record():
    rec = BindRecord(0, "0000:01:00.0", "node", "preferred", (0,), frozenset(CPUS[:1]))
    bind.apply(rec, "error")
    return [rec.policy_in_effect, rec.planned_policy, rec.memory_policy]


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_bind_records_the_policy_in_effect_apart():
    assert value(forked(_applied_record)) == ["MPOL_PREFERRED"] * 3


# ---- the review: llc with one cache group for the node; a GPU taking another node's CPUs ----------------------


@pytest.mark.parametrize("preset", ["xeon-snc2", "gb200-tray", "dgx-h100"])
def test_llc_with_one_cache_group_for_the_node_is_the_mode_not_a_failure(preset):
    """One L3 for the node (xeon-snc2, gb200-tray) and no cache files at all (dgx-h100) both give every GPU of
    the node its pool, silently and bound under error.  Before: the first two warned 'llc is not exclusive' and
    refused under --on-failure error, the third did not."""
    out = gpuaffinity_in(preset, "bind", "0", "--mode", "llc", "--on-failure", "error", "--", sys.executable, "-c",
                         "print('ran')")
    assert out.returncode == 0 and out.stdout == "ran\n", out.stderr
    assert "warning" not in out.stderr and "not exclusive" not in out.stderr
    dry = gpuaffinity_in(preset, "bind", "0", "--mode", "llc", "--dry-run").stdout
    assert "shared_with" not in dry, dry
    if preset != "dgx-h100":
        assert "note: one last-level cache domain spans the allowed CPUs of node(s) 0: all 2 GPUs there get it " \
               "whole" in dry, dry


def test_llc_dealing_partial_cache_domains_round_robin_still_warns_and_refuses():
    """irregular-2s under a cpuset of 8 cores of node 0: 2 L3 domains for its 3 GPUs; GPU 1 and GPU 3 share."""
    what = ("llc shares CPUs between GPUs: GPU 0000:11:00.0 gets CPUs 0-3,40-43, as GPU(s) 0000:13:00.0 do: their "
            "node(s) 0 have fewer last-level cache domains allowed here than GPUs")
    run = [sys.executable, "-m", "gpuaffinity", "sim", "run", "--cpuset", "0-7,40-47", "irregular-2s", "--",
           sys.executable, "-m", "gpuaffinity", "bind", "0", "--mode", "llc"]
    refused = subprocess.run([*run, "--on-failure", "error", "--", "echo", "ran"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == f"gpuaffinity: {what} (nothing was applied)"
    warned = subprocess.run([*run, "--", "echo", "ran"], capture_output=True, text=True, timeout=120)
    assert warned.stdout == "ran\n" and f"gpuaffinity: warning: {what}" in warned.stderr.splitlines()
    assert "is not exclusive" not in refused.stderr + warned.stderr


OVERLAP = r"""
import json, gpuaffinity
print(json.dumps({m: [list(gpuaffinity.plan(i, mode=m).shared_with) for i in (3, 4, 5, 6)]
                  for m in ("exclusive", "llc")}))
"""


def test_a_gpu_taking_another_nodes_cpus_overlaps_their_shares_loudly(sim_factory):
    """irregular-2s GPU 6 sits on node 4 (memory, no CPUs) and takes the CPUs of nodes 2 and 3, where GPUs 4 and
    5 have their shares.  Before: no shared_with on either side, and `bind 6 --mode exclusive --on-failure error`
    went ahead."""
    machine = sim_factory("irregular-2s")
    proc = subprocess.run([sys.executable, "-c", OVERLAP], env=child_env(machine), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    six, four, five = "0000:e1:00.0", "0000:a1:00.0", "0000:c1:00.0"
    for mode, shared in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        assert shared == [[], [six], [six], [four, five]], mode  # GPU 3 (node 1) is apart
    refused = gpuaffinity_in("irregular-2s", "bind", "6", "--mode", "exclusive", "--on-failure", "error", "--",
                             "echo", "ran")
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"gpuaffinity: exclusive is not exclusive: GPU {six} gets CPUs 20-35,60-69, overlapping the CPUs of GPU(s) "
        f"{four}, {five}: its node(s) 4 have no CPUs: it takes those of node(s) 2-3, whose GPUs split them "
        "without counting it (nothing was applied)")
    warned = gpuaffinity_in("irregular-2s", "bind", "4", "--mode", "exclusive", "--", "echo", "ran")
    assert warned.stdout == "ran\n" and (
        f"gpuaffinity: warning: exclusive is not exclusive: GPU {four} gets CPUs 20-29,60-69, overlapping the CPUs "
        f"of GPU(s) {six}: they take CPUs of node(s) 2 from a node without CPUs of its own, and no split counts "
        "both") in warned.stderr.splitlines(), warned.stderr


def test_shared_message_of_a_record_built_the_old_way():
    """Before: 'their node(s)  have' and 'as GPU(s)  do' from a record without numa_nodes or shared_with."""
    from gpuaffinity.placement import shared_message
    old = BindRecord(0, "0000:01:00.0", "node", "bind", (0,), frozenset({0, 1}), False, 0, False, [], [])
    assert (old.numa_nodes, old.cpus, old.bind_cpus) == ((), frozenset(), frozenset({0, 1}))
    assert shared_message(old) == "GPU 0000:01:00.0's node CPUs 0-1 are its own: no other GPU is given them"
    old.mode, old.shared_with = "exclusive", ("0000:02:00.0",)
    assert shared_message(old) == "exclusive is not exclusive: GPU 0000:01:00.0 gets CPUs 0-1, as GPU(s) " \
                                  "0000:02:00.0 do"
    old.numa_nodes, old.bind_cpus = (0,), frozenset()
    assert shared_message(old) == ("exclusive is not exclusive: GPU 0000:01:00.0 gets CPUs none, as GPU(s) "
                                   "0000:02:00.0 do: their node(s) 0 have fewer cores allowed here than GPUs")



FLAGGED = r"""
import ctypes, json, os
import gpuaffinity.numa.bind as b
set_nr, _ = b._syscall_numbers()
assert ctypes.CDLL(None, use_errno=True).syscall(set_nr, ctypes.c_int(b.MPOL_INTERLEAVE | 0x8000), b._nodemask([0]),
                                                  ctypes.c_ulong(1025)) == 0
from gpuaffinity import _ray_probe
out = {"affinity": sorted(os.sched_getaffinity(0)), "ray_gpu_ids": ["0"], "node_id": "n" * 56, "pid": 1,
       "error": None}
_ray_probe._facts(out, "node")
print(json.dumps(out["memory"]))
"""


def test_the_ray_probe_names_policies_from_the_one_table(tmp_path):
    """Before: _ray_probe kept a copy of the names (KERNEL_NAMES), without the flags or mode 6."""
    from gpuaffinity import _ray_probe
    assert not hasattr(_ray_probe, "KERNEL_NAMES") and not hasattr(_ray_probe, "POLICY_NAMES")
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(machine_here(tmp_path, 1)), "--",
                           "env", "CUDA_VISIBLE_DEVICES=0", sys.executable, "-c", FLAGGED], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "policy": "interleave", "nodes": [0], "kernel": "MPOL_INTERLEAVE|MPOL_F_STATIC_NODES"}
    # the table's owner stays out of `import gpuaffinity`
    light = subprocess.run([sys.executable, "-c", "import sys, gpuaffinity; print('gpuaffinity.numa.bind' in "
                            "sys.modules, 'ctypes' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert light.stdout.split() == ["False", "False"], light.stderr


def test_doctor_says_a_process_under_the_default_policy_is_not_bound(tmp_path):
    """Before: 'this process is bound to  CPUs …; memory policy MPOL_DEFAULT' for a process nothing bound."""
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(machine_here(tmp_path, 1)), "--",
                          sys.executable, "-m", "gpuaffinity", "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "this process is bound to" not in out.stdout
    line = next(x for x in out.stdout.splitlines() if "this process runs on" in x)
    assert line.split("this process runs on", 1)[1].strip() == (
        f"CPUs {format_cpulist(os.sched_getaffinity(0))}; memory not bound (MPOL_DEFAULT: pages go to the node it "
        "runs on)")


EXPLICIT = r"""
import json, warnings, gpuaffinity
from gpuaffinity.core.errors import BindError
warnings.simplefilter("ignore")
try:
    rec = gpuaffinity.bind(4, on_failure="error")   # node 1: this host's kernel has no memory there
    print(json.dumps({"raised": False, "failures": rec.failures}))
except BindError as e:
    print(json.dumps({"raised": True, "error": str(e)}))
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_an_explicit_on_failure_wins_over_the_environment(host8, sim_factory):
    """GPUAFFINITY_ON_FAILURE only stands in for an on_failure that was not given: bind(on_failure="error") raises
    under GPUAFFINITY_ON_FAILURE=warn, and bind(on_failure="warn") runs on under GPUAFFINITY_ON_FAILURE=error."""
    from conftest import run_json

    machine = sim_factory(str(host8))
    out = run_json(machine, EXPLICIT, GPUAFFINITY_ON_FAILURE="warn")
    assert out["raised"] is True and "set_mempolicy" in out["error"], out
    out = run_json(machine, EXPLICIT.replace('on_failure="error"', 'on_failure="warn"'), GPUAFFINITY_ON_FAILURE="error")
    assert out["raised"] is False and any("set_mempolicy" in f for f in out["failures"]), out


def _doctor_line(env, label):
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=env, capture_output=True, text=True,
                         timeout=120)
    line = next((x for x in out.stdout.splitlines() if x.startswith(f"  {label}")), out.stdout + out.stderr)
    return [out.returncode, line]


def test_doctor_says_a_memory_policy_it_cannot_read_is_unreadable(sim_factory):
    """A seccomp profile that refuses get_mempolicy (as some containers do): doctor still reports, on the line
    of a process nothing bound, that the policy could not be read and why."""
    env = child_env(sim_factory("dgx-h100"))
    out = _seccomp_or_skip(forked(_under, "get_mempolicy", errno.EPERM, None, _doctor_line, env,
                                  "this process runs on"))
    assert value(out) == [0, f"  {'this process runs on':<28} CPUs {format_cpulist(CPUS)}; memory policy unreadable "
                             "([Errno 1] get_mempolicy: Operation not permitted)"]


@pytest.mark.parametrize("call", ["plan", "bind"])
def test_an_unknown_mode_is_refused_before_anything_is_resolved_naming_the_modes(call):
    import gpuaffinity
    from gpuaffinity.core.errors import BindError

    with pytest.raises(BindError, match=r"^unknown mode 'nodes': choose one of node, socket, exclusive, llc$"):
        getattr(gpuaffinity, call)(0, mode="nodes")



WARNED = r"""
import json, os, warnings, gpuaffinity
os.sched_setaffinity(0, {int(os.environ["ONLY_CPU"])})  # the GPU's node's CPU is not this process's
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rec = gpuaffinity.bind(0, memory="none", on_failure="warn")
print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_a_bind_that_fails_under_warn_is_a_bind_warning_saying_not_bound(tmp_path):
    topo = tmp_path / "apart.toml"
    topo.write_text(f'name = "apart"\n[[numa_node]]\nid = 0\ncpus = "{CPUS[0]}"\n[[numa_node]]\nid = 1\n'
                    f'cpus = "{CPUS[1]}"\n[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-000000000001"\n'
                    'pci_bus_id = "0000:01:00.0"\nname = "NVIDIA H100"\nnuma_node = 1\n')
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", sys.executable, "-c",
                           WARNED], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ONLY_CPU=str(CPUS[0])))
    assert proc.returncode == 0, proc.stderr
    (warned,) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert warned[0] == "BindWarning"
    assert warned[1].startswith("gpuaffinity: not bound: no CPU to bind to: none of the CPUs near GPU 0000:01:00.0 "
                                "is allowed to this process"), warned


def _rebind_with_cpus_and_memory_refused():
    import warnings

    from gpuaffinity import intent, placement
    from test_numa_inprocess import SkipSeccomp, _refuse

    intent.publish(BindRecord(0, "0000:01:00.0", "node", "bind", (0,), frozenset(CPUS[:1])))
    if not (_refuse("sched_setaffinity", errno.EPERM) and _refuse("set_mempolicy", errno.EPERM)):
        raise SkipSeccomp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = placement.rebind(on_failure="warn")
    return [rec.failures, [f"{w.category.__name__}: {w.message}" for w in caught]]


def test_a_rebind_refused_twice_names_both_failures_apart():
    """rebind under warn where the kernel refuses both the CPUs and the memory policy: one BindWarning naming
    each failure whole, "; " between them (as bind's own message joins them)."""
    failures, warned = value(_seccomp_or_skip(forked(_rebind_with_cpus_and_memory_refused)))
    assert len(failures) == 2, failures
    assert failures[0].startswith("sched_setaffinity(") and failures[1].startswith("set_mempolicy(bind, node(s) 0)")
    assert len(warned) == 1 and warned[0].startswith("BindWarning: gpuaffinity: rebound only in part ("), warned
    assert warned[0].endswith(f"): {failures[0]}; {failures[1]}"), warned
