"""Strategy ``cvd``: CUDA_VISIBLE_DEVICES read with the driver's measured grammar.

Knows integers, ``GPU-`` UUIDs and unique prefixes, and both MIG forms.
Exact wherever the grammar is (docs/cvd-grammar.md); for integers it also
needs CUDA's base order, known only when CUDA_DEVICE_ORDER=PCI_BUS_ID or every
GPU is the same model: otherwise it abstains and says so.  Costs one NVML
inventory, shared with the other strategies.
"""

from __future__ import annotations

from gpuaffinity.core.model import Abstain, Answer
from gpuaffinity.core.strategy import Cost, ResolveContext, Strategy
from gpuaffinity.resolvers._common import integers_index_unknown_order


class CvdStrategy(Strategy):
    name = "cvd"
    watchdog = False  # pure Python over the inventory: microseconds
    priority = 50
    describe = "CUDA_VISIBLE_DEVICES parsed with the driver's measured grammar (ints, UUIDs, prefixes, MIG)"

    def cost(self, ctx: ResolveContext) -> Cost:
        return "cheap"

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        why = integers_index_unknown_order(ctx) or ctx.grammar.unknown
        if why:
            return Abstain(why)
        res = ctx.grammar
        if logical_id >= len(res.devices):
            return Abstain(f"CUDA_VISIBLE_DEVICES shows {len(res.devices)} devices")
        dev = res.devices[logical_id]
        gpu = ctx.inventory.gpus[dev.gpu]
        mig = gpu.migs[dev.mig].uuid if dev.mig is not None else None
        return Answer(gpu.uuid, mig, detail=f"entry {logical_id} is NVML {gpu.nvml_index}")


def gpuaffinity_strategies() -> list[CvdStrategy]:
    return [CvdStrategy()]
