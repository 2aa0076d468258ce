"""A probe's answer as gpuaffinity._ray_probe reports it, for tests that judge rows without a cluster."""

from __future__ import annotations


def probed(**changes):
    """A probe's answer as _ray_probe reports it: GPU 0000:10:00.0 on node 0 (CPUs 0-3) of a worker on 0-7."""
    row = {"node_id": "a" * 56, "host": "h", "ip": "10.0.0.1", "pid": 1, "error": None, "ray_gpu_ids": ["0"],
           "env": {"CUDA_VISIBLE_DEVICES": "0"}, "affinity": [0, 1, 2, 3], "worker_cpus": "0-7",
           "memory": {"policy": "bind", "nodes": [0], "kernel": "MPOL_BIND"}, "numa_nodes": [0], "cpus": "0-3",
           "bind_cpus": "0-3", "memory_nodes": [0], "notes": [],
           "hook": {"set_up": True, "said": [], "pci_bus_id": "0000:10:00.0", "failures": []},
           "gpu": {"uuid": "GPU-1", "driver_uuid": "GPU-1", "pci_bus_id": "0000:10:00.0",
                   "driver_pci_bus_id": "0000:10:00.0", "strategy": "pci", "agreed": ["pci", "cvd"], "disagreed": [],
                   "problem": None}}
    row.update(changes)
    return row
