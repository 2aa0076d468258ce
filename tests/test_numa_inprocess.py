"""The NUMA stage's system calls and NVML queries, in a forked copy of the test process.

Binding and NVML are process-wide, so each check runs in a child forked from
the test process (which stays unbound and never loads NVML), with the real
kernel for the system calls and the simulator's NVML, loaded by absolute path
under its soname, for the queries.  The child runs the very code the parent
imported, so a mutation run that changes it in memory is seen here too.
"""

from __future__ import annotations

import errno
import os
import platform
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest

from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.numa import bind
from gpuaffinity.numa.bind import BindError, BindRecord
from gpuaffinity.sim import load_topology
from gpuaffinity.sim.build import library_dir
from gpuaffinity.sim.render import render_config
from gpuaffinity.sim.topology import parse_topology
from helpers.forked import forked, value
from helpers.numa_oracle import VM_2NODE, cached_render

CPUS = sorted(os.sched_getaffinity(0))
ONE_NODE = not os.path.exists("/sys/devices/system/node/node1")


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
                                                            "one of preferred, bind, none")


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
    bind._machine = lambda: "sparc64"
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
    assert rec.summary() == "GPU 0000:1b:00.0, mode exclusive: CPUs 0-2,5, memory bind node(s) 0-1 (MPOL_BIND)"
    none = BindRecord(None, "0000:1b:00.0", "node", "none", (), frozenset())
    assert none.summary() == "GPU 0000:1b:00.0, mode node: CPUs none (not applied), memory none" and none.ok


# ---- NVML, through the simulator's library ------------------------------------------------------------


def _with_nvml(topology, tmp, faults, fn):
    """``fn(topo)`` with the simulator's NVML serving ``topology`` (a preset's name, or a Topology)."""
    topo = load_topology(topology) if isinstance(topology, str) else topology
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


# ---- failures the kernel gives only on other machines, made here with a seccomp filter ---------------

_NR = {"x86_64": {"set_mempolicy": 238, "get_mempolicy": 239, "sched_setaffinity": 203},
       "aarch64": {"set_mempolicy": 237, "get_mempolicy": 236, "sched_setaffinity": 122}}


def _refuse(syscall: str, err: int, mode: int | None = None) -> bool:
    """Install a seccomp filter: ``syscall`` (with first argument ``mode``, if given) fails with ``err``."""
    import ctypes

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    nr = _NR[platform.machine()][syscall]
    errno_ret, allow = 0x00050000 | err, 0x7FFF0000
    if mode is None:
        code = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, errno_ret), (0x06, 0, 0, allow)]
    else:  # also compare the low word of args[0] (offset 16 in struct seccomp_data)
        code = [(0x20, 0, 0, 0), (0x15, 0, 3, nr), (0x20, 0, 0, 16), (0x15, 0, 1, mode), (0x06, 0, 0, errno_ret),
                (0x06, 0, 0, allow)]
    prog = (Filter * len(code))(*[Filter(*c) for c in code])
    libc = ctypes.CDLL(None, use_errno=True)
    return not (libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Prog(len(code), prog)), 0, 0))


def _seccomp_or_skip(out):
    if out.get("raised", "").startswith("SkipSeccomp"):
        pytest.skip("seccomp filters are not available here")
    return out


class SkipSeccomp(Exception):
    pass


def _under(syscall, err, mode, fn, *args):
    if platform.machine() not in _NR or not _refuse(syscall, err, mode):
        raise SkipSeccomp()
    return fn(*args)


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_preferred_many_falls_back_to_the_first_node_on_kernels_without_it():
    """Kernels before 5.15 refuse MPOL_PREFERRED_MANY with EINVAL: prefer the first node instead."""
    out = _seccomp_or_skip(forked(_under, "set_mempolicy", errno.EINVAL, bind.MPOL_PREFERRED_MANY, _policy,
                                  "preferred", [0, 1]))
    assert value(out) == [bind.MPOL_PREFERRED, [0]]
    out = _seccomp_or_skip(forked(_under, "set_mempolicy", errno.EINVAL, bind.MPOL_PREFERRED_MANY, _policy,
                                  "preferred", [1, 0]))
    assert out["raised"].startswith("BindError: set_mempolicy(preferred, node(s) 0-1) failed: EINVAL: the kernel has "
                                    "no such NUMA node")
    out = _seccomp_or_skip(forked(_under, "set_mempolicy", errno.ENOMEM, bind.MPOL_PREFERRED_MANY, _policy,
                                  "preferred", [0, 1]))
    assert out["raised"] == ("BindError: set_mempolicy(preferred, node(s) 0-1) failed: ENOMEM (Cannot allocate "
                             "memory)")


