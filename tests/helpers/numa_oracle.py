"""The NUMA stage's rules (docs/numa.md), computed from a topology file alone.

The code under test reads the rendered sysfs and NVML's answers; this module
reads only the ``Topology`` the simulator was built from, and states each rule
the plain way, so that a wrong reading of sysfs, or a wrong rule in
``gpuaffinity.numa``, shows up as a difference.  Literal expectations in the
tests pin the oracle itself down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist as fmt
from gpuaffinity.numa.modes import MODES, place
from gpuaffinity.numa.query import gpu_locality, nvml_can_matter
from gpuaffinity.numa.sysfs import Sysfs
from gpuaffinity.sim.render import gpu_locality as nvml_answer
from gpuaffinity.sim.render import render_sysfs
from gpuaffinity.sim.topology import Gpu, Topology

Answer = tuple[frozenset[int], tuple[int, ...]]


#: A VM of two NUMA nodes whose one GPU has none (numa_node = -1): what NVML names for it is all that can place it.
VM_2NODE = {"name": "vm-2node", "numa_node": [{"id": 0, "cpus": "0-3"}, {"id": 1, "cpus": "4-7"}],
            "gpu": [{"uuid": "GPU-00000000-0000-0000-0000-000000000001", "pci_bus_id": "0000:01:00.0",
                     "name": "NVIDIA H100", "numa_node": -1}]}


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
        cpus, nodes, _notes = self.expect_full(gpu, mode, allowed, mems, gpu_memory)
        return cpus, nodes

    def expect_full(self, gpu: Gpu, mode: str, allowed: frozenset[int] | None = None,
                    mems: frozenset[int] | None = None, gpu_memory: bool = False
                    ) -> tuple[frozenset[int], tuple[int, ...], list[str]]:
        """(CPUs, memory nodes, notes) by the rules of docs/numa.md, on a clean tree with NVML answering."""
        raw = self.online if allowed is None else allowed
        usable = raw & self.online
        notes: list[str] = []
        if gpu.gpu_memory_node is not None:
            notes.append(f"this GPU's own memory is NUMA node {gpu.gpu_memory_node} (coherent GPU memory): memory "
                         "policies leave it out unless asked")
        nodes = self.gpu_nodes(gpu)
        if gpu.numa_node < 0 and nodes:
            notes.append(f"the firmware gives no NUMA node for this GPU (numa_node = -1) but NVML names node(s) "
                         f"{fmt(nodes)} of {fmt(self.cpu_nodes)}: using NVML's answer")
        elif gpu.numa_node < 0:
            # a host of one node: NVML is not asked (gpuaffinity.host), and the note says so
            said = ("this host has one NUMA node (NVML was not asked: it can name no other)"
                    if len(self.topo.nodes) == 1 else
                    f"NVML's node(s) {fmt(self.cpu_nodes)} are every node with CPUs here, which tells nothing")
            notes += [f"the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and {said}: "
                      "no preference",
                      "no NUMA preference: every allowed CPU"]
            return usable, (), notes
        users: set[int] = set()
        for n in sorted(nodes):
            near = {n} if n in self.cpu_nodes else self.nearest(n, self.cpu_nodes)
            if n not in self.cpu_nodes:
                notes.append(f"node {n} has no CPUs: the CPUs of the nearest node(s) {fmt(near)} are used")
            users |= near
        local = self.local_cpus(nodes)
        if local and not local & raw:
            notes.append(f"none of this GPU's local CPUs ({fmt(local)}) is allowed to this process "
                         f"(allowed: {fmt(raw) or 'none'}; affinity mask or cgroup cpuset)")
        pool = local & usable
        memory = set(nodes)
        where = f"node(s) {fmt(nodes)}"
        if mode == "node":
            cpus = pool
        elif mode == "socket":
            packages = {self.socket[self.node_of[c]] for c in local}
            cpus = frozenset(c for c in self.online if self.socket[self.node_of[c]] in packages) & usable
            memory |= {n for n in self.cpu_nodes if self.socket[n] in packages}
        else:
            peers = self.peers(gpu)
            rank = peers.index(gpu.pci_bus_id)
            if users - nodes:
                notes.append(f"this GPU's CPUs come from node(s) {fmt(users)}, whose own GPUs do not count it in "
                             "their split: its share overlaps theirs")
            if mode == "exclusive":
                cores = self.cores(pool)
                units, what = cores, "allowed core"
                if len(cores) < len(peers) and len(pool) > len(cores):
                    units, what = [(c,) for core in cores for c in core], "allowed CPU"
                    notes.append(f"{len(cores)} allowed cores for {len(peers)} GPUs on {where}: split by hardware "
                                 "thread, so siblings are split")
                cpus = self.share(units, len(peers), rank)
                self.share_note(units, peers, rank, what, "core", where, cpus, notes)
            else:
                groups = self.llc_groups()
                if groups is None:
                    cpus = pool
                    if pool:
                        notes.append("no last-level cache information in sysfs: using the node")
                else:
                    units = sorted({tuple(sorted(g & pool)) for g in groups if g & pool}, key=lambda d: d[0])
                    if len(units) == 1 and len(peers) > 1:  # one cache group for the node: every GPU gets it
                        cpus = pool
                        notes.append(f"one last-level cache domain spans the allowed CPUs of {where}: all "
                                     f"{len(peers)} GPUs there get it whole ({fmt(pool)}): llc groups by cache, "
                                     "and there is one group")
                        units = []
                    else:
                        cpus = self.share(units, len(peers), rank)
                    self.share_note(units, peers, rank, "last-level cache domain", "last-level cache", where, cpus,
                                    notes)
        if gpu_memory and gpu.gpu_memory_node is not None:
            memory.add(gpu.gpu_memory_node)
        placed: set[int] = set()
        for n in sorted(memory):
            near = {n} if n in self.has_memory else self.nearest(n, self.has_memory)
            if n not in self.has_memory:
                notes.append(f"node {n} has no memory: memory goes to the nearest node(s) with memory "
                             f"({fmt(near) or 'unknown: memory left alone'})")
            placed |= near
        if mems is not None and placed - mems:
            notes.append(f"memory on node(s) {fmt(placed - mems)} is not allowed to this process (Mems_allowed_list "
                         f"{fmt(mems) or 'empty'}, from its cgroup cpuset): left out of the memory policy")
            placed &= mems
        return cpus, tuple(sorted(placed)), notes

    @staticmethod
    def share_note(units, peers, rank, what, own, where, cpus, notes) -> None:
        if not units:
            return
        what += "" if len(units) == 1 else "s"
        if len(units) >= len(peers):
            size = len([u for u in units if set(u) <= cpus])
            notes.append(f"GPU {rank + 1} of {len(peers)} on {where}: {size} of the {len(units)} {what}")
        else:
            others = [r + 1 for r in range(len(peers)) if r % len(units) == rank % len(units) and r != rank]
            notes.append(f"{len(units)} {what} for {len(peers)} GPUs on {where}: no {own} of its own for each GPU, "
                         f"they are dealt round-robin: GPU {rank + 1} gets {fmt(cpus)}, as does GPU {fmt(others)}")


def render(topo: Topology, root: Path | None = None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="numa-oracle-")) if root is None else root
    render_sysfs(topo, root)
    return root


def cached_render(topo: Topology) -> Path:
    """The topology's sysfs tree, rendered once and kept (read-only by convention) in a per-user cache.

    Keyed by the topology and the sources that render it, so a change to either renders afresh; rendered
    in a private folder and renamed into place, so concurrent test runs never see half a tree.  Keeps the
    tests that only read a tree cheap, also in the forked processes of a mutation run."""
    import gpuaffinity.core.cpulist as cpulist
    import gpuaffinity.sim.render as render_mod
    import gpuaffinity.sim.topology as topology_mod

    digest = hashlib.sha256(repr(dataclasses.replace(topo, source="")).encode())
    for mod in (cpulist, render_mod, topology_mod):
        digest.update(Path(mod.__file__).read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuaffinity-tests" / "sysfs"
    final = base / digest.hexdigest()[:24]
    if not final.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="render-", dir=base))
        render_sysfs(topo, work / "sys")
        try:
            (work / "sys").rename(final)
        except OSError:  # another run got there first
            pass
        shutil.rmtree(work, ignore_errors=True)
    return final


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
    # NVML is asked where gpuaffinity asks it: not on a host of one node (gpuaffinity.numa.query.nvml_can_matter)
    ask = nvml_can_matter(fs, answers)
    locs = {b: gpu_locality(b, allowed, answers[b] if ask else None, sysfs=fs, one_node=nvml and not ask)
            for b in answers}
    by_node: dict[int, list[str]] = {}
    for bus, loc in locs.items():
        for n in loc.numa_nodes:
            by_node.setdefault(n, []).append(bus)
    out = {}
    for bus, loc in locs.items():
        out[bus] = {}
        for mode in MODES:
            p = place(loc, mode, allowed, by_node, gpu_memory=gpu_memory, allowed_mems=mems, sysfs=fs)
            assert p.mode == mode
            out[bus][mode] = (p.bind_cpus, p.memory_nodes, p.notes)
    return out
