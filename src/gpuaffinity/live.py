"""Where GPU workers are right now: ``gpuaffinity check`` for any process (docs/check.md).

For each process: the GPU(s) it holds or was bound for, read in *its* view, never the checker's; that GPU's
NUMA node(s) and the CPUs the binding's mode gives it; the CPU mask of every thread; its memory policy; where
its resident pages are (``pages=True``).  One row per process, judged by the code that judges ``ray-check``'s
rows (gpuaffinity.verdict), so the two commands use the same words and never disagree.

Which GPU, in this order:

1. the binding it records (gpuaffinity.intent): the GPU it was bound for, before it opens any;
2. NVML's list of processes with a CUDA context on each GPU, where this process may ask NVML, kept only where
   the process also holds that GPU's device node open (a pid in NVML's list is the host's, which a process in
   another pid namespace does not share);
3. the NVIDIA device nodes it holds open (``/proc/PID/fd``), narrowed to the GPUs its own
   ``CUDA_VISIBLE_DEVICES`` (from ``/proc/PID/environ``) makes visible where that reading is exact.

Where the binding names a GPU the process does not compute on (2 or 3 say so), the row is judged against the
GPU it computes on, and a note says what the binding was planned for.

Owns: the `gpuaffinity check` report.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gpuaffinity import proc, verdict
from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.core.errors import GpuAffinityError
from gpuaffinity.core.settings import BOUND_VAR, CVD, MEMORY_POLICIES, MODES, ORDER

#: what the rows' ``source`` says the GPU came from
SOURCES = ("binding", "nvml", "device-nodes")


class Report:
    """Rows, one per process, and what the check ran with (``ok``: no row has a problem)."""

    def __init__(self, rows: list[dict[str, Any]], settings: dict[str, Any], seconds: float,
                 notes: list[str]) -> None:
        self.rows = rows
        self.settings = settings
        self.seconds = seconds
        self.notes = notes

    @property
    def ok(self) -> bool:
        return not any(r["status"] in verdict.PROBLEMS for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "settings": self.settings, "notes": self.notes,
                "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class _Host:
    """The host's GPUs (the driver's /proc listing, else NVML), by minor and bus id, and NVML's process list:
    read once per check, through the check's one NVML session (``nv``; None: not asked, or unavailable)."""

    def __init__(self, nv: Any, nvml_error: str, notes: list[str]) -> None:
        from gpuaffinity.inventory import ProcListing

        listing = ProcListing.read(os.environ)
        self.gpus = list(listing.gpus)
        self.by_minor = dict(zip(listing.minors, self.gpus, strict=True))
        self.by_bus = {g.pci_bus_id: g for g in self.gpus}
        self.contexts: dict[int, dict[str, int | None]] = {}  # pid -> {bus: bytes}
        self.listed: set[str] = set()  # the GPUs whose process list NVML gave
        self.nvml_error = nvml_error
        if listing.problem:
            notes.append(f"the driver's GPU list cannot be read ({listing.problem}): device nodes cannot be named")
            self._from_nvml(notes)
        if nv is not None and self.gpus:
            self._processes(nv)
        if self.nvml_error:
            notes.append(f"NVML's process list: {self.nvml_error}")

    def _from_nvml(self, notes: list[str]) -> None:
        from gpuaffinity.inventory import read_inventory

        try:
            inv = read_inventory()
        except GpuAffinityError as e:
            notes.append(f"no GPU inventory: {e}")
            return
        self.gpus = list(inv.gpus)
        self.by_bus = {g.pci_bus_id: g for g in self.gpus}

    def _processes(self, nv: Any) -> None:
        from gpuaffinity.nvml_lite import NvmlLiteError

        missed: dict[str, list[str]] = {}  # NVML's error -> the GPUs that gave it
        for g in self.gpus:
            try:  # one GPU this checker cannot open (a restricted view) costs only its own list
                for pid, used in nv.compute_processes(nv.handle(g.pci_bus_id)):
                    self.contexts.setdefault(pid, {})[g.pci_bus_id] = used
                self.listed.add(g.pci_bus_id)
            except NvmlLiteError as e:
                missed.setdefault(str(e), []).append(g.pci_bus_id)
        if missed:  # once per error (a driver without the call gives it for every GPU), not once per GPU
            self.nvml_error = ("unavailable for GPU(s) " + "; ".join(f"{', '.join(b)} ({e})" for e, b in missed.items())
                               + ": their processes are found by their device nodes and bindings")

    def lists_every_context(self, buses: list[str]) -> bool:
        """Whether NVML's lists of ``buses`` name every process of this /proc that computes on them: NVML names
        host pids (this /proc's only in the host's pid namespace: the kernel's fixed inode for it,
        PROC_PID_INIT_INO), and a MIG GPU's whole list only to a privileged caller (NVML's reference).  Where they
        do, a process that holds a GPU's device node but is not in its list does not compute there: nvidia-smi,
        DCGM and NVML exporters hold every GPU's node (measured on an H100: docs/check.md)."""
        if not buses or not set(buses) <= self.listed or os.geteuid() != 0:
            return False
        try:
            return os.readlink("/proc/self/ns/pid") == "pid:[4026531836]"
        except OSError:
            return False


