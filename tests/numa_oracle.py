"""The NUMA stage's rules (docs/numa.md), computed from a topology file alone.

The code under test reads the rendered sysfs and NVML's answers; this module
reads only the ``Topology`` the simulator was built from, and states each rule
the plain way, so that a wrong reading of sysfs, or a wrong rule in
``gpuaffinity.numa``, shows up as a difference.  Literal expectations in the
tests pin the oracle itself down.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from gpuaffinity.numa.modes import MODES, place
from gpuaffinity.numa.query import gpu_locality
from gpuaffinity.numa.sysfs import Sysfs
from gpuaffinity.sim.render import gpu_locality as nvml_answer
from gpuaffinity.sim.render import render_sysfs
from gpuaffinity.sim.topology import Gpu, Topology

Answer = tuple[frozenset[int], tuple[int, ...]]


def with_gpus(topo: Topology, count: int) -> Topology:
    """The machine with only its first ``count`` GPUs (PCI order)."""
    return dataclasses.replace(topo, gpus=topo.gpus[:count], name=f"{topo.name}-{count}")


class Oracle:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.online = topo.cpus
        self.node_cpus = {n.id: n.cpus & self.online for n in topo.nodes}
        self.socket = {n.id: n.socket for n in topo.nodes}
        self.cpu_nodes = {n for n, c in self.node_cpus.items() if c}
        self.has_memory = {n.id for n in topo.nodes if n.memory_mib > 0}
        self.node_of = {c: n.id for n in topo.nodes for c in n.cpus}

    def distance(self, a: int, b: int) -> int:
        return 10 if a == b else 12 if self.socket[a] == self.socket[b] else 21

    def nearest(self, node: int, among: set[int]) -> set[int]:
        others = among - {node}
        if not others:
            return set()
        best = min(self.distance(node, o) for o in others)
        return {o for o in others if self.distance(node, o) == best}

    def gpu_nodes(self, gpu: Gpu) -> set[int]:
        if gpu.numa_node >= 0:
            return {gpu.numa_node}
        return {gpu.nvml_numa_node} if gpu.nvml_numa_node is not None else set()

    def local_cpus(self, nodes: set[int]) -> frozenset[int]:
        users: set[int] = set()
        for n in nodes:
            users |= {n} if n in self.cpu_nodes else self.nearest(n, self.cpu_nodes)
        return frozenset(c for n in users for c in self.node_cpus[n])

    def peers(self, gpu: Gpu) -> list[str]:
        mine = self.gpu_nodes(gpu)
        return sorted(g.pci_bus_id for g in self.topo.gpus if self.gpu_nodes(g) & mine)

    def cores(self, pool: frozenset[int]) -> list[tuple[int, ...]]:
        cores = [tuple(sorted(c for c in core if c in pool)) for core in self.topo.cores()]
        return sorted((c for c in cores if c), key=lambda c: c[0])

    def llc_groups(self) -> list[frozenset[int]] | None:
        l3 = self.topo.l3
        if l3 is None:
            return None
        if l3 == "package":
            return [frozenset(c for c in self.online if self.socket[self.node_of[c]] == s)
                    for s in set(self.socket.values())]
        if l3 == "node":
            return list(self.node_cpus.values())
        groups = []
        for n in self.topo.nodes:
            mine = [core for core in self.topo.cores() if self.node_of[core[0]] == n.id]
            groups += [frozenset(c for core in mine[i:i + int(l3)] for c in core) & self.online
                       for i in range(0, len(mine), int(l3))]
        return groups

    @staticmethod
    def share(units: list[tuple[int, ...]], parts: int, rank: int) -> frozenset[int]:
        """Contiguous shares, the first ``len % parts`` one unit larger; fewer units than parts: round-robin."""
        if not units:
            return frozenset()
        if len(units) < parts:
            return frozenset(units[rank % len(units)])
        size, extra = divmod(len(units), parts)
        start = rank * size + min(rank, extra)
        return frozenset(c for u in units[start:start + size + (rank < extra)] for c in u)

    def expect(self, gpu: Gpu, mode: str, allowed: frozenset[int] | None = None,
               mems: frozenset[int] | None = None, gpu_memory: bool = False) -> Answer:
        usable = (self.online if allowed is None else allowed) & self.online
        nodes = self.gpu_nodes(gpu)
        if not nodes:
            return usable, ()
        local = self.local_cpus(nodes)
        pool = local & usable
        memory = set(nodes)
        if mode == "node":
            cpus = pool
        elif mode == "socket":
            packages = {self.socket[self.node_of[c]] for c in local}
            cpus = frozenset(c for c in self.online if self.socket[self.node_of[c]] in packages) & usable
            memory |= {n for n in self.cpu_nodes if self.socket[n] in packages}
        else:
            peers = self.peers(gpu)
            rank = peers.index(gpu.pci_bus_id)
            if mode == "exclusive":
                cores = self.cores(pool)
                units = cores
                if len(cores) < len(peers) and len(pool) > len(cores):
                    units = [(c,) for core in cores for c in core]
                cpus = self.share(units, len(peers), rank)
            else:
                groups = self.llc_groups()
                if groups is None:
                    cpus = pool
                else:
                    domains = sorted({tuple(sorted(g & pool)) for g in groups if g & pool}, key=lambda d: d[0])
                    cpus = self.share(domains, len(peers), rank)
        if gpu_memory and gpu.gpu_memory_node is not None:
            memory.add(gpu.gpu_memory_node)
        placed: set[int] = set()
        for n in memory:
            placed |= {n} if n in self.has_memory else self.nearest(n, self.has_memory)
        if mems is not None:
            placed &= mems
        return cpus, tuple(sorted(placed))


def render(topo: Topology, root: Path | None = None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="numa-oracle-")) if root is None else root
    render_sysfs(topo, root)
    return root


def plan_in_process(topo: Topology, root: Path, allowed: frozenset[int] | None = None,
                    mems: frozenset[int] | None = None, gpu_memory: bool = False,
                    nvml: bool = True) -> dict[str, dict[str, tuple[frozenset[int], tuple[int, ...], tuple[str, ...]]]]:
    """What gpuaffinity.numa plans for every GPU and mode from the rendered tree, with the simulator's NVML answers.

    ``GPUAFFINITY_PROCFS_ROOT`` must point somewhere without driver files (the caller's monkeypatch)."""
    assert os.environ.get("GPUAFFINITY_PROCFS_ROOT"), "set GPUAFFINITY_PROCFS_ROOT first"
    allowed = topo.cpus if allowed is None else allowed
    fs = Sysfs(root)
    answers = {}
    for g in topo.gpus:
        m = nvml_answer(topo, g)
        answers[g.pci_bus_id] = (m["node_mem"], m["node_cpu"], m["gpu_mem"]) if nvml else None
    locs = {b: gpu_locality(b, allowed, answers[b], sysfs=fs) for b in answers}
    by_node: dict[int, list[str]] = {}
    for bus, loc in locs.items():
        for n in loc.numa_nodes:
            by_node.setdefault(n, []).append(bus)
    out = {}
    for bus, loc in locs.items():
        out[bus] = {}
        for mode in MODES:
            p = place(loc, mode, allowed, by_node, gpu_memory=gpu_memory, allowed_mems=mems, sysfs=fs)
            out[bus][mode] = (p.cpus, p.numa_nodes, p.notes)
    return out
