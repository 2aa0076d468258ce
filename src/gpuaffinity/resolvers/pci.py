"""Strategy ``pci``: ask the CUDA driver for each device's PCI bus id, then NVML for that bus.

Ground truth: the driver applies CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER
itself.  The price is ``cuInit``, and a process that calls ``cuInit`` and
later forks leaves CUDA unusable in its children (a forked worker, a
multiprocessing "fork" pool).  So:

* If CUDA is already initialised in this process (someone else paid, and the
  fork hazard exists anyway), the query runs here: cheap, a few microseconds
  a device.
* Otherwise it runs in a short-lived child process, never here: expensive
  (an interpreter start plus ``cuInit``), so the chain asks it only when
  something calls for it (core/chain.py) or under the strict policy.
  ``allow_subprocess=False`` (CLI ``--no-subprocess``, environment
  GPUAFFINITY_NO_SUBPROCESS=1) forbids the child.  The child runs in
  isolated mode (``python -I``): nothing from the caller's working directory,
  PYTHONPATH or user site can be imported into it; it is told where this
  package lives.

It uses cuda-python's ``cuda.bindings.driver`` when installed, else the
driver library directly through ctypes.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

from gpuaffinity.core.cvd import CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_NO_DEVICE
from gpuaffinity.core.errors import InvalidVisibleDevicesError, shown
from gpuaffinity.core.model import Abstain, Answer
from gpuaffinity.core.settings import NO_SUBPROCESS_VAR
from gpuaffinity.core.strategy import Cost, ResolveContext, Strategy
from gpuaffinity.resolvers._common import cuda_up


def query_driver(init: bool) -> dict[str, Any]:
    """Each CUDA device's PCI bus id and UUID (MIG instance's where there is one), from the driver."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return _query_ctypes(init)
    if init:
        (rc,) = driver.cuInit(0)
        if rc != driver.CUresult.CUDA_SUCCESS:
            return {"rc": int(rc), "via": "cuda.bindings", "devices": []}
    rc, n = driver.cuDeviceGetCount()
    if rc != driver.CUresult.CUDA_SUCCESS:
        return {"rc": int(rc), "via": "cuda.bindings", "devices": []}
    devices = []
    get_uuid = getattr(driver, "cuDeviceGetUuid_v2", driver.cuDeviceGetUuid)  # MIG instances have their own
    for i in range(n):
        rc, bus = driver.cuDeviceGetPCIBusId(32, i)
        if rc != driver.CUresult.CUDA_SUCCESS:
            return _failed(int(rc), f"cuDeviceGetPCIBusId({i})", "cuda.bindings")
        rc, uuid = get_uuid(i)
        if rc != driver.CUresult.CUDA_SUCCESS:
            return _failed(int(rc), f"cuDeviceGetUuid({i})", "cuda.bindings")
        devices.append([bus.split(b"\0", 1)[0].decode(), bytes(uuid.bytes).hex()])
    return {"rc": 0, "via": "cuda.bindings", "devices": devices}


def _failed(rc: int, call: str, via: str) -> dict[str, Any]:
    return {"rc": None, "via": via, "devices": [], "error": f"the CUDA driver's {call} returned CUDA error {rc}"}


def _query_ctypes(init: bool) -> dict[str, Any]:
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"rc": -1, "via": "ctypes", "error": f"libcuda.so.1 not loadable: {e}", "devices": []}
    if init:
        rc = cu.cuInit(0)
        if rc:
            return {"rc": rc, "via": "ctypes", "devices": []}
    n = ctypes.c_int(0)
    rc = cu.cuDeviceGetCount(ctypes.byref(n))
    if rc:
        return {"rc": rc, "via": "ctypes", "devices": []}
    get_uuid = getattr(cu, "cuDeviceGetUuid_v2", None) or cu.cuDeviceGetUuid
    devices = []
    for i in range(n.value):
        bus = ctypes.create_string_buffer(32)
        rc = cu.cuDeviceGetPCIBusId(bus, 32, i)
        if rc:
            return _failed(rc, f"cuDeviceGetPCIBusId({i})", "ctypes")
        raw = (ctypes.c_ubyte * 16)()
        rc = get_uuid(raw, i)
        if rc:
            return _failed(rc, f"cuDeviceGetUuid({i})", "ctypes")
        devices.append([bus.value.decode(errors="replace"), bytes(raw).hex()])
    return {"rc": 0, "via": "ctypes", "devices": devices}


