"""One "spawn" worker per visible GPU (or per device named on the command line), each bound to its GPU's NUMA
node before it runs.

gpuaffinity.launch.spawn_process starts a fresh interpreter (never fork: a
parent that has initialised CUDA cannot hand it to a forked child), binds it,
then calls the target.  A worker that cannot be bound or resolved ends with its
error on stderr and sends no row; the others' rows are printed all the same, and
the exit status is 1.

    gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.examples.multiprocessing_workers [DEVICE ...]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queues
import sys


def worker(device: int, queue) -> None:
    import gpuaffinity
    from gpuaffinity import intent

    d = gpuaffinity.resolve(device)
    bound = intent.current()  # the binding spawn_process made in this process, as `gpuaffinity check` reads it
    queue.put({"device": device, "nvml_index": d.nvml_index, "pci_bus_id": d.pci_bus_id,
               "cpus": sorted(os.sched_getaffinity(0)), "memory": bound.memory if bound else None})


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    import gpuaffinity
    import gpuaffinity.launch as launch

    parser = argparse.ArgumentParser(prog="python3 -m gpuaffinity.examples.multiprocessing_workers",
                                     description="One spawned worker per CUDA device, each bound next to its GPU.")
    parser.add_argument("devices", nargs="*", type=int, metavar="DEVICE",
                        help="CUDA device numbers of this process (default: every visible device)")
    devices = parser.parse_args(argv).devices or list(range(len(gpuaffinity.resolve_all())))
    if not devices:
        print("multiprocessing_workers: no CUDA device is visible here: nothing to start", file=sys.stderr)
        return 1
    queue = multiprocessing.get_context("spawn").Queue()
    procs = [launch.spawn_process(i, worker, (i, queue), memory="none") for i in devices]
    for p in procs:
        p.start()
    rows: list[dict] = []
    while len(rows) < len(procs):
        try:
            rows.append(queue.get(timeout=1))
        except queues.Empty:
            if not any(p.is_alive() for p in procs):
                break  # a worker ended without its row (its error is on its stderr): wait no longer
    for p in procs:
        p.join()
    while len(rows) < len(procs):  # rows sent by workers that ended while the loop above looked
        try:
            rows.append(queue.get(timeout=0.5))
        except queues.Empty:
            break
    print(json.dumps(sorted(rows, key=lambda r: r["device"])))

    def how(code: int | None) -> str:
        return f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"

    failed = [f"{i} ({how(p.exitcode)})" for i, p in zip(devices, procs, strict=True) if p.exitcode != 0]
    if failed:
        print(f"multiprocessing_workers: the worker for device(s) {', '.join(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
