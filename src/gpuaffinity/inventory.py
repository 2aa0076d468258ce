"""Read the machine's GPUs: every one, in NVML's order (ascending PCI bus id).

Two sources, same answer:

* The driver's own files, ``/proc/driver/nvidia/gpus/<bus>/information``
  (model, UUID, bus location): no library to load and no ``nvmlInit``, which
  costs tens of milliseconds on a real host and dominates a fresh process.
  Used when every GPU's file is complete and no GPU has MIG instances
  (``/proc/driver/nvidia/capabilities/gpu<N>/mig/gi*``).
* NVML, for everything else (MIG instance UUIDs exist only there).  Every
  read balances its nvmlInit with an nvmlShutdown.

Both ignore CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, which is what makes
them the common ground the strategies map into.  GPUAFFINITY_PROCFS_ROOT
moves /proc (the simulator renders its own); GPUAFFINITY_INVENTORY=nvml
forces NVML.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuaffinity.core.errors import NoDriverError
from gpuaffinity.core.model import GpuInfo, Inventory, MigInfo, normalize_bus_id

PROCFS_VAR = "GPUAFFINITY_PROCFS_ROOT"
SOURCE_VAR = "GPUAFFINITY_INVENTORY"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_inventory() -> Inventory:
    """Every GPU, from the driver's files where they suffice, else from NVML."""
    source = os.environ.get(SOURCE_VAR, "auto")
    if source != "nvml":
        inv = read_inventory_procfs()
        if inv is not None:
            return inv
    return read_inventory_nvml()


def _info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def read_inventory_procfs() -> Inventory | None:
    """The GPUs from /proc/driver/nvidia, or None when those files cannot give the whole answer."""
    root = Path(os.environ.get(PROCFS_VAR) or "/proc") / "driver" / "nvidia"
    try:
        entries = sorted(os.listdir(root / "gpus"))
    except OSError:
        return None
    if any((root / "capabilities").glob("gpu*/mig/gi*")):
        return None  # MIG instances: their UUIDs come from NVML alone
    found = []
    for entry in entries:
        try:
            info = _info((root / "gpus" / entry / "information").read_text())
        except OSError:
            return None
        uuid, bus, model = info.get("GPU UUID", ""), info.get("Bus Location", ""), info.get("Model", "")
        if not uuid.startswith("GPU-") or not bus or not model or info.get("GPU Excluded", "No") != "No":
            return None
        found.append((normalize_bus_id(bus), uuid, model))
    if not found:
        return None
    found.sort()
    return Inventory(tuple(GpuInfo(i, uuid, bus, model) for i, (bus, uuid, model) in enumerate(found)),
                     source="procfs")


def read_inventory_nvml() -> Inventory:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        raise NoDriverError(
            "no NVIDIA driver here: libnvidia-ml.so.1 was not found; install the driver, or try gpuaffinity on a "
            "simulated machine: gpuaffinity sim run dgx-h100 -- gpuaffinity doctor") from None
    except pynvml.NVMLError as e:
        raise NoDriverError(f"NVML could not start ({e}); check that the NVIDIA driver is loaded "
                            "(nvidia-smi should work)") from None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            pci = pynvml.nvmlDeviceGetPciInfo(h)
            gpus.append(GpuInfo(i, _text(pynvml.nvmlDeviceGetUUID(h)), normalize_bus_id(_text(pci.busId)),
                                _text(pynvml.nvmlDeviceGetName(h)), _migs(pynvml, h)))
        return Inventory(tuple(gpus), source="nvml")
    except pynvml.NVMLError as e:
        raise NoDriverError(f"NVML failed while listing GPUs: {e}") from None
    finally:
        pynvml.nvmlShutdown()


def _migs(pynvml, handle) -> tuple[MigInfo, ...]:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # not supported on this GPU or driver
        return ()
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return ()
    out = []
    for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except pynvml.NVMLError_NotFound:
            continue
        out.append(MigInfo(_text(pynvml.nvmlDeviceGetUUID(m)), pynvml.nvmlDeviceGetGpuInstanceId(m),
                           pynvml.nvmlDeviceGetComputeInstanceId(m)))
    return tuple(sorted(out, key=lambda x: (x.gpu_instance, x.compute_instance)))
