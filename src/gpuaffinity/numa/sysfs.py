"""The kernel's topology files, read in order of preference, with a note wherever they disagree.

Real sysfs is messier than a textbook tree: some kernels end lists with a NUL
byte, older ones give only the hex ``cpumap`` of a node, ``thread_siblings``
may exist only as a mask, ``physical_package_id`` may be -1, and cache
``index3`` is not always the L3.  ``Sysfs`` reads each file at most once per
instance (one instance per question asked), prefers the list form of a file to
its mask form, and records a note, in plain words, for every file it had to
skip or that contradicts another.  Nothing here binds or asks NVML.

Owns: the reading of the kernel's topology files.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist, parse_cpumask
from gpuaffinity.core.settings import SYSFS_VAR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers: GPUs, not NVSwitches (0x0680) or audio (0x0403)


def sysfs_root() -> Path:
    """Where /sys is: ``GPUAFFINITY_SYSFS_ROOT`` (the simulator's tree) or ``/sys``."""
    return Path(os.environ.get(SYSFS_VAR) or "/sys")


def read_text(path: Path) -> str | None:
    """A sysfs file's text without surrounding white space or NUL bytes; None when it cannot be read."""
    try:
        return path.read_text(errors="replace").strip(" \t\n\r\v\f\0")
    except OSError:
        return None


def _has_memory(meminfo: str) -> bool:
    """A node's ``meminfo`` ("Node 0 MemTotal:  65536 kB") names a MemTotal other than 0."""
    at = meminfo.find("MemTotal:")
    if at < 0:
        return False
    rest = meminfo[at + len("MemTotal:"):].lstrip(" \t")
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    return bool(digits.strip("0"))


class Sysfs:
    """One consistent look at /sys (or the simulator's tree).

    Every method returns the kernel's answer, or None where the kernel does not
    say.  Each answer is computed once; the notes it produced are handed to
    every caller that asks for it, through the ``notes`` list the caller passes.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = sysfs_root() if root is None else root
        self._memo: dict[Any, tuple[Any, tuple[str, ...]]] = {}

    # ---- plumbing -----------------------------------------------------------------------------

    def _once(self, compute: Callable[[list[str]], Any], notes: list[str] | None, *args: Any) -> Any:
        """``compute(notes)`` once per call site and arguments; its notes go to every caller's list."""
        key = (compute.__code__, args)
        if key not in self._memo:
            produced: list[str] = []
            self._memo[key] = (compute(produced), tuple(produced))
        value, produced_notes = self._memo[key]
        if notes is not None:
            notes.extend(n for n in produced_notes if n not in notes)
        return value

    def text(self, rel: str) -> str | None:
        return self._once(lambda _n: read_text(self.root / rel), None, rel)

    def _cpus(self, rel: str, notes: list[str], mask: bool = False) -> frozenset[int] | None:
        """A CPU list file (``mask``: a hex mask file); None when missing, or unreadable (with a note then)."""
        text = self.text(rel)
        if text is None:
            return None
        try:
            return parse_cpumask(text) if mask else parse_cpulist(text)
        except ValueError as e:
            notes.append(f"{self.root / rel} is not a CPU {'mask' if mask else 'list'} ({e}): ignored")
            return None

    def _list_or_mask(self, list_rel: str, mask_rel: str, notes: list[str]) -> frozenset[int] | None:
        """The list form of a file, else its mask form; a note when both exist and disagree."""
        listed = self._cpus(list_rel, notes)
        masked = self._cpus(mask_rel, notes, mask=True)
        if listed is not None and masked is not None and listed != masked:
            notes.append(f"{self.root / list_rel} ({format_cpulist(listed) or 'empty'}) and "
                         f"{self.root / mask_rel} ({format_cpulist(masked) or 'empty'}) disagree: using the list")
        return listed if listed is not None else masked

    # ---- CPUs -----------------------------------------------------------------------------------

    def online_cpus(self, notes: list[str] | None = None) -> frozenset[int] | None:
        """The CPUs that are online (``cpu/online``); None when the kernel does not say."""
        return self._once(lambda n: self._cpus("devices/system/cpu/online", n), notes)

    def package(self, cpu: int) -> int | None:
        """The CPU's package (socket), or None when missing or unknown (``physical_package_id`` = -1)."""
        text = self.text(f"devices/system/cpu/cpu{cpu}/topology/physical_package_id")
        return int(text) if text is not None and text.isdigit() else None

    def siblings(self, cpu: int, notes: list[str] | None = None) -> frozenset[int]:
        """The hardware threads of the CPU's core, the CPU included.

        In order of preference: ``core_cpus_list``, ``thread_siblings_list``,
        then their hex forms ``core_cpus`` and ``thread_siblings``; a CPU
        without any of them is its own core.
        """
        def compute(n: list[str]) -> frozenset[int]:
            base = f"devices/system/cpu/cpu{cpu}/topology"
            for list_name, mask_name in (("core_cpus_list", "core_cpus"), ("thread_siblings_list", "thread_siblings")):
                found = self._list_or_mask(f"{base}/{list_name}", f"{base}/{mask_name}", n)
                if found is not None and cpu in found:
                    return found
                if found is not None:
                    n.append(f"{self.root / base}/{list_name} ({format_cpulist(found)}) leaves out CPU {cpu} itself: "
                             "ignored")
            n.append(f"no thread siblings in {self.root}/devices/system/cpu/cpu*/topology: a CPU without them is "
                     "taken as a core of its own")
            return frozenset({cpu})
        return self._once(compute, notes, cpu)

    def last_level_cache(self, cpu: int, notes: list[str] | None = None) -> frozenset[int] | None:
        """The CPUs sharing this CPU's last-level cache: the data or unified cache of highest ``level``.

        Every ``cache/index*`` is read with its ``level`` and ``type``: ``index3``
        is not always the L3.  None when the kernel gives no cache information.
        """
        def compute(n: list[str]) -> frozenset[int] | None:
            base = self.root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cache"
            try:
                indexes = sorted(p.name for p in base.iterdir() if p.name.startswith("index"))
            except OSError:
                return None
            best: tuple[int, frozenset[int]] | None = None
            for index in indexes:
                rel = f"devices/system/cpu/cpu{cpu}/cache/{index}"
                level = self.text(f"{rel}/level")
                kind = self.text(f"{rel}/type")  # missing: a unified cache
                if level is None or not level.isdigit():
                    n.append(f"a cache in {self.root}/devices/system/cpu/cpu*/cache has no level: ignored")
                    continue
                if kind == "Instruction":
                    continue
                shared = self._list_or_mask(f"{rel}/shared_cpu_list", f"{rel}/shared_cpu_map", n)
                if shared is None:
                    continue
                if best is None or int(level) > best[0]:
                    best = (int(level), shared | {cpu})
            return None if best is None else best[1]
        return self._once(compute, notes, cpu)

    # ---- NUMA nodes -------------------------------------------------------------------------------

    def node_ids(self, notes: list[str] | None = None) -> tuple[int, ...]:
        """The online NUMA nodes (``node/online``, else the ``node<N>`` folders)."""
        def compute(n: list[str]) -> tuple[int, ...]:
            listed = self._cpus("devices/system/node/online", n)
            if listed is not None:
                return tuple(sorted(listed))
            try:
                names = os.listdir(self.root / "devices" / "system" / "node")
            except OSError:
                return ()
            return tuple(sorted(int(x[4:]) for x in names if x.startswith("node") and x[4:].isdigit()))
        return self._once(compute, notes)

    def node_cpus(self, node: int, notes: list[str] | None = None) -> frozenset[int]:
        """The node's online CPUs: ``cpulist``, else the hex ``cpumap`` (older kernels), each with a note."""
        def compute(n: list[str]) -> frozenset[int]:
            base = f"devices/system/node/node{node}"
            listed = self._cpus(f"{base}/cpulist", n)
            masked = self._cpus(f"{base}/cpumap", n, mask=True)
            if listed is None and masked is not None:
                n.append(f"{self.root}/devices/system/node/node*/cpulist is missing: each node's CPUs taken from its "
                         "cpumap")
            elif listed is not None and masked is not None and listed != masked:
                n.append(f"{self.root / base}/cpulist ({format_cpulist(listed) or 'empty'}) and cpumap "
                         f"({format_cpulist(masked) or 'empty'}) disagree: using cpulist")
            cpus = listed if listed is not None else masked
            if cpus is None:
                n.append(f"neither {self.root / base}/cpulist nor cpumap can be read: node {node} taken as "
                         "having no CPUs")
                return frozenset()
            online = self.online_cpus(n)
            return cpus if online is None else cpus & online
        return self._once(compute, notes, node)

    def nodes_with_memory(self, notes: list[str] | None = None) -> frozenset[int] | None:
        """Nodes that have memory: ``node/has_memory``, else each node's ``meminfo`` MemTotal; None if unknown."""
        def compute(n: list[str]) -> frozenset[int] | None:
            listed = self._cpus("devices/system/node/has_memory", n)
            if listed is not None:
                return listed
            found: set[int] = set()
            ids = self.node_ids(n)
            if not ids:
                return None
            for node in ids:
                text = self.text(f"devices/system/node/node{node}/meminfo")
                if text is None:
                    return None
                if _has_memory(text):
                    found.add(node)
            return frozenset(found)
        return self._once(compute, notes)

    def distances(self, node: int, notes: list[str] | None = None) -> dict[int, int] | None:
        """The node's distance to every online node (``node<N>/distance``); None when unreadable."""
        def compute(n: list[str]) -> dict[int, int] | None:
            text = self.text(f"devices/system/node/node{node}/distance")
            ids = self.node_ids(n)
            if text is None:
                return None
            values = text.split()
            if len(values) != len(ids) or not all(v.isdigit() for v in values):
                n.append(f"{self.root}/devices/system/node/node{node}/distance ({text!r}) does not list one "
                         f"distance per online node ({format_cpulist(ids)}): ignored")
                return None
            return {node: int(values[i]) for i, node in enumerate(ids)}
        return self._once(compute, notes, node)

    def nearest(self, node: int, candidates: frozenset[int], notes: list[str] | None = None) -> tuple[int, ...]:
        """The candidates at the smallest distance from ``node`` (all of them on a tie); () if unknown."""
        dist = self.distances(node, notes)
        if not dist:
            return ()
        reach = {c: dist[c] for c in candidates if c in dist and c != node}
        if not reach:
            return ()
        best = min(reach.values())
        return tuple(sorted(c for c, d in reach.items() if d == best))

    # ---- PCI devices ------------------------------------------------------------------------------

    def pci_dir(self, bus_id: str) -> Path:
        return self.root / _pci(bus_id)

    def pci_numa_node(self, bus_id: str, notes: list[str] | None = None) -> int | None:
        """The device's ``numa_node`` (-1: the firmware gives none); None when the file is missing or garbled."""
        def compute(n: list[str]) -> int | None:
            text = self.text(f"{_pci(bus_id)}/numa_node")
            if text is None:
                return None
            digits = text[1:] if text.startswith("-") else text
            if not (digits.isascii() and digits.isdigit()):  # int() would take '+1', '1_0', Arabic digits
                n.append(f"{self.pci_dir(bus_id)}/numa_node says {text!r}, not a node: ignored")
                return None
            value = int(text)
            return value if value >= 0 else -1
        return self._once(compute, notes, bus_id)

    def pci_local_cpus(self, bus_id: str, notes: list[str] | None = None) -> frozenset[int] | None:
        """The device's ``local_cpulist``, else its hex ``local_cpus``; None when neither can be read."""
        base = _pci(bus_id)
        return self._once(lambda n: self._list_or_mask(f"{base}/local_cpulist", f"{base}/local_cpus", n), notes,
                          bus_id)

    def gpus_by_node(self) -> dict[int, list[str]]:
        """Every NVIDIA GPU the machine's PCI tree shows, by ``numa_node``, whatever this process may open."""
        def compute(_n: list[str]) -> dict[int, list[str]]:
            out: dict[int, list[str]] = {}
            try:
                names = sorted(os.listdir(self.pci_dir("")))
            except OSError:
                return out
            for bus in names:
                if self.text(f"{_pci(bus)}/vendor") != NVIDIA_VENDOR:
                    continue
                cls = self.text(f"{_pci(bus)}/class")
                if cls is None or not cls.startswith(GPU_CLASSES):
                    continue
                node = self.pci_numa_node(bus)
                if node is not None and node >= 0:
                    out.setdefault(node, []).append(bus)
            return out
        return self._once(compute, None)


def _pci(bus_id: str) -> str:
    """Where a PCI device's files are, relative to /sys."""
    return f"bus/pci/devices/{bus_id}"
