"""Ray actors that each get one GPU, resolve it, and bind to its NUMA node.

Ray hands each actor its GPU by setting CUDA_VISIBLE_DEVICES (for example "5"):
the actor's CUDA device 0 is then physical GPU 5, and an actor that passed 0
to NVML would pin itself next to GPU 0 instead.  Each actor here resolves its
device 0, binds there, and reports what it got.

With RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1 Ray leaves the variable
alone: every actor sees every GPU, and learns its own from ray.get_gpu_ids().
That id is an entry of the node's CUDA_VISIBLE_DEVICES, not a position in it
(the classic off-by-a-shuffle bug); the actor finds its position, resolves it,
and binds by the GPU's UUID, a physical selector that does not depend on what
the process sees.

    gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.examples.ray_actors [--noset] [--gpus N]

It starts a Ray of its own (address="local"): it never joins a cluster it finds on the machine, as a bare
ray.init() would, another user's included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noset", action="store_true", help="RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1")
    ap.add_argument("--gpus", type=int, default=None, help="how many actors (default: every GPU Ray finds)")
    ap.add_argument("--memory", default="none", help="memory policy for bind (default none)")
    args = ap.parse_args()
    if args.noset:
        os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"

    try:
        import ray
    except ImportError:  # the package does not depend on Ray: say so in one line, not a traceback
        print("ray_actors: this example needs Ray in this environment: pip install ray", file=sys.stderr)
        return 1

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("GPUAFFINITY_", "LD_"))}})
    try:
        total = int(ray.cluster_resources().get("GPU", 0))
        n = args.gpus or total

        @ray.remote(num_gpus=1, num_cpus=0)
        class Worker:
            def where(self, noset: bool, memory: str) -> dict:
                import gpuaffinity

                ray_id = ray.get_gpu_ids()[0]
                if noset:
                    # Every GPU stays visible.  Ray's id is an *entry* of the node's CUDA_VISIBLE_DEVICES
                    # (or 0..N-1 when it is unset), not a position in it: "3" in "3,6,5,4" is CUDA device 0.
                    entries = os.environ.get("CUDA_VISIBLE_DEVICES")
                    logical = entries.split(",").index(str(ray_id)) if entries else int(ray_id)
                    device = gpuaffinity.resolve(logical)
                    rec = gpuaffinity.bind(device.uuid, memory=memory)  # a physical selector: the GPU's UUID
                else:      # Ray set CUDA_VISIBLE_DEVICES: this GPU is CUDA device 0
                    device = gpuaffinity.resolve(0)
                    rec = gpuaffinity.bind(0, memory=memory)
                return {"ray_gpu_id": str(ray_id), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "nvml_index": device.nvml_index, "uuid": device.uuid, "pci_bus_id": device.pci_bus_id,
                        "strategy": device.strategy, "numa_nodes": list(rec.numa_nodes),
                        "bound_cpus": sorted(os.sched_getaffinity(0)), "planned_cpus": sorted(rec.bind_cpus),
                        "failures": rec.failures}

        workers = [Worker.remote() for _ in range(n)]
        rows = ray.get([w.where.remote(args.noset, args.memory) for w in workers])
    finally:
        ray.shutdown()
    print(json.dumps(rows))
    for r in sorted(rows, key=lambda r: int(r["ray_gpu_id"])):
        print(f"ray GPU {r['ray_gpu_id']:>2} (CUDA_VISIBLE_DEVICES={r['cvd']}) -> nvml {r['nvml_index']} "
              f"{r['pci_bus_id']} node(s) {r['numa_nodes']} by {r['strategy']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
