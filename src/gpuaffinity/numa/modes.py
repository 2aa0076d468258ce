"""Which CPUs and memory nodes a process serving one GPU should use: the partition modes.

The rules, with every shape they were checked on, are in docs/numa.md; in short:

``node``
    Every allowed CPU of the GPU's NUMA node(s).
``socket``
    Every allowed CPU of the package(s) that hold those nodes, and every node
    with CPUs in those packages.
``exclusive``
    The GPU's share of the CPUs this process may use on its node(s): the
    allowed cores there are split among every GPU local to the node (all the
    machine's GPUs, in PCI order), whole cores, contiguous shares, the first
    GPUs getting one core more where they do not divide evenly.  So one
    process per GPU gets disjoint cores without any of them talking to the
    others.
``llc``
    The same split, with whole last-level cache domains as the unit.

The memory nodes are the mode's nodes, less the GPU's own memory nodes (unless
``gpu_memory``), with a node that has no memory replaced by its nearest nodes
that have, and limited to the nodes this process may allocate on.  A GPU
without a node (numa_node = -1) has no preference: every mode gives all
allowed CPUs and no memory node.

Owns: the CPUs and memory nodes each mode gives a GPU.
"""

from __future__ import annotations

from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.core.notes import attention
from gpuaffinity.core.record import record
from gpuaffinity.core.settings import MODES
from gpuaffinity.numa.query import Locality, allowed_memory_nodes
from gpuaffinity.numa.sysfs import Sysfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TypeVar

    T = TypeVar("T")

_ASK = object()  # allowed_mems not given: read Mems_allowed


@record(frozen=True)
class Placement:
    """What one mode gives a GPU: the memory nodes of its memory policy, the CPUs to bind to, and notes.

    ``shared_with``: the GPUs (PCI bus ids) given the very same CPUs, where an ``exclusive`` or ``llc``
    split has fewer units than GPUs; empty when this GPU's share is its own.  ``shared_why``: how they share
    it (``as GPU(s) … do: …``), the tail of the BindWarning (gpuaffinity.placement.shared_message)."""

    mode: str
    memory_nodes: tuple[int, ...]
    bind_cpus: frozenset[int]
    notes: tuple[str, ...] = ()
    shared_with: tuple[str, ...] = ()
    shared_why: str = ""


def cores_of(cpus: frozenset[int], sysfs: Sysfs | None = None, notes: list[str] | None = None
             ) -> list[tuple[int, ...]]:
    """Physical cores (tuples of sibling CPUs) among ``cpus``, ordered by their first CPU."""
    fs = Sysfs() if sysfs is None else sysfs
    cores = {tuple(sorted(fs.siblings(c, notes) & cpus)) for c in cpus}
    return sorted((c for c in cores if c), key=lambda c: c[0])


def split_evenly(items: Sequence[T], parts: int, index: int) -> list[T]:
    """The ``index``-th of ``parts`` contiguous, as-even-as-possible slices (the first ones get the extra)."""
    base, extra = divmod(len(items), parts)
    start = index * base + min(index, extra)
    return list(items[start:start + base + (1 if index < extra else 0)])


def place(loc: Locality, mode: str, allowed: frozenset[int], gpus_by_node: dict[int, list[str]] | None = None,
          *, gpu_memory: bool = False, allowed_mems: frozenset[int] | None | object = _ASK,
          sysfs: Sysfs | None = None) -> Placement:
    """The CPUs and memory nodes for a process serving the GPU at ``loc`` in ``mode``.

    ``allowed``: the CPUs this process may use.  ``gpus_by_node`` lists, for
    each node, the PCI bus ids of GPUs local to it; the GPUs the machine's PCI
    tree shows are added, so the ``exclusive`` and ``llc`` splits count every
    GPU of the machine, whatever this process may open.  ``gpu_memory``: also
    bind memory to the GPU's own memory node(s) (Grace Hopper).
    ``allowed_mems``: the nodes this process may allocate on; by default read
    from ``Mems_allowed_list`` (None: no limit).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    fs = Sysfs() if sysfs is None else sysfs
    notes = list(loc.notes)
    online = fs.online_cpus(notes)
    usable = allowed if online is None else allowed & online
    if not loc.numa_nodes:
        return Placement(mode, (), usable, (*notes, attention("no NUMA preference: every allowed CPU")))
    pool = loc.cpus & usable
    nodes: tuple[int, ...] = loc.numa_nodes
    shared: list[str] = []  # the GPUs given the same CPUs as this one (exclusive, llc)
    if mode == "node":
        cpus = pool
    elif mode == "socket":
        cpus, nodes = _socket(loc, usable, fs, notes)
    else:
        peers = _peers(loc, gpus_by_node, fs)
        rank = peers.index(loc.pci_bus_id)
        where = f"node(s) {format_cpulist(loc.numa_nodes)}"
        if set(loc.cpu_nodes) - set(loc.numa_nodes):
            notes.append(f"this GPU's CPUs come from node(s) {format_cpulist(loc.cpu_nodes)}, whose own GPUs do not "
                         "count it in their split: its share overlaps theirs")
        if mode == "exclusive":
            cpus = _exclusive(pool, peers, rank, where, fs, notes, shared)
        else:
            cpus = _llc(pool, peers, rank, where, fs, notes, shared)
    mems = allowed_memory_nodes() if allowed_mems is _ASK else allowed_mems
    memory = _memory_nodes(nodes, loc, gpu_memory, mems, fs, notes)  # type: ignore[arg-type]
    why = ""
    if shared:
        units = "cores" if mode == "exclusive" else "last-level cache domains"
        why = (f"as GPU(s) {', '.join(shared)} do: their node(s) {format_cpulist(loc.numa_nodes)} have fewer "
               f"{units} allowed here than GPUs")
    return Placement(mode, memory, cpus, tuple(notes), tuple(shared), why)


def _peers(loc: Locality, gpus_by_node: dict[int, list[str]] | None, fs: Sysfs) -> list[str]:
    """Every GPU local to the GPU's node(s), in PCI order: the GPUs an exclusive split is shared with."""
    machine = fs.gpus_by_node()
    found = {loc.pci_bus_id}
    for n in loc.numa_nodes:
        found.update((gpus_by_node or {}).get(n, ()))
        found.update(machine.get(n, ()))
    return sorted(found)


