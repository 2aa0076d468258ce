"""The plugin manager: built-in strategies plus entry points, minus disabled names, each strategy checked once.

The built-in plugins are called directly; pluggy is loaded, and a plugin
manager built, only when an installed distribution declares an entry point in
the group ``gpuaffinity`` (the entry points are read from the distributions'
metadata files, which costs a few milliseconds).

Every plugin is described by a ``PluginInfo`` (where it came from: its
distribution and version and its entry point, or "built in"), so that every
error and every report names it.  A strategy is validated when it is
collected (``validate``); a violation is a ``PluginError`` naming the plugin
and what is wrong.  pluggy's own validation errors are wrapped the same way.
A plugin that loads but contributes no hook implementation (no ``@hookimpl``,
a misspelt hook name) is no error: it is reported in ``gpuaffinity doctor``
and warned about once a process.

Owns: which plugins and strategies are loaded.
"""

from __future__ import annotations

import os
import sys

from gpuaffinity.core.errors import PluginError
from gpuaffinity.core.record import field, record
from gpuaffinity.core.settings import DISABLE_VAR  # comma-separated names to leave out, like pytest's -p no:NAME
from gpuaffinity.core.strategy import OPTIONAL, Strategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    import pluggy

PROJECT = "gpuaffinity"

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NAME_CHARS = _LETTERS + "0123456789_.-"


def valid_name(name: str) -> bool:
    """A strategy or plugin name: an ASCII letter, then up to 39 letters, digits, ``_``, ``.`` or ``-``."""
    return 1 <= len(name) <= 40 and name[0] in _LETTERS and all(c in _NAME_CHARS for c in name)


def _dist_key(name: str) -> str:
    """A distribution name as importlib.metadata compares them: runs of ``-``, ``_`` and ``.`` are one ``_``,
    lower case (PEP 503)."""
    out: list[str] = []
    for c in name:
        if c in "-_.":
            if not out or out[-1] != "_":
                out.append("_")
        else:
            out.append(c)
    return "".join(out).lower()
HOOK = "gpuaffinity_strategies"


@record
class PluginInfo:
    """One plugin: its name, where it came from, what it contributed, and what is wrong with it."""

    name: str
    target: str = ""  # "module:attr" of its entry point; "" for a built-in
    distribution: str = ""
    version: str = ""
    strategies: list[str] = field(default_factory=list)
    problem: str = ""  # loaded but contributes nothing: why (reported, warned once)

    def __str__(self) -> str:
        if not self.target:
            return f"built-in plugin {self.name!r}"
        dist = f"distribution {self.distribution} {self.version}".rstrip() if self.distribution else "distribution ?"
        return f"plugin {self.name!r} ({dist}, entry point {self.name} = {self.target})"


def build_manager(builtins: Sequence[tuple[str, object]], disabled: frozenset[str],
                  entry_points: bool = True) -> tuple[pluggy.PluginManager | None, list[PluginInfo]]:
    """The plugin manager for the installed third-party plugins (None when there are none), and every enabled
    plugin's PluginInfo, built-ins first."""
    infos = [PluginInfo(name) for name, _ in builtins if name not in disabled]
    found = find_entry_points(PROJECT) if entry_points else []
    if found is None:  # something on sys.path is not a plain folder (a zip): importlib.metadata looks
        found = _metadata_entry_points(PROJECT)
    taken = {name for name, _ in builtins} | set(disabled)
    third = []
    for info in found:  # the first distribution of a name wins, and no plugin takes a built-in's name
        if info.name not in taken:
            taken.add(info.name)
            third.append(info)
    if not third:
        return None, infos
    import pluggy

    from gpuaffinity.core.hookspec import HookSpec

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpec)
    for info in third:
        try:
            plugin = _load(info.target)
        except Exception as e:  # a broken third-party package must say who it is
            raise PluginError(f"{info} failed to load: {type(e).__name__}: {e}; disable it with "
                              f"{DISABLE_VAR}={info.name}") from e
        _register(pm, plugin, info, infos)
    return pm, infos


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo, infos: list[PluginInfo]) -> None:
    import pluggy

    try:
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"{info} is not a valid gpuaffinity plugin: {e}; disable it with "
                          f"{DISABLE_VAR}={info.name}") from e
    infos.append(info)
    if not pm.get_hookcallers(plugin):
        near = [n for n in dir(plugin) if n.startswith("gpuaffinity_") or n.lower() == HOOK]
        info.problem = (f"implements no hook: {near[0]} is not a hook (the hook is {HOOK})" if near and
                        near[0] != HOOK else f"implements no hook: mark {HOOK} with @gpuaffinity.hookimpl"
                        if near else f"implements no hook: define {HOOK} and mark it with @gpuaffinity.hookimpl")
    try:
        pm.check_pending()  # a @hookimpl of a hook that does not exist (a misspelt name)
    except pluggy.PluginValidationError as e:
        pm.unregister(plugin)
        info.problem = f"implements no hook: {e}"