@contextlib.contextmanager
def _nvml(use: bool) -> Iterator[tuple[Any, str]]:
    """The check's one NVML session (None, and why, where it is not asked or cannot start)."""
    if not use:
        yield None, "not asked (--no-nvml)"
        return
    from gpuaffinity.nvml_lite import NvmlLiteError, Session

    try:
        session = Session()
        nv = session.__enter__()
    except NvmlLiteError as e:
        yield None, f"unavailable ({e})"
        return
    try:
        yield nv, ""
    finally:
        session.__exit__(None, None, None)


def _candidates(host: _Host, notes: list[str]) -> list[int]:
    """Every process that holds an NVIDIA device node, records a binding, or NVML lists."""
    found = set(host.contexts)
    hidden = 0
    me = os.getpid()
    for pid in proc.pids():
        if pid == me:
            continue
        here = os.path.join(proc.roots(pid), str(pid))
        try:
            names = os.listdir(os.path.join(here, "fd"))
        except PermissionError:
            hidden += 1
            continue
        except OSError:
            continue
        hit = False
        for n in names:
            try:
                base = os.path.basename(os.readlink(os.path.join(here, "fd", n)))
            except OSError:
                continue
            if base.startswith(("nvidia", "memfd:" + proc.MEMFD_NAME)):
                hit = True
                break
        if not hit:
            try:  # the whole environment, and the variable itself (not a value that merely contains its name)
                hit = BOUND_VAR in proc.read_environ(here)
            except OSError:
                pass
        if hit:
            found.add(pid)
    if hidden:
        notes.append(f"{hidden} process(es) of other users were not looked at (their open files cannot be listed "
                     "without root): run the check as root to see every GPU process"
                     + ("; NVML's list named those it could" if host.contexts else ""))
    return sorted(found)


