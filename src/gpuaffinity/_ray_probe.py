"""What one GPU worker of a Ray cluster reports to ``gpuaffinity ray-check`` (run inside the worker).

This module is sent to the workers by value (``ray_check`` registers it with Ray's cloudpickle), so a node
where gpuaffinity is not installed still runs it and says so, instead of failing to unpickle.  It imports
nothing from gpuaffinity at the top, and reads what is in effect (CPU mask, memory policy) before doing
anything else in the worker.
"""

from __future__ import annotations

import os

ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES",
       "NVIDIA_VISIBLE_DEVICES", "GPUAFFINITY_RAY_MODE", "GPUAFFINITY_RAY_MEMORY", "GPUAFFINITY_POLICY",
       "GPUAFFINITY_DISABLE")


class Probe:
    """One per GPU, placed as a GPU actor is (``num_gpus=1`` on one node)."""

    def report(self, mode: str, pages: bool = False) -> dict:
        return probe(mode, pages)


def probe(mode: str, pages: bool = False) -> dict:
    """Facts about this worker and its GPU; ``error`` set (and the rest partial) where it could not look."""
    import socket
    import sys
    import time

    t0 = time.perf_counter()
    affinity = sorted(os.sched_getaffinity(0))  # first: what the worker runs with
    out: dict = {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.version.split()[0],
                 "env": {k: os.environ[k] for k in ENV if k in os.environ}, "affinity": affinity, "error": None}
    try:
        import ray

        ctx = ray.get_runtime_context()
        out["node_id"] = ctx.get_node_id()
        out["ip"] = ray.util.get_node_ip_address()
        out["ray_gpu_ids"] = [str(i).strip() for i in ray.get_gpu_ids()]
    except Exception as e:  # a Ray without these: say so, the rest still helps
        out["error"] = f"could not ask Ray in the worker: {type(e).__name__}: {e}"
        return out
    try:
        import gpuaffinity
    except ImportError as e:
        out["error"] = f"gpuaffinity is not importable in this node's Ray workers ({e}): install it on the node"
        out["status"] = "not-installed"
        return out
    out["version"] = gpuaffinity.__version__
    try:
        _facts(out, mode, pages)
    except Exception as e:  # reported on the row, never a crash of the check
        out["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    out["probe_seconds"] = round(time.perf_counter() - t0, 4)  # in the worker: resolving (strict) and looking
    return out


def _facts(out: dict, mode: str, pages: bool = False) -> None:
    import warnings

    from gpuaffinity import ray_worker
    from gpuaffinity.api import resolve
    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.core.errors import ConflictError, UnresolvedError
    from gpuaffinity.core.model import Answer
    from gpuaffinity.core.record import replace
    from gpuaffinity.numa.bind import SHORT_NAMES, get_mempolicy, policy_mode, policy_name
    from gpuaffinity.numa.modes import place
    from gpuaffinity.numa.query import allowed_cpus
    from gpuaffinity.placement import locate

    raw, nodes = get_mempolicy()
    # gpuaffinity's name of the mode (MPOL_PREFERRED_MANY is `preferred` over several nodes), and the kernel's,
    # with the mode flags (MPOL_F_STATIC_NODES...), from the one table in gpuaffinity.numa.bind
    out["memory"] = {"policy": SHORT_NAMES.get(policy_mode(raw), str(policy_mode(raw))), "nodes": sorted(nodes),
                     "kernel": policy_name(raw)}
    original = ray_worker._original_cpus
    rec = ray_worker.last()
    out["hook"] = {"set_up": original is not None, "said": sorted(ray_worker._said),
                   "pci_bus_id": rec.pci_bus_id if rec else None, "failures": list(rec.failures) if rec else []}
    # the CPUs the worker may use: what it could use before any binding narrowed its mask, read by the setup hook
    # (a worker without the hook is not bound: what it may use now).  Never the mask now: a bound worker's is its
    # binding, and a GPU's CPUs within it say nothing about where the worker should be (issue 22)
    pool = ray_worker._original_pool if ray_worker._original_pool is not None else allowed_cpus()
    out["worker_cpus"] = format_cpulist(pool)
    noset = os.environ.get(ray_worker.NOSET_VAR, "").lower() in ("1", "true")
    (logical,) = ray_worker.logical_ids(out["ray_gpu_ids"], os.environ.get("CUDA_VISIBLE_DEVICES"), noset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problem = None
        try:  # every strategy, the CUDA driver's own answer (in a child process) included
            dev = resolve(logical, policy="strict")
        except (ConflictError, UnresolvedError) as e:
            dev, problem = e.device, str(e)
        driver = [v.result for v in dev.verdicts if v.strategy == "pci" and isinstance(v.result, Answer)]
        if driver and driver[0].uuid != dev.uuid:  # judge the binding against the GPU the driver names
            others = [v.strategy for v in dev.verdicts if v.strategy != "pci"]
            true_dev = resolve(logical, policy="first", disable=others)
        else:
            true_dev = dev
    out["warnings"] = [str(w.message) for w in caught]
    out["gpu"] = {**dev.to_dict(), "driver_uuid": driver[0].uuid if driver else None, "problem": problem,
                  "driver_pci_bus_id": true_dev.pci_bus_id}
    loc = locate([true_dev.pci_bus_id])[true_dev.pci_bus_id]
    # the GPU's CPUs within the worker's own (loc.cpus is within the current mask, which the binding narrowed)
    loc = replace(loc, cpus=loc.local_cpus & pool)
    # where the mode puts this GPU's worker (exclusive, llc: its share of the node), and its memory nodes, from
    # the worker's own CPUs; the peers an exclusive split counts come from the machine's PCI tree
    region = place(loc, mode, pool, allowed_mems=None)
    # the names mean what they mean in `resolve --json` and BindRecord: numa_nodes and cpus are the GPU's,
    # bind_cpus and memory_nodes the mode's
    out["numa_nodes"] = list(loc.numa_nodes)
    out["cpus"] = format_cpulist(loc.cpus)
    out["bind_cpus"] = format_cpulist(region.bind_cpus) if loc.numa_nodes else ""
    out["gpu_cpus"] = out["bind_cpus"]  # deprecated: its name before issue 19 (docs/ray.md)
    out["memory_nodes"] = list(region.memory_nodes)
    out["shared_with"] = list(region.shared_with)
    out["notes"] = list(loc.notes)
    # every thread's CPUs and (asked for) the pages, read as `gpuaffinity check` reads any process: one code
    from gpuaffinity.proc import look
    from gpuaffinity.verdict import pages_dict

    view = look(os.getpid(), pages=pages, root="/proc")
    out["thread_list"] = [(t.tid, t.name, format_cpulist(t.cpus)) for t in view.threads]
    out["pages"] = pages_dict(view.pages)