def _share(units: list[tuple[int, ...]], peers: list[str], rank: int, what: str, own: str, where: str,
           notes: list[str], shared: list[str]) -> frozenset[int]:
    """This GPU's contiguous share of ``units``; with fewer units than GPUs, unit ``rank`` mod count, shared:
    the GPUs it is shared with go into ``shared``."""
    if not units:
        return frozenset()
    what += "" if len(units) == 1 else "s"
    if len(units) >= len(peers):
        share = split_evenly(units, len(peers), rank)
        notes.append(f"GPU {rank + 1} of {len(peers)} on {where}: {len(share)} of the {len(units)} {what}")
    else:
        share = [units[rank % len(units)]]
        others = [r for r in range(len(peers)) if r % len(units) == rank % len(units) and r != rank]
        shared.extend(peers[r] for r in others)
        # plain info: the GPUs sharing it are in Placement.shared_with, which bind() says out loud (a BindWarning)
        notes.append(f"{len(units)} {what} for {len(peers)} GPUs on {where}: no {own} of its own for each GPU, they "
                     f"are dealt round-robin: GPU {rank + 1} gets {format_cpulist(share[0])}, as does GPU "
                     f"{format_cpulist(r + 1 for r in others)}")
    return frozenset(c for unit in share for c in unit)


def _exclusive(pool: frozenset[int], peers: list[str], rank: int, where: str, fs: Sysfs,
               notes: list[str], shared: list[str]) -> frozenset[int]:
    cores = cores_of(pool, fs, notes)
    if len(cores) >= len(peers) or len(pool) <= len(cores):
        return _share(cores, peers, rank, "allowed core", "core", where, notes, shared)
    threads = [(c,) for core in cores for c in core]  # core by core, so a share keeps siblings where it can
    notes.append(attention(f"{len(cores)} allowed cores for {len(peers)} GPUs on {where}: split by hardware "
                           "thread, so siblings are split"))
    return _share(threads, peers, rank, "allowed CPU", "core", where, notes, shared)


def _llc(pool: frozenset[int], peers: list[str], rank: int, where: str, fs: Sysfs,
         notes: list[str], shared: list[str]) -> frozenset[int]:
    domains: set[tuple[int, ...]] = set()
    for cpu in pool:
        shared_cache = fs.last_level_cache(cpu, notes)
        if shared_cache is None:
            notes.append("no last-level cache information in sysfs: using the node")
            return pool
        domains.add(tuple(sorted(shared_cache & pool)))
    if len(domains) == 1 and len(peers) > 1:
        # one cache domain spans the whole pool (an Intel L3 per package): every GPU of the node gets it, which is
        # what llc means there (one cache group), as on a machine without cache files; not a failed share
        notes.append(f"one last-level cache domain spans the allowed CPUs of {where}: all {len(peers)} GPUs there "
                     f"get it whole ({format_cpulist(pool)}): llc groups by cache, and there is one group")
        return pool
    return _share(sorted(domains), peers, rank, "last-level cache domain", "last-level cache", where, notes,
                  shared)


def _socket(loc: Locality, usable: frozenset[int], fs: Sysfs, notes: list[str]
            ) -> tuple[frozenset[int], tuple[int, ...]]:
    """Every usable CPU of the packages holding the GPU's CPUs, and the nodes with CPUs there."""
    packages = {fs.package(c) for c in loc.local_cpus}
    if not packages or None in packages:
        notes.append("the kernel does not tell which package this GPU's CPUs are on (physical_package_id missing "
                     "or -1): socket mode uses the GPU's node")
        return loc.cpus & usable, loc.numa_nodes
    every = fs.online_cpus() or frozenset().union(*(fs.node_cpus(n) for n in fs.node_ids()))
    in_packages = frozenset(c for c in every if fs.package(c) in packages)
    nodes = {n for n in fs.node_ids() if fs.node_cpus(n) & in_packages} | set(loc.numa_nodes)
    return in_packages & usable, tuple(sorted(nodes - set(loc.gpu_memory_nodes)))


def _memory_nodes(nodes: tuple[int, ...], loc: Locality, gpu_memory: bool, allowed_mems: frozenset[int] | None,
                  fs: Sysfs, notes: list[str]) -> tuple[int, ...]:
    wanted = set(nodes) | (set(loc.gpu_memory_nodes) if gpu_memory else set())
    with_memory = fs.nodes_with_memory(notes)
    out: set[int] = set()
    for n in sorted(wanted):
        if with_memory is None or n in with_memory:
            out.add(n)
            continue
        near = fs.nearest(n, with_memory, notes)
        out.update(near)
        notes.append(f"node {n} has no memory: memory goes to the nearest node(s) with memory "
                     f"({format_cpulist(near) or 'unknown: memory left alone'})")
    if allowed_mems is not None and out - allowed_mems:
        notes.append(attention(f"memory on node(s) {format_cpulist(out - allowed_mems)} is not allowed to this "
                               f"process (Mems_allowed_list {format_cpulist(allowed_mems) or 'empty'}, from its "
                               "cgroup cpuset): left out of the memory policy"))
        out &= allowed_mems
    return tuple(sorted(out))