def test_affinity_refused_by_the_kernel():
    out = _seccomp_or_skip(forked(_under, "sched_setaffinity", errno.EPERM, None, _affinity, CPUS[:1]))
    assert out["raised"] == (f"BindError: sched_setaffinity({CPUS[0]}) failed: EPERM, not permitted (CAP_SYS_NICE "
                             "missing?)")
    out = _seccomp_or_skip(forked(_under, "sched_setaffinity", errno.EBUSY, None, _affinity, CPUS[:1]))
    assert out["raised"] == (f"BindError: sched_setaffinity({CPUS[0]}) failed: [Errno 16] Device or resource busy")


def _read_policy_refused():
    try:
        bind.get_mempolicy()
    except OSError as e:
        return [e.errno, str(e)]
    return None


def test_memory_policy_read_refused():
    out = _seccomp_or_skip(forked(_under, "get_mempolicy", errno.EPERM, None, _read_policy_refused))
    assert value(out) == [errno.EPERM, "[Errno 1] get_mempolicy: Operation not permitted"]
    # apply() goes on without the old policy to restore: it binds, and reports no failure
    out = _seccomp_or_skip(forked(_under, "get_mempolicy", errno.EPERM, None, _apply_blind, CPUS[:1], [0]))
    assert value(out) == [[], True, True]


def _apply_blind(cpus, nodes):
    rec = BindRecord(0, "0000:01:00.0", "node", "bind", tuple(nodes), frozenset(cpus))
    bind.apply(rec, "error")
    return [rec.failures, rec.cpus_applied, rec.memory_applied]


def _apply_after(memory, nodes, on_failure, cpus, rec_memory, rec_nodes):
    bind.set_mempolicy(memory, tuple(nodes))
    return _apply(on_failure, cpus, rec_memory, rec_nodes)


def test_a_failed_bind_puts_the_old_memory_policy_back():
    """CPUs refused, memory bound: under ``error`` the memory policy goes back to what it was."""
    raised = value(forked(_apply_after, "preferred", [0], "error", [], "bind", [0]))
    assert raised[0] == "raised" and raised[1] == "no CPU to bind to (nothing was left applied)"
    assert raised[4:6] == [False, [bind.MPOL_PREFERRED, [0]]]
    kept = value(forked(_apply_after, "preferred", [0], "warn", [], "bind", [0]))
    assert kept[1] == ["no CPU to bind to"] and kept[3:5] == [False, True] and kept[6] == [bind.MPOL_BIND, [0]]


def _threads_bound(cpus):
    import threading
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        n = bind.set_affinity_all_threads(frozenset(cpus))
        seen = {tid: sorted(os.sched_getaffinity(tid)) for tid in bind.thread_ids()}
    finally:
        stop.set()
        for t in threads:
            t.join()
    return [n, sorted(map(tuple, seen.values()))]


def test_every_thread_counts():
    assert value(forked(_threads_bound, CPUS[:1])) == [3, [CPUS[:1]] * 3]


def _gone_thread_then_mine(cpus):
    bind.thread_ids = lambda: [2**22 + 12345, os.getpid()]  # a thread that ended meanwhile, then this one
    return bind.set_affinity_all_threads(frozenset(cpus))


def _no_proc():
    def refuse(_path):
        raise PermissionError("no /proc here")
    os.listdir = refuse
    return bind.thread_ids()


def test_threads_that_end_meanwhile_and_no_proc():
    assert value(forked(_gone_thread_then_mine, CPUS[:1])) == 1
    assert value(forked(_no_proc)) == [0]


