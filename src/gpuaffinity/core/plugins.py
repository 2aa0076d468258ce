"""The plugin manager: built-in strategies plus entry points, minus disabled names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pluggy

from gpuaffinity.core.errors import PluginError
from gpuaffinity.core.hookspec import PROJECT, HookSpec, Strategy

#: Comma-separated names of plugins or strategies to leave out, like pytest's -p no:NAME.
DISABLE_VAR = "GPUAFFINITY_DISABLE"


def disabled_names(disable: Iterable[str] | None = None) -> frozenset[str]:
    names = set(disable or ())
    names.update(n.strip() for n in os.environ.get(DISABLE_VAR, "").split(",") if n.strip())
    return frozenset(names)


def build_manager(builtins: Sequence[tuple[str, object]], disabled: frozenset[str],
                  entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpec)
    for name in disabled:
        pm.set_blocked(name)
    for name, plugin in builtins:
        if name not in disabled:
            pm.register(plugin, name=name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(PROJECT)
        except Exception as e:  # a broken third-party package must say who it is
            raise PluginError(f"loading gpuaffinity plugins from entry points failed: {type(e).__name__}: {e}; "
                              f"disable the culprit with {DISABLE_VAR}=NAME") from e
    return pm


def collect_strategies(pm: pluggy.PluginManager, disabled: frozenset[str]) -> list[Strategy]:
    """Every enabled strategy, highest priority first (ties by name)."""
    seen: dict[str, str] = {}
    out: list[Strategy] = []
    for impl in pm.hook.gpuaffinity_strategies.get_hookimpls():
        owner = impl.plugin_name
        try:
            contributed = list(impl.function() or ())
        except Exception as e:
            raise PluginError(f"plugin {owner!r} failed in gpuaffinity_strategies: {type(e).__name__}: {e}; "
                              f"disable it with {DISABLE_VAR}={owner}") from e
        for s in contributed:
            for attr in ("name", "priority", "answer"):
                if not hasattr(s, attr):
                    raise PluginError(f"plugin {owner!r} returned a strategy without {attr!r}: {s!r}")
            if s.name in seen:
                raise PluginError(f"two strategies are named {s.name!r} (plugins {seen[s.name]!r} and {owner!r}); "
                                  f"disable one with {DISABLE_VAR}={owner}")
            seen[s.name] = owner
            if s.name not in disabled:
                out.append(s)
    out.sort(key=lambda s: (-s.priority, s.name))
    return out
