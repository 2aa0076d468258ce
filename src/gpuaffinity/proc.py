"""Another process seen from outside, through /proc: its threads' CPUs, its memory policy and pages, its GPUs.

``look(pid)`` reads what `gpuaffinity check` and the Ray probe judge:

* ``status`` and ``task/<tid>/status``: the name, state, owner and CPU mask of the process and of every thread.
  Anyone may read these.
* ``environ``: the environment the process was *started* with (a later ``os.environ`` change is not there).
* ``fd/``: the device nodes it holds open.  ``stat`` through ``fd/<n>`` reaches the open file itself, so a
  character device of major 195 (the NVIDIA driver's) names its minor exactly, whatever the process's mount
  namespace calls the node; the simulator's plain files are named by the link.  An fd whose link reads
  ``/memfd:gpuaffinity-binding`` holds the binding ``gpuaffinity.bind`` recorded in that process.
* ``numa_maps``: for each mapping, its memory policy and its resident pages per node.  The kernel prints, for a
  mapping without a policy of its own, the *task's* policy (fs/proc/task_mmu.c, ``show_numa_map``).  The first
  mapping is the program's own text, which nothing binds, so the first line names the main thread's policy.
  The kernel prints numa_maps mapping by mapping, walking the resident pages of each mapping it prints, and a
  read makes it print until it has as many bytes as the read asks for (up to a page of text: a few dozen
  mappings, which in a large process hold most of its memory).  So the policy is read 64 bytes at a time, up
  to the end of the first line: the kernel walks the first mapping or two, whatever the process's size
  (measured: 0.05 ms where a 64 KiB read took 45-52 ms for a process of 4 GiB; benchmarks/bench_check.py).
  The pages cost a walk of every resident page (about 4 ms per GiB on an H100 host,
  shared/facts/live-process-h100.md; docs/performance.md has this machine's) and are read only when asked.

``environ``, ``fd/`` and ``numa_maps`` need the right to trace the process (the same user, or root): where it
is refused, ``denied`` says what, and the rest is still read.  A process that exits while it is read raises
``Gone``.  The root is ``/proc``; under the simulator a process it models is read from its /proc folder
(``GPUAFFINITY_PROCFS_ROOT``) instead.

Owns: what /proc says of another process (threads, masks, policies, pages, device files).
"""

from __future__ import annotations

import errno
import os
import re
import stat

from gpuaffinity.core.cpulist import parse_cpulist
from gpuaffinity.core.record import field, record
from gpuaffinity.core.settings import DEV_VAR, PROCFS_VAR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

#: the name of the memfd an in-process binding is recorded in (gpuaffinity.intent)
MEMFD_NAME = "gpuaffinity-binding"
NVIDIA_MAJOR = 195  # the NVIDIA driver's character devices: /dev/nvidia<minor>, and nvidiactl at minor 255
CTL_MINOR = 255
MODESET_MINOR = 254  # /dev/nvidia-modeset, also major 195 (nvidia-modprobe): a display server's, not a GPU
_GONE = (errno.ENOENT, errno.ESRCH)
_READ = 1 << 16
#: the most /proc/PID/environ may hold: exec takes at most 6 MiB of arguments and environment (fs/exec.c: a quarter of
#: the stack limit, at most 3/4 of 8 MiB); a read cut at 1 MiB lost the variables at its end, where
#: `gpuaffinity bind` puts GPUAFFINITY_BOUND
ENVIRON_MAX = 8 << 20
#: a binding record is at most 64 KiB (gpuaffinity.intent refuses a longer one): its memfd is read one byte deeper, so
#: a longer one is refused as longer, as the same text in the environment is, not read cut at 64 KiB (and taken where
#: its first 64 KiB were a record)
_RECORD_READ = (1 << 16) + 1
#: the policy names numa_maps prints (mm/mempolicy.c, mpol_to_str), and gpuaffinity's names and the kernel's for
#: each (as gpuaffinity.numa.bind names what get_mempolicy returns)
POLICIES = {"default": ("default", "MPOL_DEFAULT"), "prefer": ("preferred", "MPOL_PREFERRED"),
            "bind": ("bind", "MPOL_BIND"), "interleave": ("interleave", "MPOL_INTERLEAVE"),
            "local": ("local", "MPOL_LOCAL"), "prefer (many)": ("preferred", "MPOL_PREFERRED_MANY"),
            "weighted interleave": ("weighted-interleave", "MPOL_WEIGHTED_INTERLEAVE")}
