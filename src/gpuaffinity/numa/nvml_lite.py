"""The five NVML calls the locality stage makes, through ctypes: no pynvml to import.

``import pynvml`` costs a fresh process tens of milliseconds (it loads ``ctypes.util``, which loads
``subprocess``, ``tempfile``, ``shutil``, compression modules…; benchmarks/bench_resolve.py shows it), more
than ``nvmlInit`` itself.  The calls below are the very C functions pynvml calls for the same questions, in
the same library (``libnvidia-ml.so.1``), with the same arguments: ``nvmlInit_v2``,
``nvmlDeviceGetHandleByPciBusId_v2``, ``nvmlDeviceGetMemoryAffinity`` and
``nvmlDeviceGetCpuAffinityWithinScope`` (node scope, 16 words of ``unsigned long``, as pynvml's callers here
asked), ``nvmlDeviceGetNumaNodeId`` and ``nvmlShutdown``.  tests/test_numa_nvml_lite.py holds every answer
against pynvml's on the simulated machines, and tools/validate_real.py on real GPUs.

NVML counts its initialisations: this module's ``nvmlInit_v2``/``nvmlShutdown`` pair leaves pynvml's own
session (if the caller has one) as it was.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

NVML_SUCCESS = 0
NVML_AFFINITY_SCOPE_NODE = 0
WORDS = 16  # 16 x 64 bits: 1024 CPUs or nodes, as the callers of pynvml asked before


class NvmlLiteError(Exception):
    """An NVML call failed: ``code`` is NVML's return code (-1: the library could not be loaded)."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} returned NVML error {code}")
        self.call, self.code = call, code


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

    def _check(self, call: str, rc: int) -> None:
        if rc != NVML_SUCCESS:
            raise NvmlLiteError(call, rc)

    def __enter__(self) -> Session:
        self._check("nvmlInit_v2", self._lib.nvmlInit_v2())
        self._up = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._up:
            self._up = False
            self._lib.nvmlShutdown()  # a failed shutdown only leaves NVML initialised: the answers are read

    def handle(self, bus_id: str) -> object:
        c = self._c
        h = c.c_void_p()
        self._check("nvmlDeviceGetHandleByPciBusId_v2",
                    self._lib.nvmlDeviceGetHandleByPciBusId_v2(c.c_char_p(bus_id.encode()), c.byref(h)))
        return h

    def _mask(self, fn: str, handle: object) -> frozenset[int]:
        c = self._c
        words = (c.c_ulong * WORDS)()
        self._check(fn, getattr(self._lib, fn)(handle, c.c_uint(WORDS), words, c.c_uint(NVML_AFFINITY_SCOPE_NODE)))
        return _bits(words)

    def memory_affinity(self, handle: object) -> frozenset[int]:
        """The nodes of the GPU's ideal memory affinity, node scope."""
        return self._mask("nvmlDeviceGetMemoryAffinity", handle)

    def cpu_affinity(self, handle: object) -> frozenset[int]:
        """The GPU's ideal CPU affinity, node scope."""
        return self._mask("nvmlDeviceGetCpuAffinityWithinScope", handle)

    def numa_node_id(self, handle: object) -> int:
        """The NUMA node of the GPU's own memory (Grace Hopper and later); NvmlLiteError elsewhere."""
        c = self._c
        fn = getattr(self._lib, "nvmlDeviceGetNumaNodeId", None)
        if fn is None:
            raise NvmlLiteError("nvmlDeviceGetNumaNodeId", 13)  # NVML_ERROR_FUNCTION_NOT_FOUND, as pynvml says
        node = c.c_uint(0)
        self._check("nvmlDeviceGetNumaNodeId", fn(handle, c.byref(node)))
        return node.value
