#!/usr/bin/env python3
"""How long `gpuaffinity check` takes on a loaded GPU host, and what `--pages` (numa_maps) costs.

Every case is measured side by side in one run: each repeat round times every case once, in turn, so the
load of the machine at that moment falls on all of them alike.

1. **8 workers x 200 threads** (``--workers``, ``--threads``): real processes, each started as
   ``gpuaffinity bind N -- python3 -c ...`` (the exec form records the binding check reads), whose threads sleep.
   By default on a simulated 8-GPU machine whose two NUMA nodes are this host's first two CPUs
   (examples/ray-sim-8gpu.toml), so the binds are real system calls; with ``--real``, on this host's own GPUs
   (worker i binds GPU i modulo their number).  Timed:
   - ``check(pids)``: ``gpuaffinity.live.check`` called in a long-lived process on that machine (warm: its
     first call, imports included, is reported apart);
   - ``gpuaffinity check PID... --json``: the whole command as a fresh process (interpreter, import, check);
   - ``--all``: the same two scanning every process of the host;
   - ``--pages``: the first two again, with each worker's pages per node read.
2. **numa_maps per GiB**: one process touching 0, 1, 2 and 4 GiB of anonymous memory (``--gib``; ``--big``
   adds 8 and 16 GiB for hosts with the memory), read with ``gpuaffinity.proc.look(pid, pages=False)`` and
   ``pages=True``: ms, and ms per GiB resident.

    python3 benchmarks/bench_check.py [--workers 8] [--threads 200] [--gib 0,1,2,4 | --big] [--repeat 7]
                                      [--real] [--json FILE]

Every process it starts reads its stdin until it closes and then exits, so none outlives the benchmark, even
one killed with SIGKILL; on the way out (an error, Ctrl-C, SIGTERM) each is also killed by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXAMPLE = ROOT / "examples" / "ray-sim-8gpu.toml"
sys.path.insert(0, str(SRC))

#: a worker: THREADS threads sleeping on one event, "ready" once they all run, then it waits for stdin to close
WORKER = r"""
import sys, threading
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(int(sys.argv[1]))]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.read()
"""

#: a process holding N bytes of anonymous memory, every page touched
TOUCHER = r"""
import mmap, sys
n = int(sys.argv[1])
if n:
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as malloc's: private, anonymous
    chunk = b"\x01" * min(n, 64 << 20)
    for off in range(0, n, len(chunk)):  # every byte written: every page resident
        m[off:off + min(len(chunk), n - off)] = chunk[:min(len(chunk), n - off)]
    del chunk  # the mapping alone stays resident
