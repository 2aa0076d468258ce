"""The plugin manager: built-in strategies plus entry points, minus disabled names."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence

import pluggy

from gpuaffinity.core.errors import PluginError
from gpuaffinity.core.hookspec import PROJECT, HookSpec, Strategy
from gpuaffinity.core.settings import DISABLE_VAR  # comma-separated names to leave out, like pytest's -p no:NAME


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
        found = find_entry_points(PROJECT)
        if found is None:  # something on sys.path is not a plain folder (a zip): let importlib.metadata look
            try:
                pm.load_setuptools_entrypoints(PROJECT)
            except Exception as e:
                raise PluginError(f"loading gpuaffinity plugins from entry points failed: {type(e).__name__}: {e}; "
                                  f"disable the culprit with {DISABLE_VAR}=NAME") from e
            return pm
        for name, target in found:
            if pm.is_blocked(name) or pm.get_plugin(name) is not None:
                continue
            try:
                plugin = _load(target)
            except Exception as e:  # a broken third-party package must say who it is
                raise PluginError(f"gpuaffinity plugin {name!r} ({target}) failed to load: {type(e).__name__}: {e}; "
                                  f"disable it with {DISABLE_VAR}={name}") from e
            pm.register(plugin, name=name)
    return pm


def find_entry_points(group: str) -> list[tuple[str, str]] | None:
    """(name, "module:attr") of every entry point in ``group`` of the installed distributions.

    The same answer as importlib.metadata (the first distribution of a name on
    sys.path wins), read straight from the ``entry_points.txt`` files: a few
    milliseconds instead of tens, which matters to a fresh process that only
    wants to resolve one device.  None when a sys.path entry is not a folder.
    """
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return None
        except OSError:
            continue
        for n in sorted(names):
            if not n.endswith((".dist-info", ".egg-info")):
                continue
            dist = re.sub(r"[-_.]+", "_", n.rsplit(".", 1)[0].split("-", 1)[0]).lower()
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", n, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            out.extend(_section(text, group))
    return out


def _section(text: str, group: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.split("[", 1)[0].strip()))
    return out


def _load(target: str) -> object:
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


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
