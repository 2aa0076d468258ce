"""How a running GPU worker is judged: one code for ``gpuaffinity check`` and ``gpuaffinity ray-check``.

A row is a dict of facts about one worker (its GPU's ``numa_nodes``, the mode's ``bind_cpus`` and
``memory_nodes``, the main thread's ``affinity``, the memory policy, every thread's CPUs, its pages per node);
``binding``, ``threads`` and ``pages`` add ``(status, text)`` problems for what is wrong.  The statuses mean the
same in both commands (docs/check.md), worst first: a row's status is its worst problem.

Owns: the judgement of a process's binding (status and problems).
"""

from __future__ import annotations

from typing import Any

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist

#: a row's status, worst first: the table and the exit status follow this order
STATUSES = ("not-installed", "error", "no-access", "gone", "timeout", "disagree", "duplicate", "off-node", "unbound",
            "threads-drifted", "remote-memory", "ok", "no-gpu", "no-gpus")
#: the statuses that fail a check (exit status 4); ``no-gpu`` (a process without a GPU) and ``no-gpus`` (a Ray
#: node without one) are not problems
PROBLEMS = frozenset(STATUSES[:STATUSES.index("ok")])
#: a worker whose counted memory is less than this share on its GPU's memory nodes is REMOTE-MEMORY ...
MIN_LOCAL = 0.8
#: ... when at least this much of it (bytes) is elsewhere: a small process's few pages do not fail a check
REMOTE_FLOOR = 64 << 20
#: ``memory`` for a process without a recorded binding: any policy that keeps its memory on its GPU's node(s)
#: (preferred, bind, interleave over them, local) is right; the default policy is not
ANY = "any"
#: threads named in a problem's text (all are in the row's ``threads.off``)
SHOWN_THREADS = 5

Problems = list[tuple[str, str]]


def check_min_local(min_local: object) -> float:
    """``min_local`` if it is a share between 0 and 1; GpuAffinityError saying so otherwise."""
    from gpuaffinity.core.errors import GpuAffinityError

    if isinstance(min_local, bool) or not isinstance(min_local, (int, float)) or not 0 <= min_local <= 1:
        raise GpuAffinityError(f"min_local {str(min_local)[:40]!r}: give the share of memory that must be on the GPU's "
                         "node(s), from 0 to 1 (default 0.8)")
    return float(min_local)


def status_of(problems: Problems) -> str:
    return min((k for k, _t in problems), key=STATUSES.index, default="ok")


def shown(status: str) -> str:
    """A status as the tables print it: problems in capitals (``OFF-NODE``), the others as they are."""
    return status.upper() if status in PROBLEMS else status


def where(row: dict[str, Any], mode: str) -> str:
    part = {"socket": "socket of ", "exclusive": "share of ", "llc": "cache group in "}.get(mode, "")
    return f"{part}node {format_cpulist(row['numa_nodes'])}"


def binding(row: dict[str, Any], problems: Problems, mode: str, memory: str, *, set_up: bool, why: str,
            memory_why: str, missing: str) -> None:
    """The main thread's CPUs and the memory policy against the mode's ``bind_cpus`` and ``memory_nodes``.

    ``set_up``: a binding was applied to this worker (the Ray setup hook ran; a binding is recorded); ``why``:
    what it said when it failed; ``memory_why``: what set_mempolicy said; ``missing``: why there is no binding
    at all.  A worker that runs on every CPU it may use (``worker_cpus``), was never bound, or was widened (it
    still runs on some of ``bind_cpus``) is ``unbound``; one bound entirely elsewhere is ``off-node``."""
    affinity = frozenset(row["affinity"])
    worker = parse_cpulist(row["worker_cpus"])
    near = parse_cpulist(row["bind_cpus"])
    bus = row["pci_bus_id"]
    if not row["numa_nodes"]:
        row["notes"].append("the GPU has no NUMA node (its locality notes say why): nothing to bind to, the "
                            "worker keeps all its CPUs")
        return
    if not near:
        problems.append(("unbound", f"none of the worker's CPUs ({row['worker_cpus']}) is near GPU {bus}: nothing "
                                    "to bind to (the node's cpuset excludes them)"))
        return
    at = where(row, mode)
    if not affinity <= near:
        # widened (to every CPU, or onto part of another node: it still runs on some of its own) is unbound, as
        # docs/check.md has it; off-node is a binding entirely elsewhere
        if affinity >= worker or not set_up or affinity & near:
            reason = missing if not set_up else why or "no binding was applied"
            problems.append(("unbound", f"runs on CPUs {format_cpulist(affinity)}, not bound to its GPU's {at} "
                                        f"(CPUs {row['bind_cpus']}): {reason}"))
        else:
            problems.append(("off-node", f"bound to CPUs {format_cpulist(affinity)}, off its GPU's {at} "
                                         f"(CPUs {row['bind_cpus']})"))
    mem = row.get("memory")
    if memory == "none":
        return
    if not mem:
        return  # not readable: the row says why (no-access)
    allowed = row.get("memory_nodes") or row["numa_nodes"]  # the mode's memory nodes (socket: the socket's)
    if mem["policy"] == "default":
        reason = memory_why or (missing if not set_up else "")
        head = (f"memory policy is the default: nothing keeps its memory on its GPU's node "
                f"{format_cpulist(row['numa_nodes'])}" if memory == ANY else
                f"memory policy is the default, not {memory} to its GPU's node {format_cpulist(row['numa_nodes'])}")
        problems.append(("unbound", head + (f": {reason}" if reason else "")))
    elif memory != ANY and mem["policy"] != memory:
        problems.append(("unbound", f"memory policy is {mem['policy']} (node(s) {format_cpulist(mem['nodes'])}), "
                                    f"not {memory}"))
    if mem["policy"] == memory == "preferred" and mem.get("kernel") == "MPOL_PREFERRED" and len(allowed) > 1:
        row["notes"].append(f"memory prefers node(s) {format_cpulist(mem['nodes'])} alone (MPOL_PREFERRED), not "
                            f"all of {format_cpulist(allowed)}: this kernel has no MPOL_PREFERRED_MANY (Linux "
                            "5.15 added it); it still spills to the other nodes")
    if mem["policy"] not in ("default", "local") and not set(mem["nodes"]) <= set(allowed):
        problems.append(("off-node", f"memory {mem['policy']} to node(s) {format_cpulist(mem['nodes'])}, off its "
                                     f"GPU's {'socket, node(s) ' if mode == 'socket' else 'node '}"
                                     f"{format_cpulist(allowed)}"))


