"""An example gpuaffinity strategy: the launcher already knows.

Many launchers pick GPUs by UUID and could simply record, for each worker,
which physical GPU its logical device N is.  This strategy reads that record
from LAUNCHER_GPU_UUIDS ("GPU-aaa…,GPU-bbb…": entry N is logical device N)
and, when it is there, answers before the cheap built-in strategies.  The
chain still checks it against them (policy "verify"): a stale record makes
them disagree, the CUDA driver is asked, and its answer stands (the driver's
answer is final over every plugin), with a DisagreementWarning naming both.
"""

from __future__ import annotations

import os

from gpuaffinity import Abstain, Answer, ResolveContext, Strategy, hookimpl

VAR = "LAUNCHER_GPU_UUIDS"


class LauncherStrategy(Strategy):
    name = "launcher"
    priority = 90  # below the CUDA driver's pci (100), above torch (60) and cvd (50)
    describe = f"the GPU UUIDs the launcher recorded in {VAR}"
    env_vars = (VAR,)  # read by answer(): part of the cache key

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        record = os.environ.get(VAR)
        if not record:
            return Abstain(f"{VAR} is not set", quiet=True)  # quiet: not applying here is normal
        uuids = [u.strip() for u in record.split(",") if u.strip()]
        if logical_id >= len(uuids):
            return Abstain(f"{VAR} lists only {len(uuids)} GPUs")
        gpu = ctx.inventory.by_uuid(uuids[logical_id])
        if gpu is None:
            return Abstain(f"{VAR} names {uuids[logical_id]}, which NVML does not know")
        return Answer(gpu.uuid, detail=f"{VAR}[{logical_id}]")


@hookimpl
def gpuaffinity_strategies() -> list[LauncherStrategy]:
    return [LauncherStrategy()]
