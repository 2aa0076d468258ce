"""Apply a placement to this process: CPU affinity of every thread, and a memory policy.

No libnuma, no numactl: ``sched_setaffinity`` for each thread in
/proc/self/task, and the ``set_mempolicy`` system call through libc.  The
memory policy is per thread: it covers the calling thread and every thread
(and exec'd program) it creates afterwards, so bind before starting threads,
or bind a child command (``gpuaffinity bind ID -- CMD``).

Owns: applying a binding, and this process's memory policy.
"""

from __future__ import annotations

import ctypes
import errno
import os

from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.core.errors import BindError  # with every other error; importable from here too
from gpuaffinity.core.notes import attention
from gpuaffinity.core.record import field, record
from gpuaffinity.core.settings import MEMORY_POLICIES, SIM_ALLOWED_VAR  # named once, in settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_PREFERRED_MANY = 0, 1, 2, 3, 4, 5
MPOL_WEIGHTED_INTERLEAVE = 6  # Linux 6.9

_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236), "ppc64le": (261, 260)}  # set_, get_mempolicy
_MASK_BITS = 1024




#: The kernel's names of its memory policy modes (``get_mempolicy``'s mode, flags masked off), and gpuaffinity's
#: name of each (``MPOL_PREFERRED_MANY`` is ``preferred`` over several nodes): the one table of them, which the
#: Ray probe reads too.
MPOL_NAMES = {MPOL_DEFAULT: "MPOL_DEFAULT", MPOL_PREFERRED: "MPOL_PREFERRED", MPOL_BIND: "MPOL_BIND",
              MPOL_INTERLEAVE: "MPOL_INTERLEAVE", MPOL_LOCAL: "MPOL_LOCAL", MPOL_PREFERRED_MANY: "MPOL_PREFERRED_MANY",
              MPOL_WEIGHTED_INTERLEAVE: "MPOL_WEIGHTED_INTERLEAVE"}
SHORT_NAMES = {MPOL_DEFAULT: "default", MPOL_PREFERRED: "preferred", MPOL_BIND: "bind",
               MPOL_INTERLEAVE: "interleave", MPOL_LOCAL: "local", MPOL_PREFERRED_MANY: "preferred",
               MPOL_WEIGHTED_INTERLEAVE: "weighted-interleave"}
#: The mode flags ``get_mempolicy`` adds to the mode (linux/mempolicy.h), highest first.
MPOL_FLAGS = ((0x8000, "MPOL_F_STATIC_NODES"), (0x4000, "MPOL_F_RELATIVE_NODES"), (0x2000, "MPOL_F_NUMA_BALANCING"))
_MPOL_FLAGS = 0xFF00  # the bits above the mode (the kernel's MPOL_MODE_FLAGS and room for more)


def policy_mode(mode: int) -> int:
    """The mode of a ``get_mempolicy`` answer, its flags masked off."""
    return mode & ~_MPOL_FLAGS


def policy_name(mode: int) -> str:
    """The kernel's name of a memory policy as ``get_mempolicy`` reads it, flags included:
    ``MPOL_BIND``, ``MPOL_INTERLEAVE|MPOL_F_STATIC_NODES``, ``mode 9``."""
    base = policy_mode(mode)
    parts = [MPOL_NAMES.get(base, f"mode {base}")]
    rest = mode & _MPOL_FLAGS
    for bit, name in MPOL_FLAGS:
        if rest & bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(f"0x{rest:x}")
    return "|".join(parts)


def check_memory(memory: object) -> str:
    """``memory`` if it is one of MEMORY_POLICIES; BindError naming the choices otherwise."""
    if not isinstance(memory, str) or memory not in MEMORY_POLICIES:
        raise BindError(f"unknown memory policy {memory!r:.60}: choose one of {', '.join(MEMORY_POLICIES)}")
    return memory


def kernel_mode(memory: str, nodes: tuple[int, ...]) -> int | None:
    """The ``set_mempolicy`` mode that ``memory`` asks for over ``nodes`` (None: no call at all); BindError for
    a memory policy that is not one of MEMORY_POLICIES."""
    if check_memory(memory) == "none" or not nodes:
        return None
    if memory == "bind":
        return MPOL_BIND
    return MPOL_PREFERRED if len(nodes) == 1 else MPOL_PREFERRED_MANY