def threads(row: dict[str, Any], problems: Problems, listed: list[tuple[int, str, frozenset[int]]],
            main: int) -> None:
    """Every thread's CPUs against ``bind_cpus``: ``row["threads"]`` becomes ``{"count", "off"}``, ``off`` the
    threads that may run elsewhere (tid, name, CPUs).  When the main thread is where it should be and another
    thread is not, the row is ``threads-drifted``, naming the threads."""
    near = parse_cpulist(row["bind_cpus"]) if row.get("bind_cpus") else frozenset()
    off = [] if not near or not row.get("numa_nodes") else \
        [{"tid": tid, "name": name, "cpus": format_cpulist(cpus)} for tid, name, cpus in listed if not cpus <= near]
    row["threads"] = {"count": len(listed), "off": off}
    others = [t for t in off if t["tid"] != main]
    if others and frozenset(row["affinity"]) <= near:
        named = ", ".join(f"{t['tid']} ({t['name']}) on CPUs {t['cpus']}" for t in others[:SHOWN_THREADS])
        more = f" and {len(others) - SHOWN_THREADS} more" if len(others) > SHOWN_THREADS else ""
        problems.append(("threads-drifted", f"{len(others)} of {len(listed)} threads may run off its GPU's "
                                            f"CPUs {row['bind_cpus']}: {named}{more}"))


def pages(row: dict[str, Any], problems: Problems, min_local: float = MIN_LOCAL,
          floor: int = REMOTE_FLOOR) -> None:
    """The resident pages (``row["pages"]``: bytes per node) against the memory nodes: ``local`` is the share on
    them; below ``min_local``, with at least ``floor`` bytes elsewhere, the row is ``remote-memory``."""
    p = row.get("pages")
    if not p or not row.get("numa_nodes"):
        return
    allowed = {str(n) for n in (row.get("memory_nodes") or row["numa_nodes"])}
    total = sum(p["nodes"].values())
    local = sum(b for n, b in p["nodes"].items() if n in allowed)
    p["total"] = total
    p["local"] = round(local / total, 4) if total else None
    if total and local / total < min_local and total - local >= floor:
        elsewhere = ", ".join(f"node {n} {_size(b)}" for n, b in sorted(p["nodes"].items(), key=lambda x: int(x[0]))
                              if n not in allowed and b)
        problems.append(("remote-memory", f"{100 * (total - local) / total:.0f}% of its memory ({_size(total - local)} "
                                          f"of {_size(total)}) is off its GPU's node(s) "
                                          f"{format_cpulist(int(n) for n in allowed)}: {elsewhere}"))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def threads_cell(row: dict[str, Any]) -> str:
    """The THREADS column: threads within ``bind_cpus``, of all threads."""
    th = row.get("threads")
    return f"{th['count'] - len(th['off'])}/{th['count']}" if th else "-"


def local_cell(row: dict[str, Any]) -> str:
    """The LOCAL column: the share of the counted memory on the GPU's memory node(s) (``--pages``)."""
    p = row.get("pages")
    return f"{100 * p['local']:.0f}%" if p and p.get("local") is not None else "-"


def pages_dict(p: Any) -> dict[str, Any] | None:
    """``gpuaffinity.proc.Pages`` as a row holds it (node numbers as strings, as JSON keys are)."""
    if p is None:
        return None
    return {"nodes": {str(n): b for n, b in sorted(p.nodes.items())},
            "file_nodes": {str(n): b for n, b in sorted(p.file_nodes.items())}}
