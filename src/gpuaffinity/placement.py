"""Placement: where a resolved GPU sits, and binding this process there (the public ``plan`` and ``bind``).

"Device to locality" is assembled here alone (``locate``): the command line,
the demo and ``plan`` ask this module, which asks the command's Host
(gpuaffinity.host: one NVML session a command, each GPU's locality asked once).
``plan`` takes the GPU list the answer was resolved over, and the Host's
allowed CPUs and sysfs view: nothing is read twice in one call.

Owns: the binding record of a CUDA device (device to locality to CPUs and memory).
"""

from __future__ import annotations

import os
import warnings

from gpuaffinity import _state
from gpuaffinity.core.settings import DEFAULT_MEMORY, FAILURE_POLICIES, MODES, ON_FAILURE_VAR

TYPE_CHECKING = False  # typing and collections.abc stay unimported: the annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable

    from gpuaffinity.host import Host
    from gpuaffinity.numa.bind import BindRecord
    from gpuaffinity.numa.query import Locality
    from gpuaffinity.numa.sysfs import Sysfs
    from gpuaffinity.nvml_lite import Session


def locate(bus_ids: Iterable[str], session: Session | None = None) -> dict[str, Locality]:
    """Each GPU's NUMA nodes and CPUs (within this process's allowed CPUs), by PCI bus id, from the command's Host
    (a Host of this call's own outside a command); ``session``: an NVML session the caller has open, used instead
    (``gpuaffinity check``, which asks NVML for more than locality)."""
    if session is not None:
        from gpuaffinity.numa.query import localities

        return localities(bus_ids, session=session)
    from gpuaffinity.host import scope

    with scope() as host:
        return host.localities(bus_ids)


def refuse_lost(locs: Iterable[Locality]) -> None:
    """GpuLostError for the first GPU that NVML says is lost (fallen off the bus): nothing is placed next to it."""
    from gpuaffinity.core.errors import GpuLostError

    for loc in locs:
        if loc.lost:
            raise GpuLostError(loc.lost)


def plan(logical_id: int | str, *, mode: str = "node", memory: str = DEFAULT_MEMORY, policy: str | None = None,
         disable: Iterable[str] | None = None, allow_subprocess: bool = True) -> BindRecord:
    """What ``bind`` would apply for CUDA device ``logical_id``, without applying it."""
    from gpuaffinity.host import scope

    # one Host for the call (the lock held: lazy imports and NVML, see gpuaffinity._state): the resolution, the GPU
    # list and each locality share its NVML session, started once and shut down on return
    with scope() as host:
        return _plan(host, logical_id, mode, memory, policy, disable, allow_subprocess)