def test_node_masks_both_ways():
    words = bind._nodemask((0, 1, 64, 1023))
    assert (words[0], words[1], words[15]) == (3, 1, 1 << 63) and sum(words[2:15]) == 0
    assert bind._from_nodemask(words) == frozenset({0, 1, 64, 1023})
    assert bind._from_nodemask([0, 0]) == frozenset()
    assert bind._mempolicy_error(9999, "bind", (0,)) == (
        "set_mempolicy(bind, node(s) 0) failed: 9999 (Unknown error 9999)")
    assert bind._mempolicy_error(errno.EPERM, "bind", (0,)) == (
        "set_mempolicy(bind, node(s) 0) failed: EPERM, not permitted: the container's seccomp profile blocks it "
        "without the CAP_SYS_NICE capability (docker run --cap-add SYS_NICE), or use --memory none")
    assert bind._mempolicy_error(errno.EINVAL, "preferred", (2,)) == (
        "set_mempolicy(preferred, node(s) 2) failed: EINVAL: the kernel has no such NUMA node (or it has no memory); "
        "check /sys/devices/system/node, or use --memory none")


# ---- the query helpers -------------------------------------------------------------------------------------


def _own_affinity():
    from gpuaffinity.numa import query
    os.environ.pop(query.SIM_ALLOWED_VAR, None)
    os.sched_setaffinity(0, CPUS[:1])
    return sorted(query.allowed_cpus())


def test_allowed_cpus_are_this_process_s_affinity():
    assert value(forked(_own_affinity)) == CPUS[:1]


def test_nvml_masks_to_sets():
    from gpuaffinity.nvml_lite import _bits
    assert _bits([0b101, 1 << 63]) == frozenset({0, 2, 127}) and _bits([]) == frozenset()


def _localities_without_nvml(topo, root):
    from gpuaffinity.numa import query
    os.environ["GPUAFFINITY_SYSFS_ROOT"] = str(root)
    os.environ["GPUAFFINITY_PROCFS_ROOT"] = "/nonexistent"
    os.environ[query.SIM_ALLOWED_VAR] = format_cpulist(topo.cpus)
    locs = query.localities([g.pci_bus_id for g in topo.gpus], use_nvml=False)
    return [[loc.source, list(loc.gpu_memory_nodes)] for loc in locs.values()] + [query.node_cpus(0)]


def test_localities_without_nvml_do_not_ask_it(tmp_path):
    topo = load_topology("gh200")
    root = cached_render(dataclasses_replace(topo, sysfs_quirks=("no-node-cpulist",)))
    got = value(forked(_with_nvml, "gh200", tmp_path, "", lambda t: _localities_without_nvml(t, root)))
    assert got == [["sysfs", []], list(range(72))]


def _apply_with_unreadable_policy():
    real = bind.get_mempolicy
    calls = []

    def first_refused():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EPERM, "get_mempolicy: Operation not permitted")
        return real()
    bind.get_mempolicy = first_refused
    bind.set_mempolicy("preferred", (0,))  # the policy before: one apply() cannot read
    rec = BindRecord(0, "0000:01:00.0", "node", "bind", (0,), frozenset())
    try:
        bind.apply(rec, "error")
    except BindError as e:
        return [str(e), rec.memory_applied, list(real())]
    return None


def test_undoing_a_memory_policy_it_could_not_read_goes_back_to_the_default():
    assert value(forked(_apply_with_unreadable_policy)) == [
        "no CPU to bind to (nothing was left applied)", False, [bind.MPOL_DEFAULT, []]]


def _apply_from_narrow_affinity(mine, cpus):
    os.sched_setaffinity(0, mine)
    return _apply("error", cpus, "bind", [1])


@pytest.mark.skipif(len(CPUS) < 2 or not ONE_NODE, reason="needs two CPUs and a kernel with node 0 only")
def test_undoing_cpus_goes_back_to_this_process_s_own_affinity():
    raised = value(forked(_apply_from_narrow_affinity, CPUS[1:2], CPUS[:1]))
    assert raised[0] == "raised" and raised[2] is True  # back to CPUS[1] alone, not to another process's mask


