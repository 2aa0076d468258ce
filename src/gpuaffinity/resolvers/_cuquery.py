"""The CUDA driver's own answer, through ctypes alone: each device's PCI bus id and UUID.

This file imports nothing, of gpuaffinity or anything else, at module level: the ``pci`` strategy imports it to
ask in this process (CUDA already up) or in a forked copy of it, and runs its text as the whole program of an
isolated child (``python -I -c``) otherwise.  Keep it so.
"""

from __future__ import annotations


def failed(call: str, i: int, rc: int) -> dict:
    return {"rc": None, "devices": [], "error": f"the CUDA driver's {call}({i}) returned CUDA error {rc}"}


def query_driver(init: bool) -> dict:
    """``{"rc": 0, "devices": [[bus_id, uuid_hex], ...]}`` in CUDA's order; ``rc`` is CUDA's error code otherwise
    (-1: libcuda cannot be loaded), or None with ``error`` when a device's query failed.  ``init``: call cuInit
    first (never in a process that may fork and did not initialise CUDA itself)."""
    import ctypes

    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"rc": -1, "error": f"libcuda.so.1 not loadable: {e}", "devices": []}
    if init:
        rc = cu.cuInit(0)
        if rc:
            return {"rc": rc, "devices": []}
    n = ctypes.c_int(0)
    rc = cu.cuDeviceGetCount(ctypes.byref(n))
    if rc:
        return {"rc": rc, "devices": []}
    get_uuid = getattr(cu, "cuDeviceGetUuid_v2", None) or cu.cuDeviceGetUuid  # v2: a MIG instance's own
    devices = []
    for i in range(n.value):
        bus = ctypes.create_string_buffer(32)
        rc = cu.cuDeviceGetPCIBusId(bus, 32, i)
        if rc:
            return failed("cuDeviceGetPCIBusId", i, rc)
        raw = (ctypes.c_ubyte * 16)()
        rc = get_uuid(raw, i)
        if rc:
            return failed("cuDeviceGetUuid", i, rc)
        devices.append([bus.value.decode(errors="replace"), bytes(raw).hex()])
    return {"rc": 0, "devices": devices}