_POLICY = re.compile(r"(default|local|prefer \(many\)|prefer|bind|interleave|weighted interleave)"
                     r"(?:=([a-z|]+))?(?::([0-9,-]+))?(?= |$)")
_NODE_PAGES = re.compile(rb" N(\d+)=(\d+)")
#: mapped "files" that are memory, not files on a disk: device memory and shared memory (/dev/...), anonymous
#: huge pages, System V shared memory, memfds (the kernel names them so in numa_maps, a space printed as \040)
_MEMORY_FILES = (b"/dev/", b"/anon_hugepage", b"/SYSV", b"/memfd:")


class Gone(Exception):
    """The process does not exist (any more)."""

    def __init__(self, pid: int, why: str) -> None:
        super().__init__(f"process {pid} {why}")
        self.pid = pid
        self.why = why


@record(frozen=True)
class Thread:
    tid: int
    name: str
    cpus: frozenset[int]


@record(frozen=True)
class Policy:
    """A memory policy as numa_maps prints it: ``policy`` in gpuaffinity's words (``preferred``), ``kernel`` in
    the kernel's (``MPOL_PREFERRED_MANY``, flags joined by ``|``), its nodes, and the text as printed."""

    policy: str
    kernel: str
    nodes: frozenset[int]
    text: str


@record
class Pages:
    """Resident memory per NUMA node, in bytes.  ``nodes`` counts the process's own memory: anonymous mappings
    (heap, stacks, allocations, anonymous huge pages), mappings of device files (``/dev/…``: pinned and shared
    memory), System V shared memory and memfds.  Mappings of
    ordinary files (programs, libraries, the page cache of files it maps) are shared with every process that maps
    them and are counted apart, in ``file_nodes``."""

    nodes: dict[int, int] = field(default_factory=dict)
    file_nodes: dict[int, int] = field(default_factory=dict)
    mappings: int = 0

    @property
    def total(self) -> int:
        return sum(self.nodes.values())

    def share_on(self, nodes: frozenset[int] | tuple[int, ...]) -> float | None:
        """The part of the counted bytes on ``nodes`` (None when nothing is counted)."""
        total = self.total
        return None if not total else sum(b for n, b in self.nodes.items() if n in nodes) / total


@record
class View:
    """What /proc showed of one process.  ``denied``: what could not be read, each with the reason."""

    pid: int
    source: str  # "/proc", or the simulator's folder
    name: str = ""
    state: str = ""
    uid: int | None = None
    kernel_thread: bool = False
    cmdline: list[str] = field(default_factory=list)
    cpus: frozenset[int] = frozenset()
    mems_allowed: frozenset[int] | None = None
    rss_kb: int | None = None
    threads: list[Thread] = field(default_factory=list)
    environ: dict[str, str] | None = None
    #: minors of the NVIDIA GPU device nodes it holds open (nvidiactl and nvidia-modeset excluded), ascending
    gpu_minors: list[int] = field(default_factory=list)
    nvidia_fds: int = 0
    #: the text of its in-process binding record (a memfd), where it has one
    binding_text: str | None = None
    policy: Policy | None = None
    pages: Pages | None = None
    denied: list[str] = field(default_factory=list)

    @property
    def zombie(self) -> bool:
        return self.state.startswith("Z")


