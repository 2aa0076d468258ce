"""Start one bound child command per visible GPU from a Python parent.

gpuaffinity.launch.popen runs the command through `gpuaffinity bind ID --`:
the child binds itself, then execs the command, which inherits CPU affinity
and memory policy.  Each child gets CUDA_VISIBLE_DEVICES narrowed to its GPU,
as a launcher would, and so resolves its own device 0.

    gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.examples.subprocess_launcher
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPORT = ("import json, os, gpuaffinity; d = gpuaffinity.resolve(0); "
          "print(json.dumps({'cvd': os.environ.get('CUDA_VISIBLE_DEVICES'), 'nvml_index': d.nvml_index, "
          "'cpus': sorted(os.sched_getaffinity(0))}))")


def main() -> int:
    import gpuaffinity
    import gpuaffinity.launch as launch

    children = []
    for d in gpuaffinity.resolve_all():
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=d.uuid)  # this child sees its one GPU, as device 0
        children.append(launch.popen(0, [sys.executable, "-c", REPORT], env=env, memory="none",
                                     stdout=subprocess.PIPE, text=True))
    rows = [json.loads(c.communicate()[0]) for c in children]
    print(json.dumps(rows))
    return 0 if all(c.returncode == 0 for c in children) else 1


if __name__ == "__main__":
    raise SystemExit(main())