@record
class BindRecord:
    """What a bind applied, and what it did not.

    The field names mean what they mean in ``gpuaffinity resolve --json``: ``numa_nodes`` are the GPU's NUMA
    node(s), ``cpus`` its nearby CPUs that this process may use.  What the binding does has names of its own:
    ``bind_cpus`` (the CPUs the mode gives: the node's, the socket's, an exclusive share), ``memory`` (the
    policy asked: ``preferred``, ``bind``, ``none``; anything else is a BindError), ``memory_nodes`` (the
    nodes of that policy; empty under ``none``) and ``memory_policy`` (the kernel's policy: ``planned_policy``,
    derived from ``memory`` and ``memory_nodes`` whenever it is read, until ``bind`` applies the record; then
    ``policy_in_effect``, e.g. ``MPOL_PREFERRED`` where a kernel without ``MPOL_PREFERRED_MANY`` made it fall
    back).  ``shared_with``: the GPUs (PCI bus ids) whose ``exclusive``/``llc`` share overlaps this one's
    (fewer units than GPUs, or a GPU taking another node's CPUs); ``shared_why`` says which of the two.
    """

    logical_id: int | None
    pci_bus_id: str
    mode: str
    memory: str
    memory_nodes: tuple[int, ...]
    bind_cpus: frozenset[int]
    cpus_applied: bool = False
    threads: int = 0
    memory_applied: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numa_nodes: tuple[int, ...] = ()
    cpus: frozenset[int] = frozenset()
    #: the kernel's policy once ``bind`` applied the record (read back, or the old one where it was refused);
    #: "" before
    policy_in_effect: str = ""
    shared_with: tuple[str, ...] = ()
    shared_why: str = ""

    def __post_init__(self) -> None:
        check_memory(self.memory)
        if self.memory == "none":  # no policy, no nodes of it
            self.memory_nodes = ()

    @property
    def planned_policy(self) -> str:
        """The kernel policy ``memory`` asks for over ``memory_nodes`` now (``none``: no call)."""
        mode = kernel_mode(self.memory, self.memory_nodes)
        return "none" if mode is None else MPOL_NAMES[mode]

    @property
    def memory_policy(self) -> str:
        """The kernel's policy: the one in effect once applied, else the planned one (docs/numa.md)."""
        return self.policy_in_effect or self.planned_policy

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        cpu = f"CPUs {format_cpulist(self.bind_cpus) or 'none'}" + ("" if self.cpus_applied else " (not applied)")
        nodes = self.memory_nodes if self.memory != "none" else ()
        mem = f"memory {self.memory}" + (f" node(s) {format_cpulist(nodes)}" if nodes else "")
        if self.memory != "none":
            mem += f" ({self.memory_policy})" if self.memory_applied else " (not applied)"
        return f"GPU {self.pci_bus_id}, mode {self.mode}: {cpu}, {mem}"


def _machine() -> str:
    """The CPU architecture (``uname -m``), without importing platform."""
    return os.uname().machine


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall_numbers() -> tuple[int, int]:
    try:
        return _SYSCALLS[_machine()]
    except KeyError:
        raise BindError(f"memory policy is not supported on {_machine()} by gpuaffinity yet; "
                        "use --memory none") from None


