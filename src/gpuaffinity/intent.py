"""What a process was bound for, recorded where ``gpuaffinity check`` can read it from outside.

Two forms, one content (``encode``: compact JSON of the binding's ``BindRecord`` fields):

* **The exec form** (``gpuaffinity bind ID -- CMD``, ``gpuaffinity.launch``): the variable ``GPUAFFINITY_BOUND``
  in CMD's environment.  The kernel keeps the environment a program started with in ``/proc/PID/environ``, so
  the record is readable before CMD opens any GPU, and every child CMD starts inherits it along with the CPU
  mask and memory policy.  ``pid`` in it is the bound process's own; a child sees its parent's there.
* **The in-process form** (``gpuaffinity.bind``, the Ray setup hook, ``rebind``): a later change of
  ``os.environ`` never reaches ``/proc/PID/environ``, so the record goes into a memfd named
  ``gpuaffinity-binding`` that the process keeps open (``MFD_CLOEXEC``: a program it execs does not inherit it;
  a forked child does, as it inherits the binding).  Its ``/proc/PID/fd/N`` link reads
  ``/memfd:gpuaffinity-binding (deleted)``; whoever may read the process's environment may read it.  It lives
  and dies with the process: nothing is written to a disk, nothing is left behind, a reused pid cannot inherit
  it.  A new binding replaces it.

Where both exist the memfd is the newer (a process started bound, then bound again in-process).

Owns: the binding a process records for `gpuaffinity check`.
"""

from __future__ import annotations

import json
import os

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.record import record
from gpuaffinity.core.settings import BOUND_VAR, MEMORY_POLICIES, MODES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gpuaffinity.numa.bind import BindRecord

VERSION = 1
_fd: int | None = None  # this process's memfd record
_text: str | None = None
_MAX = 1 << 16


@record(frozen=True)
class Intent:
    """A binding as recorded: the GPU(s) (``pci_bus_id``, comma-joined for several), the mode and memory policy,
    where they put the process (``bind_cpus``, ``memory_nodes``), the GPU's own ``numa_nodes``, whether it was
    applied and what failed; ``how``: ``exec`` (the environment) or ``in-process`` (the memfd); ``pid``: the
    process that applied it."""

    pci_bus_id: str
    mode: str
    memory: str
    bind_cpus: frozenset[int]
    memory_nodes: tuple[int, ...]
    numa_nodes: tuple[int, ...]
    applied: bool
    failures: tuple[str, ...]
    how: str
    pid: int
    logical_id: int | str | None = None

    @property
    def buses(self) -> list[str]:
        return [b for b in self.pci_bus_id.split(",") if b]


def encode(rec: BindRecord, how: str) -> str:
    """The record of ``rec`` as applied in this process, one line of JSON."""
    return json.dumps({"v": VERSION, "how": how, "pid": os.getpid(), "pci_bus_id": rec.pci_bus_id,
                       "logical_id": rec.logical_id, "mode": rec.mode, "memory": rec.memory,
                       "bind_cpus": format_cpulist(rec.bind_cpus), "memory_nodes": list(rec.memory_nodes),
                       "numa_nodes": list(rec.numa_nodes), "applied": bool(rec.cpus_applied),
                       "failures": [f[:300] for f in rec.failures[:8]]}, separators=(",", ":"))


def decode(text: str) -> Intent:
    """An ``Intent`` from its JSON; ValueError saying what is wrong (the text comes from another process: any
    of it may be damaged or forged, and it only ever describes that process)."""
    if len(text) > _MAX:
        raise ValueError("the record is larger than 64 KiB")
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"the record is not JSON ({e})") from None
    except RecursionError:  # "[[[[..." nested deeper than the decoder recurses: not ValueError, and it crashed check
        raise ValueError("the record is not JSON (nested too deep)") from None
    if not isinstance(d, dict) or type(d.get("v")) is not int or d["v"] != VERSION:  # JSON true is not 1
        raise ValueError(f"the record is not a version-{VERSION} gpuaffinity binding")

    def get(key: str, kind: type | tuple[type, ...]) -> object:
        v = d.get(key)
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise ValueError(f"the record's {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
        return v

    buses = str(get("pci_bus_id", str))
    if not buses or len(buses) > 2000 or not all(_bus_like(b) for b in buses.split(",")):
        raise ValueError(f"the record's pci_bus_id {buses[:60]!r} is not PCI bus ids")
    mode, memory = get("mode", str), get("memory", str)
    if mode not in MODES or memory not in MEMORY_POLICIES:
        raise ValueError(f"the record's mode {str(mode)[:20]!r} or memory {str(memory)[:20]!r} is unknown")
    nodes = []
    for key in ("memory_nodes", "numa_nodes"):
        v = get(key, list)
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 4096 for n in v):  # type: ignore[union-attr]
            raise ValueError(f"the record's {key!r} is not node numbers")
        nodes.append(tuple(v))  # type: ignore[arg-type]
    bind_cpus = str(get("bind_cpus", str))
    try:
        cpus = parse_cpulist(bind_cpus)
    except ValueError as e:
        raise ValueError(f"the record's bind_cpus is not a CPU list ({e})") from None
    failures = get("failures", list)
    how = get("how", str)
    pid = get("pid", int)
    lid = d.get("logical_id")
    return Intent(buses, str(mode), str(memory), cpus, nodes[0], nodes[1], bool(get("applied", bool)),
                  tuple(str(f)[:300] for f in failures[:8]), str(how)[:20], int(pid),  # type: ignore[index]
                  lid if isinstance(lid, (int, str)) and not isinstance(lid, bool) else None)


def _bus_like(text: str) -> bool:
    return 7 <= len(text) <= 16 and all(c in "0123456789abcdefABCDEF:." for c in text)


def publish(rec: BindRecord) -> None:
    """Record ``rec`` (just applied in this process, or planned and not applied: ``cpus_applied`` false, its
    ``failures`` say why) in this process's memfd, replacing any earlier record.  Never fails the binding: a
    kernel without memfd_create leaves the process without a record."""
    global _fd, _text
    text = encode(rec, "in-process")
    try:
        fd = os.memfd_create("gpuaffinity-binding", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        os.close(fd)
        return
    old, _fd, _text = _fd, fd, text
    if old is not None:
        _close(old)


def withdraw() -> None:
    """Drop this process's memfd record (it is no longer bound for a GPU)."""
    global _fd, _text
    old, _fd, _text = _fd, None, None
    if old is not None:
        _close(old)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def exec_env(rec: BindRecord) -> str:
    """The value of ``GPUAFFINITY_BOUND`` for a program that ``rec``'s process is about to become (exec)."""
    return encode(rec, "exec")


def current() -> Intent | None:
    """This process's own binding: its in-process record, else the one it was started with; None without."""
    for text in (_text, _started_with()):
        if text:
            try:
                return decode(text)
            except ValueError:
                continue
    return None


def _started_with() -> str | None:
    """GPUAFFINITY_BOUND as this process was started with it: /proc/self/environ, where `gpuaffinity check` reads
    it, not os.environ, which the program may have rewritten or cleaned since (rebind then applied a record check
    never sees, or found none); os.environ only where /proc cannot be read."""
    from gpuaffinity import proc

    try:
        return proc.read_environ("/proc/self").get(BOUND_VAR)
    except OSError:
        return os.environ.get(BOUND_VAR)