def check(pids: Iterable[int] | None = None, *, all_processes: bool = False, mode: str = "node",
          memory: str = verdict.ANY, pages: bool = False, min_local: float = verdict.MIN_LOCAL,
          use_nvml: bool = True, progress: Callable[[int, int], None] | None = None) -> Report:
    """Check the processes ``pids`` (or, with ``all_processes`` or no pids, every process that holds an NVIDIA
    GPU or records a gpuaffinity binding); a ``Report`` with one row per process.

    ``mode`` and ``memory``: the binding a process without a recorded one should have (as ``gpuaffinity bind``;
    ``memory="any"``, the default: any policy onto its GPU's node(s), not the default policy); a recorded
    binding is judged by its own.  ``pages``: also read where each process's resident memory is
    (``/proc/PID/numa_maps``: the kernel walks every page, 4 to 15 ms per GiB), and fail a row with less than
    ``min_local`` of it on its GPU's memory nodes.  ``use_nvml``: ask NVML which processes compute on which GPU.
    """
    if mode not in MODES:
        raise GpuAffinityError(f"unknown mode {str(mode)[:40]!r}: choose one of {', '.join(MODES)}")
    if memory not in (*MEMORY_POLICIES, verdict.ANY):
        raise GpuAffinityError(f"unknown memory policy {str(memory)[:40]!r}: choose one of "
                               f"{', '.join((*MEMORY_POLICIES, verdict.ANY))}")
    verdict.check_min_local(min_local)
    wanted: list[int] = []
    threads_given: dict[int, list[int]] = {}  # process -> the thread ids given for it
    for p in pids or ():
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 1 << 22:
            raise GpuAffinityError(f"not a process id: {str(p)[:40]!r} (a number from 1 to 4194303)")
        # a thread id reads at /proc/TID like a process, but its row would take that thread's mask for the main
        # thread's and list the process twice: a thread is checked as its process
        leader = proc.thread_group(p)
        if leader is not None and leader != p:
            threads_given.setdefault(leader, []).append(p)
            p = leader
        if p not in wanted:
            wanted.append(p)
    started = time.perf_counter()
    notes: list[str] = []
    from gpuaffinity import _state

    with _state.lock, _nvml(use_nvml) as (nv, nvml_error):
        host = _Host(nv, nvml_error, notes)
        targets = wanted if wanted and not all_processes else \
            sorted(set(wanted) | set(_candidates(host, notes)))
        rows, foreign, pending = [], 0, []
        for i, pid in enumerate(targets):
            row = _row(pid, host, pages, pending)
            row["notes"][:0] = [f"{t} is a thread of process {pid}: checked as that process"
                                for t in threads_given.get(pid, ())]
            if row.get("foreign") and pid not in wanted:
                foreign += 1  # found by --all, for GPUs this machine does not show: not this machine's worker
            else:
                rows.append(row)
            if progress is not None:
                progress(i + 1, len(targets))
        if pending:
            from gpuaffinity.placement import locate

            # every GPU's locality at once, in the check's NVML session: the one owner of "device to locality"
            locs = locate(sorted({b for p in pending for b in p[3]}), session=nv)
            for row, problems, view, buses, intent, planned in pending:
                _judge(row, problems, view, buses, host, intent, mode, memory, min_local, locs, planned)
                _done(row, problems)
        if foreign:
            notes.append(f"{foreign} process(es) bound for GPUs this machine does not show here were left out (a "
                         "binding made in a container that shows other GPUs, or under another simulated machine)")
    settings = {"mode": mode, "memory": memory, "pages": pages, "min_local": min_local,
                "all": bool(all_processes or not wanted), "nvml": not host.nvml_error}
    return Report(rows, settings, time.perf_counter() - started, notes)