def _nodemask(nodes: Iterable[int]) -> ctypes.Array:
    words = (ctypes.c_ulong * (_MASK_BITS // 64))()
    for n in nodes:
        words[n // 64] |= 1 << (n % 64)
    return words


def set_mempolicy(memory: str, nodes: tuple[int, ...]) -> int | None:
    """Set the calling thread's memory policy; return the kernel mode set (None for ``none``: nothing set).

    ``preferred`` over several nodes is ``MPOL_PREFERRED_MANY``; a kernel without it (before Linux 5.15)
    refuses it with EINVAL, and the first node alone is preferred instead (``MPOL_PREFERRED`` is returned: the
    caller says so).  Raise BindError naming the cause."""
    if check_memory(memory) == "none":
        return None
    if not nodes:
        raise BindError("no NUMA node to bind memory to")
    set_nr, _ = _syscall_numbers()
    mode = kernel_mode(memory, nodes)
    mask = _nodemask(nodes)
    libc = _libc()
    rc = libc.syscall(set_nr, ctypes.c_int(mode), mask, ctypes.c_ulong(_MASK_BITS + 1))
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL and mode == MPOL_PREFERRED_MANY:  # kernels before 5.15: prefer the first node
            rc = libc.syscall(set_nr, ctypes.c_int(MPOL_PREFERRED), _nodemask(nodes[:1]),
                              ctypes.c_ulong(_MASK_BITS + 1))
            if rc == 0:
                return MPOL_PREFERRED
            err = ctypes.get_errno()
        raise BindError(_mempolicy_error(err, memory, nodes))
    return mode


def _mempolicy_error(err: int, memory: str, nodes: tuple[int, ...]) -> str:
    what = f"set_mempolicy({memory}, node(s) {format_cpulist(nodes)}) failed"
    if err == errno.EPERM:
        return (f"{what}: EPERM, not permitted: the container's seccomp profile blocks it without the "
                "CAP_SYS_NICE capability (docker run --cap-add SYS_NICE), or use --memory none")
    if err == errno.EINVAL:
        return (f"{what}: EINVAL: the kernel has no such NUMA node (or it has no memory); "
                "check /sys/devices/system/node, or use --memory none")
    return f"{what}: {errno.errorcode.get(err, err)} ({os.strerror(err)})"


def get_mempolicy() -> tuple[int, frozenset[int]]:
    """The calling thread's (mode, nodes), read back from the kernel."""
    _, get_nr = _syscall_numbers()
    mode = ctypes.c_int(-1)
    mask = _nodemask(())
    libc = _libc()
    if libc.syscall(get_nr, ctypes.byref(mode), mask, ctypes.c_ulong(_MASK_BITS + 1), None, ctypes.c_ulong(0)):
        err = ctypes.get_errno()
        raise OSError(err, f"get_mempolicy: {os.strerror(err)}")
    return mode.value, _from_nodemask(mask)


def _from_nodemask(words: Iterable[int]) -> frozenset[int]:
    """The nodes a kernel node mask (64-bit words, word 0 first) names."""
    return frozenset(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)


def thread_ids() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return [0]


def set_affinity_all_threads(cpus: frozenset[int]) -> int:
    """Pin every thread of this process; return how many; raise BindError naming the cause."""
    if not cpus:
        raise BindError("no CPU to bind to")
    done = 0
    for tid in thread_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise BindError(f"sched_setaffinity({format_cpulist(cpus)}) failed: EINVAL: none of these CPUs "
                                "is online and allowed by this process's cgroup cpuset") from None
            if e.errno == errno.EPERM:
                raise BindError(f"sched_setaffinity({format_cpulist(cpus)}) failed: EPERM, not permitted "
                                "(CAP_SYS_NICE missing?)") from None
            raise BindError(f"sched_setaffinity({format_cpulist(cpus)}) failed: {e}") from None
        done += 1
    return done


def apply(record: BindRecord, on_failure: str) -> BindRecord:
    """Apply a planned record to this process.  Under ``error`` a failure undoes what was
    applied and raises BindError; under ``warn`` the record lists what failed."""
    if on_failure not in ("warn", "error"):
        raise BindError(f"unknown failure policy {on_failure!r}: choose warn or error")
    old_cpus = frozenset(os.sched_getaffinity(0))
    old_policy: tuple[int, frozenset[int]] = (MPOL_DEFAULT, frozenset())  # a thread's policy unless set
    try:
        if record.memory != "none":
            old_policy = get_mempolicy()
    except (OSError, BindError):
        pass  # unreadable: undoing falls back to the default policy
    cpus = record.bind_cpus
    if os.environ.get(SIM_ALLOWED_VAR) is not None:
        # a simulated cpuset (sim run --cpuset) narrows the plan, never this process's real mask: a taskset or
        # cgroup limit on the real process still holds
        cpus = record.bind_cpus & old_cpus
        if cpus != record.bind_cpus:
            record.notes.append(attention(f"the simulated plan's CPUs {format_cpulist(record.bind_cpus) or 'none'} are "
                                          f"cut to {format_cpulist(cpus) or 'none'}, this process's real affinity "
                                          "mask allows them"))
    try:
        record.threads = set_affinity_all_threads(cpus)
        record.cpus_applied = True
    except BindError as e:
        record.failures.append(str(e))
    if record.memory != "none":
        try:
            _record_policy(record, set_mempolicy(record.memory, record.memory_nodes))
        except BindError as e:
            record.failures.append(str(e))
            record.policy_in_effect = policy_name(old_policy[0])  # a refused set_mempolicy changes nothing
    if record.failures and on_failure == "error":
        if record.cpus_applied:
            set_affinity_all_threads(old_cpus)
            record.cpus_applied = False
        if record.memory_applied:
            _restore_mempolicy(*old_policy)
            record.memory_applied = False
            record.policy_in_effect = policy_name(old_policy[0])
        raise BindError("; ".join(record.failures) + " (nothing was left applied)")
    from gpuaffinity import intent

    intent.publish(record)  # where `gpuaffinity check` reads it from outside (gpuaffinity.intent)
    return record


def _record_policy(record: BindRecord, mode: int | None) -> None:
    """Write the kernel policy now in effect into ``record``; a fallback is said out loud and narrows
    ``memory_nodes`` to the node really preferred."""
    record.memory_applied = True
    if mode is None:
        record.policy_in_effect = "none"
        return
    planned = kernel_mode(record.memory, record.memory_nodes)
    record.policy_in_effect = MPOL_NAMES[mode]
    if mode != planned:
        record.notes.append(attention(
            f"this kernel has no MPOL_PREFERRED_MANY (Linux 5.15 added it): memory prefers node "
            f"{record.memory_nodes[0]} alone (MPOL_PREFERRED), not node(s) {format_cpulist(record.memory_nodes)}; "
            "it still spills to the other nodes when that one is full"))
        record.memory_nodes = record.memory_nodes[:1]


def _restore_mempolicy(mode: int, nodes: frozenset[int]) -> None:
    set_nr, _ = _syscall_numbers()
    _libc().syscall(set_nr, ctypes.c_int(mode), _nodemask(nodes), ctypes.c_ulong(_MASK_BITS + 1))
