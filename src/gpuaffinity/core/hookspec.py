"""The hook specification: how a plugin contributes strategies (pluggy).

Third-party plugins are found through the entry-point group ``gpuaffinity``
and implement ``gpuaffinity_strategies``; see docs/plugins.md for a complete
example.  The built-in strategies (``pci``, ``torch``, ``cvd``) implement the
same function in their modules; gpuaffinity calls them directly, and loads
pluggy only when an installed distribution declares a ``gpuaffinity`` entry
point.  The strategy contract itself is in ``gpuaffinity.core.strategy``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from gpuaffinity.core.strategy import COSTS, OPTIONAL, Cost, ResolveContext, Strategy

PROJECT = "gpuaffinity"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["COSTS", "OPTIONAL", "PROJECT", "Cost", "HookSpec", "ResolveContext", "Strategy", "hookimpl", "hookspec"]


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
