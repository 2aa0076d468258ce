"""Which CPUs a process serving one GPU should run on: the partition modes.

``node``
    Every allowed CPU of the GPU's NUMA node(s).
``socket``
    Every allowed CPU of the package(s) that hold those nodes.
``exclusive``
    The node's physical cores, split evenly among the GPUs local to that node,
    in PCI order; this GPU gets its share.  Hyperthread siblings stay together,
    and the split depends only on the machine and the GPU, so one process per
    GPU gets disjoint cores without any of them talking to the others.
``llc``
    The allowed CPUs that share this GPU's node's last-level caches
    (``cache/index3/shared_cpu_list``); the node where the machine says nothing.

A GPU without a node (numa_node = -1) has no preference: every mode gives all
allowed CPUs and a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.settings import MODES
from gpuaffinity.numa.query import Locality, _read, sysfs_root


@dataclass(frozen=True)
class Placement:
    mode: str
    numa_nodes: tuple[int, ...]
    cpus: frozenset[int]
    notes: tuple[str, ...] = ()


def _cpu_topology(cpus: frozenset[int]) -> dict[int, tuple[int, tuple[int, ...]]]:
    """cpu -> (package, siblings) from sysfs; a CPU without topology files is its own core."""
    base = sysfs_root() / "devices" / "system" / "cpu"
    out = {}
    for cpu in cpus:
        pkg = _read(base / f"cpu{cpu}" / "topology" / "physical_package_id")
        sib = _read(base / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        out[cpu] = (int(pkg) if pkg and pkg.lstrip("-").isdigit() else 0,
                    tuple(sorted(parse_cpulist(sib))) if sib else (cpu,))
    return out


def _online_cpus() -> frozenset[int]:
    text = _read(sysfs_root() / "devices" / "system" / "cpu" / "online")
    return parse_cpulist(text) if text else frozenset()


def cores_of(cpus: frozenset[int]) -> list[tuple[int, ...]]:
    """Physical cores (tuples of sibling CPUs) among ``cpus``, ordered by their first CPU."""
    topo = _cpu_topology(cpus)
    cores = {tuple(c for c in sib if c in cpus) for _pkg, sib in topo.values()}
    return sorted((c for c in cores if c), key=lambda c: c[0])


def split_evenly(items: Sequence, parts: int, index: int) -> list:
    """The ``index``-th of ``parts`` contiguous, as-even-as-possible slices (the first ones get the extra)."""
    base, extra = divmod(len(items), parts)
    start = index * base + min(index, extra)
    return list(items[start:start + base + (1 if index < extra else 0)])


def place(loc: Locality, mode: str, allowed: frozenset[int], gpus_by_node: dict[int, list[str]] | None = None
          ) -> Placement:
    """The CPUs for a process serving the GPU at ``loc`` in ``mode``.

    ``gpus_by_node`` lists, for each node, the PCI bus ids of every GPU local to
    it (all of the machine's GPUs, whatever CUDA_VISIBLE_DEVICES says): needed
    by ``exclusive``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    notes = list(loc.notes)
    if not loc.numa_nodes:
        return Placement(mode, (), allowed, (*notes, "no NUMA preference: every allowed CPU"))
    if mode == "node":
        return Placement(mode, loc.numa_nodes, loc.cpus, tuple(notes))
    if mode == "socket":
        topo = _cpu_topology(_online_cpus() or loc.local_cpus)
        packages = {topo[c][0] for c in loc.local_cpus if c in topo}
        cpus = frozenset(c for c, (pkg, _) in topo.items() if pkg in packages) & allowed
        return Placement(mode, loc.numa_nodes, cpus, tuple(notes))
    if mode == "llc":
        shared: set[int] = set()
        for c in loc.local_cpus:
            text = _read(sysfs_root() / "devices" / "system" / "cpu" / f"cpu{c}" / "cache" / "index3" /
                         "shared_cpu_list")
            if text:
                shared |= parse_cpulist(text)
        if not shared:
            notes.append("no last-level cache information in sysfs: using the node")
            return Placement(mode, loc.numa_nodes, loc.cpus, tuple(notes))
        return Placement(mode, loc.numa_nodes, frozenset(shared) & allowed, tuple(notes))
    # exclusive
    peers = sorted(set().union(*((gpus_by_node or {}).get(n, []) for n in loc.numa_nodes)) | {loc.pci_bus_id})
    rank = peers.index(loc.pci_bus_id)
    cores = cores_of(loc.local_cpus)
    share = split_evenly(cores, len(peers), rank)
    mine = frozenset(c for core in share for c in core)
    if len(cores) < len(peers):
        notes.append(f"{len(cores)} cores for {len(peers)} GPUs: some GPUs get no core of their own")
    cpus = mine & allowed
    if mine and cpus != mine:
        notes.append(f"only {format_cpulist(cpus) or 'none'} of this GPU's share {format_cpulist(mine)} "
                     "is allowed to this process")
    notes.append(f"GPU {rank + 1} of {len(peers)} on node(s) {format_cpulist(loc.numa_nodes)}: "
                 f"{len(share)} of {len(cores)} cores")
    return Placement(mode, loc.numa_nodes, cpus, tuple(notes))
