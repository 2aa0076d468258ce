"""Apply a placement to this process: CPU affinity of every thread, and a memory policy.

No libnuma, no numactl: ``sched_setaffinity`` for each thread in
/proc/self/task, and the ``set_mempolicy`` system call through libc.  The
memory policy is per thread: it covers the calling thread and every thread
(and exec'd program) it creates afterwards, so bind before starting threads,
or bind a child command (``gpuaffinity bind ID -- CMD``).
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

_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236), "ppc64le": (261, 260)}  # set_, get_mempolicy
_MASK_BITS = 1024




@record
class BindRecord:
    """What a bind applied, and what it did not."""

    logical_id: int | None
    pci_bus_id: str
    mode: str
    memory: str
    numa_nodes: tuple[int, ...]
    cpus: frozenset[int]
    cpus_applied: bool = False
    threads: int = 0
    memory_applied: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        cpu = f"CPUs {format_cpulist(self.cpus) or 'none'}" + ("" if self.cpus_applied else " (not applied)")
        mem = f"memory {self.memory}" + (f" node(s) {format_cpulist(self.numa_nodes)}" if self.numa_nodes else "")
        if self.memory != "none" and not self.memory_applied:
            mem += " (not applied)"
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


def set_mempolicy(memory: str, nodes: tuple[int, ...]) -> None:
    """Set the calling thread's memory policy; raise BindError naming the cause."""
    if memory == "none":
        return
    if memory not in MEMORY_POLICIES:
        raise BindError(f"unknown memory policy {memory!r}: choose bind, preferred or none")
    if not nodes:
        raise BindError("no NUMA node to bind memory to")
    set_nr, _ = _syscall_numbers()
    mode = MPOL_BIND if memory == "bind" else (MPOL_PREFERRED if len(nodes) == 1 else MPOL_PREFERRED_MANY)
    mask = _nodemask(nodes)
    libc = _libc()
    rc = libc.syscall(set_nr, ctypes.c_int(mode), mask, ctypes.c_ulong(_MASK_BITS + 1))
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL and mode == MPOL_PREFERRED_MANY:  # kernels before 5.15: prefer the first node
            rc = libc.syscall(set_nr, ctypes.c_int(MPOL_PREFERRED), _nodemask(nodes[:1]),
                              ctypes.c_ulong(_MASK_BITS + 1))
            if rc == 0:
                return
            err = ctypes.get_errno()
        raise BindError(_mempolicy_error(err, memory, nodes))


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
    cpus = record.cpus
    if os.environ.get(SIM_ALLOWED_VAR) is not None:
        # a simulated cpuset (sim run --cpuset) narrows the plan, never this process's real mask: a taskset or
        # cgroup limit on the real process still holds
        cpus = record.cpus & old_cpus
        if cpus != record.cpus:
            record.notes.append(attention(f"the simulated plan's CPUs {format_cpulist(record.cpus) or 'none'} are "
                                          f"cut to {format_cpulist(cpus) or 'none'}, this process's real affinity "
                                          "mask allows them"))
    try:
        record.threads = set_affinity_all_threads(cpus)
        record.cpus_applied = True
    except BindError as e:
        record.failures.append(str(e))
    if record.memory != "none":
        try:
            set_mempolicy(record.memory, record.numa_nodes)
            record.memory_applied = True
        except BindError as e:
            record.failures.append(str(e))
    if record.failures and on_failure == "error":
        if record.cpus_applied:
            set_affinity_all_threads(old_cpus)
            record.cpus_applied = False
        if record.memory_applied:
            _restore_mempolicy(*old_policy)
            record.memory_applied = False
        raise BindError("; ".join(record.failures) + " (nothing was left applied)")
    return record


def _restore_mempolicy(mode: int, nodes: frozenset[int]) -> None:
    set_nr, _ = _syscall_numbers()
    _libc().syscall(set_nr, ctypes.c_int(mode), _nodemask(nodes), ctypes.c_ulong(_MASK_BITS + 1))
