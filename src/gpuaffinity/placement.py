"""Placement: where a resolved GPU sits, and binding this process there (the public ``plan`` and ``bind``).

"Device to locality" is assembled here alone (``locate``): the command line,
the demo and ``plan`` ask this module, which asks the NUMA stage once for
every GPU they need (NVML and sysfs, one NVML session).
"""

from __future__ import annotations

import os
import warnings

from gpuaffinity import _state
from gpuaffinity.core.settings import FAILURE_POLICIES, MEMORY_POLICIES, MODES, ON_FAILURE_VAR

TYPE_CHECKING = False  # typing and collections.abc stay unimported: the annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable

    from gpuaffinity.numa.bind import BindRecord
    from gpuaffinity.numa.query import Locality


def locate(bus_ids: Iterable[str]) -> dict[str, Locality]:
    """Each GPU's NUMA nodes and CPUs (within this process's allowed CPUs), by PCI bus id."""
    from gpuaffinity.numa.query import localities

    return localities(bus_ids)


def refuse_lost(locs: Iterable[Locality]) -> None:
    """GpuLostError for the first GPU that NVML says is lost (fallen off the bus): nothing is placed next to it."""
    from gpuaffinity.core.errors import GpuLostError

    for loc in locs:
        if loc.lost:
            raise GpuLostError(loc.lost)


def plan(logical_id: int | str, *, mode: str = "node", memory: str = "bind", policy: str | None = None,
         disable: Iterable[str] | None = None, allow_subprocess: bool = True) -> BindRecord:
    """What ``bind`` would apply for CUDA device ``logical_id``, without applying it."""
    with _state.lock:  # lazy imports and NVML: see gpuaffinity._state
        return _plan(logical_id, mode, memory, policy, disable, allow_subprocess)


def _plan(logical_id: int | str, mode: str, memory: str, policy: str | None, disable: Iterable[str] | None,
          allow_subprocess: bool) -> BindRecord:
    from gpuaffinity.api import resolve
    from gpuaffinity.core.errors import BindError
    from gpuaffinity.inventory import read_inventory
    from gpuaffinity.numa.bind import BindRecord
    from gpuaffinity.numa.modes import place
    from gpuaffinity.numa.query import allowed_cpus

    if mode not in MODES:
        raise BindError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if memory not in MEMORY_POLICIES:
        raise BindError(f"unknown memory policy {memory!r}: choose one of {', '.join(MEMORY_POLICIES)}")
    dev = resolve(logical_id, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    inventory = read_inventory()
    locs = locate([g.pci_bus_id for g in inventory.gpus] + [dev.pci_bus_id])
    refuse_lost([locs[dev.pci_bus_id]])  # another GPU lost does not stop this one's binding
    by_node: dict[int, list[str]] = {}
    for bus, loc in locs.items():
        for n in loc.numa_nodes:
            by_node.setdefault(n, []).append(bus)
    allowed = allowed_cpus()
    placement = place(locs[dev.pci_bus_id], mode, allowed, by_node)
    rec = BindRecord(dev.logical_id, dev.pci_bus_id, mode, memory if placement.numa_nodes else "none",
                     placement.numa_nodes, placement.cpus, notes=list(placement.notes))
    if memory != "none" and not placement.numa_nodes:
        from gpuaffinity.core.notes import attention

        rec.notes.append(attention("memory policy left alone: the GPU has no NUMA node"))
    if not placement.cpus:
        rec.failures.append(f"no CPU to bind to: none of the CPUs near GPU {dev.pci_bus_id} is allowed to this "
                            "process (its affinity mask or cgroup cpuset excludes them)")
    return rec


def bind(logical_id: int | str, *, mode: str = "node", memory: str = "bind", on_failure: str | None = None,
         policy: str | None = None, disable: Iterable[str] | None = None,
         allow_subprocess: bool = True) -> BindRecord:
    """Bind this process to the NUMA node of CUDA device ``logical_id``; return what was applied.

    ``mode``: ``node`` (default), ``socket``, ``exclusive`` or ``llc`` (docs/numa.md).
    ``memory``: ``bind`` (default), ``preferred`` or ``none``.
    ``on_failure``: ``warn`` (default, or GPUAFFINITY_ON_FAILURE): a BindWarning, and the
    process runs on with whatever could be applied, listed in the record; ``error``: a
    BindError, with nothing left applied.
    """
    from gpuaffinity.core.errors import BindError, BindWarning
    from gpuaffinity.numa.bind import apply

    policy_ = on_failure or os.environ.get(ON_FAILURE_VAR) or "warn"
    if policy_ not in FAILURE_POLICIES:
        raise BindError(f"unknown failure policy {policy_[:40]!r} (from "
                        f"{'on_failure' if on_failure else ON_FAILURE_VAR}): choose {' or '.join(FAILURE_POLICIES)}")
    rec = plan(logical_id, mode=mode, memory=memory, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    if rec.failures:  # nothing can be applied at all
        if policy_ == "error":
            raise BindError("; ".join(rec.failures))
        warnings.warn(f"gpuaffinity: not bound: {'; '.join(rec.failures)}", BindWarning, stacklevel=2)
        return rec
    apply(rec, policy_)
    if rec.failures:
        warnings.warn(f"gpuaffinity: bound only in part ({rec.summary()}): {'; '.join(rec.failures)}",
                      BindWarning, stacklevel=2)
    return rec