# ---- localities through a Host: its roots, its CPUs, its NVML session; NVML not asked on one node ----------------


def _through_a_host(topo, root, proc):
    """localities() given a Host built over ``root`` and ``proc``, while the environment names other roots and
    another cpuset: every fact must come from the Host."""
    from gpuaffinity.host import Host
    from gpuaffinity.numa import query

    os.environ[query.SIM_ALLOWED_VAR] = "0-7"
    host = Host({"GPUAFFINITY_SYSFS_ROOT": str(root), "GPUAFFINITY_PROCFS_ROOT": str(proc)})
    os.environ[query.SIM_ALLOWED_VAR] = "0"  # changed after the Host read its CPUs
    os.environ["GPUAFFINITY_SYSFS_ROOT"] = "/nonexistent"
    os.environ["GPUAFFINITY_PROCFS_ROOT"] = "/nonexistent"
    buses = [g.pci_bus_id for g in topo.gpus]
    with host:
        locs = query.localities(buses, host=host)
        starts = host.nvml_starts
    mems = host.allowed_mems
    return {"starts": starts, "allowed": sorted(host.allowed_cpus), "mems": mems and sorted(mems),
            **{b: [list(loc.numa_nodes), format_cpulist(loc.cpus), format_cpulist(loc.local_cpus), loc.source,
                   list(loc.gpu_memory_nodes), loc.lost[:40], list(loc.notes)] for b, loc in locs.items()}}


def test_localities_take_every_fact_from_the_host(tmp_path):
    """gh200: NVML asked through the Host's one session; the allowed CPUs the Host read (0-7), its sysfs and its
    /proc (the driver's numa_status there names the GPU's memory node 1 when NVML does not: nvmlDeviceGetNumaNodeId
    refused)."""
    topo = load_topology("gh200")
    root = cached_render(topo)
    bus = topo.gpus[0].pci_bus_id
    proc = tmp_path / "proc"
    (proc / "driver/nvidia/gpus" / bus).mkdir(parents=True)
    (proc / "driver/nvidia/gpus" / bus / "numa_status").write_text("Node: 1\n")
    (proc / "self").mkdir()
    (proc / "self" / "status").write_text("Name:\tx\nMems_allowed_list:\t0-1\n")
    got = value(forked(_with_nvml, "gh200", tmp_path, "nvmlDeviceGetNumaNodeId=3",
                       lambda t: _through_a_host(t, root, proc)))
    assert got["starts"] == 1 and got["allowed"] == list(range(8)) and got["mems"] == [0, 1]
    nodes, cpus, local, source, own, lost, _notes = got[bus]
    assert (nodes, cpus, local, source, own, lost) == ([0], "0-7", "0-71", "sysfs+nvml", [1], "")


def test_a_gpu_nvml_says_is_lost_keeps_its_place_and_says_so(tmp_path):
    """dgx-h100, the first GPU's handle lost (NVML 15): its locality is still sysfs's, with ``lost`` set; the
    others are whole, from NVML and sysfs."""
    topo = load_topology("dgx-h100")
    root = cached_render(topo)
    got = value(forked(_with_nvml, "dgx-h100", tmp_path, "nvmlDeviceGetHandleByPciBusId=15:1",
                       lambda t: _through_a_host(t, root, tmp_path / "noproc")))
    first, second = topo.gpus[0].pci_bus_id, topo.gpus[1].pci_bus_id
    assert got[first][0] == [0] and got[first][3] == "sysfs" and got[first][5] == f"GPU {first} is lost: nvmlDeviceGetH"
    assert got[second][0] == [0] and got[second][3] == "sysfs+nvml" and got[second][5] == ""
    assert got[first][1] == "0-7" and got["starts"] == 1


