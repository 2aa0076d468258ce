"""The NVML calls gpuaffinity makes (the GPU list, MIG instances, locality), through ctypes: no pynvml to import.

``import pynvml`` costs a fresh process tens of milliseconds (it loads ``ctypes.util``, which loads
``subprocess``, ``tempfile``, ``shutil``, compression modules…; benchmarks/bench_resolve.py shows it), more
than ``nvmlInit`` itself.  The calls below are the very C functions pynvml calls for the same questions, in
the same library (``libnvidia-ml.so.1``), with the same arguments and buffer sizes:

* the GPU list (``gpuaffinity.inventory``): ``nvmlDeviceGetCount_v2``, ``nvmlDeviceGetHandleByIndex_v2``,
  ``nvmlDeviceGetPciInfo_v3`` (``nvmlPciInfo_t``), ``nvmlDeviceGetUUID`` and ``nvmlDeviceGetName`` (96-byte
  buffers), ``nvmlDeviceGetMigMode``, ``nvmlDeviceGetMaxMigDeviceCount``,
  ``nvmlDeviceGetMigDeviceHandleByIndex``, ``nvmlDeviceGetGpuInstanceId``, ``nvmlDeviceGetComputeInstanceId``;
* locality (``gpuaffinity.numa.query``): ``nvmlDeviceGetHandleByPciBusId_v2``,
  ``nvmlDeviceGetMemoryAffinity`` and ``nvmlDeviceGetCpuAffinityWithinScope`` (node scope, 16 words of
  ``unsigned long``), ``nvmlDeviceGetNumaNodeId``;
* the processes with a CUDA context on a GPU (``gpuaffinity check``): ``nvmlDeviceGetComputeRunningProcesses_v3``
  (``nvmlProcessInfo_t``), the call pynvml's ``nvmlDeviceGetComputeRunningProcesses`` makes;
* ``nvmlInit_v2`` and ``nvmlShutdown`` around them.

tools/nvml_lite_check.py asks every one of them both ways, this module's and pynvml's, and compares: the tests
run it on simulated machines (tests/test_numa_nvml_lite.py), tools/validate_real.py on real GPUs.

NVML counts its initialisations: this module's ``nvmlInit_v2``/``nvmlShutdown`` pair leaves pynvml's own
session (if the caller has one) as it was.

Owns: the NVML calls gpuaffinity makes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

NVML_SUCCESS = 0
NVML_AFFINITY_SCOPE_NODE = 0
WORDS = 16  # 16 x 64 bits: 1024 CPUs or nodes, as the callers of pynvml asked before


#: NVML's words for its commonest return codes (nvml.h), so that a message says more than a number
ERROR_NAMES = {1: "Uninitialized", 2: "Invalid Argument", 3: "Not Supported", 4: "Insufficient Permissions",
               6: "Not Found", 7: "Insufficient Size", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
               13: "Function Not Found", 15: "GPU is lost", 999: "Unknown Error"}
NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_FOUND = 3, 4, 6
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_INSUFFICIENT_SIZE = 7
#: NVML_VALUE_NOT_AVAILABLE as an unsigned long long: GPU memory NVML cannot tell
NVML_VALUE_NOT_AVAILABLE = (1 << 64) - 1
#: How often compute_processes asks again when the list outgrew the buffer it had sized by the count
PROCESS_LIST_TRIES = 8
NVML_DEVICE_MIG_ENABLE = 1
_TEXT = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE and NVML_DEVICE_NAME_V2_BUFFER_SIZE


#: NVML_ERROR_GPU_IS_LOST: the GPU has fallen off the bus
GPU_IS_LOST = 15


class NvmlLiteError(Exception):
    """An NVML call failed: ``code`` is NVML's return code (-1: the library could not be loaded)."""

    def __init__(self, call: str, code: int) -> None:
        word = ERROR_NAMES.get(code, "")
        super().__init__(f"{call} returned NVML error {code}" + (f" ({word})" if word else ""))
        self.call, self.code = call, code


