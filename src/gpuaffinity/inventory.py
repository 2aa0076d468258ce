"""Read the machine's GPUs from NVML: the one place that lists them all, in PCI order.

NVML ignores CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, which is what makes
it the common ground the strategies map into.  Every read balances its
nvmlInit with an nvmlShutdown.
"""

from __future__ import annotations

from gpuaffinity.core.errors import NoDriverError
from gpuaffinity.core.model import GpuInfo, Inventory, MigInfo, normalize_bus_id


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_inventory() -> Inventory:
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
        return Inventory(tuple(gpus))
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
