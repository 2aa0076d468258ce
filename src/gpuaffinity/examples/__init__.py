"""Runnable examples, one for each pattern in docs/launchers.md; each is run as a module.

- ``python3 -m gpuaffinity.examples.ray_actors [--noset]``: Ray actors, each bound to the GPU Ray gave it.
- ``python3 -m gpuaffinity.examples.multiprocessing_workers``: one "spawn" worker per GPU, bound first.
- ``torchrun --nproc-per-node N -m gpuaffinity.examples.torchrun_worker``: workers bound by ``LOCAL_RANK``.
- ``python3 -m gpuaffinity.examples.subprocess_launcher``: one bound child command per GPU.

They are in the package so that an installed wheel has them.  Without a GPU, run one on a simulated
machine: ``gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.examples.subprocess_launcher``.
The example strategy plugin is a project of its own: ``examples/gpuaffinity-launcher-plugin`` in the
source distribution (docs/plugins.md).
"""
