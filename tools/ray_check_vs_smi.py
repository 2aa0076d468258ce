"""Compare a `gpuaffinity ray-check --json` report of one real GPU node with nvidia-smi and sysfs.

    python3 tools/ray_check_vs_smi.py REPORT.json [NODE_CVD]

For every row: the GPU's PCI bus id and UUID are the ones nvidia-smi lists for the physical GPU Ray's id names
(Ray's id is an entry of the node's CUDA_VISIBLE_DEVICES, NODE_CVD; unset: the index itself, which on a node
without CUDA_DEVICE_ORDER set is CUDA's order: nvidia-smi's index is PCI order, so the bus id is compared, not
the index); the NUMA node is sysfs's ``numa_node`` for that bus id; and the CPU affinity read back in the worker
lies within that node's ``cpulist``.  Prints one line a row and a verdict; exit status 1 on any mismatch.
"""

from __future__ import annotations

import json
import subprocess
import sys


def cpulist(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> int:
    report = json.load(open(sys.argv[1]))
    node_cvd = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id,uuid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    gpus = [[f.strip() for f in line.split(",")] for line in smi.strip().splitlines()]
    by_bus = {bus.lower()[4:] if len(bus) == 16 else bus.lower(): (int(i), uuid) for i, bus, uuid in gpus}
    bad = 0
    for row in report["rows"]:
        gpu = row.get("gpu") or {}
        bus = gpu.get("pci_bus_id", "")
        smi_gpu = by_bus.get(bus)
        node = open(f"/sys/bus/pci/devices/{bus}/numa_node").read().strip() if smi_gpu else "?"
        near = cpulist(open(f"/sys/devices/system/node/node{node}/cpulist").read()) if node not in ("?", "-1") \
            else None
        ok = [smi_gpu is not None and smi_gpu[1] == gpu.get("uuid"),
              row.get("numa_nodes") == ([] if node == "-1" else [int(node)]),
              near is None or set(row.get("affinity", [])) <= near,
              row.get("status") == "ok"]
        # Ray's id is an entry of the node's list: a CUDA index of the node, which on identical GPUs (CUDA's
        # default order is then PCI order) is nvidia-smi's index
        ids = row.get("ray_gpu_ids", [])
        ok.append(smi_gpu is not None and len(ids) == 1 and smi_gpu[0] == int(ids[0]) and
                  (node_cvd is None or ids[0] in node_cvd))
        bad += not all(ok)
        print(f"ray id {','.join(row.get('ray_gpu_ids', []))}: {bus} smi index {smi_gpu[0] if smi_gpu else '?'} "
              f"uuid {'=' if ok[0] else '!='} smi, sysfs node {node} {'=' if ok[1] else '!='} report "
              f"{row.get('numa_nodes')}, affinity {'within' if ok[2] else 'OUTSIDE'} node cpulist, status "
              f"{row.get('status')}, smi index {'=' if ok[4] else '!='} Ray id")
    print(f"{len(report['rows'])} rows, {bad} mismatched")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
