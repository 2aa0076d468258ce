"""Where a physical GPU sits: NUMA nodes and nearby CPUs, limited to the CPUs this process may use.

Two sources, checked against each other:

* NVML: the memory affinity at node scope (every node a GPU spans) and the
  CPU affinity.
* sysfs: the PCI device's ``numa_node`` and ``local_cpulist``, and the nodes'
  ``cpulist``.

sysfs wins where they differ.  The case that matters is a VM whose firmware
gives no node (``numa_node`` = -1): NVML still names node 0 there (seen on the
lent H200 VM), and binding to that invented node would be wrong.  A GPU with
no node has no preference, and says so.  Without sysfs, NVML's answer is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.errors import GpuAffinityError
from gpuaffinity.core.settings import SIM_ALLOWED_VAR, SYSFS_VAR


def sysfs_root() -> Path:
    return Path(os.environ.get(SYSFS_VAR) or "/sys")


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on: its affinity mask (cgroup cpusets, Slurm and
    Kubernetes limits show here), or on a simulated machine the simulated cpuset."""
    sim = os.environ.get(SIM_ALLOWED_VAR)
    if sim is not None:
        try:
            return parse_cpulist(sim)
        except ValueError as e:
            raise GpuAffinityError(f"{SIM_ALLOWED_VAR} (the simulator's cpuset) is not a CPU list: {e}; unset it "
                                   "outside `gpuaffinity sim run`") from None
    return frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Locality:
    """Where a GPU sits.

    ``numa_nodes`` is empty when nothing names a node (``numa_node`` = -1,
    common in VMs): no preference, never an invented node 0.  ``cpus`` is the
    GPU's local CPUs intersected with this process's allowed CPUs;
    ``local_cpus`` is before that intersection.  ``notes`` says what a user
    should know (disagreement between NVML and sysfs, an empty intersection…).
    """

    pci_bus_id: str
    numa_nodes: tuple[int, ...]
    cpus: frozenset[int]
    local_cpus: frozenset[int]
    source: str
    notes: tuple[str, ...] = ()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def node_cpus(node: int) -> frozenset[int] | None:
    text = _read(sysfs_root() / "devices" / "system" / "node" / f"node{node}" / "cpulist")
    return None if text is None else parse_cpulist(text)


def nvml_affinity(bus_ids: Iterable[str]) -> dict[str, tuple[frozenset[int], frozenset[int]]]:
    """NVML's (nodes, CPUs) for each GPU bus id; empty where NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    out: dict[str, tuple[frozenset[int], frozenset[int]]] = {}
    try:
        for bus in bus_ids:
            try:
                h = pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
                nodes = pynvml.nvmlDeviceGetMemoryAffinity(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)
                cpus = pynvml.nvmlDeviceGetCpuAffinityWithinScope(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)
            except pynvml.NVMLError:
                continue
            out[bus] = (_bits(nodes), _bits(cpus))
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass  # the answers are read; a failed shutdown only leaves NVML initialised
    return out


def _bits(words: Iterable[int]) -> frozenset[int]:
    return frozenset(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)


def gpu_locality(pci_bus_id: str, allowed: frozenset[int] | None = None,
                 nvml: tuple[frozenset[int], frozenset[int]] | None = None) -> Locality:
    """Combine sysfs and (when given) NVML's answer for one GPU."""
    allowed = allowed_cpus() if allowed is None else allowed
    dev = sysfs_root() / "bus" / "pci" / "devices" / pci_bus_id
    notes: list[str] = []
    node_text = _read(dev / "numa_node")
    local_text = _read(dev / "local_cpulist")
    nv_nodes, nv_cpus = nvml if nvml else (frozenset(), frozenset())
    if node_text is None:
        if not nvml:
            return Locality(pci_bus_id, (), frozenset(), frozenset(), "none",
                            (f"neither sysfs ({dev}) nor NVML gives this GPU's locality: no preference",))
        nodes, local, source = tuple(sorted(nv_nodes)), nv_cpus, "nvml"
        notes.append(f"{dev}/numa_node is missing: using NVML's answer")
    else:
        node = int(node_text) if node_text.lstrip("-").isdigit() else -1
        source = "sysfs" if not nvml else "sysfs+nvml"
        if node < 0:
            nodes, local = (), parse_cpulist(local_text) if local_text else frozenset()
            notes.append("the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs): "
                         "no preference")
            if nv_nodes:
                notes.append(f"NVML names node(s) {format_cpulist(nv_nodes)}, ignored: nothing in the firmware "
                             "backs it")
        else:
            span = nv_nodes if node in nv_nodes else frozenset()
            if nv_nodes and node not in nv_nodes:
                notes.append(f"NVML names node(s) {format_cpulist(nv_nodes)} but sysfs says {node}: using sysfs")
            nodes = tuple(sorted({node} | span))
            if len(nodes) > 1:
                notes.append(f"this GPU spans NUMA nodes {format_cpulist(nodes)}")
            local = frozenset().union(*((node_cpus(n) or frozenset()) for n in nodes))
            if not local and local_text:
                local = parse_cpulist(local_text)
    cpus = local & allowed
    if local and not cpus:
        notes.append(f"none of this GPU's local CPUs ({format_cpulist(local)}) is allowed to this process "
                     f"(allowed: {format_cpulist(allowed)}; affinity mask or cgroup cpuset)")
    return Locality(pci_bus_id, nodes, cpus, local, source, tuple(notes))


def localities(bus_ids: Iterable[str], use_nvml: bool = True) -> dict[str, Locality]:
    """Locality of several GPUs with one NVML session."""
    ids = list(dict.fromkeys(bus_ids))
    nv = nvml_affinity(ids) if use_nvml else {}
    allowed = allowed_cpus()
    return {b: gpu_locality(b, allowed, nv.get(b)) for b in ids}
