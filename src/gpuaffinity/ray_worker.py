"""Every Ray GPU task and actor bound next to its GPUs, with one line in ``ray.init``.

    ray.init(runtime_env={"worker_process_setup_hook": "gpuaffinity.ray_worker.setup"})

What Ray does, measured (docs/ray.md, tools/ray_facts.py): the setup hook runs once in each worker process,
before any GPU is assigned, so it cannot bind there; Ray then sets ``CUDA_VISIBLE_DEVICES`` for each task (and
once for an actor, before its constructor) by calling ``ray._private.utils.set_visible_accelerator_ids``
from its task loop, and one worker process serves tasks with other GPUs in turn.  So the hook wraps that
function: after Ray has set the variable for a task, the process is bound to the NUMA node(s) of the task's
GPUs (mode and memory policy from GPUAFFINITY_RAY_MODE and GPUAFFINITY_RAY_MEMORY, default ``node`` and
``bind``); a task without GPUs gets the worker's original CPU mask and the default memory policy back.  A
task whose GPUs are those of the last one is not bound again (no system call).

Several GPUs: the union of their nodes' CPUs, and a memory policy over their nodes.  Under
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, Ray's ids are entries of the node's ``CUDA_VISIBLE_DEVICES``
(or indices when it is unset): their positions there are the CUDA indices resolved.  CUDA is never
initialised (resolution as everywhere in gpuaffinity: docs/resolving.md).

``last()`` is what the last task's binding applied (None before any GPU task, or after a task without GPUs).
If Ray no longer has the function this wraps, ``setup`` says so once on stderr and leaves workers unbound.
"""

from __future__ import annotations

import os
import sys

from gpuaffinity import _state

MODE_VAR = "GPUAFFINITY_RAY_MODE"
MEMORY_VAR = "GPUAFFINITY_RAY_MEMORY"
NOSET_VAR = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gpuaffinity.numa.bind import BindRecord

_original_cpus: frozenset[int] | None = None
#: seconds spent, in this worker: [setup, then one entry a task] (benchmarks/bench_ray_worker.py reads them)
timings: list[tuple[str, float]] = []
_last_key: object = None
_last: BindRecord | None = None


def setup() -> None:
    """Ray's ``worker_process_setup_hook``: make each task of this worker bind after Ray sets its GPUs."""
    global _original_cpus
    import time

    t0 = time.perf_counter()
    try:
        import ray._private.utils as ray_utils
    except ImportError:
        print("gpuaffinity: gpuaffinity.ray_worker.setup runs only in a Ray worker: Ray is not importable here",
              file=sys.stderr)
        return
    set_ids = getattr(ray_utils, "set_visible_accelerator_ids", None)
    if set_ids is None:
        print("gpuaffinity: this Ray has no ray._private.utils.set_visible_accelerator_ids, where each task's GPUs "
              "are set: Ray workers are not bound (bind in the task instead: gpuaffinity.bind(0))",
              file=sys.stderr)
        return
    if getattr(set_ids, "_gpuaffinity", False):
        return  # set up already in this process
    _original_cpus = frozenset(os.sched_getaffinity(0))

    def set_ids_then_bind() -> object:
        original = set_ids()
        t = time.perf_counter()
        try:
            what = "same GPUs" if _rebind()[1] else "bound"
        except Exception as e:  # never fail the user's task over a binding: say why, run unbound
            what = "failed"
            print(f"gpuaffinity: this Ray task is not bound: {type(e).__name__}: {e}", file=sys.stderr)
        timings.append((what, time.perf_counter() - t))
        return original

    set_ids_then_bind._gpuaffinity = True  # type: ignore[attr-defined]
    ray_utils.set_visible_accelerator_ids = set_ids_then_bind
    timings.append(("setup", time.perf_counter() - t0))


def logical_ids(gpu_ids: list[str], cvd: str | None, noset: bool) -> list[int]:
    """The CUDA indices of Ray's GPU ids in this process."""
    if not noset:
        return list(range(len(gpu_ids)))  # Ray set CUDA_VISIBLE_DEVICES to exactly these ids
    entries = [e.strip() for e in cvd.split(",")] if cvd is not None else None
    out = []
    for gid in gpu_ids:
        if entries is None:
            out.append(int(gid))  # the node's variable unset: Ray's ids are CUDA's indices
        elif gid in entries:
            out.append(entries.index(gid))
        else:
            raise ValueError(f"Ray's GPU id {gid!r} is not in CUDA_VISIBLE_DEVICES={cvd!r}")
    return out


def rebind() -> BindRecord | None:
    """Bind this process for the GPUs Ray gave the current task (what ``setup`` runs after Ray sets them)."""
    return _rebind()[0]


def _rebind() -> tuple[BindRecord | None, bool]:
    """(the record, whether the task's GPUs were the last task's and nothing was done)."""
    global _last_key, _last
    import ray

    from gpuaffinity.numa.bind import (
        MPOL_DEFAULT,
        BindRecord,
        _restore_mempolicy,
        apply,
        set_affinity_all_threads,
    )
    from gpuaffinity.placement import plan

    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    noset = os.environ.get(NOSET_VAR, "").lower() in ("1", "true")
    key = (tuple(gpu_ids), cvd, noset)
    if key == _last_key:
        return _last, True
    with _state.lock:
        original = _original_cpus if _original_cpus is not None else frozenset(os.sched_getaffinity(0))
        if frozenset(os.sched_getaffinity(0)) != original:  # plan from the worker's own mask, not the last task's
            set_affinity_all_threads(original)
        if not gpu_ids:
            _restore_mempolicy(MPOL_DEFAULT, frozenset())
            _last_key, _last = key, None
            return None, False
        mode = os.environ.get(MODE_VAR) or "node"
        memory = os.environ.get(MEMORY_VAR) or "bind"
        records = [plan(i, mode=mode, memory=memory) for i in logical_ids(gpu_ids, cvd, noset)]
        failures = [f for r in records for f in r.failures]
        rec = BindRecord(records[0].logical_id, ",".join(r.pci_bus_id for r in records), mode, memory,
                         tuple(sorted({n for r in records for n in r.numa_nodes})),
                         frozenset().union(*(r.cpus for r in records)), failures=failures,
                         notes=[n for r in records for n in r.notes])
    if not failures:
        apply(rec, "warn")
    if rec.failures:
        print(f"gpuaffinity: this Ray task is bound only in part ({rec.summary()}): {'; '.join(rec.failures)}",
              file=sys.stderr)
    _last_key, _last = key, rec
    return rec, False


def last() -> BindRecord | None:
    """What the last task's binding applied in this worker (None: no GPU task yet, or the last had none)."""
    return _last
