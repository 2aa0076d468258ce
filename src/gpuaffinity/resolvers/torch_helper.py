"""Strategy ``torch``: torch.cuda._get_nvml_device_index, when torch is already imported.

gpuaffinity never imports torch to resolve (seconds of start-up); when the
program already has, torch's own mapping comes first, and cvd checks it.  The
helper is private and absent before torch 2.1; it raises IndexError on an
empty or duplicated list and RuntimeError on MIG or ids it cannot see, and it
accepts some lists the driver refuses (docs/cvd-grammar.md): every such case
becomes an abstention with torch's reason, never a crash.
"""

from __future__ import annotations

import os
import sys

from gpuaffinity.core.model import Abstain, Answer
from gpuaffinity.core.strategy import Cost, ResolveContext, Strategy
from gpuaffinity.resolvers._common import cuda_up, integers_index_unknown_order


class TorchStrategy(Strategy):
    name = "torch"
    watchdog = False  # torch's own code, in the caller's process
    budget = 120.0  # the helper's first call starts NVML
    # Above cvd: when the program has imported torch, torch's own view of the numbering comes first,
    # checked by cvd (and, on disagreement, settled by the driver through pci).  So torch raising,
    # or lacking the helper (torch 2.0), makes cvd's answer a fallback, with a warning.
    priority = 60
    describe = "torch.cuda._get_nvml_device_index, only where torch is already imported"

    def cost(self, ctx: ResolveContext) -> Cost:
        # With CUDA up here, the driver answers in-process in microseconds (pci); torch's helper would start
        # NVML (milliseconds on a real host) to say what the driver already said.
        return "expensive" if cuda_up(ctx) else "cheap"

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        torch = sys.modules.get("torch")
        if torch is None:
            return Abstain("torch is not imported (gpuaffinity never imports it just to resolve)", quiet=True)
        helper = getattr(getattr(torch, "cuda", None), "_get_nvml_device_index", None)
        if helper is None:
            return Abstain(f"torch {getattr(torch, '__version__', '?')} has no torch.cuda._get_nvml_device_index "
                           "(it arrived in torch 2.1)")
        why = integers_index_unknown_order(ctx)
        if why:
            return Abstain("torch takes integers as NVML indices, wrong here: " + why)
        # torch's helper reads the variables itself, now: its answer belongs to this resolution only if they
        # are still the ones the resolution read (another thread may be changing them)
        if not _same_environment(ctx):
            return Abstain("CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER changed while resolving: torch's helper would "
                           "read other values than this resolution", quiet=True)
        try:
            index = helper(logical_id)
        except Exception as e:
            return Abstain(f"torch raised {type(e).__name__}: {e}")
        if not _same_environment(ctx):
            return Abstain("CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER changed while torch's helper ran", quiet=True)
        if not isinstance(index, int) or not 0 <= index < len(ctx.inventory.gpus):
            return Abstain(f"torch answered NVML index {index!r}, which this machine does not have")
        gpu = ctx.inventory.gpus[index]
        if gpu.mig_enabled:  # the helper names the whole GPU; in MIG mode the device is one of its instances
            return Abstain(f"torch names NVML {index}, a GPU in MIG mode, not the MIG instance that is the device",
                           quiet=True)
        return Answer(gpu.uuid, detail=f"torch.cuda._get_nvml_device_index({logical_id}) = {index}")


def _same_environment(ctx: ResolveContext) -> bool:
    env = os.environ
    return env.get("CUDA_VISIBLE_DEVICES") == ctx.cvd and env.get("CUDA_DEVICE_ORDER") == ctx.device_order


def gpuaffinity_strategies() -> list[TorchStrategy]:
    return [TorchStrategy()]