def _pci_info_type(c: Any) -> type:
    """``nvmlPciInfo_t`` as nvml.h declares it (the v3 call's argument)."""
    class PciInfo(c.Structure):
        _fields_ = [("busIdLegacy", c.c_char * 16), ("domain", c.c_uint), ("bus", c.c_uint), ("device", c.c_uint),
                    ("pciDeviceId", c.c_uint), ("pciSubSystemId", c.c_uint), ("busId", c.c_char * 32)]

    return PciInfo


def _process_info_type(c: Any) -> type:
    """``nvmlProcessInfo_t`` as nvml.h declares it (the element of the ``_v2`` and ``_v3`` process lists)."""
    class ProcessInfo(c.Structure):
        _fields_ = [("pid", c.c_uint), ("usedGpuMemory", c.c_ulonglong), ("gpuInstanceId", c.c_uint),
                    ("computeInstanceId", c.c_uint)]

    return ProcessInfo


def _bits(words: Iterable[int]) -> frozenset[int]:
    return frozenset(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)


class Session:
    """One NVML session (``with Session() as nv:``): init on entry, shutdown on exit."""

    def __init__(self) -> None:
        import ctypes

        self._c = ctypes
        try:
            self._lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            raise NvmlLiteError("loading libnvidia-ml.so.1", -1) from None
        self._up = False
        self._pci: Any = None

    def _fn(self, name: str) -> Any:
        """The library's function ``name``; NvmlLiteError FUNCTION_NOT_FOUND where this driver lacks it (an old
        driver: nvmlDeviceGetMigMode before R450, say), as pynvml says, never AttributeError."""
        fn = getattr(self._lib, name, None)
        if fn is None:
            raise NvmlLiteError(name, NVML_ERROR_FUNCTION_NOT_FOUND)
        return fn

    def _call(self, name: str, *args: object) -> None:
        """The library's function ``name`` called with ``args``; NvmlLiteError naming it unless it returns
        NVML_SUCCESS."""
        rc = self._fn(name)(*args)
        if rc != NVML_SUCCESS:
            raise NvmlLiteError(name, rc)

    def __enter__(self) -> Session:
        self._call("nvmlInit_v2")
        self._up = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._up:
            self._up = False
            shutdown = getattr(self._lib, "nvmlShutdown", None)
            if shutdown is not None:
                shutdown()  # a failed shutdown only leaves NVML initialised: the answers are read

    def handle(self, bus_id: str) -> object:
        c = self._c
        h = c.c_void_p()
        self._call("nvmlDeviceGetHandleByPciBusId_v2", c.c_char_p(bus_id.encode()), c.byref(h))
        return h

    def _mask(self, fn: str, handle: object) -> frozenset[int]:
        c = self._c
        words = (c.c_ulong * WORDS)()
        self._call(fn, handle, c.c_uint(WORDS), words, c.c_uint(NVML_AFFINITY_SCOPE_NODE))
        return _bits(words)

    def memory_affinity(self, handle: object) -> frozenset[int]:
        """The nodes of the GPU's ideal memory affinity, node scope."""
        return self._mask("nvmlDeviceGetMemoryAffinity", handle)

    def cpu_affinity(self, handle: object) -> frozenset[int]:
        """The GPU's ideal CPU affinity, node scope."""
        return self._mask("nvmlDeviceGetCpuAffinityWithinScope", handle)

    # ---- the GPU list -----------------------------------------------------------------------------

    def _uint(self, call: str, *args: object) -> int:
        c = self._c
        out = c.c_uint(0)
        self._call(call, *args, c.byref(out))
        return out.value

    def _text(self, call: str, handle: object) -> str:
        c = self._c
        buf = c.create_string_buffer(_TEXT)
        self._call(call, handle, buf, c.c_uint(_TEXT))
        return buf.value.decode("utf-8", "replace")

    def count(self) -> int:
        return self._uint("nvmlDeviceGetCount_v2")

    def handle_by_index(self, index: int) -> object:
        c = self._c
        h = c.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", c.c_uint(index), c.byref(h))
        return h

    def pci_bus_id(self, handle: object) -> str:
        """``busId`` of ``nvmlPciInfo_t`` as NVML writes it (``00000000:3B:00.0``)."""
        if self._pci is None:
            self._pci = _pci_info_type(self._c)
        info = self._pci()
        self._call("nvmlDeviceGetPciInfo_v3", handle, self._c.byref(info))
        return info.busId.decode("utf-8", "replace")

    def uuid(self, handle: object) -> str:
        return self._text("nvmlDeviceGetUUID", handle)

    def name(self, handle: object) -> str:
        return self._text("nvmlDeviceGetName", handle)

    def mig_mode(self, handle: object) -> int:
        """The current MIG mode (1: enabled)."""
        c = self._c
        current, pending = c.c_uint(0), c.c_uint(0)
        self._call("nvmlDeviceGetMigMode", handle, c.byref(current), c.byref(pending))
        return current.value

    def max_mig_devices(self, handle: object) -> int:
        return self._uint("nvmlDeviceGetMaxMigDeviceCount", handle)

    def mig_handle(self, handle: object, index: int) -> object:
        c = self._c
        m = c.c_void_p()
        self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, c.c_uint(index), c.byref(m))
        return m

    def gpu_instance_id(self, mig: object) -> int:
        return self._uint("nvmlDeviceGetGpuInstanceId", mig)

    def compute_instance_id(self, mig: object) -> int:
        return self._uint("nvmlDeviceGetComputeInstanceId", mig)

    # ---- locality ---------------------------------------------------------------------------------

    def numa_node_id(self, handle: object) -> int:
        """The NUMA node of the GPU's own memory (Grace Hopper and later); NvmlLiteError elsewhere."""
        c = self._c
        node = c.c_uint(0)
        self._call("nvmlDeviceGetNumaNodeId", handle, c.byref(node))
        return node.value

    # ---- processes --------------------------------------------------------------------------------

    def compute_processes(self, handle: object) -> list[tuple[int, int | None]]:
        """The processes with a CUDA context on the GPU (or MIG instance) of ``handle``, in NVML's order: (pid,
        GPU memory used in bytes, None where NVML cannot tell: NVML_VALUE_NOT_AVAILABLE).

        ``nvmlDeviceGetComputeRunningProcesses_v3`` asked as NVML documents it: the count first (``*infoCount``
        0, no array; SUCCESS means none), then the list into an array a little larger than the count; the list
        may grow in between, and a fetch answered INSUFFICIENT_SIZE is asked again with the new count, at most
        PROCESS_LIST_TRIES times, then NvmlLiteError (code NVML_ERROR_INSUFFICIENT_SIZE).  A driver without the
        call is NvmlLiteError FUNCTION_NOT_FOUND, as pynvml reports it."""
        c = self._c
        call = "nvmlDeviceGetComputeRunningProcesses_v3"
        fn = self._fn(call)
        count = c.c_uint(0)
        rc = fn(handle, c.byref(count), None)
        if rc == NVML_SUCCESS:
            return []
        info = _process_info_type(c)
        for _ in range(PROCESS_LIST_TRIES):
            if rc != NVML_ERROR_INSUFFICIENT_SIZE:
                break
            size = count.value + count.value // 4 + 4  # room for a few more started meanwhile
            infos = (info * size)()
            count = c.c_uint(size)
            rc = fn(handle, c.byref(count), infos)
            if rc == NVML_SUCCESS:
                return [(p.pid, None if p.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE else p.usedGpuMemory)
                        for p in infos[:count.value]]
        raise NvmlLiteError(call, rc)
