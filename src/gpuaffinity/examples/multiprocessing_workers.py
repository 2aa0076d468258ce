"""One "spawn" worker per visible GPU, each bound to its GPU's NUMA node before it runs.

gpuaffinity.launch.spawn_process starts a fresh interpreter (never fork: a
parent that has initialised CUDA cannot hand it to a forked child), binds it,
then calls the target.

    gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.examples.multiprocessing_workers
"""

from __future__ import annotations

import json
import multiprocessing
import os


def worker(device: int, queue) -> None:
    import gpuaffinity

    d = gpuaffinity.resolve(device)
    queue.put({"device": device, "nvml_index": d.nvml_index, "pci_bus_id": d.pci_bus_id,
               "cpus": sorted(os.sched_getaffinity(0))})


def main() -> int:
    import gpuaffinity
    import gpuaffinity.launch as launch

    devices = range(len(gpuaffinity.resolve_all()))
    queue = multiprocessing.get_context("spawn").Queue()
    procs = [launch.spawn_process(i, worker, (i, queue), memory="none") for i in devices]
    for p in procs:
        p.start()
    rows = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    print(json.dumps(sorted(rows, key=lambda r: r["device"])))
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
