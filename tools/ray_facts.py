"""What Ray sets in a GPU worker, and when: the facts a binding mechanism for Ray has to be built on.

    gpuaffinity sim run dgx-h100 -- python3 tools/ray_facts.py [--noset] [--json FILE]

Starts a local Ray (one node, the simulated machine's GPUs) and records, in the worker processes themselves:

* what a ``worker_process_setup_hook`` sees when it runs (``CUDA_VISIBLE_DEVICES``, Ray's GPU ids);
* what a task sees, and what the *same* worker process sees when Ray reuses it for a task with other GPUs,
  with no GPU, and with a fraction of one;
* what an actor holding several GPUs sees in its constructor and its methods;
* with ``--noset`` (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``), the same, where Ray leaves the
  variable alone.

Prints one JSON object (``--json`` also writes it).  docs/ray.md says what the facts mean for gpuaffinity;
tests/test_ray_facts.py runs this tool and checks them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HOOK_FILE_VAR = "GPUAFFINITY_RAY_FACTS_HOOK"  # where each worker's setup hook appends what it saw


def setup_hook() -> None:
    """Ray's worker_process_setup_hook: runs once in each worker process, before its first task."""
    import ray

    try:
        ids = [str(i) for i in ray.get_gpu_ids()]
    except Exception as e:  # what Ray allows here is part of the facts
        ids = [f"raised {type(e).__name__}"]
    rec = {"pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": ids}
    with open(os.environ[HOOK_FILE_VAR], "a") as f:
        f.write(json.dumps(rec) + "\n")


def seen() -> dict:
    import ray

    return {"pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noset", action="store_true", help="RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1")
    ap.add_argument("--json", metavar="FILE", help="also write the facts here")
    args = ap.parse_args()
    import tempfile

    import ray

    hook_file = os.path.join(tempfile.mkdtemp(prefix="ray-facts-"), "hook.jsonl")
    env = {k: v for k, v in os.environ.items() if k.startswith(("GPUAFFINITY_", "LD_"))}
    env[HOOK_FILE_VAR] = hook_file
    if args.noset:
        env["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
        os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "ray_facts.setup_hook",
                          "py_modules": [os.path.join(here, "ray_facts.py")]})
    facts: dict = {"ray": ray.__version__, "noset": args.noset, "driver_cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "gpus": int(ray.cluster_resources().get("GPU", 0))}
    try:
        @ray.remote(num_cpus=1)
        def task() -> dict:
            return seen()

        @ray.remote(num_gpus=3, num_cpus=0)
        class Blocker:  # holds Ray's GPUs 0-2, so that the tasks below get other ids than 0
            def ids(self) -> list[str]:
                return [str(i) for i in ray.get_gpu_ids()]

        blocker = Blocker.remote()
        facts["blocker_gpu_ids"] = ray.get(blocker.ids.remote())
        # one CPU slot for tasks (num_cpus=2 above, the actors take none): successive tasks reuse a worker
        facts["tasks"] = []
        for gpus in (1, 2, 0, 0.5, 1):
            facts["tasks"].append({"num_gpus": gpus, **ray.get(task.options(num_gpus=gpus).remote())})

        @ray.remote(num_gpus=2, num_cpus=0)
        class Holder:
            def __init__(self) -> None:
                self.at_init = seen()

            def both(self) -> dict:
                return {"init": self.at_init, "method": seen()}

        holder = Holder.remote()
        facts["actor_2_gpus"] = ray.get(holder.both.remote())
        ray.kill(holder)
        ray.kill(blocker)
    finally:
        ray.shutdown()
    with open(hook_file) as f:
        facts["setup_hook"] = [json.loads(line) for line in f]
    out = json.dumps(facts, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