def test_on_one_node_nvml_is_not_started_and_the_note_says_why(tmp_path):
    """vm-4gpu (one node, numa_node = -1): the Host starts no NVML session; each GPU's note says the host has one
    node, not what NVML would have named."""
    topo = load_topology("vm-4gpu")
    root = cached_render(topo)
    got = value(forked(_with_nvml, "vm-4gpu", tmp_path, "", lambda t: _through_a_host(t, root, tmp_path / "noproc")))
    assert got["starts"] == 0
    for g in topo.gpus:
        nodes, cpus, _local, source, _own, _lost, notes = got[g.pci_bus_id]
        assert (nodes, cpus, source) == ([], "0-7", "sysfs")
        assert notes == ["the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and this host "
                         "has one NUMA node (NVML was not asked: it can name no other): no preference"]


def _allowed_after_binding(first):
    from gpuaffinity.core.cpulist import format_cpulist as fmt
    from gpuaffinity.numa.query import allowed_cpus

    began = fmt(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {first})  # this process bound since the simulation began; pid 1 was not
    return sorted(allowed_cpus({"GPUAFFINITY_SIM_ALLOWED_CPUS": "0-4095", "GPUAFFINITY_SIM_START_MASK": began}))


def test_the_simulated_cpuset_narrows_to_this_processs_own_mask():
    assert value(forked(_allowed_after_binding, CPUS[-1])) == [CPUS[-1]]


def test_on_two_nodes_nvml_is_asked_and_without_it_sysfs_answers_alone(tmp_path):
    """A VM of two nodes, its GPU without one: NVML is asked (through the Host), names both nodes, and the note says
    so, not "one NUMA node"; where NVML cannot start at all, the same place from sysfs alone, no session kept."""
    topo = parse_topology(VM_2NODE)
    root = cached_render(topo)
    got = value(forked(_with_nvml, topo, tmp_path, "", lambda t: _through_a_host(t, root, tmp_path / "p")))
    nodes, cpus, _local, source, _own, _lost, notes = got["0000:01:00.0"]
    assert got["starts"] == 1 and (nodes, cpus, source) == ([], "0-7", "sysfs+nvml")
    assert notes[0] == ("the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and NVML's "
                        "node(s) 0-1 are every node with CPUs here, which tells nothing: no preference")
    down = value(forked(_with_nvml, topo, tmp_path, "nvmlInit=9", lambda t: _through_a_host(t, root, tmp_path / "p")))
    assert down["starts"] == 0 and down["0000:01:00.0"][:4] == [[], "0-7", "0-7", "sysfs"]
    assert down["0000:01:00.0"][6][0].endswith("and NVML names none either: no preference")


def _lost_on_one_node(topo, how):
    """vm-4gpu, every GPU's lookup by bus id lost: which GPUs are reported lost, and how many sessions started."""
    from gpuaffinity.host import Host
    from gpuaffinity.numa import query
    from gpuaffinity.nvml_lite import Session

    buses = [g.pci_bus_id for g in topo.gpus]
    os.environ.pop(query.SIM_ALLOWED_VAR, None)
    os.environ["GPUAFFINITY_PROCFS_ROOT"] = "/nonexistent"
    os.environ["GPUAFFINITY_SYSFS_ROOT"] = str(cached_render(topo))  # in the forked child only
    if how == "session":  # no Host: the caller's own open session
        with Session() as nv:
            locs = query.localities(buses, session=nv)
        return [sorted(b for b, loc in locs.items() if loc.lost), None]
    host = Host({"GPUAFFINITY_SYSFS_ROOT": str(cached_render(topo))})
    with host:
        host.health = how == "health"
        if how == "open":
            host.nvml()
        locs = query.localities(buses, host=host)
        return [sorted(b for b, loc in locs.items() if loc.lost), host.nvml_starts]


@pytest.mark.parametrize(("how", "reported", "starts"), [("health", True, 1), ("open", True, 1), ("plain", False, 0),
                                                         ("session", True, None)])
def test_on_one_node_nvml_is_asked_whether_a_gpu_is_lost_only_where_asked_or_open(tmp_path, how, reported, starts):
    topo = load_topology("vm-4gpu")
    lost, started = value(forked(_with_nvml, "vm-4gpu", tmp_path, "nvmlDeviceGetHandleByPciBusId=15",
                                 lambda t: _lost_on_one_node(t, how)))
    assert lost == (sorted(g.pci_bus_id for g in topo.gpus) if reported else []) and started == starts
