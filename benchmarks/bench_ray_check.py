"""How long `gpuaffinity ray-check` takes, and how it grows with nodes and GPUs.

Starts a local Ray cluster of N nodes (gpuaffinity.sim.raycluster), each an 8-GPU, 2-node simulated machine
whose NUMA nodes are this host's first two CPUs, then times the check as a user runs it (a fresh
`gpuaffinity ray-check --json` process: interpreter, import of Ray, connection, probes, report), REPEAT times
for each N.  The report's own timings split the work: `place` (this process: listing nodes, submitting every
probe), `answers` (the workers starting and probing, on the nodes), `judge`; and each probe says how long it
spent in the worker.  One table, all N measured in one run:

    python3 benchmarks/bench_ray_check.py [--nodes 1,2,4] [--gpus 8] [--repeat 3] [--json FILE]

On one machine every node shares its cores, so `answers` grows with the total number of GPUs; on a real
cluster nodes start their workers in parallel.  docs/performance.md gives the model and the 100-node estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuaffinity.sim.raycluster import RayCluster


def topology(path: Path, gpus: int) -> Path:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    cpus = cpus if len(cpus) == 2 else cpus * 2
    text = 'name = "bench"\n' + "".join(f'[[numa_node]]\nid = {n}\ncpus = "{c}"\n' for n, c in enumerate(cpus))
    for i in range(gpus):
        text += (f'[[gpu]]\nuuid = "GPU-{i:08x}-0000-0000-0000-000000000000"\n'
                 f'pci_bus_id = "0000:{16 * i + 16:02x}:00.0"\nname = "NVIDIA H100 80GB HBM3"\n'
                 f'numa_node = {0 if i < gpus // 2 else 1}\n')
    path.write_text(text)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,2,4", help="cluster sizes, comma-separated (default 1,2,4)")
    ap.add_argument("--gpus", type=int, default=8, help="simulated GPUs a node (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="checks a cluster size (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    args = ap.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    topo = topology(Path(tempfile.mkdtemp()) / "bench.toml", args.gpus)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    results = []
    for n in sizes:
        with RayCluster() as cluster:
            t = time.perf_counter()
            for _ in range(n):
                cluster.add_node(topo)
            started = time.perf_counter() - t
            runs = []
            for r in range(args.repeat):
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", "--address", cluster.address,
                                       "--memory", "none", "--json"], capture_output=True, text=True, env=env,
                                      timeout=1200)
                wall = time.perf_counter() - t
                report = json.loads(proc.stdout)
                bad = [row["status"] for row in report["rows"] if row["status"] != "ok"]
                if proc.returncode != 0 or bad:
                    print(f"{n} node(s), run {r + 1}: exit {proc.returncode}, rows {bad}: {proc.stderr[-500:]}",
                          file=sys.stderr)
                    return 1
                probe = [row["probe_seconds"] for row in report["rows"]]
                runs.append({"wall": wall, **report["settings"]["timings"], "probe_median": statistics.median(probe),
                             "rows": len(report["rows"])})
                print(f"  {n} node(s), run {r + 1}: {wall:.2f} s", file=sys.stderr, flush=True)
        results.append({"nodes": n, "gpus": n * args.gpus, "cluster_start": started, "runs": runs})
    cols = ("nodes", "GPUs", "check wall", "connect", "place", "answers", "probe in worker", "wall per GPU")
    print("  ".join(f"{c:>15}" for c in cols))
    for res in results:
        med = {k: statistics.median(r[k] for r in res["runs"]) for k in res["runs"][0]}
        print("  ".join(f"{v:>15}" for v in (
            res["nodes"], res["gpus"], f"{med['wall']:.2f} s", f"{med['connect']:.2f} s", f"{med['place']:.3f} s",
            f"{med['answers']:.2f} s", f"{med['probe_median'] * 1000:.0f} ms",
            f"{med['wall'] / res['gpus'] * 1000:.0f} ms")))
    if len(results) >= 2:  # least squares: wall = a + b * GPUs
        xs = [r["gpus"] for r in results]
        ys = [statistics.median(x["wall"] for x in r["runs"]) for r in results]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        print(f"fit on this machine: wall = {my - b * mx:.2f} s + {b * 1000:.0f} ms x GPUs")
    print(f"({len(sizes)} sizes x {args.repeat} runs, {args.gpus} GPUs a node, {os.cpu_count()} CPUs here, "
          f"{time.strftime('%Y-%m-%d')})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
