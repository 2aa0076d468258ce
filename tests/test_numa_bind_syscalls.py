"""The system calls of numa.bind: the node mask that reaches set_mempolicy and get_mempolicy whole (its highest
node, the fallback before MPOL_PREFERRED_MANY, restoring a policy, a kernel with 1024 possible nodes, 64-bit mask
words), no memory-policy call at all for --memory none, and a simulated cpuset cut to the real affinity mask.

Binding is process-wide, so every check that binds runs in a child forked from the test process (which stays
unbound), reporting its answer through a pipe; failures this kernel does not give are made with a seccomp filter
in that child, as in test_numa_inprocess.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal

import pytest

from gpuaffinity.core.notes import attention, kind_of
from gpuaffinity.numa import bind
from gpuaffinity.numa.bind import BindRecord
from helpers.forked import forked, value

CPUS = sorted(os.sched_getaffinity(0))
ONE_NODE = not os.path.exists("/sys/devices/system/node/node1")
SIM_VAR = "GPUAFFINITY_SIM_ALLOWED_CPUS"
EINVAL_MESSAGE = ("BindError: set_mempolicy(preferred, node(s) {}) failed: EINVAL: the kernel has no such NUMA node "
                  "(or it has no memory); check /sys/devices/system/node, or use --memory none")


@pytest.fixture(autouse=True)
def harmless_calls_here():
    """Each function once in this process too, harmlessly (the same CPUs, no memory policy change), so that tools
    watching this process (a mutation run's coverage) see which test exercises it; and nothing changed afterwards."""
    mine = frozenset(os.sched_getaffinity(0))
    env = os.environ.get(SIM_VAR)
    policy = bind.get_mempolicy()
    bind.set_mempolicy("none", (0,))
    bind._restore_mempolicy(*policy)
    bind.apply(BindRecord(0, "0000:01:00.0", "node", "none", (), mine), "warn")
    yield
    assert frozenset(os.sched_getaffinity(0)) == mine
    assert bind.get_mempolicy() == policy
    assert os.environ.get(SIM_VAR) == env


# ---- seccomp filters (made in the forked child only) -------------------------------------------------------

_NR = {"x86_64": {"set_mempolicy": 238, "get_mempolicy": 239},
       "aarch64": {"set_mempolicy": 237, "get_mempolicy": 236}}
_ALLOW, _KILL = 0x7FFF0000, 0x80000000


class SkipSeccomp(Exception):
    pass


def _install(code):
    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    prog = (Filter * len(code))(*[Filter(*c) for c in code])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Prog(len(code), prog)), 0, 0):
        raise SkipSeccomp()


def _nr(name):
    if platform.machine() not in _NR:
        raise SkipSeccomp()
    return _NR[platform.machine()][name]


def _refuse_mode(syscall, err, mode):
    """``syscall`` with first argument ``mode`` fails with ``err``."""
    _install([(0x20, 0, 0, 0), (0x15, 0, 3, _nr(syscall)), (0x20, 0, 0, 16), (0x15, 0, 1, mode),
              (0x06, 0, 0, 0x00050000 | err), (0x06, 0, 0, _ALLOW)])


def _kernel_with_1024_possible_nodes():
    """get_mempolicy as a kernel with nr_node_ids = 1024 answers it: EINVAL for a maxnode below 1024."""
    _install([(0x20, 0, 0, 0), (0x15, 0, 3, _nr("get_mempolicy")), (0x20, 0, 0, 32), (0x35, 1, 0, 1024),
              (0x06, 0, 0, 0x00050000 | errno.EINVAL), (0x06, 0, 0, _ALLOW)])


def _kill_on_memory_policy_calls():
    """A strict sandbox: any get_mempolicy or set_mempolicy kills the process."""
    _install([(0x20, 0, 0, 0), (0x15, 2, 0, _nr("get_mempolicy")), (0x15, 1, 0, _nr("set_mempolicy")),
              (0x06, 0, 0, _ALLOW), (0x06, 0, 0, _KILL)])


def _seccomp_or_skip(out):
    if out.get("raised", "").startswith("SkipSeccomp"):
        pytest.skip("seccomp filters are not available here")
    return out


# ---- memory policy: the node mask length given to the kernel -----------------------------------------------


def _policy(memory, nodes):
    bind.set_mempolicy(memory, tuple(nodes))
    return list(bind.get_mempolicy())


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_the_highest_node_of_the_mask_reaches_the_kernel():
    """Node 1023 is the mask's last bit: the kernel sees it (and refuses it here), never an empty mask, which it
    would take as 'local allocation'."""
    assert forked(_policy, "preferred", [1023])["raised"] == EINVAL_MESSAGE.format("1023")
    assert value(forked(_policy, "preferred", [0])) == [bind.MPOL_PREFERRED, [0]]


def _fallback(nodes):
    _refuse_mode("set_mempolicy", errno.EINVAL, bind.MPOL_PREFERRED_MANY)
    return _policy("preferred", nodes)


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_the_preferred_many_fallback_passes_the_whole_mask():
    """Before 5.15 the first node alone is preferred: node 1023 first is still node 1023, refused here."""
    out = _seccomp_or_skip(forked(_fallback, [1023, 0]))
    assert out.get("raised") == EINVAL_MESSAGE.format("0,1023")
    assert value(_seccomp_or_skip(forked(_fallback, [0, 1023]))) == [bind.MPOL_PREFERRED, [0]]


