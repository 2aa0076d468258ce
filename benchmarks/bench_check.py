"""What `gpuaffinity check` costs: W workers of T threads each, and numa_maps per GiB resident.

Starts W real processes, each `gpuaffinity bind N -- python3 -c ...` with T sleeping threads, on a simulated
8-GPU machine whose two NUMA nodes are this host's first two CPUs (or, with --real, on this host's own GPUs),
then times side by side, REPEAT times each, in one run:

- `live.check(pids)` in this process, without and with pages;
- the whole command as a user runs it (`python3 -m gpuaffinity check PID... --json`), and `--all`;
- `proc.look(pid)` of one process touching each of --gib GiB of anonymous memory, without and with pages.

    python3 benchmarks/bench_check.py [--workers 8] [--threads 200] [--gib 0,1,2,4] [--repeat 5] [--json FILE]

Prints one table; docs/performance.md holds the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = ("import threading, time\n"
          "for _ in range({t} - 1): threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
          "print('ready', flush=True); time.sleep(3600)\n")
TOUCH = "import time; b = b'x' * int({gib} * (1 << 30)); print('ready', flush=True); time.sleep(3600)"


def machine_text(cpus: list[int]) -> str:
    text = 'name = "bench8"\n' + "".join(f'[[numa_node]]\nid = {n}\ncpus = "{c}"\n' for n, c in enumerate(cpus))
    for i in range(8):
        text += (f'[[gpu]]\nuuid = "GPU-{i:08x}-0000-0000-0000-000000000000"\n'
                 f'pci_bus_id = "0000:{16 * i + 16:02x}:00.0"\nname = "NVIDIA H100 80GB HBM3"\nnuma_node = {i // 4}\n')
    return text


def timed(fn, repeat: int) -> dict[str, float]:
    xs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * statistics.median(xs), "min_ms": 1e3 * min(xs), "max_ms": 1e3 * max(xs)}


def start(argv: list[str], env: dict[str, str], started: list[subprocess.Popen]) -> subprocess.Popen:
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    started.append(p)
    if not p.stdout.readline().startswith("ready"):
        raise SystemExit(f"a worker did not start: {argv}")
    return p


def run(args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    from gpuaffinity import live, proc

    os.environ.update(env)  # this process checks as the CLI does, on the same machine
    started: list[subprocess.Popen] = []
    rows = []
    try:
        workers = [start([sys.executable, "-m", "gpuaffinity", "bind", str(i % 8), "--memory", "none", "--",
                          sys.executable, "-c", WORKER.format(t=args.threads)], env, started)
                   for i in range(args.workers)]
        pids = [p.pid for p in workers]
        report = live.check(pids)
        assert len(report.rows) == args.workers, report.rows
        threads = sum(r["threads"]["count"] for r in report.rows)
        what = f"{args.workers} workers x {args.threads} threads ({threads} threads)"
        cli = [sys.executable, "-m", "gpuaffinity", "check", *map(str, pids), "--json"]
        cases = [("check(pids), in-process", lambda: live.check(pids)),
                 ("check(pids, pages=True), in-process", lambda: live.check(pids, pages=True)),
                 ("gpuaffinity check PID... --json (whole command)",
                  lambda: subprocess.run(cli, env=env, capture_output=True, check=False)),
                 ("gpuaffinity check --all --json (whole command)",
                  lambda: subprocess.run(cli[:4] + ["--all", "--json"], env=env, capture_output=True, check=False))]
        for name, fn in cases:
            rows.append({"case": name, "load": what, **timed(fn, args.repeat)})
        for p in workers:
            p.kill()
        for gib in args.gib:
            p = start([sys.executable, "-c", TOUCH.format(gib=gib)], env, started)
            for pages in (False, True):
                rows.append({"case": f"proc.look({'pages=True' if pages else 'pages=False'})",
                             "load": f"{gib:g} GiB resident",
                             **timed(lambda p=p, pages=pages: proc.look(p.pid, pages=pages), args.repeat)})
            p.kill()
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--gib", default="0,1,2,4", help="resident sizes for the numa_maps cost, comma-separated GiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--real", action="store_true", help="this host's own GPUs, no simulator")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    args.gib = [float(x) for x in args.gib.split(",") if x]
    with tempfile.TemporaryDirectory() as d:
        if args.real:
            rows = run(args, dict(os.environ))
        else:
            from gpuaffinity.sim import simulated

            path = Path(d) / "bench8.toml"
            path.write_text(machine_text(sorted(os.sched_getaffinity(0))[:2]))
            with simulated(str(path), base_env=dict(os.environ)) as m:
                rows = run(args, dict(m.env))
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    print(f"gpuaffinity check cost on {host} ({'real GPUs' if args.real else 'simulated 8-GPU machine'}), "
          f"median of {args.repeat}")
    print(f"{'case':<50} {'load':<36} {'median ms':>10} {'min':>8} {'max':>8}")
    for r in rows:
        print(f"{r['case']:<50} {r['load']:<36} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['max_ms']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": host, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
