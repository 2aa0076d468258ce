"""Every exception and warning of gpuaffinity, and the one table of the command line's exit statuses."""

from __future__ import annotations


def shown(value: str | None, limit: int = 200) -> str:
    """A variable's value for a message: its repr, cut to ``limit`` characters (a 200 KB value stays a line)."""
    if value is None:
        return "None"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: `gpuaffinity resolve --policy strict` when it refuses: strategies disagree, or none could answer
EXIT_CONFLICT = 3
#: `gpuaffinity ray-check` when some GPU worker is unbound, bound off its GPU's node, or unresolved
EXIT_FOUND = 4


class GpuAffinityError(Exception):
    """Base of every gpuaffinity error; the message is one line a user can act on."""

    @property
    def exit_status(self) -> int:
        """The command line's exit status for this error (EXIT_STATUS)."""
        return exit_status(self)


class DeviceNotVisibleError(GpuAffinityError, IndexError):
    """The logical id is not one this process sees."""


class InvalidVisibleDevicesError(GpuAffinityError):
    """CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER makes the CUDA driver itself fail."""


class NoDriverError(GpuAffinityError):
    """No usable NVIDIA driver (NVML) here."""


class InventoryError(NoDriverError):
    """NVML failed while listing this process's GPUs: nothing can be mapped into a list that is not known."""


class GpuLostError(GpuAffinityError):
    """NVML says a GPU has fallen off the bus (NVML_ERROR_GPU_IS_LOST): nothing can use it until it is reset or the
    host rebooted, so no process is placed next to it."""


class ConflictError(GpuAffinityError):
    """Under the strict policy, strategies named different GPUs.  ``device``: what the verify policy would have
    answered, with every strategy's verdict (``gpuaffinity doctor`` shows them)."""

    def __init__(self, message: str, device: object = None) -> None:
        super().__init__(message)
        self.device = device


class UnresolvedError(GpuAffinityError):
    """Under the strict policy, no strategy could answer: strict does not guess (the other policies fall back to
    the identity mapping with a FallbackWarning).  ``device``: that guess, with every strategy's verdict."""

    def __init__(self, message: str, device: object = None) -> None:
        super().__init__(message)
        self.device = device


class PluginError(GpuAffinityError):
    """A plugin could not be loaded, or misbehaved."""


class BindError(GpuAffinityError):
    """Binding failed (under the ``error`` failure policy); the message names the cause."""


class TopologyError(GpuAffinityError, ValueError):
    """A topology file that cannot be used; the message is one line naming the file and the field."""


class SimulatorError(GpuAffinityError, RuntimeError):
    """The simulator cannot run; the message is one line saying why and what to do."""


class UsageError(GpuAffinityError):
    """The command line is malformed (a bad option, an id that is no device)."""


#: The command line's exit status for each error: the first class of an error's MRO found here; any other
#: exception is 1.  (CMD's own status passes through `bind` and `sim run`; 126/127 there: cannot run CMD.)
EXIT_STATUS: dict[type, int] = {UsageError: EXIT_USAGE, ConflictError: EXIT_CONFLICT, UnresolvedError: EXIT_CONFLICT,
                                GpuAffinityError: EXIT_ERROR}


def exit_status(e: BaseException) -> int:
    for cls in type(e).__mro__:
        if cls in EXIT_STATUS:
            return EXIT_STATUS[cls]
    return EXIT_ERROR


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


class VisibleDevicesWarning(GpuAffinityWarning):
    """CUDA_VISIBLE_DEVICES does not say what it seems to: the driver reads an entry only in part (``0-3`` is GPU
    0) or stops reading at an entry that names nothing, silently.  The message says how it was read and what to
    write instead."""


class NoDeviceWarning(VisibleDevicesWarning):
    """This process sees no CUDA device at all.  The message says which GPUs it can open and how they are numbered
    here; ``gpuaffinity resolve`` and ``bind`` turn it into an error (exit 1)."""
