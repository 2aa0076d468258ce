"""What goes wrong without gpuaffinity, shown on whatever machine this runs on.

For every CUDA device this process sees, it prints the physical GPU
gpuaffinity resolves (checked against the CUDA driver itself: policy
"strict"), next to the GPU you get by passing the logical index straight to
``nvmlDeviceGetHandleByIndex``, the mistake many launchers make, and the NUMA
node each one sits on.

Run it on a simulated machine with a Ray-style shuffled CUDA_VISIBLE_DEVICES:

    CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2 gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.sim.demo
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    import gpuaffinity
    from gpuaffinity.host import scope

    with scope() as host:  # one look at the machine: the resolution, the GPU list and the localities
        try:
            devices = gpuaffinity.resolve_all(policy="strict")
        except gpuaffinity.GpuAffinityError as e:
            print(f"gpuaffinity: {e}", file=sys.stderr)
            return 1
        gpus = host.inventory().gpus
        locs = host.localities(g.pci_bus_id for g in gpus)

    def node(bus: str) -> str:
        return ",".join(map(str, locs[bus].numa_nodes)) or "none"

    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}  "
          f"CUDA_DEVICE_ORDER={os.environ.get('CUDA_DEVICE_ORDER', '<unset>')}")
    print("cuda  physical GPU (gpuaffinity)   node | naive nvmlDeviceGetHandleByIndex(cuda)  node")
    wrong = 0
    for d in devices:
        naive = gpus[d.logical_id].pci_bus_id if d.logical_id < len(gpus) else "-"
        mark = "" if naive == d.pci_bus_id else "  <- wrong GPU"
        if mark and naive != "-" and node(naive) != node(d.pci_bus_id):
            mark += ", wrong NUMA node"
        wrong += bool(mark)
        print(f"{d.logical_id:>4}  nvml {d.nvml_index} {d.pci_bus_id:<14}  {node(d.pci_bus_id):>6} | "
              f"nvml {d.logical_id} {naive:<14}  {node(naive) if naive != '-' else '-':>6}{mark}")
    agreed = ", ".join(devices[0].agreed) if devices else "-"
    print(f"{wrong} of {len(devices)} devices would be pinned to the wrong GPU by the naive mapping.")
    print(f"(gpuaffinity's answer: strategies {agreed} agree; `gpuaffinity doctor` explains each one)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
