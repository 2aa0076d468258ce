"""The hook specification: how a plugin contributes strategies.

A strategy maps a logical CUDA device to the physical GPU behind it, or
abstains and says why.  Built-in strategies (``torch``, ``cvd``, ``pci``) are
plugins like any other.  Third-party plugins are found through the entry-point
group ``gpuaffinity``; see docs/plugins.md for a complete example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pluggy

from gpuaffinity.core.cvd import CvdResult
from gpuaffinity.core.model import Abstain, Answer, Inventory

PROJECT = "gpuaffinity"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Cost = Literal["cheap", "expensive"]


@dataclass
class ResolveContext:
    """What every strategy may read while one resolution runs.

    ``inventory`` lists the GPUs this process can open, in NVML order (as
    NVML numbers them in this process); ``cvd`` and ``device_order`` are the
    values of CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER (None when unset),
    read once for the whole resolution; ``visible`` is how many CUDA devices
    this process sees; ``grammar`` is CUDA_VISIBLE_DEVICES read with the
    driver's grammar over the inventory in PCI order (computed once);
    ``options`` holds the caller's keyword options (``allow_subprocess``,
    ``timeout`` …).  ``scratch`` is a per-resolution dict a strategy may use to
    do its work once for all logical devices (key it with the strategy's name).
    """

    inventory: Inventory
    cvd: str | None
    device_order: str | None
    visible: int
    options: Mapping[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    grammar: CvdResult = field(default_factory=lambda: CvdResult(()))

    @property
    def env(self) -> dict[str, str | None]:
        return {"CUDA_VISIBLE_DEVICES": self.cvd, "CUDA_DEVICE_ORDER": self.device_order}


class Strategy(Protocol):
    """What ``gpuaffinity_strategies`` returns: objects of this shape.

    ``name`` is unique and is what users disable and what reports show.
    ``priority``: higher runs first and wins ties (built-ins: pci 100, torch 60,
    cvd 50).  ``describe`` is one line for ``gpuaffinity doctor``.
    Optional ``asks_driver = True``: the answer is the CUDA driver's own (the
    built-in ``pci``); reports say whether the driver was asked.
    """

    name: str
    priority: int
    describe: str

    def cost(self, ctx: ResolveContext) -> Cost:
        """``"cheap"`` (runs to verify other answers) or ``"expensive"`` (runs
        only when no cheaper strategy answered, when cheaper ones disagree, or
        under the strict policy)."""
        ...

    # Optional: ``count(ctx) -> int | None``, how many CUDA devices the process
    # sees, asked only where the grammar cannot tell (MIG GPUs under an unknown
    # FASTEST_FIRST order); None when this strategy cannot say.

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        """The physical GPU behind ``logical_id`` (0 <= logical_id < ctx.visible),
        or an abstention with its reason.  Must not bind, fork, or initialise
        CUDA in the calling process; an exception counts as an abstention."""
        ...


class HookSpec:
    @hookspec
    def gpuaffinity_strategies(self) -> Iterable[Strategy]:  # type: ignore[empty-body]
        """Return the strategies this plugin contributes (any iterable, may be empty).

        Called once each time the plugin manager is built; the strategies'
        ``answer`` methods are then called for every resolution.  A plugin
        that has nothing to offer on this machine may return an empty list,
        but a strategy that abstains with a reason is more helpful: its reason
        shows in ``gpuaffinity doctor``.
        """
