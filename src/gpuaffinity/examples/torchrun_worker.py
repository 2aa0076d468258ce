"""A torchrun worker that binds itself to its GPU's NUMA node, using LOCAL_RANK.

torchrun starts one process per GPU and tells each its LOCAL_RANK; by
convention rank N uses CUDA device N.  Binding first thing, before any
thread or CUDA context exists, puts the whole worker (and its memory) next to
that GPU.

    gpuaffinity sim run dgx-h100 -- torchrun --standalone --nproc-per-node 2 -m gpuaffinity.examples.torchrun_worker
"""

from __future__ import annotations

import json
import os
import sys

import gpuaffinity

rank = int(os.environ["LOCAL_RANK"])
rec = gpuaffinity.bind(rank, memory=os.environ.get("EXAMPLE_MEMORY", "preferred"))
device = gpuaffinity.resolve(rank)
report = json.dumps({"local_rank": rank, "nvml_index": device.nvml_index, "pci_bus_id": device.pci_bus_id,
                     "numa_nodes": list(rec.numa_nodes), "cpus": sorted(os.sched_getaffinity(0)),
                     "failures": rec.failures})
# one write for the whole line: the workers share torchrun's stdout, and print() writes the text and the
# newline separately, so two workers' lines could interleave
sys.stdout.write(report + "\n")
sys.stdout.flush()
