"""The NUMA stage's system calls and NVML queries, in a forked copy of the test process.

Binding and NVML are process-wide, so each check runs in a child forked from
the test process (which stays unbound and never loads NVML), with the real
kernel for the system calls and the simulator's NVML, loaded by absolute path
under its soname, for the queries.  The child runs the very code the parent
imported, so a mutation run that changes it in memory is seen here too.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import traceback
from pathlib import Path

import pytest

from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.numa import bind
from gpuaffinity.numa.bind import BindError, BindRecord
from gpuaffinity.sim import load_topology
from gpuaffinity.sim.build import library_dir
from gpuaffinity.sim.render import render_config
from numa_oracle import cached_render

CPUS = sorted(os.sched_getaffinity(0))
ONE_NODE = not os.path.exists("/sys/devices/system/node/node1")


def forked(fn, *args):
    """fn(*args) in a forked child; its JSON result, or {"raised": "Type: message"}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = {"value": fn(*args)}
        except BaseException as e:  # reported to the parent
            out = {"raised": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        os.write(w, json.dumps(out, default=lambda x: sorted(x) if isinstance(x, (set, frozenset)) else repr(x))
                 .encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def value(out):
    assert "raised" not in out, out.get("trace")
    return out["value"]


@pytest.fixture(autouse=True)
def harmless_calls_here():
    """Call each function once in this process too, harmlessly (the same CPUs, no memory policy, no NVML
    library), so that tools watching this process (a mutation run's coverage) see which test exercises it."""
    from gpuaffinity.numa import query
    mine = frozenset(os.sched_getaffinity(0))
    bind.set_affinity_all_threads(mine)
    bind.set_mempolicy("none", (0,))
    bind._restore_mempolicy(*bind.get_mempolicy())
    bind.apply(BindRecord(0, "0000:01:00.0", "node", "none", (), mine), "warn")
    query.nvml_affinity(["0000:01:00.0"])
    query.localities(["0000:01:00.0"], use_nvml=False)
    query.node_cpus(0)
    yield
    assert frozenset(os.sched_getaffinity(0)) == mine


# ---- CPU affinity and memory policy, for real ----------------------------------------------------------


def _affinity(cpus):
    n = bind.set_affinity_all_threads(frozenset(cpus))
    return [n, sorted(os.sched_getaffinity(0)), bind.thread_ids() == [os.getpid()]]


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_affinity_of_every_thread():
    assert value(forked(_affinity, CPUS[1:2])) == [1, CPUS[1:2], True]
    assert forked(_affinity, [])["raised"] == "BindError: no CPU to bind to"
    assert forked(_affinity, [4095])["raised"] == ("BindError: sched_setaffinity(4095) failed: EINVAL: none of these "
                                                   "CPUs is online and allowed by this process's cgroup cpuset")


def _policy(memory, nodes):
    bind.set_mempolicy(memory, tuple(nodes))
    return list(bind.get_mempolicy())


def test_memory_policy_set_and_read_back():
    assert value(forked(_policy, "bind", [0])) == [bind.MPOL_BIND, [0]]
    assert value(forked(_policy, "preferred", [0])) == [bind.MPOL_PREFERRED, [0]]
    assert value(forked(_policy, "none", [0])) == [bind.MPOL_DEFAULT, []]
    assert forked(_policy, "bind", [])["raised"] == "BindError: no NUMA node to bind memory to"
    assert forked(_policy, "interleave", [0])["raised"] == ("BindError: unknown memory policy 'interleave': choose "
                                                            "bind, preferred or none")


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_memory_policy_on_a_node_the_kernel_lacks():
    want = ("BindError: set_mempolicy({}, node(s) 1) failed: EINVAL: the kernel has no such NUMA node (or it has no "
            "memory); check /sys/devices/system/node, or use --memory none")
    assert forked(_policy, "bind", [1])["raised"] == want.format("bind")
    assert forked(_policy, "preferred", [1])["raised"] == want.format("preferred")
    # several nodes: MPOL_PREFERRED_MANY, or on kernels before 5.15 MPOL_PREFERRED on the first one
    mode, nodes = value(forked(_policy, "preferred", [0, 1]))
    assert (mode, nodes) in ((bind.MPOL_PREFERRED_MANY, [0]), (bind.MPOL_PREFERRED, [0]))


def test_mempolicy_messages_and_masks():
    assert "EPERM, not permitted" in bind._mempolicy_error(errno.EPERM, "bind", (0, 2))
    assert "CAP_SYS_NICE" in bind._mempolicy_error(errno.EPERM, "bind", (0,))
    assert bind._mempolicy_error(errno.ENOMEM, "preferred", (1, 2, 3)) == (
        "set_mempolicy(preferred, node(s) 1-3) failed: ENOMEM (Cannot allocate memory)")
    words = bind._nodemask((0, 65, 1023))
    assert len(words) == 16 and (words[0], words[1], words[15]) == (1, 2, 1 << 63) and sum(words[2:15]) == 0


def _unknown_machine():
    platform.machine = lambda: "sparc64"
    return bind._syscall_numbers()


def test_memory_policy_on_an_unknown_architecture():
    assert forked(_unknown_machine)["raised"] == ("BindError: memory policy is not supported on sparc64 by "
                                                  "gpuaffinity yet; use --memory none")


def _apply(on_failure, cpus, memory, nodes):
    before = sorted(os.sched_getaffinity(0))
    rec = BindRecord(0, "0000:01:00.0", "node", memory, tuple(nodes), frozenset(cpus))
    try:
        bind.apply(rec, on_failure)
    except BindError as e:
        return ["raised", str(e), sorted(os.sched_getaffinity(0)) == before, rec.cpus_applied, rec.memory_applied,
                list(bind.get_mempolicy())]
    return ["ok", rec.failures, sorted(os.sched_getaffinity(0)), rec.cpus_applied, rec.memory_applied, rec.threads,
            list(bind.get_mempolicy()), rec.ok]


@pytest.mark.skipif(len(CPUS) < 2 or not ONE_NODE, reason="needs two CPUs and a kernel with node 0 only")
def test_apply_under_each_failure_policy():
    assert value(forked(_apply, "warn", CPUS[:1], "bind", [0])) == ["ok", [], CPUS[:1], True, True, 1,
                                                                   [bind.MPOL_BIND, [0]], True]
    warned = value(forked(_apply, "warn", CPUS[:1], "bind", [1]))
    assert warned[0] == "ok" and warned[2:5] == [CPUS[:1], True, False] and not warned[7]
    assert "EINVAL" in warned[1][0]
    raised = value(forked(_apply, "error", CPUS[:1], "bind", [1]))
    assert raised[0] == "raised" and raised[1].endswith("(nothing was left applied)")
    assert raised[2:6] == [True, False, False, [bind.MPOL_DEFAULT, []]]  # the CPUs were put back
    both = value(forked(_apply, "error", [], "bind", [1]))
    assert both[1].startswith("no CPU to bind to; set_mempolicy(bind, node(s) 1) failed")
    assert value(forked(_apply, "error", CPUS[:1], "none", []))[0:5] == ["ok", [], CPUS[:1], True, False]
    assert value(forked(_apply, "maybe", CPUS[:1], "none", []))[:2] == [
        "raised", "unknown failure policy 'maybe': choose warn or error"]


def test_bind_record_summary():
    rec = BindRecord(3, "0000:1b:00.0", "exclusive", "bind", (0, 1), frozenset({0, 1, 2, 5}))
    assert rec.summary() == ("GPU 0000:1b:00.0, mode exclusive: CPUs 0-2,5 (not applied), memory bind node(s) 0-1 "
                             "(not applied)")
    rec.cpus_applied = rec.memory_applied = True
    assert rec.summary() == "GPU 0000:1b:00.0, mode exclusive: CPUs 0-2,5, memory bind node(s) 0-1"
    none = BindRecord(None, "0000:1b:00.0", "node", "none", (), frozenset())
    assert none.summary() == "GPU 0000:1b:00.0, mode node: CPUs none (not applied), memory none" and none.ok


# ---- NVML, through the simulator's library ------------------------------------------------------------


def _with_nvml(topo_name, tmp, faults, fn):
    topo = load_topology(topo_name)
    conf = Path(tmp) / "machine.conf"
    conf.write_text(render_config(topo))
    os.environ["GPUAFFINITY_SIM_CONFIG"] = str(conf)
    if faults:
        os.environ["GPUAFFINITY_SIM_FAULTS"] = faults
    import ctypes
    ctypes.CDLL(str(library_dir() / "libnvidia-ml.so.1"))  # pynvml's dlopen by soname finds this one
    return fn(topo)


def _nvml_answers(topo):
    from gpuaffinity.numa.query import nvml_affinity
    got = nvml_affinity([g.pci_bus_id for g in topo.gpus] + ["0000:99:00.0"])
    return {bus: [sorted(x) for x in answer] for bus, answer in got.items()}


def test_nvml_affinity_with_the_gpu_memory_node(tmp_path):
    got = value(forked(_with_nvml, "gb200-tray", tmp_path, "", _nvml_answers))
    assert got == {"0008:01:00.0": [[0], list(range(72)), [2]], "0009:01:00.0": [[0], list(range(72)), [10]],
                   "0018:01:00.0": [[1], list(range(72, 144)), [18]], "0019:01:00.0": [[1], list(range(72, 144)), [26]]}
    dgx = value(forked(_with_nvml, "dgx-h100", tmp_path, "", _nvml_answers))
    assert dgx["0000:1b:00.0"][0] == [0] and dgx["0000:df:00.0"][2] == [] and len(dgx) == 8
    assert format_cpulist(dgx["0000:df:00.0"][1]) == "56-111,168-223"


def test_nvml_affinity_when_nvml_fails(tmp_path):
    assert value(forked(_with_nvml, "dgx-h100", tmp_path, "nvmlInit=9", _nvml_answers)) == {}
    partial = value(forked(_with_nvml, "dgx-h100", tmp_path, "nvmlDeviceGetMemoryAffinity=3:2", _nvml_answers))
    assert sorted(partial) == [g.pci_bus_id for g in load_topology("dgx-h100").gpus][2:]


def _localities(topo, root, allowed):
    from gpuaffinity.numa import query
    os.environ["GPUAFFINITY_SYSFS_ROOT"] = str(root)
    os.environ["GPUAFFINITY_PROCFS_ROOT"] = "/nonexistent"
    if allowed is None:
        os.environ.pop(query.SIM_ALLOWED_VAR, None)
    else:
        os.environ[query.SIM_ALLOWED_VAR] = allowed
    locs = query.localities([g.pci_bus_id for g in topo.gpus] * 2)
    return {b: [list(loc.numa_nodes), format_cpulist(loc.cpus), loc.source, list(loc.gpu_memory_nodes)]
            for b, loc in locs.items()} | {"allowed": sorted(query.allowed_cpus()), "node1": query.node_cpus(1),
                                            "node9": query.node_cpus(9)}


def test_localities_with_nvml_and_sysfs(tmp_path):
    root = cached_render(load_topology("gh200"))
    got = value(forked(_with_nvml, "gh200", tmp_path, "", lambda t: _localities(t, root, "0-7")))
    assert got == {"0009:01:00.0": [[0], "0-7", "sysfs+nvml", [1]], "allowed": list(range(8)), "node1": [],
                   "node9": None}
    plain = value(forked(_with_nvml, "gh200", tmp_path, "nvmlInit=9", lambda t: _localities(t, root, None)))
    assert plain["0009:01:00.0"][1:3] == [format_cpulist(sorted(set(CPUS) & set(range(72)))), "sysfs"]
    assert plain["allowed"] == CPUS