def roots(pid: int) -> str:
    """The /proc folder ``pid`` is read from: the simulator's where it models that process, else ``/proc``."""
    sim = os.environ.get(PROCFS_VAR)
    if sim and os.path.isdir(os.path.join(sim, str(pid))):
        return sim
    return "/proc"


def pids() -> list[int]:
    """Every process id this process can see: the simulator's modelled processes and the real ones."""
    out: set[int] = set()
    sim = os.environ.get(PROCFS_VAR)
    for root in ([sim] if sim else []) + ["/proc"]:
        try:
            out.update(int(n) for n in os.listdir(root) if n.isascii() and n.isdigit())
        except OSError:
            continue
    return sorted(out)


def thread_group(pid: int) -> int | None:
    """The process (thread group leader) that ``pid`` is a thread of, where its status says (``Tgid``); None
    where it cannot be read.  /proc/TID reads for every thread, though only leaders are listed in /proc."""
    try:
        st = parse_status(_read(os.path.join(roots(pid), str(pid), "status")).decode("utf-8", "replace"))
    except OSError:
        return None
    tgid = st.get("Tgid", "")
    return int(tgid) if tgid.isascii() and tgid.isdigit() and int(tgid) > 0 else None


def _read(path: str, limit: int = 1 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while size < limit:
            b = os.read(fd, min(_READ, limit - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_status(text: str) -> dict[str, str]:
    """``Key:\\tvalue`` lines as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def parse_policy(text: str) -> Policy | None:
    """A policy as numa_maps prints it (``bind:0-1``, ``prefer (many)=static:0,2``, ``default``); None for
    anything else."""
    m = _POLICY.match(text)
    if m is None:
        return None
    mode, flags, nodes = m.groups()
    ours, kernel = POLICIES[mode]
    for flag in (flags or "").split("|"):
        if flag:
            kernel += "|MPOL_F_" + {"static": "STATIC_NODES", "relative": "RELATIVE_NODES",
                                     "balancing": "NUMA_BALANCING"}.get(flag, flag.upper())
    try:
        found = parse_cpulist(nodes) if nodes else frozenset()
    except ValueError:
        return None
    return Policy(ours, kernel, found, m.group(0))


def parse_numa_maps_line(line: bytes) -> tuple[Policy | None, bool, int, dict[int, int]]:
    """One numa_maps line: its policy, whether it maps an ordinary file, its page size in bytes, pages per node."""
    head, _, rest = line.partition(b" ")
    policy = parse_policy(rest.decode("utf-8", "replace"))
    size = 4096
    k = rest.rfind(b"kernelpagesize_kB=")
    if k >= 0:
        digits = rest[k + 18:].split(b" ", 1)[0]
        if digits.isdigit():
            size = int(digits) * 1024
    f = rest.find(b" file=")
    ordinary = f >= 0 and not rest.startswith(_MEMORY_FILES, f + 6)
    return policy, ordinary, size, {int(n): int(c) for n, c in _NODE_PAGES.findall(rest)}


def _denied(view: View, what: str, e: OSError) -> None:
    view.denied.append(f"{what}: {e.strerror or e}")


def look(pid: int, *, pages: bool = False, root: str | None = None) -> View:
    """What /proc shows of process ``pid``; ``Gone`` where it does not exist or exits while read."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"not a process id: {pid!r:.40}")
    base = root or roots(pid)
    here = os.path.join(base, str(pid))
    view = View(pid, base)
    try:
        st = parse_status(_read(os.path.join(here, "status")).decode("utf-8", "replace"))
    except OSError as e:
        if e.errno in _GONE:
            raise Gone(pid, "does not exist" + (" in this pid namespace" if base == "/proc" else "")) from None
        raise Gone(pid, f"cannot be read: {e.strerror or e}") from None
    view.name = st.get("Name", "")
    view.state = st.get("State", "")
    uid = st.get("Uid", "").split()
    view.uid = int(uid[0]) if uid and uid[0].isdigit() else None
    view.kernel_thread = st.get("Kthread") == "1" or ("VmSize" not in st and not view.zombie)
    view.cpus = _cpus(st)
    mems = st.get("Mems_allowed_list")
    view.mems_allowed = _list(mems) if mems else None
    rss = st.get("VmRSS", "").split()
    view.rss_kb = int(rss[0]) if rss and rss[0].isdigit() else None
    try:
        view.cmdline = [a.decode("utf-8", "replace") for a in _read(os.path.join(here, "cmdline"), 1 << 16)
                        .split(b"\0") if a]
    except OSError as e:
        _gone_or(view, "cmdline", e)
    if view.zombie or view.kernel_thread:
        view.threads = [Thread(pid, view.name, view.cpus)]
        return view
    view.threads = _threads(here, pid, view)
    try:
        view.environ = read_environ(here)
    except OSError as e:
        _gone_or(view, "environ", e)
    _fds(here, view)
    _numa_maps(here, view, pages)
    # the process may have exited while it was read: what was read stands for a process that no longer runs
    if not os.path.exists(os.path.join(here, "status")):
        raise Gone(pid, "exited while it was read")
    return view


def _gone_or(view: View, what: str, e: OSError) -> None:
    if e.errno in _GONE:
        raise Gone(view.pid, "exited while it was read") from None
    _denied(view, what, e)


def _list(text: str) -> frozenset[int]:
    try:
        return parse_cpulist(text)
    except ValueError:
        return frozenset()


def _cpus(st: dict[str, str]) -> frozenset[int]:
    return _list(st.get("Cpus_allowed_list", ""))


def _threads(here: str, pid: int, view: View) -> list[Thread]:
    try:
        tids = sorted(int(t) for t in os.listdir(os.path.join(here, "task")) if t.isascii() and t.isdigit())
    except OSError as e:
        _gone_or(view, "task", e)
        return [Thread(pid, view.name, view.cpus)]
    out = []
    for tid in tids:
        try:
            st = parse_status(_read(os.path.join(here, "task", str(tid), "status")).decode("utf-8", "replace"))
        except OSError as e:
            if e.errno in _GONE:
                continue  # a thread that ended meanwhile
            _denied(view, f"task {tid}", e)
            continue
        out.append(Thread(tid, st.get("Name", ""), _cpus(st)))
    return out


def read_environ(here: str) -> dict[str, str]:
    """The environment the process at ``here`` (``/proc/PID``) was started with; OSError where it cannot be read."""
    raw = _read(os.path.join(here, "environ"), ENVIRON_MAX)
    return _environ(raw, whole=len(raw) < ENVIRON_MAX)


def _environ(raw: bytes, whole: bool = True) -> dict[str, str]:
    """``KEY=value`` items; where the read was cut (``whole`` false), its last item is cut too and not taken."""
    items = raw.split(b"\0")
    if not whole:
        items.pop()
    out = {}
    for item in items:
        key, sep, value = item.partition(b"=")
        if sep and key:
            out.setdefault(key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
    return out


def _fds(here: str, view: View) -> None:
    folder = os.path.join(here, "fd")
    try:
        names = os.listdir(folder)
    except OSError as e:
        _gone_or(view, "fd", e)
        return
    dev_root = os.environ.get(DEV_VAR) or ""
    minors: set[int] = set()
    for n in names:
        path = os.path.join(folder, n)
        try:
            target = os.readlink(path)
        except OSError:
            continue  # closed meanwhile
        base = os.path.basename(target)
        if base.startswith("memfd:" + MEMFD_NAME):
            if _is_record(target, view.source):
                try:
                    view.binding_text = _read_record(path)
                except OSError as e:
                    if e.errno not in _GONE:
                        _denied(view, f"fd {n}", e)
            continue
        if not base.startswith("nvidia"):
            continue
        minor = _nvidia_minor(path, target, dev_root)
        if minor is None:
            continue
        view.nvidia_fds += 1
        if minor not in (CTL_MINOR, MODESET_MINOR):
            minors.add(minor)
    view.gpu_minors = sorted(minors)


def _is_record(target: str, source: str) -> bool:
    """A memfd's link reads ``/memfd:NAME (deleted)``; the simulator's stands in a file under its /proc folder.
    Anything else of that name (a file or FIFO on a disk, made to look like one) is not a record."""
    if target.startswith("/memfd:" + MEMFD_NAME):
        return True
    return source != "/proc" and target.startswith(source.rstrip("/") + "/")


def _read_record(path: str) -> str:
    """The record behind an fd, opened without blocking and read only where it is a regular file (a memfd is one):
    a FIFO or device given that name by a hostile process must not stall the check."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.pread(fd, _RECORD_READ, 0).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _nvidia_minor(path: str, target: str, dev_root: str) -> int | None:
    """The minor of the NVIDIA device the fd at ``path`` holds: from the open file itself where it is a character
    device (exact in any mount namespace); by name for the simulator's files (``$GPUAFFINITY_DEV_ROOT/nvidiaN``)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        return os.minor(st.st_rdev) if os.major(st.st_rdev) == NVIDIA_MAJOR else None
    if dev_root and target.startswith(dev_root.rstrip("/") + "/") and stat.S_ISREG(st.st_mode):
        name = target[len(dev_root.rstrip("/")) + 1:]
        if name == "nvidiactl":
            return CTL_MINOR
        digits = name[6:] if name.startswith("nvidia") else ""
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _numa_maps(here: str, view: View, pages: bool) -> None:
    path = os.path.join(here, "numa_maps")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        _gone_or(view, "numa_maps", e)
        return
    try:
        if not pages:
            _policy_only(fd, view)
            return
        tail = b""
        counted = Pages()
        refused = len(view.denied)
        for chunk in _chunks(fd, view, _READ):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line:
                    _count(counted, line, view)
        if len(view.denied) > refused:
            return  # a read refused part way: no pages rather than some of them
        if tail:
            _count(counted, tail, view)
        view.pages = counted
    finally:
        os.close(fd)


#: bytes a read asks for while only the first line is wanted: the kernel's seq_file prints (and walks the pages
#: of) mapping after mapping until it has as many bytes as the read asks for, up to a page of text, so a larger
#: read walks the mappings printed after the first, where a process's largest ones often are
_FIRST_LINE_READ = 64


def _policy_only(fd: int, view: View) -> None:
    """The first line's policy: reads of ``_FIRST_LINE_READ`` bytes until its end, so the kernel walks the first
    mapping or two (the program's own), never the process's memory."""
    got = b""
    for chunk in _chunks(fd, view, _FIRST_LINE_READ):
        got += chunk
        if b"\n" in got or len(got) >= _READ:
            break
    line = got.split(b"\n", 1)[0]
    if line:
        view.policy = parse_numa_maps_line(line)[0]


def _chunks(fd: int, view: View, size: int) -> Iterator[bytes]:
    """Reads of ``size`` bytes of numa_maps until its end; a process that exits meanwhile raises ``Gone``, a read
    refused otherwise ends them with the reason in ``view.denied``."""
    while True:
        try:
            chunk = os.read(fd, size)
        except OSError as e:
            _gone_or(view, "numa_maps", e)
            return
        if not chunk:
            return
        yield chunk


def _count(pages: Pages, line: bytes, view: View | None = None) -> None:
    """Add one numa_maps line to ``pages``; the first line's policy is ``view``'s (the main thread's)."""
    policy, ordinary, size, per_node = parse_numa_maps_line(line)
    if view is not None and view.policy is None:
        view.policy = policy
    pages.mappings += 1
    into = pages.file_nodes if ordinary else pages.nodes
    for node, n in per_node.items():
        into[node] = into.get(node, 0) + n * size