def _plan(host: Host, logical_id: int | str, mode: str, memory: str, policy: str | None,
          disable: Iterable[str] | None, allow_subprocess: bool) -> BindRecord:
    from gpuaffinity.api import inventory_for, resolve
    from gpuaffinity.core.errors import BindError
    from gpuaffinity.numa.bind import BindRecord, check_memory
    from gpuaffinity.numa.modes import place

    if mode not in MODES:
        raise BindError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    check_memory(memory)
    dev = resolve(logical_id, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    buses = [dev.pci_bus_id]
    if mode in ("exclusive", "llc"):  # a share of the node's CPUs among its GPUs: every GPU's place is needed
        # the GPU list the answer was resolved over (one listing a command); a selector's answer is not cached by
        # key, so then the Host's list (read once for the command)
        inventory = inventory_for(policy, disable, allow_subprocess) or host.inventory()
        buses = [g.pci_bus_id for g in inventory.gpus] + buses
    locs = host.localities(buses)  # node and socket: the GPU's own place only (place() asks no other)
    refuse_lost([locs[dev.pci_bus_id]])  # another GPU lost does not stop this one's binding
    by_node: dict[int, list[str]] = {}
    for bus, loc in locs.items():
        for n in loc.numa_nodes:
            by_node.setdefault(n, []).append(bus)
    allowed = host.allowed_cpus
    loc = locs[dev.pci_bus_id]
    placement = place(loc, mode, allowed, by_node, sysfs=host.sysfs, allowed_mems=host.allowed_mems)
    # the GPU's own place under the names resolve --json gives it (numa_nodes, cpus); the binding's under its own
    shared, why = list(placement.shared_with), placement.shared_why
    if mode in ("exclusive", "llc"):
        more, more_why = _overlapping(loc, placement.bind_cpus, locs, mode, allowed, by_node, shared, host.sysfs)
        shared += more
        why = "; and ".join(w for w in (why, more_why) if w)
    memory_ = memory if placement.memory_nodes else "none"  # no node left: no policy, and no nodes of it
    rec = BindRecord(dev.logical_id, dev.pci_bus_id, mode, memory_, placement.memory_nodes if memory_ != "none"
                     else (), placement.bind_cpus, notes=list(placement.notes),
                     numa_nodes=loc.numa_nodes, cpus=loc.cpus, shared_with=tuple(shared), shared_why=why)
    if memory != "none" and not placement.memory_nodes:
        from gpuaffinity.core.notes import attention

        rec.notes.append(attention("memory policy left alone: " + (
            "the GPU has no NUMA node" if not loc.numa_nodes else "no memory node is left to it (see the notes)")))
    if not placement.bind_cpus:
        rec.failures.append(f"no CPU to bind to: none of the CPUs near GPU {dev.pci_bus_id} is allowed to this "
                            "process (its affinity mask or cgroup cpuset excludes them)")
    return rec


def _overlapping(loc: Locality, share: frozenset[int], locs: dict[str, Locality], mode: str,
                 allowed: frozenset[int], by_node: dict[int, list[str]], known: list[str],
                 sysfs: Sysfs | None = None) -> tuple[list[str], str]:
    """The GPUs outside this GPU's split whose ``exclusive``/``llc`` share overlaps ``share``, and how.

    GPUs of the same node(s) split one pool among themselves (their shares are disjoint, or dealt round-robin and
    already listed in ``known``).  A GPU whose node has no CPUs takes another node's, which that node's GPUs split
    without counting it (irregular-2s GPU 6 on node 4, with nodes 2 and 3's CPUs), so the shares overlap across
    splits: each such GPU is listed, in both directions.  A GPU without a node (no preference) gets every CPU in
    every mode and is not counted."""
    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.numa.modes import place

    if not loc.numa_nodes or not share:
        return [], ""
    found: list[str] = []
    for bus in sorted(locs):
        other = locs[bus]
        if bus == loc.pci_bus_id or bus in known or not other.numa_nodes or other.lost:
            continue
        if set(other.numa_nodes) == set(loc.numa_nodes) or not other.cpus & share:
            continue  # the same split, or CPUs apart
        if place(other, mode, allowed, by_node, allowed_mems=None, sysfs=sysfs).bind_cpus & share:
            found.append(bus)
    if not found:
        return [], ""
    borrowed = set(loc.cpu_nodes) - set(loc.numa_nodes)
    if borrowed:
        how = (f"its node(s) {format_cpulist(loc.numa_nodes)} have no CPUs: it takes those of node(s) "
               f"{format_cpulist(loc.cpu_nodes)}, whose GPUs split them without counting it")
    else:
        how = (f"they take CPUs of node(s) {format_cpulist(loc.numa_nodes)} from a node without CPUs of its own, "
               "and no split counts both")
    return found, f"overlapping the CPUs of GPU(s) {', '.join(found)}: {how}"


def bind(logical_id: int | str, *, mode: str = "node", memory: str = DEFAULT_MEMORY, on_failure: str | None = None,
         policy: str | None = None, disable: Iterable[str] | None = None,
         allow_subprocess: bool = True) -> BindRecord:
    """Bind this process to the NUMA node of CUDA device ``logical_id``; return what was applied.

    ``mode``: ``node`` (default), ``socket``, ``exclusive`` or ``llc`` (docs/numa.md).
    ``memory``: ``preferred`` (default: allocate on the GPU's node(s), spill to others when they are
    full), ``bind`` (only there: the kernel's OOM killer ends the process when they are full) or ``none``.
    ``on_failure``: ``warn`` (default, or GPUAFFINITY_ON_FAILURE): a BindWarning, and the
    process runs on with whatever could be applied, listed in the record; ``error``: a
    BindError, with nothing left applied.  An ``exclusive`` or ``llc`` share that other GPUs get too
    (fewer cores or caches than GPUs: ``BindRecord.shared_with``) is such a failure.
    """
    from gpuaffinity.core.errors import BindError, BindWarning
    from gpuaffinity.numa.bind import apply

    policy_ = failure_policy(on_failure)
    rec = plan(logical_id, mode=mode, memory=memory, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    if rec.failures:  # nothing can be applied at all
        if policy_ == "error":
            raise BindError("; ".join(rec.failures))
        warnings.warn(f"gpuaffinity: not bound: {'; '.join(rec.failures)}", BindWarning, stacklevel=2)
        from gpuaffinity import intent

        intent.publish(rec)  # the process runs on for this GPU, unbound: `gpuaffinity check` says so, and why
        return rec
    if rec.shared_with:
        why = shared_message(rec)
        if policy_ == "error":
            raise BindError(f"{why} (nothing was applied)")
        warnings.warn(f"gpuaffinity: {why}", BindWarning, stacklevel=2)
    apply(rec, policy_)
    if rec.failures:
        warnings.warn(f"gpuaffinity: bound only in part ({rec.summary()}): {'; '.join(rec.failures)}",
                      BindWarning, stacklevel=2)
    return rec


def rebind(*, on_failure: str | None = None) -> BindRecord:
    """Apply this process's recorded binding again: the CPUs to every thread it has now, the memory policy to
    the calling thread.  Call it after something moved them (``init_process_group``, a library that resets
    affinity: docs/check.md).  The record is the last ``bind`` in this process, else the one
    ``gpuaffinity bind ID -- CMD`` started it with; nothing is resolved again.  BindError where there is none.
    ``on_failure`` as for ``bind``."""
    from gpuaffinity import intent
    from gpuaffinity.core.errors import BindError, BindWarning
    from gpuaffinity.numa.bind import BindRecord, apply

    policy_ = failure_policy(on_failure)
    was = intent.current()
    if was is None:
        raise BindError("nothing to rebind: this process records no binding (bind it first: gpuaffinity.bind(ID), "
                        "or start it with gpuaffinity bind ID -- CMD)")
    rec = BindRecord(was.logical_id if isinstance(was.logical_id, int) else None, was.pci_bus_id, was.mode,
                     was.memory, was.memory_nodes, was.bind_cpus, numa_nodes=was.numa_nodes)
    with _state.lock:
        apply(rec, policy_)
    if rec.failures:
        warnings.warn(f"gpuaffinity: rebound only in part ({rec.summary()}): {'; '.join(rec.failures)}",
                      BindWarning, stacklevel=2)
    return rec


def failure_policy(on_failure: object) -> str:
    """The failure policy in force: ``on_failure``, or (None only) GPUAFFINITY_ON_FAILURE, else ``warn``;
    BindError naming the choices for anything else (``""``, ``0``, ``"ERROR"``, a number)."""
    from gpuaffinity.core.errors import BindError

    if on_failure is None:
        chosen: object = os.environ.get(ON_FAILURE_VAR) or "warn"  # an empty variable is an unset one
        source = ON_FAILURE_VAR
    else:
        chosen, source = on_failure, "on_failure"
    if not isinstance(chosen, str) or chosen not in FAILURE_POLICIES:
        shown = repr(chosen[:40]) if isinstance(chosen, str) else f"{chosen!r:.40} ({type(chosen).__name__})"
        raise BindError(f"unknown failure policy {shown} (from {source}): choose {' or '.join(FAILURE_POLICIES)}")
    return chosen


def shared_message(rec: BindRecord) -> str:
    """One line: the ``exclusive``/``llc`` share of ``rec``'s GPU is not its own (``rec.shared_with``), and why
    (``rec.shared_why``); a record without those (built by hand) gets what its fields say."""
    from gpuaffinity.core.cpulist import format_cpulist

    head = "exclusive is not exclusive" if rec.mode == "exclusive" else f"{rec.mode} shares CPUs between GPUs"
    cpus = format_cpulist(rec.bind_cpus) or "none"
    if not rec.shared_with:
        return f"GPU {rec.pci_bus_id}'s {rec.mode} CPUs {cpus} are its own: no other GPU is given them"
    why = rec.shared_why
    if not why:
        units = "cores" if rec.mode == "exclusive" else "last-level cache domains"
        why = f"as GPU(s) {', '.join(rec.shared_with)} do" + (
            f": their node(s) {format_cpulist(rec.numa_nodes)} have fewer {units} allowed here than GPUs"
            if rec.numa_nodes else "")
    return f"{head}: GPU {rec.pci_bus_id} gets CPUs {cpus}, {why}"
