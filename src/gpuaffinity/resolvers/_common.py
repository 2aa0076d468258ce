"""What the CUDA_VISIBLE_DEVICES-reading strategies share.

Owns: whether CUDA is up in this process.
"""

from __future__ import annotations

import os
import sys

from gpuaffinity.core.strategy import ResolveContext, StashKey


def libcuda_mapped() -> bool | None:
    """Whether a ``libcuda.so*`` file is mapped into this process (/proc/self/maps); None when that cannot be read.

    The CUDA driver API lives in libcuda alone, which is only ever loaded as a shared library (the runtime
    and every binding dlopen ``libcuda.so.1``): a process without it mapped cannot have initialised CUDA."""
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read()
    except OSError:
        return None
    return b"/libcuda.so" in maps


def cuda_initialized_here() -> bool:
    """True when libcuda is loaded in this process and cuInit has succeeded; initialises nothing.

    When ctypes is not loaded yet and libcuda is not mapped, the answer is False without loading ctypes (a
    fresh process's first resolve); otherwise libcuda is asked, with RTLD_NOLOAD, whether a device count can
    be had."""
    # /proc/self/maps is cheap in a fresh process and megabytes in one with torch's libraries (ms to read): read
    # it only to avoid loading ctypes, never when ctypes is already here
    if "ctypes" not in sys.modules and libcuda_mapped() is False:
        return False
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    n = ctypes.c_int(0)
    return lib.cuDeviceGetCount(ctypes.byref(n)) == 0


#: whether CUDA is up in this process, asked once a resolution (cuda_up)
CUDA_UP: StashKey[bool] = StashKey("gpuaffinity.cuda_up")


def cuda_up(ctx: ResolveContext) -> bool:
    """cuda_initialized_here(), asked once per resolution."""
    if CUDA_UP not in ctx.stash:
        ctx.stash[CUDA_UP] = cuda_initialized_here()
    return ctx.stash[CUDA_UP]


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