def _row(pid: int, host: _Host, pages: bool, pending: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The row of ``pid`` as far as /proc tells it; one with a GPU to judge is added to ``pending``."""
    row: dict[str, Any] = {"pid": pid, "name": "", "status": "", "pci_bus_id": None, "uuid": None, "problems": [],
                           "notes": []}
    problems: verdict.Problems = []
    try:
        view = proc.look(pid, pages=pages)
    except proc.Gone as e:
        problems.append(("gone", f"{e}: nothing to check"))
        return _done(row, problems)
    row.update(name=view.name, cmdline=" ".join(view.cmdline)[:200], uid=view.uid, source_root=view.source)
    if view.zombie:
        problems.append(("gone", "a zombie: it has exited, and its parent has not collected its exit status yet"))
        return _done(row, problems)
    if view.kernel_thread:
        row["notes"].append("a kernel thread: it holds no GPU")
        return _done(row, problems, "no-gpu")
    env = view.environ or {}
    row["env"] = {k: env[k] for k in (CVD, ORDER) if k in env}
    idle = False  # it holds GPUs' device nodes, and NVML says it computes on none of them
    intent, intent_note = _intent(view)
    if intent_note:
        row["notes"].append(intent_note)
    if intent is not None and intent.pid != pid:
        row["notes"].append(f"its binding was made in pid {intent.pid} ({intent.how}), an ancestor it inherited it "
                            "from (or the pid namespace it was made in)")
    held = [host.by_minor[m].pci_bus_id for m in view.gpu_minors if m in host.by_minor]
    unknown = [m for m in view.gpu_minors if m not in host.by_minor]
    if unknown:
        row["notes"].append(f"it holds /dev/nvidia{unknown[0]}, which the driver's GPU list here does not name")
    contexts = host.contexts.get(pid, {})
    computes = [b for b in contexts if b in held] if view.environ is not None else list(contexts)
    strays = [b for b in contexts if b not in computes]
    if strays:  # a pid of another pid namespace, or a process that let go of the node: not taken
        row["notes"].append(f"NVML lists pid {pid} on GPU(s) {', '.join(strays)}, whose device node this process "
                            "does not hold: not taken (another pid namespace's process?)")
    visible = _visible(env, host, row) if held and not computes else None
    narrowed = [b for b in held if visible is None or b in visible] or held
    if intent is not None:
        buses, source = intent.buses, "binding"
        truth = computes or (narrowed if held else [])
        # a record naming a GPU this machine does not show, beside one it holds here, made the whole row another
        # machine's (left out of --all): what it computes on here is judged
        elsewhere = host.by_bus and any(b not in host.by_bus for b in buses)
        if truth and (not set(buses) & set(truth) or elsewhere):
            row["notes"].append(f"the binding was planned for GPU {intent.pci_bus_id}, but the process computes on "
                                f"{', '.join(truth)}: judged against that")
            buses, source = truth, "nvml" if computes else "device-nodes"
    elif computes:
        buses, source = computes, "nvml"
    elif held and view.source == "/proc" and host.lists_every_context(held):
        # an NVML monitor, or a process that has not created its CUDA context yet: not judged as a GPU worker
        # (the simulator's modelled processes are not in this /proc's pid namespace: their nodes stand as before)
        row["notes"].append(f"it holds the device node(s) of GPU(s) {', '.join(held)}, but NVML lists no CUDA "
                            "context of it there: a monitoring tool (nvidia-smi, DCGM, an NVML exporter) or a "
                            "process whose CUDA has not started")
        buses, source, idle = [], "", True
    elif narrowed:
        buses, source = narrowed, "device-nodes"
        if len(narrowed) > 1:
            row["notes"].append(f"it holds the device nodes of {len(narrowed)} GPUs and nothing says which it computes "
                                "on: judged against all of them" + ("" if not host.nvml_error else
                                                                    f" (NVML's process list: {host.nvml_error})"))
    else:
        buses, source = [], ""
    row["gpu_memory"] = {b: contexts.get(b) for b in buses if b in contexts}
    row["binding"] = None if intent is None else {
        "how": intent.how, "pid": intent.pid, "pci_bus_id": intent.pci_bus_id, "mode": intent.mode,
        "memory": intent.memory, "bind_cpus": format_cpulist(intent.bind_cpus),
        "memory_nodes": list(intent.memory_nodes), "applied": intent.applied, "failures": list(intent.failures)}
    denied = [d for d in view.denied if d.split(":")[0] in ("environ", "fd", "numa_maps")]
    if not buses:
        if denied:
            problems.append(("no-access", f"cannot see which GPU it holds: {'; '.join(denied)} (run the check as "
                                          "its user or as root)"))
            return _done(row, problems)
        if not idle:
            row["notes"].append("it holds no NVIDIA GPU and records no gpuaffinity binding")
        return _done(row, problems, "no-gpu")
    row["source"] = source
    missing = [b for b in buses if b not in host.by_bus]
    if missing and not host.by_bus:
        # no GPU list at all (no driver list, NVML down): a GPU sysfs does not show either is not this machine's;
        # judged, it was "a GPU with no NUMA node", `ok`
        from gpuaffinity.numa.sysfs import Sysfs

        sysfs = Sysfs()
        missing = [b for b in missing if not sysfs.pci_dir(b).is_dir()]
    if missing:
        row["foreign"] = True
        problems.append(("no-access", f"its GPU {', '.join(missing)} ({source}) is not among the GPUs this check sees "
                                      "(a container that shows other GPUs?): check it from where it runs"))
        row["pci_bus_id"] = ",".join(buses)
        return _done(row, problems)
    if denied:
        problems.append(("no-access", f"part of it cannot be read: {'; '.join(denied)} (run the check as its user "
                                      "or as root)"))
    judged_by_binding = source == "binding"
    pending.append((row, problems, view, buses, intent if judged_by_binding else None,
                    None if intent is None or judged_by_binding else intent.pci_bus_id))
    return row


def _intent(view: proc.View) -> tuple[Any, str]:
    from gpuaffinity import intent

    texts = [("in-process", view.binding_text), ("exec", (view.environ or {}).get(BOUND_VAR))]
    for how, text in texts:
        if text:
            try:
                return intent.decode(text), ""
            except ValueError as e:
                return None, f"its {how} binding record cannot be read: {e}"
    return None, ""


def _visible(env: dict[str, str], host: _Host, row: dict[str, Any]) -> set[str] | None:
    """The GPUs the process's own CUDA_VISIBLE_DEVICES shows, where that reading is exact; None otherwise."""
    from gpuaffinity.core.cvd import read_cvd

    cvd, order = env.get(CVD), env.get(ORDER)
    if cvd is None:
        return None
    uniform = len({g.name for g in host.gpus}) <= 1
    if not cvd.startswith(("GPU-", "MIG-")) and order != "PCI_BUS_ID" and not uniform:
        row["notes"].append(f"its CUDA_VISIBLE_DEVICES={cvd[:60]!r} counts in CUDA's fastest-first order on a "
                            "machine of mixed GPU models: which GPUs it shows cannot be known from outside")
        return None
    res = read_cvd(cvd, host.gpus, device_order=order)
    if res.unsure or res.unknown:
        return None
    return {host.gpus[d.gpu].pci_bus_id for d in res.devices}


def _judge(row: dict[str, Any], problems: verdict.Problems, view: proc.View, buses: list[str], host: _Host,
           intent: Any, mode: str, memory: str, min_local: float, locs: dict[str, Any],
           planned: str | None = None) -> None:
    """Judge the row against ``buses``; ``intent``: the binding it is judged by, None where there is none or
    (``planned``: the GPU it names) where the process computes on another GPU than the binding's."""
    from gpuaffinity.core.record import replace
    from gpuaffinity.numa.modes import place
    from gpuaffinity.numa.sysfs import Sysfs

    row["pci_bus_id"] = ",".join(buses)
    row["uuid"] = ",".join(host.by_bus[b].uuid if b in host.by_bus else "?" for b in buses)
    online = Sysfs().online_cpus() or frozenset().union(*(loc.local_cpus for loc in locs.values()))
    numa, cpus, bind_cpus, mems, near = set(), set(), set(), set(), set()
    if intent is not None:
        mode, memory = intent.mode, intent.memory
    for bus in buses:
        loc = replace(locs[bus], cpus=locs[bus].local_cpus & online)  # the GPU's CPUs, not the checker's
        numa.update(loc.numa_nodes)
        cpus.update(loc.cpus)
        row["notes"].extend(n for n in loc.notes if n not in row["notes"])
        region = place(loc, mode, online, allowed_mems=None)
        bind_cpus.update(region.bind_cpus if loc.numa_nodes else ())
        mems.update(region.memory_nodes)
        near.update(loc.cpus | region.bind_cpus if loc.numa_nodes else ())  # its node's CPUs (socket: the socket's)
    stray = False
    if intent is not None:
        # the record's CPUs are the binder's word, made in its own view: one made where the GPU showed no node
        # (every CPU), or forged, made a process on every CPU `ok`; CPUs off the GPU's node as this check sees it
        # are judged against the mode's CPUs there instead
        stray = bool(numa) and not intent.bind_cpus <= near
        if stray:
            row["notes"].append(f"its binding's CPUs {format_cpulist(intent.bind_cpus) or 'none'} (record: node(s) "
                                f"{format_cpulist(intent.numa_nodes) or 'none'}) are not on its GPU's node "
                                f"{format_cpulist(numa)} as this check sees it (CPUs {format_cpulist(near)}): "
                                "judged against those")
        else:
            bind_cpus, mems = set(intent.bind_cpus), set(intent.memory_nodes)
    row.update(mode=mode, memory_asked=memory, numa_nodes=sorted(numa), cpus=format_cpulist(cpus),
               bind_cpus=format_cpulist(bind_cpus), memory_nodes=sorted(mems), worker_cpus=format_cpulist(online),
               affinity=sorted(view.cpus))
    pol = view.policy
    row["memory"] = None if pol is None else {"policy": pol.policy, "nodes": sorted(pol.nodes), "kernel": pol.kernel}
    if pol is None and view.kernel_thread is False and not any(d.startswith("numa_maps") for d in view.denied):
        row["notes"].append("its memory policy cannot be read (no numa_maps: a kernel without NUMA?)")
    row["pages"] = verdict.pages_dict(view.pages)
    why = "" if intent is None else "; ".join(intent.failures) or (
        f"its binding put it on CPUs {format_cpulist(intent.bind_cpus)} ({intent.how}), not all near its GPU"
        if stray else
        f"gpuaffinity bound it to CPUs {format_cpulist(intent.bind_cpus)} ({intent.how}), and something moved it "
        "since (taskset, a cgroup, a library: docs/check.md)")
    verdict.binding(row, problems, mode, memory, set_up=intent is not None and intent.applied, why=why,
                    memory_why="; ".join(f for f in (intent.failures if intent else ()) if "set_mempolicy" in f),
                    missing=(f"its gpuaffinity binding is for GPU {planned}, not the GPU it computes on" if planned
                             else "no gpuaffinity binding is recorded for it") if intent is None else
                    f"its binding was not applied ({why or 'no reason recorded'})")
    verdict.threads(row, problems, [(t.tid, t.name, t.cpus) for t in view.threads], view.pid)
    verdict.pages(row, problems, min_local)


def _done(row: dict[str, Any], problems: verdict.Problems, status: str | None = None) -> dict[str, Any]:
    row["status"] = status or verdict.status_of(problems)
    row["problems"] = [t for _k, t in problems]
    return row


# the table -------------------------------------------------------------------------------------------------------

def table(report: Report) -> list[tuple[str, ...]]:
    out = [("PID", "NAME", "GPU", "UUID", "BY", "NUMA", "BIND CPUS", "AFFINITY", "THREADS", "MEMORY", "LOCAL",
            "STATUS")]
    for r in report.rows:
        mem = r.get("memory")
        out.append((str(r["pid"]), r.get("name") or "-", r.get("pci_bus_id") or "-",
                    ",".join(u[:12] for u in (r.get("uuid") or "").split(",") if u) or "-", r.get("source") or "-",
                    ",".join(map(str, r.get("numa_nodes", []))) or "-", r.get("bind_cpus") or "-",
                    format_cpulist(r["affinity"]) if "affinity" in r else "-",
                    verdict.threads_cell(r), f"{mem['policy']} {format_cpulist(mem['nodes'])}".strip() if mem else "-",
                    verdict.local_cell(r),
                    verdict.shown(r["status"])))
    return out


def render(report: Report) -> str:
    from gpuaffinity.text import clean, lay_out

    lines = lay_out(table(report)) if report.rows else []
    for r in report.rows:
        who = f"{r['pid']} ({r.get('name') or '?'})" + (f" {r['pci_bus_id']}" if r.get("pci_bus_id") else "")
        kind = "PROBLEM" if r["status"] in verdict.PROBLEMS else "note"
        lines += [clean(f"{who}: {kind}: {t}") for t in r["problems"]]
        lines += [clean(f"{who}: note: {t}") for t in r.get("notes", [])]
    lines += [clean(f"note: {n}") for n in report.notes]
    bad = sum(1 for r in report.rows if r["status"] in verdict.PROBLEMS)
    gpus = sum(1 for r in report.rows if r.get("pci_bus_id"))
    if not report.rows:
        lines.append(f"no process holds an NVIDIA GPU or records a gpuaffinity binding here "
                     f"({report.seconds:.2f} s)")
    else:
        lines.append(f"{len(report.rows)} process(es), {gpus} with a GPU, checked in {report.seconds:.2f} s: "
                     + ("every one bound next to its GPU" if not bad else f"{bad} with a problem"))
    return "\n".join(lines)
