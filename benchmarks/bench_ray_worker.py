"""What gpuaffinity.ray_worker costs a Ray worker: the setup hook once, then each task's binding.

    gpuaffinity sim run dgx-h100 -- python3 benchmarks/bench_ray_worker.py [--tasks N]

A local Ray with the hook (``worker_process_setup_hook: gpuaffinity.ray_worker.setup``) runs N one-GPU tasks
while another actor holds GPUs 0-3 (so they get GPUs of the other node), then N with nothing held; each task
returns the seconds its worker's hook measured (``ray_worker.timings``): the setup once a worker, then the
binding before each task (or nothing to do when the task's GPUs are the last task's).  Prints one table of medians
and ``--json FILE`` keeps every figure.  Memory binding is off (``GPUAFFINITY_RAY_MEMORY=none``) where the
host has fewer NUMA nodes than the simulated machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("GPUAFFINITY_", "LD_"))}
    env.setdefault("GPUAFFINITY_RAY_MEMORY", "none")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "gpuaffinity.ray_worker.setup"})
    try:
        @ray.remote(num_cpus=1, num_gpus=1)
        def task() -> tuple[int, list]:
            from gpuaffinity import ray_worker  # the hook ran before this body: its figures are in there
            return os.getpid(), list(ray_worker.timings)

        @ray.remote(num_gpus=4, num_cpus=0)
        class Blocker:  # holds 4 GPUs; released and taken again to move the tasks between nodes
            def ping(self) -> int:
                return 1

        results = []
        for _ in range(args.tasks):  # GPUs 0-3 held: the task gets one of 4-7
            blocker = Blocker.remote()
            ray.get(blocker.ping.remote())
            results.append(ray.get(task.remote()))
            ray.kill(blocker)
        for _ in range(args.tasks):  # nothing held: the task gets GPU 0
            results.append(ray.get(task.remote()))
    finally:
        ray.shutdown()
    pids = {pid for pid, _ in results}
    seen: dict[int, int] = {}
    by: dict[str, list[float]] = {}
    for pid, rows in results:  # each task's figures: what its worker measured since the last task it served
        for what, seconds in rows[seen.get(pid, 0):]:
            by.setdefault(what, []).append(seconds)
        seen[pid] = len(rows)
    print(f"{'what':<34}{'n':>5}{'median':>12}{'max':>12}")
    for what in ("setup", "bound", "same GPUs", "failed"):
        if what in by:
            v = by[what]
            print(f"{'hook: ' + what:<34}{len(v):>5}{statistics.median(v) * 1e3:>10.3f} ms"
                  f"{max(v) * 1e3:>10.3f} ms")
    print(f"{len(results)} GPU tasks ran in {len(pids)} worker processes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": results, "medians_ms": {k: statistics.median(v) * 1e3 for k, v in by.items()}},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
