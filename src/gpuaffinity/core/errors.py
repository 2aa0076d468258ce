"""The project's exceptions and warnings; each error carries its CLI exit status."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
#: `gpuaffinity resolve --policy strict` when strategies disagree
EXIT_CONFLICT = 3


class GpuAffinityError(Exception):
    """Base of every gpuaffinity error; the message is one line a user can act on."""

    exit_status = EXIT_ERROR


class DeviceNotVisibleError(GpuAffinityError, IndexError):
    """The logical id is not one this process sees."""


class InvalidVisibleDevicesError(GpuAffinityError):
    """CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER makes the CUDA driver itself fail."""


class NoDriverError(GpuAffinityError):
    """No usable NVIDIA driver (NVML) here."""


class InventoryError(NoDriverError):
    """NVML failed while listing this process's GPUs: nothing can be mapped into a list that is not known."""


class ConflictError(GpuAffinityError):
    """Under the strict policy, strategies named different GPUs."""

    exit_status = EXIT_CONFLICT


class PluginError(GpuAffinityError):
    """A plugin could not be loaded, or misbehaved."""


class GpuAffinityWarning(UserWarning):
    """Every warning gpuaffinity gives: filter on this to silence or escalate them all."""


class FallbackWarning(GpuAffinityWarning):
    """The answer came from a fallback: a guess, or a lower-priority strategy."""


class DisagreementWarning(GpuAffinityWarning):
    """Strategies named different GPUs for one logical device."""


class BindWarning(GpuAffinityWarning):
    """Binding failed under the ``warn`` failure policy: the process runs on, not (fully) bound."""
