"""A GPU's NUMA nodes and nearby CPUs, from sysfs, limited to the CPUs this process may use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpuaffinity.core.cpulist import parse_cpulist

SYSFS_VAR = "GPUAFFINITY_SYSFS_ROOT"
#: Set by the simulator: the CPUs a simulated process may use (its simulated cpuset).
SIM_ALLOWED_VAR = "GPUAFFINITY_SIM_ALLOWED_CPUS"


def sysfs_root() -> Path:
    return Path(os.environ.get(SYSFS_VAR) or "/sys")


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on: its affinity mask (cgroup cpusets, Slurm and
    Kubernetes limits show here), or on a simulated machine the simulated cpuset."""
    sim = os.environ.get(SIM_ALLOWED_VAR)
    if sim is not None:
        return parse_cpulist(sim)
    return frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Locality:
    """Where a GPU sits.

    ``numa_nodes`` is empty when the firmware names no node (``numa_node`` is
    -1, common in VMs): no preference, never an invented node 0.  ``cpus`` is
    the GPU's local CPUs intersected with this process's allowed CPUs (its
    affinity mask, which reflects cgroup cpusets); ``local_cpus`` is before
    that intersection.  ``notes`` explains anything a user should know.
    """

    pci_bus_id: str
    numa_nodes: tuple[int, ...]
    cpus: frozenset[int]
    local_cpus: frozenset[int]
    notes: tuple[str, ...] = ()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def gpu_locality(pci_bus_id: str, allowed: frozenset[int] | None = None) -> Locality:
    root = sysfs_root()
    dev = root / "bus" / "pci" / "devices" / pci_bus_id
    notes: list[str] = []
    allowed = allowed_cpus() if allowed is None else allowed
    node_text = _read(dev / "numa_node")
    node = int(node_text) if node_text not in (None, "") and node_text.lstrip("-").isdigit() else -1
    if node_text is None:
        notes.append(f"{dev}/numa_node is missing: no NUMA information for this GPU")
    local_text = _read(dev / "local_cpulist")
    local = parse_cpulist(local_text) if local_text else frozenset()
    if node >= 0:
        node_cpus = _read(root / "devices" / "system" / "node" / f"node{node}" / "cpulist")
        if node_cpus is not None:
            local = parse_cpulist(node_cpus)
        nodes: tuple[int, ...] = (node,)
    else:
        nodes = ()
        if node_text is not None:
            notes.append("the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs): "
                         "no preference")
    cpus = local & allowed
    if local and not cpus:
        notes.append("none of this GPU's local CPUs is allowed to this process (affinity mask / cgroup cpuset)")
    return Locality(pci_bus_id, nodes, cpus, local, tuple(notes))
