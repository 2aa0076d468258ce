"""The project's exceptions and warnings; each error carries its CLI exit status."""

from __future__ import annotations


def shown(value: str | None, limit: int = 200) -> str:
    """A variable's value for a message: its repr, cut to ``limit`` characters (a 200 KB value stays a line)."""
    if value is None:
        return "None"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


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
    """Under the strict policy, strategies named different GPUs.  ``device``: what the verify policy would have
    answered, with every strategy's verdict (``gpuaffinity doctor`` shows them)."""

    exit_status = EXIT_CONFLICT

    def __init__(self, message: str, device: object = None) -> None:
        super().__init__(message)
        self.device = device


class PluginError(GpuAffinityError):
    """A plugin could not be loaded, or misbehaved."""


class GpuAffinityWarning(UserWarning):
    """Every warning gpuaffinity gives: filter on this to silence or escalate them all."""


class FallbackWarning(GpuAffinityWarning):
    """The answer came from a fallback: a guess, or a lower-priority strategy."""


class DisagreementWarning(GpuAffinityWarning):
    """Strategies named different GPUs for one logical device."""


class PluginWarning(GpuAffinityWarning):
    """A plugin loaded but contributes nothing (no @hookimpl, a misspelt hook name): warned once a process."""


class SimulationWarning(GpuAffinityWarning):
    """A variable meant for the simulator is set outside ``gpuaffinity sim run``: answers come from it, not
    from this machine."""


class BindWarning(GpuAffinityWarning):
    """Binding failed under the ``warn`` failure policy: the process runs on, not (fully) bound."""