print("ready", flush=True)
sys.stdin.read()
"""

#: a long-lived checker on the machine: one JSON request a line, one JSON answer a line
CHECKER = r"""
import json, sys, time
t = time.perf_counter()
from gpuaffinity import live
imported = time.perf_counter() - t
print(json.dumps({"imported": imported}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t = time.perf_counter()
    report = live.check(req["pids"] or None, all_processes=req["all"], pages=req["pages"], memory=req["memory"])
    took = time.perf_counter() - t
    print(json.dumps({"seconds": took, "rows": [[r["pid"], r["status"], r["name"]] for r in report.rows],
                      "notes": report.notes}), flush=True)
"""


class Stop(Exception):
    """SIGTERM: leave as Ctrl-C does, through every ``finally``."""


def _term(signum: int, frame: object) -> None:
    raise Stop()


class Children:
    """Every process the benchmark starts; ``close`` kills each by its pid and collects it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.started: list[int] = []  # every pid, for the record (--json)

    def start(self, argv: list[str], env: dict[str, str], what: str, timeout: float = 120) -> subprocess.Popen:
        p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        self.started.append(p.pid)
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if ready else ""
        if not line.strip():
            try:
                p.wait(timeout=5)
                err = p.stderr.read()
            except subprocess.TimeoutExpired:
                err = f"(no answer in {timeout:g} s)"
            raise SystemExit(f"bench_check: {what} did not start: {err.strip()[-800:]}")
        p.first_line = line  # type: ignore[attr-defined]
        return p

    def stop(self, p: subprocess.Popen) -> None:
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                f.close()
            except OSError:
                pass
        try:
            p.kill()
        except ProcessLookupError:
            pass
        p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def close(self) -> None:
        for p in list(self.procs):
            self.stop(p)


def machine_facts() -> dict[str, object]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) << 10
    except OSError:
        pass
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        thp = "?"
    return {"cpu": model, "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "kernel": platform.release(), "memory_gib": round(mem / (1 << 30), 1), "thp": thp,
            "python": platform.python_version(), "load": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d")}


def sim_topology(folder: Path) -> Path:
    """examples/ray-sim-8gpu.toml with its two nodes on this host's first two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        raise SystemExit("bench_check: the simulated machine's two NUMA nodes need two CPUs here (or use --real)")
    text = EXAMPLE.read_text()
    for node, cpu in enumerate(cpus):
        old = f'id = {node}\ncpus = "{node}"'
        if old not in text:
            raise SystemExit(f"bench_check: {EXAMPLE} no longer has node {node} on CPU {node}")
        text = text.replace(old, f'id = {node}\ncpus = "{cpu}"')
    path = folder / "bench-check-8gpu.toml"
    path.write_text(text)
    return path


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    ap.add_argument("--threads", type=int, default=200, help="sleeping threads in each worker (default 200)")
    ap.add_argument("--gib", default="0,1,2,4",
                    help="GiB of anonymous memory for the numa_maps cost, comma-separated (default 0,1,2,4)")
    ap.add_argument("--big", action="store_true", help="numa_maps up to 16 GiB: --gib 0,1,2,4,8,16 (big hosts)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds, each timing every case once (default 7)")
    ap.add_argument("--real", action="store_true", help="bind this host's own GPUs, not the simulator's")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    args = ap.parse_args()
    if args.workers < 1 or args.threads < 0 or args.repeat < 1:
        ap.error("--workers and --repeat must be at least 1, --threads at least 0")
    try:
        sizes = [float(g) for g in ("0,1,2,4,8,16" if args.big else args.gib).split(",")]
    except ValueError:
        ap.error(f"--gib {args.gib!r}: give GiB, comma-separated (0,1,2,4)")
    facts = machine_facts()
    need = max(sizes) + 2
    if need > facts["memory_gib"] * 0.8:  # type: ignore[operator]
        ap.error(f"--gib up to {max(sizes):g} needs about {need:g} GiB free; this host has {facts['memory_gib']} "
                 "GiB in all: use smaller sizes")
    signal.signal(signal.SIGTERM, _term)
    children = Children()
    folder = Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        return run(args, sizes, facts, children, folder)
    except (KeyboardInterrupt, Stop):
        print("\nbench_check: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        children.close()
        for p in folder.glob("*"):
            p.unlink()
        folder.rmdir()


def run(args: argparse.Namespace, sizes: list[float], facts: dict[str, object], children: Children,
        folder: Path) -> int:
    import compileall
    from contextlib import ExitStack

    compileall.compile_dir(str(SRC / "gpuaffinity"), quiet=1)  # as an installed package is
    base = dict(os.environ)
    base["PYTHONPATH"] = f"{SRC}{os.pathsep}{base['PYTHONPATH']}" if base.get("PYTHONPATH") else str(SRC)
    with ExitStack() as stack:
        if args.real:
            from gpuaffinity.inventory import read_inventory

            gpus = read_inventory().gpus
            env, memory = base, "preferred"
            where = f"this host's {len(gpus)} GPU(s) ({', '.join(sorted({g.name for g in gpus}))}), real binds"
            ids = [i % len(gpus) for i in range(args.workers)]
        else:
            from gpuaffinity.sim import simulated

            topo = sim_topology(folder)
            machine = stack.enter_context(simulated(topo, base_env=base))
            env = machine.env
            # the simulated nodes are this host's CPUs, but its memory may sit on one node only: no policy
            memory = "none"
            cpus = sorted(os.sched_getaffinity(0))[:2]
            where = (f"simulated 8-GPU machine ({EXAMPLE.relative_to(ROOT)}, nodes on CPUs {cpus[0]} and {cpus[1]}), "
                     "real binds")
            ids = [i % len(machine.topology.gpus) for i in range(args.workers)]
        return measure(args, sizes, facts, children, env, memory, where, ids)


def measure(args: argparse.Namespace, sizes: list[float], facts: dict[str, object], children: Children,
            env: dict[str, str], memory: str, where: str, ids: list[int]) -> int:
    from gpuaffinity import proc

    print(f"starting {args.workers} workers x {args.threads} threads ...", file=sys.stderr, flush=True)
    workers = [children.start([sys.executable, "-m", "gpuaffinity", "bind", str(i), "--memory", memory, "--",
                               sys.executable, "-c", WORKER, str(args.threads)], env, f"worker {n} (GPU {i})")
               for n, i in enumerate(ids)]
    pids = [w.pid for w in workers]  # bind execs the worker: one pid
    for w in workers:
        view = proc.look(w.pid)
        if len(view.threads) != args.threads + 1:
            raise SystemExit(f"bench_check: worker {w.pid} runs {len(view.threads)} threads, not {args.threads + 1}")
    checker = children.start([sys.executable, "-c", CHECKER], env, "the checker")
    imported = json.loads(checker.first_line)["imported"]  # type: ignore[attr-defined]

    def in_process(pages: bool, everything: bool) -> tuple[float, list]:
        checker.stdin.write(json.dumps({"pids": [] if everything else pids, "all": everything, "pages": pages,
                                        "memory": memory}) + "\n")
        checker.stdin.flush()
        answer = json.loads(checker.stdout.readline())
        return answer["seconds"], answer["rows"]

    def cli(pages: bool, everything: bool) -> tuple[float, list, float]:
        argv = [sys.executable, "-m", "gpuaffinity", "check", "--json", "--memory", memory]
        argv += ["--all"] if everything else [str(p) for p in pids]
        argv += ["--pages"] if pages else []
        t = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        wall = time.perf_counter() - t
        if p.returncode not in (0, 4):
            raise SystemExit(f"bench_check: {' '.join(argv[3:])} failed ({p.returncode}): {p.stderr[-800:]}")
        report = json.loads(p.stdout)
        return wall, [[r["pid"], r["status"], r["name"]] for r in report["rows"]], report["seconds"]

    cases = {  # name: (label, how)
        "check_pids_inprocess": ("check(pids), in-process, warm", lambda: in_process(False, False)),
        "check_pids_cli": ("gpuaffinity check PID... --json, fresh process", lambda: cli(False, False)),
        "check_all_inprocess": ("check(all_processes=True), in-process, warm", lambda: in_process(False, True)),
        "check_all_cli": ("gpuaffinity check --all --json, fresh process", lambda: cli(False, True)),
        "check_pids_pages_inprocess": ("check(pids, pages=True), in-process, warm", lambda: in_process(True, False)),
        "check_pids_pages_cli": ("gpuaffinity check PID... --json --pages, fresh process", lambda: cli(True, False)),
    }
    first, first_rows = in_process(False, False)  # the checker's first call: the lazy imports of the check
    results: dict[str, dict] = {k: {"label": label, "seconds": [], "own_seconds": [], "rows": None}
                                for k, (label, _f) in cases.items()}
    for r in range(args.repeat):
        for key, (_label, how) in cases.items():
            out = how()
            results[key]["seconds"].append(out[0])
            if len(out) == 3:
                results[key]["own_seconds"].append(out[2])
            results[key]["rows"] = out[1]
        print(f"  round {r + 1}/{args.repeat}", file=sys.stderr, flush=True)
    host_processes = len(proc.pids())
    for key, res in results.items():
        res.update(spread(res["seconds"]))
        seen = {pid: status for pid, status, _name in res["rows"]}
        missing = [p for p in pids if p not in seen]
        if missing:
            raise SystemExit(f"bench_check: {key} has no row for worker(s) {missing}")
        res["worker_statuses"] = sorted({seen[p] for p in pids})
        res["others"] = sorted({f"{name} ({status})" for pid, status, name in res["rows"] if pid not in pids})
        res["rows"] = len(res["rows"])
        if res["own_seconds"]:
            res["own"] = spread(res["own_seconds"])
    for w in workers:
        children.stop(w)

    numa = []
    print("numa_maps: " + ", ".join(f"{g:g} GiB" for g in sizes), file=sys.stderr, flush=True)
    for gib in sizes:
        n = int(gib * (1 << 30)) // 4096 * 4096
        t = children.start([sys.executable, "-c", TOUCHER, str(n)], env, f"a process of {gib:g} GiB", timeout=600)
        counted = proc.look(t.pid, pages=True).pages
        plain, paged = [], []
        for _ in range(args.repeat):
            s = time.perf_counter()
            proc.look(t.pid, pages=False)
            plain.append(time.perf_counter() - s)
            s = time.perf_counter()
            proc.look(t.pid, pages=True)
            paged.append(time.perf_counter() - s)
        children.stop(t)
        numa.append({"gib": gib, "bytes": n, "counted_bytes": counted.total if counted else 0,
                     "mappings": counted.mappings if counted else 0, "look": spread(plain), "look_seconds": plain,
                     "pages": spread(paged), "pages_seconds": paged})
    fit = _fit([(x["counted_bytes"] / (1 << 30), x["pages"]["median"]) for x in numa])

    print(f"machine: {facts['cpu']}, {facts['cpus']} CPUs ({facts['usable_cpus']} usable), Linux {facts['kernel']}, "
          f"{facts['memory_gib']} GiB RAM, THP {facts['thp']}, Python {facts['python']}, load "
          f"{'/'.join(map(str, facts['load']))} at the start; {facts['date']}")
    print(f"GPUs: {where}")
    print(f"workers: {args.workers} x {args.threads} sleeping threads, each `gpuaffinity bind N --memory {memory} -- "
          f"python3 -c ...`; {host_processes} processes on the host; {args.repeat} round(s), every case once a round, "
          "median (min-max)")
    print()
    width = max(len(r["label"]) for r in results.values())
    print(f"{'case':<{width}}  {'median':>10}  {'min-max':>19}  {'rows':>5}  {'check itself':>13}  workers' status")
    for res in results.values():
        own = f"{ms(res['own']['median'])}" if "own" in res else ""
        print(f"{res['label']:<{width}}  {ms(res['median']):>10}  {ms(res['min']) + ' - ' + ms(res['max']):>19}  "
              f"{res['rows']:>5}  {own:>13}  {','.join(res['worker_statuses'])}")
    print(f"(the checker's first call, its imports included: {ms(first)}; `import gpuaffinity.live`: "
          f"{ms(imported)}; 'check itself' is the report's own `seconds`, without the interpreter and imports)")
    print()
    print(f"{'numa_maps: GiB touched':<24}  {'counted':>9}  {'look(pages=False)':>17}  {'look(pages=True)':>17}  "
          f"{'pages cost':>10}  {'ms/GiB':>7}")
    for x in numa:
        cost = x["pages"]["median"] - x["look"]["median"]
        counted = x["counted_bytes"] / (1 << 30)
        per = f"{cost * 1000 / counted:.1f}" if counted >= 0.5 else "-"
        print(f"{x['gib']:<24g}  {counted:>7.2f} G  {ms(x['look']['median']):>17}  {ms(x['pages']['median']):>17}  "
              f"{ms(cost):>10}  {per:>7}")
    if fit:
        print(f"fit: look(pages=True) = {fit[0] * 1000:.1f} ms + {fit[1] * 1000:.1f} ms per GiB resident")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": facts, "gpus": where, "workers": args.workers, "threads": args.threads, "memory": memory,
            "repeat": args.repeat, "host_processes": host_processes, "first_call_seconds": first,
            "first_call_rows": len(first_rows), "import_seconds": imported, "cases": results, "numa_maps": numa,
            "fit": {"seconds": fit[0], "seconds_per_gib": fit[1]} if fit else None,
            "started_pids": children.started}, indent=2))
    return 0


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares: seconds = a + b * GiB."""
    if len({x for x, _y in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _y in points)
    my = statistics.fmean(y for _x, y in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _y in points)
    return my - b * mx, b


if __name__ == "__main__":
    sys.exit(main())
