"""Every Ray GPU task and actor bound next to its GPUs, with one line in ``ray.init``.

    ray.init(address="HOST:PORT", runtime_env={"worker_process_setup_hook": "gpuaffinity.ray_worker.setup"})

What Ray does, measured (docs/ray.md, tools/ray_facts.py): the setup hook runs once in each worker process,
before any GPU is assigned, so it cannot bind there; Ray then sets ``CUDA_VISIBLE_DEVICES`` for each task (and
once for an actor, before its constructor) by calling ``ray._private.utils.set_visible_accelerator_ids``
from its task loop, and one worker process serves tasks with other GPUs in turn.  So the hook wraps that
function: after Ray has set the variable for a task, the process is bound to the NUMA node(s) of the task's
GPUs (mode and memory policy from GPUAFFINITY_RAY_MODE and GPUAFFINITY_RAY_MEMORY, default ``node`` and
``preferred``); a task without GPUs gets the worker's original CPU mask and the default memory policy back.  A
task whose GPUs are those of the last one, its mask unchanged, is not bound again (one sched_getaffinity).

Several GPUs: the union of their nodes' CPUs, and a memory policy over their nodes (none when one of them has
no node).  Under
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, Ray's ids are entries of the node's ``CUDA_VISIBLE_DEVICES``
(or indices when it is unset): their positions there are the CUDA indices resolved.  CUDA is never
initialised (resolution as everywhere in gpuaffinity: docs/resolving.md).

``last()`` is what the last task's binding applied (None before any GPU task, or after a task without GPUs).
If Ray no longer has the function this wraps, ``setup`` says so once on stderr and leaves workers unbound.

Owns: a Ray worker's binding.
"""

from __future__ import annotations

import os
import sys
from collections import deque

from gpuaffinity import _state
from gpuaffinity.core.settings import RAY_MEMORY_VAR as MEMORY_VAR
from gpuaffinity.core.settings import RAY_MODE_VAR as MODE_VAR

NOSET_VAR = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gpuaffinity.numa.bind import BindRecord

_original_cpus: frozenset[int] | None = None
#: the CPUs the worker may use, read before any binding narrowed its mask (the probe judges against these): its mask
#: then, or on a simulated machine the simulated cpuset
_original_pool: frozenset[int] | None = None
#: seconds spent, in this worker: setup, then one entry a task, the last 1000 (benchmarks/bench_ray_worker.py)
timings: deque[tuple[str, float]] = deque(maxlen=1000)
_last_key: object = None
_last: BindRecord | None = None


def setup() -> None:
    """Ray's ``worker_process_setup_hook``: make each task of this worker bind after Ray sets its GPUs."""
    global _original_cpus, _original_pool
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
    from gpuaffinity.numa.query import allowed_cpus

    _original_pool = allowed_cpus()

    def set_ids_then_bind() -> object:
        original = set_ids()
        t = time.perf_counter()
        try:
            what = "same GPUs" if _rebind()[1] else "bound"
        except Exception as e:  # never fail the user's task over a binding: say why, run unbound
            what = "failed"
            _say_once(f"gpuaffinity: this Ray task is not bound: {type(e).__name__}: {str(e)[:300]}")
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

    from gpuaffinity.core.settings import DEFAULT_MEMORY, MEMORY_POLICIES, MODES
    from gpuaffinity.numa.bind import (
        MPOL_DEFAULT,
        BindRecord,
        _restore_mempolicy,
        apply,
        set_affinity_all_threads,
    )
    from gpuaffinity.placement import plan

    gpu_ids = [str(i).strip() for i in ray.get_gpu_ids()]
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    noset = os.environ.get(NOSET_VAR, "").lower() in ("1", "true")
    key = (tuple(gpu_ids), cvd, noset)
    original = _original_cpus if _original_cpus is not None else frozenset(os.sched_getaffinity(0))
    if key == _last_key:
        # the same GPUs, and the mask still what was applied (a task may have changed its own): nothing to do
        want = original if _last is None or not _last.cpus_applied else _last.bind_cpus
        if frozenset(os.sched_getaffinity(0)) == want:
            return _last, True
    before = _last
    _last_key, _last = None, None  # whatever happens below, no stale record stands for this task
    with _state.lock:
        # plan from the worker's own mask, not the last task's; the memory policy is put back to the default only
        # where this hook set one (with memory binding off, a policy the program set itself stays)
        if frozenset(os.sched_getaffinity(0)) != original:
            set_affinity_all_threads(original)
        if before is not None and before.memory_applied:
            _restore_mempolicy(MPOL_DEFAULT, frozenset())
        from gpuaffinity import intent

        intent.withdraw()  # unbound again: until a binding is planned below, `gpuaffinity check` finds none
        if not gpu_ids:
            _last_key = key
            return None, False
        mode = _setting(MODE_VAR, "node", MODES)
        memory = _setting(MEMORY_VAR, DEFAULT_MEMORY, MEMORY_POLICIES)
        records = [plan(i, mode=mode, memory=memory) for i in logical_ids(gpu_ids, cvd, noset)]
        failures = [f for r in records for f in r.failures]
        # a GPU without a node plans no memory policy: then none for the task, rather than a policy over the
        # other GPUs' nodes alone
        memory = memory if all(r.memory == memory for r in records) else "none"
        buses = [r.pci_bus_id for r in records]
        rec = BindRecord(records[0].logical_id, ",".join(buses), mode, memory,
                         tuple(sorted({n for r in records for n in r.memory_nodes})),
                         frozenset().union(*(r.bind_cpus for r in records)), failures=failures,
                         notes=[n for r in records for n in r.notes],
                         numa_nodes=tuple(sorted({n for r in records for n in r.numa_nodes})),
                         cpus=frozenset().union(*(r.cpus for r in records)),
                         shared_with=tuple(dict.fromkeys(b for r in records for b in r.shared_with
                                                         if b not in buses)))
    if not failures:
        apply(rec, "warn")
    else:  # planned, not applied: recorded all the same, so `gpuaffinity check` names its GPU and says why
        from gpuaffinity import intent

        intent.publish(rec)
    if rec.failures:
        _say_once(f"gpuaffinity: this Ray task is bound only in part ({rec.summary()}): "
                  f"{'; '.join(rec.failures)}".replace("use --memory none", f"set {MEMORY_VAR}=none in the "
                                                        "runtime environment's env_vars"))
    _last_key, _last = key, rec
    return rec, False


_said: set[str] = set()


def _say_once(line: str) -> None:
    """One line on stderr, once a worker process (a failure repeats on every task otherwise)."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def _setting(var: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(var) or default
    if value not in allowed:
        raise ValueError(f"{var}={value[:40]!r} is not one of {', '.join(allowed)}; fix it in the runtime "
                         "environment's env_vars")
    return value


def last() -> BindRecord | None:
    """What the last task's binding applied in this worker (None: no GPU task yet, or the last had none)."""
    return _last