def find_entry_points(group: str) -> list[PluginInfo] | None:
    """Every entry point in ``group`` of the installed distributions, with its distribution and version.

    The same answer as importlib.metadata (the first distribution of a name on
    sys.path wins), read straight from the ``entry_points.txt`` files: a few
    milliseconds instead of tens, which matters to a fresh process that only
    wants to resolve one device.  None when a sys.path entry is not a folder.
    """
    seen: set[str] = set()
    out: list[PluginInfo] = []
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
            stem = n.rsplit(".", 1)[0]
            dist_raw, _, version = stem.partition("-")
            dist = _dist_key(dist_raw)
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", n, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            shown = dist_raw.replace("_", "-")  # the folder holds the normalised name: show it as pip does
            out.extend(PluginInfo(name, target, shown, version) for name, target in _section(text, group))
    return out


def _metadata_entry_points(group: str) -> list[PluginInfo]:
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        out.append(PluginInfo(ep.name, ep.value, getattr(dist, "name", "") or "", getattr(dist, "version", "") or ""))
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
    import importlib

    obj: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def validate(s: object, owner: object) -> None:
    """PluginError naming ``owner`` unless ``s`` is a usable strategy (name, priority, methods, options)."""
    def bad(what: str) -> PluginError:
        return PluginError(f"{owner} returned a strategy {_short(s)} that {what}; fix it, or disable the plugin "
                           f"with {DISABLE_VAR}={getattr(owner, 'name', owner)}")

    name = getattr(s, "name", None)
    if not isinstance(name, str) or not valid_name(name):
        raise bad(f"has no usable name ({name!r}: want a short identifier such as 'launcher')")
    priority = getattr(s, "priority", None)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise bad(f"has priority {priority!r}, not an int")
    answer = getattr(s, "answer", None)
    if not callable(answer) or not _accepts(answer, 2):
        raise bad("has no answer(ctx, logical_id) method")
    for method in ("cost", "count", "answer_all"):
        fn = getattr(s, method, None)
        if fn is not None and (not callable(fn) or not _accepts(fn, 1)):
            raise bad(f"has {method} that is not a method taking (ctx)")
    describe = getattr(s, "describe", OPTIONAL["describe"])
    if not isinstance(describe, str):
        raise bad(f"has describe {describe!r}, not a string")
    env_vars = getattr(s, "env_vars", OPTIONAL["env_vars"])
    if isinstance(env_vars, str) or not all(isinstance(v, str) and v for v in env_vars):
        raise bad(f"has env_vars {env_vars!r}, not a tuple of variable names")
    budget = getattr(s, "budget", OPTIONAL["budget"])
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 3600:
        raise bad(f"has budget {budget!r}: want seconds, more than 0 and at most 3600")
    if getattr(s, "asks_driver", OPTIONAL["asks_driver"]):
        # the CUDA driver's answer is final over every other (core/chain.py): only the built-in pci strategy, which
        # asks the driver itself, may say it is the driver
        raise bad("claims asks_driver: only the built-in pci strategy speaks for the CUDA driver, whose answer is "
                  "final; leave asks_driver unset")


def _accepts(fn: object, n: int) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind(*[None] * n)  # type: ignore[arg-type]
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): take it on trust
        return True
    return True


def _short(s: object) -> str:
    text = repr(s)
    return text if len(text) <= 80 else text[:80] + "..."


def collect_strategies(pm: pluggy.PluginManager | None, disabled: frozenset[str],
                       infos: Sequence[PluginInfo] = (), builtins: Sequence[tuple[str, object]] = ()
                       ) -> list[Strategy]:
    """Every enabled strategy, highest priority first (ties by name): the built-ins' (tested here, not checked
    again), then the third-party plugins' (each validated); ``infos`` learn their strategies."""
    by_name = {i.name: i for i in infos}
    seen: dict[str, object] = {}
    out: list[Strategy] = []
    sources = [(by_name[name], getattr(module, HOOK), True) for name, module in builtins if name in by_name]
    if pm is not None:
        sources += [(by_name.get(impl.plugin_name) or PluginInfo(impl.plugin_name), impl.function, False)
                    for impl in pm.hook.gpuaffinity_strategies.get_hookimpls()]
    for owner, hook, trusted in sources:
        try:
            contributed = list(hook() or ())
        except Exception as e:
            raise PluginError(f"{owner} failed in {HOOK}: {type(e).__name__}: {e}; disable it with "
                              f"{DISABLE_VAR}={owner.name}") from e
        for s in contributed:
            if not trusted:
                validate(s, owner)
            if s.name in seen:
                raise PluginError(f"two strategies are named {s.name!r} ({seen[s.name]} and {owner}); disable one "
                                  f"with {DISABLE_VAR}={owner.name}")
            seen[s.name] = owner
            if isinstance(owner, PluginInfo):
                owner.strategies.append(s.name)
            if s.name not in disabled:
                out.append(s)
    out.sort(key=lambda s: (-s.priority, s.name))
    return out
