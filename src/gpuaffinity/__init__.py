"""gpuaffinity: which physical GPU is CUDA device N, and which NUMA node and CPUs sit next to it.

Importing this package loads no torch, no CUDA, no NVML, not even ``typing``
or ``re``; the functions below load what they need when first called.
"""

from __future__ import annotations

from gpuaffinity import _state
from gpuaffinity.core.errors import (
    BindWarning,
    ConflictError,
    DeviceNotVisibleError,
    DisagreementWarning,
    FallbackWarning,
    GpuAffinityError,
    GpuAffinityWarning,
    GpuLostError,
    InvalidVisibleDevicesError,
    NoDeviceWarning,
    NoDriverError,
    PluginError,
    PluginWarning,
    SimulationWarning,
    UnresolvedError,
    VisibleDevicesWarning,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers take this spelling)
if TYPE_CHECKING:
    from typing import Any

    from gpuaffinity.api import clear_cache, resolve, resolve_all
    from gpuaffinity.core.hookspec import hookimpl
    from gpuaffinity.core.model import Abstain, Answer, GpuInfo, Inventory, MigInfo, PhysicalDevice
    from gpuaffinity.core.strategy import ResolveContext, StashKey, Strategy
    from gpuaffinity.live import check
    from gpuaffinity.numa.bind import BindError, BindRecord
    from gpuaffinity.placement import bind, plan, rebind

__version__ = "0.1.0"

__all__ = [
    "Abstain",
    "Answer",
    "BindError",
    "BindRecord",
    "BindWarning",
    "ConflictError",
    "DeviceNotVisibleError",
    "DisagreementWarning",
    "FallbackWarning",
    "GpuAffinityError",
    "GpuInfo",
    "GpuAffinityWarning",
    "GpuLostError",
    "InvalidVisibleDevicesError",
    "Inventory",
    "MigInfo",
    "NoDeviceWarning",
    "NoDriverError",
    "PhysicalDevice",
    "PluginError",
    "PluginWarning",
    "ResolveContext",
    "SimulationWarning",
    "StashKey",
    "Strategy",
    "UnresolvedError",
    "VisibleDevicesWarning",
    "__version__",
    "bind",
    "check",
    "clear_cache",
    "hookimpl",
    "plan",
    "rebind",
    "resolve",
    "resolve_all",
]

_MISSING = object()

_LAZY = {"resolve": "gpuaffinity.api", "resolve_all": "gpuaffinity.api", "clear_cache": "gpuaffinity.api",
         "bind": "gpuaffinity.placement", "plan": "gpuaffinity.placement", "rebind": "gpuaffinity.placement",
         "check": "gpuaffinity.live",
         "BindError": "gpuaffinity.numa.bind", "BindRecord": "gpuaffinity.numa.bind",
         # the plugin contract (docs/plugins.md): everything a strategy author needs, stable
         "hookimpl": "gpuaffinity.core.hookspec", "Strategy": "gpuaffinity.core.strategy",
         "ResolveContext": "gpuaffinity.core.strategy", "StashKey": "gpuaffinity.core.strategy",
         "Answer": "gpuaffinity.core.model",
         "Abstain": "gpuaffinity.core.model", "PhysicalDevice": "gpuaffinity.core.model",
         "GpuInfo": "gpuaffinity.core.model", "MigInfo": "gpuaffinity.core.model",
         "Inventory": "gpuaffinity.core.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        # Already imported: taken as it is, without the lock. A strategy's answer runs in a watchdog thread while
        # the resolving thread holds the lock and waits for it, so a plugin's first `gpuaffinity.Abstain` there
        # waited for the lock until its budget ran out (5 s), and its answer was thrown away.
        import sys

        value = getattr(sys.modules.get(_LAZY[name]), name, _MISSING)
        if value is _MISSING:
            with _state.lock:  # which fork() waits for, so no import of ours is half-done in a child (_state)
                import importlib

                value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpuaffinity' has no attribute {name!r}")