class PciStrategy(Strategy):
    name = "pci"
    watchdog = False  # its child has a timeout of its own (options['timeout'])
    budget = 600.0
    priority = 100
    asks_driver = True
    describe = "CUDA driver's cuDeviceGetPCIBusId matched to NVML's bus ids (in a child unless CUDA is up here)"

    def cost(self, ctx: ResolveContext) -> Cost:
        return "cheap" if self._in_process(ctx) else "expensive"

    def _in_process(self, ctx: ResolveContext) -> bool:
        return cuda_up(ctx)

    def _table(self, ctx: ResolveContext) -> dict[str, Any]:
        if "pci.table" in ctx.scratch:
            return ctx.scratch["pci.table"]
        if self._in_process(ctx):
            table = query_driver(init=False)
            table["where"] = "in this process (CUDA was already initialised)"
        elif not ctx.options.get("allow_subprocess", True):
            table = {"rc": None, "devices": [], "error": "CUDA is not initialised here and subprocesses are "
                     f"disabled (allow_subprocess=False or {NO_SUBPROCESS_VAR}); gpuaffinity will not cuInit in "
                     "a process that may fork"}
        else:
            table = self._probe_child(ctx)
        ctx.scratch["pci.table"] = table
        return table

    def _probe_child(self, ctx: ResolveContext) -> dict[str, Any]:
        import subprocess

        env = dict(os.environ)
        for var, value in ctx.env.items():
            if value is None:
                env.pop(var, None)
            else:
                env[var] = value
        timeout = float(ctx.options.get("timeout", 120))
        try:
            proc = subprocess.run(child_command(), env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"rc": None, "devices": [], "error": f"the CUDA probe process took over {timeout:g} s"}
        try:
            table = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"rc": None, "devices": [], "error": f"the CUDA probe process failed: {last}"}
        table["where"] = "in a child process"
        return table

    def count(self, ctx: ResolveContext) -> int | None:
        """How many devices the driver shows, or None when it cannot be asked.

        Raises InvalidVisibleDevicesError when the driver refuses the variables."""
        table = self._table(ctx)
        if table.get("error"):
            return None
        if table.get("rc") == CUDA_ERROR_INVALID_DEVICE:
            raise InvalidVisibleDevicesError(
                f"the CUDA driver refuses CUDA_VISIBLE_DEVICES={shown(ctx.cvd)} with CUDA_DEVICE_ORDER="
                f"{shown(ctx.device_order)} (cuInit returned CUDA_ERROR_INVALID_DEVICE): a device is named twice, or "
                "the order is not FASTEST_FIRST or PCI_BUS_ID; fix the variable")
        if table.get("rc") == CUDA_ERROR_NO_DEVICE:
            return 0
        return None if table.get("rc") else len(table["devices"])

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        table = self._table(ctx)
        if table.get("error"):
            return Abstain(table["error"])
        if table.get("rc"):
            return Abstain(f"cuInit/cuDeviceGetCount returned CUDA error {table['rc']} ({table.get('where', '')})")
        devices = table["devices"]
        if logical_id >= len(devices):
            return Abstain(f"the CUDA driver shows only {len(devices)} devices")
        bus, uuid_hex = devices[logical_id]
        gpu = ctx.inventory.by_bus(bus)
        if gpu is None:
            return Abstain(f"the CUDA driver's device {logical_id} is at PCI {bus}, where NVML has no GPU")
        mig = next((m.uuid for m in gpu.migs if m.uuid[4:].replace("-", "").lower() == uuid_hex), None)
        return Answer(gpu.uuid, mig, detail=f"cuDeviceGetPCIBusId({logical_id}) = {bus}, {table.get('where', '')}")


def gpuaffinity_strategies() -> list[PciStrategy]:
    return [PciStrategy()]


def child_command() -> list[str]:
    """The probe child, isolated (gpuaffinity._child)."""
    from gpuaffinity._child import python_argv

    return python_argv("import json; from gpuaffinity.resolvers.pci import query_driver; "
                       "print(json.dumps(query_driver(init=True)))")


if __name__ == "__main__":  # the child process: initialise CUDA here, print, exit
    print(json.dumps(query_driver(init=True)))
