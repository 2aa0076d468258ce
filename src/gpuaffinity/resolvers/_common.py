"""What the CUDA_VISIBLE_DEVICES-reading strategies share."""

from __future__ import annotations

from gpuaffinity.core.hookspec import ResolveContext


def integers_index_unknown_order(ctx: ResolveContext) -> str | None:
    """Why integers cannot be mapped without CUDA, or None when they can.

    Integers (and an unset variable) index CUDA's base order.  Under
    FASTEST_FIRST (the default) that order puts faster models first: it equals
    PCI order only when every GPU this process can open is the same model.
    """
    cvd = ctx.cvd
    if cvd is not None and cvd.startswith(("GPU-", "MIG-")):
        return None
    if ctx.device_order == "PCI_BUS_ID" or ctx.inventory.uniform:
        return None
    models = sorted({g.name for g in ctx.inventory.gpus})
    return ("this machine mixes GPU models (" + ", ".join(models) + ") and CUDA_DEVICE_ORDER is not PCI_BUS_ID, "
            "so CUDA's FASTEST_FIRST numbering cannot be known without asking CUDA; "
            "set CUDA_DEVICE_ORDER=PCI_BUS_ID or list GPUs by UUID")