def _restore(mode, nodes):
    bind.set_mempolicy("bind", (0,))
    bind._restore_mempolicy(mode, frozenset(nodes))
    return list(bind.get_mempolicy())


@pytest.mark.skipif(not ONE_NODE, reason="needs a kernel with node 0 only")
def test_restoring_a_policy_passes_the_whole_mask():
    assert value(forked(_restore, bind.MPOL_PREFERRED, [0])) == [bind.MPOL_PREFERRED, [0]]
    assert value(forked(_restore, bind.MPOL_DEFAULT, [])) == [bind.MPOL_DEFAULT, []]
    # node 1023 reaches the kernel, which refuses it here: the policy stays as it was (not 'local allocation')
    assert value(forked(_restore, bind.MPOL_PREFERRED, [1023])) == [bind.MPOL_BIND, [0]]


def _read_on_a_big_kernel():
    _kernel_with_1024_possible_nodes()
    bind.set_mempolicy("preferred", (0,))
    return list(bind.get_mempolicy())


def test_reading_the_policy_on_a_kernel_with_1024_possible_nodes():
    """The mask holds 1024 nodes, so the kernel is told 1024 (maxnode 1025): enough for every kernel."""
    assert value(_seccomp_or_skip(forked(_read_on_a_big_kernel))) == [bind.MPOL_PREFERRED, [0]]


def test_node_mask_words_are_64_bits():
    """A word with every bit set (read as a signed long, -1) names its 64 nodes, none of the next word's."""
    assert bind._from_nodemask((ctypes.c_long * 2)(-1, 0)) == frozenset(range(64))
    assert bind._from_nodemask((ctypes.c_long * 2)(0, -1)) == frozenset(range(64, 128))
    assert bind._from_nodemask((ctypes.c_ulong * 2)(2**64 - 1, 0)) == frozenset(range(64))


# ---- apply(): --memory none makes no memory policy call ------------------------------------------------------


def _apply_in_sandbox(cpus, memory, nodes):
    _kill_on_memory_policy_calls()
    rec = BindRecord(0, "0000:01:00.0", "node", memory, tuple(nodes), frozenset(cpus))
    bind.apply(rec, "error")
    return [rec.failures, rec.cpus_applied, rec.memory_applied, sorted(os.sched_getaffinity(0))]


def test_memory_none_never_touches_the_memory_policy():
    """Under a sandbox that kills on get_/set_mempolicy, binding CPUs alone (--memory none) still works."""
    out = _seccomp_or_skip(forked(_apply_in_sandbox, CPUS[:1], "none", []))
    assert value(out) == [[], True, False, CPUS[:1]]
    # the sandbox is real: asking for a memory policy is killed
    assert _seccomp_or_skip(forked(_apply_in_sandbox, CPUS[:1], "bind", [0])) == {"signal": signal.SIGSYS}


# ---- apply(): the simulated cpuset is cut to the real affinity mask ---------------------------------------------


def _apply_sim(sim, cpus):
    if sim is None:
        os.environ.pop(SIM_VAR, None)
    else:
        os.environ[SIM_VAR] = sim
    rec = BindRecord(0, "0000:01:00.0", "node", "none", (), frozenset(cpus))
    bind.apply(rec, "warn")
    return [rec.failures, [[str(n), kind_of(n)] for n in rec.notes], rec.cpus_applied,
            sorted(os.sched_getaffinity(0)), sorted(rec.bind_cpus)]


def test_a_simulated_plan_is_cut_to_the_real_mask():
    first = CPUS[0]
    got = value(forked(_apply_sim, "0-3", [first, 4095]))
    assert got == [[], [[f"the simulated plan's CPUs {first},4095 are cut to {first}, this process's real affinity "
                         "mask allows them", "attention"]], True, [first], [first, 4095]]
    assert kind_of(attention("x")) == "attention"


def test_a_simulated_plan_with_no_real_cpu_left():
    got = value(forked(_apply_sim, "0-3", [4095]))
    assert got == [["no CPU to bind to"], [["the simulated plan's CPUs 4095 are cut to none, this process's real "
                                            "affinity mask allows them", "attention"]], False, CPUS, [4095]]


def test_a_simulated_plan_within_the_real_mask_is_not_cut():
    assert value(forked(_apply_sim, "0-3", CPUS[:1])) == [[], [], True, CPUS[:1], CPUS[:1]]
    assert value(forked(_apply_sim, "", CPUS)) == [[], [], True, CPUS, CPUS]


def test_without_a_simulated_machine_the_plan_goes_to_the_kernel_as_is():
    """No simulated cpuset: the kernel judges the plan (EINVAL for a CPU it lacks), no cut, no note."""
    got = value(forked(_apply_sim, None, [4095]))
    assert got == [["sched_setaffinity(4095) failed: EINVAL: none of these CPUs is online and allowed by this "
                    "process's cgroup cpuset"], [], False, CPUS, [4095]]
