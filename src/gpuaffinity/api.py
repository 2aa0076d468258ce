"""resolve() and resolve_all(): the public entry points, with their cache.

Results are cached per call options and per one snapshot of every variable a
resolution reads (``core.settings``: CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER,
the policy, disabled names, the subprocess switch, the inventory's roots).  A
repeated call with an unchanged environment is a dictionary look-up; a
changed variable makes the next call resolve afresh.  The resolution reads its
inputs from the same snapshot that keys it.  Warnings are given when a result
is computed, not again on cache hits.  Thread-safe (one computation at a time
per process) and fork-safe (``_state``: fork waits for a resolution in
progress, and the child starts with fresh locks).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuaffinity import _state
from gpuaffinity.core.chain import resolve_one
from gpuaffinity.core.errors import (
    ConflictError,
    DeviceNotVisibleError,
    DisagreementWarning,
    GpuAffinityError,
    GpuAffinityWarning,
    InvalidVisibleDevicesError,
    PluginWarning,
    SimulationWarning,
    shown,
)
from gpuaffinity.core.hookspec import ResolveContext, Strategy
from gpuaffinity.core.model import Inventory, PhysicalDevice
from gpuaffinity.core.plugins import PluginInfo, build_manager, collect_strategies
from gpuaffinity.core.settings import (
    DISABLE_VAR,
    Settings,
    make_key,
    normalize_disable,
    stray_sim_variables,
    watch,
)

if TYPE_CHECKING:
    from gpuaffinity.numa.bind import BindRecord

_cache: dict[tuple, tuple[PhysicalDevice, ...]] = {}
_WARNED: set[str] = set()  # plugins already warned about


@dataclass
class Resolution:
    """Everything one resolution saw: for ``gpuaffinity doctor`` and tests."""

    devices: list[PhysicalDevice]
    inventory: Inventory
    strategies: list[Strategy]
    context: ResolveContext
    policy: str
    settings: Settings | None = None
    warnings: list[tuple[type[Warning], str]] = field(default_factory=list)
    error: Exception | None = None
    plugins: list[PluginInfo] = field(default_factory=list)


def clear_cache() -> None:
    """Forget every cached result (the next call resolves afresh)."""
    with _state.lock:
        _cache.clear()




def run_resolution(*, policy: str | None = None, disable: Iterable[str] | str | None = None,
                   allow_subprocess: bool = True, timeout: float = 120.0, strict_errors: bool = True,
                   settings: Settings | None = None) -> Resolution:
    """Resolve every visible device without the cache, keeping every strategy's verdict.

    ``settings``: the snapshot to resolve under (default: read now from the arguments and the environment)."""
    from gpuaffinity.core.cvd import read_cvd
    from gpuaffinity.inventory import read_inventory
    from gpuaffinity.resolvers import builtin_plugins
    from gpuaffinity.resolvers._common import integers_index_unknown_order

    st = settings or Settings.from_key(make_key(policy, normalize_disable(disable), allow_subprocess))
    chosen = st.policy
    disabled = st.disabled
    pm, plugins = build_manager(builtin_plugins(), disabled)
    strategies = collect_strategies(pm, disabled, plugins)
    inventory = read_inventory(st.inventory_env)
    grammar = read_cvd(st.cvd, inventory.gpus, None, st.device_order, inventory.hidden, inventory.host_complete)
    ctx = ResolveContext(inventory, st.cvd, st.device_order, len(grammar.devices),
                         {"allow_subprocess": st.subprocess_allowed, "timeout": timeout}, grammar=grammar)
    ctx.settings = st
    out = Resolution([], inventory, strategies, ctx, chosen, st, plugins=plugins)
    out.warnings.extend((SimulationWarning, w) for w in stray_sim_variables())
    for info in plugins:
        if info.problem and info.name not in _WARNED:  # once a process: the plugin stays broken until fixed
            _WARNED.add(info.name)
            out.warnings.append((PluginWarning, f"gpuaffinity: {info} {info.problem}; it contributes nothing"))
    if disabled:
        unknown = _unknown_names(disabled, plugins)
        if unknown:
            out.warnings.append((GpuAffinityWarning, f"gpuaffinity: nothing is named {', '.join(map(repr, unknown))} "
                                 f"to disable (from {'the disable argument' if st.disable_arg else ''}"
                                 f"{' and ' if st.disable_arg and st.disable_env else ''}"
                                 f"{DISABLE_VAR if st.disable_env else ''}); strategies here: "
                                 f"{', '.join(s.name for s in strategies) or 'none'}"))
    error = grammar.error
    # MIG GPUs under an unknown CUDA order (how many devices show, and whether the driver accepts the list at
    # all, depend on that order: one MIG device a process), or a reading this process cannot know (a UUID
    # prefix decided against GPUs it cannot list): the count must come from the driver.  An unsure reading
    # (see read_cvd) is checked against the driver's count, unless the policy is 'first'.
    must_count = bool(any(g.migs for g in inventory.gpus) and integers_index_unknown_order(ctx) or grammar.unknown)
    if must_count or (chosen != "first" and grammar.unsure):
        for s in strategies:
            try:
                counted = _count(s, ctx)
            except InvalidVisibleDevicesError as e:
                out.error = e
                if strict_errors:
                    raise
                return out
            if counted is None:
                continue
            if not must_count and (counted != len(grammar.devices) or grammar.error not in (0, 100)):
                head = (f"gpuaffinity: the CUDA driver ({s.name}) shows {counted} device(s) for CUDA_VISIBLE_DEVICES="
                        f"{shown(ctx.cvd)}, where the grammar on this process's GPU list reads "
                        f"{len(grammar.devices)} (its reading {grammar.unsure})")
                if chosen == "strict":
                    out.error = ConflictError(f"{head}; the strict policy refuses to choose")
                    if strict_errors:
                        raise out.error
                    return out
                out.warnings.append((DisagreementWarning, f"{head}; using the driver's count"))
                must_count = True
            if must_count:
                error, ctx.visible = 0, counted
            break
    if error and error != 100:
        out.error = InvalidVisibleDevicesError(
            f"the CUDA driver refuses CUDA_VISIBLE_DEVICES={shown(ctx.cvd)} with CUDA_DEVICE_ORDER="
            f"{shown(ctx.device_order)}: {grammar.stopped} (cuInit fails with CUDA_ERROR_INVALID_DEVICE); "
            "fix the variable")
        if strict_errors:
            raise out.error
        return out
    for i in range(ctx.visible):
        try:
            dev, warns = resolve_one(strategies, ctx, i, chosen)
        except Exception as e:
            if strict_errors:
                raise
            out.error = out.error or e
            if isinstance(e, ConflictError) and e.device is not None:  # doctor still shows every verdict
                out.devices.append(e.device)
                continue
            break
        out.devices.append(dev)
        out.warnings.extend(warns)
    return out


def _unknown_names(disabled: frozenset[str], plugins: list[PluginInfo]) -> list[str]:
    """Disabled names that are no strategy or plugin here (a typo disables nothing: say so)."""
    from gpuaffinity.core.plugins import find_entry_points
    from gpuaffinity.resolvers import builtin_plugins

    known = {name for name, _ in builtin_plugins()} | {p.name for p in plugins}
    known |= {n for p in plugins for n in p.strategies}
    known |= {p.name for p in find_entry_points("gpuaffinity") or ()}  # disabled plugins are never loaded
    return sorted(disabled - known)


def _count(s: Strategy, ctx: ResolveContext) -> int | None:
    fn = getattr(s, "count", None)
    try:
        return fn(ctx) if fn else None
    except InvalidVisibleDevicesError:
        raise
    except Exception:
        return None


def resolve_all(*, policy: str | None = None, disable: Iterable[str] | str | None = None,
                allow_subprocess: bool = True) -> list[PhysicalDevice]:
    """Every logical CUDA device this process sees, in CUDA's order, each with its physical GPU.

    ``policy``: ``"first"``, ``"verify"`` (default, or GPUAFFINITY_POLICY) or ``"strict"``.
    ``disable``: names of plugins or strategies to leave out, any iterable of names or one
    comma-separated string (also GPUAFFINITY_DISABLE).
    ``allow_subprocess``: whether the ``pci`` strategy may start a child process to ask
    the CUDA driver when CUDA is not initialised here.
    Raises ``InvalidVisibleDevicesError`` when the driver itself would refuse the variables,
    ``NoDriverError`` without NVML, ``ConflictError`` on disagreement under ``strict``.
    """
    return list(_resolved(policy, normalize_disable(disable), allow_subprocess, stacklevel=2))


def _resolved(policy: str | None, disable: tuple[str, ...] | None, allow_subprocess: bool,
              stacklevel: int, key: tuple | None = None) -> tuple[PhysicalDevice, ...]:
    """The devices for these options (``disable`` normalised) under the environment now, cached.

    ``stacklevel``: how many frames up from the caller of this function the user's call is (warnings
    point there)."""
    """The devices for these options (``disable`` normalised) under the environment now, cached."""
    key = key or make_key(policy, disable, allow_subprocess)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    with _state.lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        # the snapshot that keys the result is the one it is computed from
        res = run_resolution(settings=Settings.from_key(key))
        if watch(v for s in res.strategies for v in getattr(s, "env_vars", ())):
            key = make_key(policy, disable, allow_subprocess)  # a strategy's variables join the key from now on
        for category, message in res.warnings:
            warnings.warn(message, category, stacklevel=stacklevel + 1)
        devices = tuple(res.devices)
        _cache[key] = devices
        return devices


def resolve(logical_id: int | str, *, policy: str | None = None, disable: Iterable[str] | str | None = None,
            allow_subprocess: bool = True) -> PhysicalDevice:
    """The physical GPU behind CUDA device ``logical_id`` of this process (see ``resolve_all``).

    ``logical_id`` may also be a *physical selector*, for workers told their GPU some other
    way than CUDA_VISIBLE_DEVICES (Ray with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, a
    launcher's record): a GPU UUID or unique prefix (``"GPU-8932f937"``), a MIG UUID, or a
    PCI bus id (``"0000:3b:00.0"``).  The answer's ``logical_id`` is then the id under which
    this process sees that GPU, or -1 when it does not see it.

    Raises ``DeviceNotVisibleError`` (also an IndexError) for an id this process does not see,
    ``ValueError`` for a string that is no selector.
    """
    if type(logical_id) is int and disable is None:  # the warm path: one key, one look-up
        devices = _cache.get(make_key(policy, None, allow_subprocess))
        if devices is not None and 0 <= logical_id < len(devices):
            return devices[logical_id]
    return _resolve(logical_id, policy, disable, allow_subprocess)


def _resolve(logical_id: int | str, policy: str | None, disable: Iterable[str] | str | None,
             allow_subprocess: bool) -> PhysicalDevice:
    if disable is not None:
        disable = normalize_disable(disable)  # an iterator is read once, here
    if isinstance(logical_id, str):
        selector = parse_selector(logical_id)
        if isinstance(selector, str):
            return _by_selector(selector, policy, disable, allow_subprocess)
        logical_id = selector
    if isinstance(logical_id, bool) or not isinstance(logical_id, int):
        raise TypeError(f"logical_id must be an int or a selector string, not {type(logical_id).__name__}")
    key = make_key(policy, disable, allow_subprocess)
    devices = _cache.get(key)
    if devices is None:
        devices = _resolved(policy, disable, allow_subprocess, stacklevel=3, key=key)
    if 0 <= logical_id < len(devices):
        return devices[logical_id]
    cvd = Settings.from_key(key).cvd
    cvd_text = "unset" if cvd is None else shown(cvd)
    raise DeviceNotVisibleError(
        f"CUDA device {logical_id} is not visible: this process sees {len(devices)} device(s) "
        f"(0-{len(devices) - 1}) with CUDA_VISIBLE_DEVICES {cvd_text}" if devices else
        f"CUDA device {logical_id} is not visible: this process sees no CUDA device (CUDA_VISIBLE_DEVICES "
        f"{cvd_text})")


_BUS_RE = None


def parse_selector(text: str) -> int | str:
    """A logical id ("3") as an int, or a physical selector as given (a UUID or MIG UUID, or a PCI bus id in
    the sysfs form, with the domain and function NVML takes as 0 when left out).  ASCII only."""
    global _BUS_RE
    text = text.strip()
    given = shown(text, 60)
    if not text.isascii() or len(text) > 100:
        raise ValueError(f"{given} is not a device: ids and selectors are short ASCII text: a logical CUDA id "
                         "(0), a GPU UUID or unique prefix (GPU-8932f937), a MIG UUID, or a PCI bus id (0000:3b:00.0)")
    if text.isdigit():
        if len(text) > 9:
            raise ValueError(f"{given} is not a device: no process sees that many CUDA devices")
        return int(text)
    if text.startswith(("GPU-", "MIG-")) and len(text) > 4:
        return text
    if _BUS_RE is None:
        import re
        _BUS_RE = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?")
    m = _BUS_RE.fullmatch(text)
    if m:
        return f"{int(m[1] or '0', 16):04x}:{int(m[2], 16):02x}:{int(m[3], 16):02x}.{m[4] or '0'}"
    raise ValueError(f"{given} is not a device: give a logical CUDA id (0), a GPU UUID or unique prefix "
                     "(GPU-8932f937), a MIG UUID, or a PCI bus id (0000:3b:00.0)")


def _by_selector(selector: str, policy: str | None, disable: Iterable[str] | None,
                 allow_subprocess: bool) -> PhysicalDevice:
    with _state.lock:  # lazy imports and NVML: see gpuaffinity._state
        return _by_selector_locked(selector, policy, disable, allow_subprocess)


def _by_selector_locked(selector: str, policy: str | None, disable: Iterable[str] | None,
                        allow_subprocess: bool) -> PhysicalDevice:
    from gpuaffinity.core.cvd import match_uuid
    from gpuaffinity.inventory import read_inventory

    inv = read_inventory()
    gpu, mig = None, None
    if selector.startswith("MIG-"):
        if inv.source != "nvml" and not any(g.migs for g in inv.gpus):
            from gpuaffinity.inventory import read_inventory_nvml
            inv = read_inventory_nvml()
        migs = [(g, m) for g in inv.gpus for m in g.migs]
        hit = match_uuid(selector[4:], [m.uuid[4:] for _g, m in migs])
        if hit is not None:
            gpu, mig = migs[hit][0], migs[hit][1].uuid
    elif selector.startswith("GPU-"):
        hit = match_uuid(selector[4:], [g.uuid[4:] for g in inv.gpus])
        gpu = None if hit is None else inv.gpus[hit]
    else:
        gpu = inv.by_bus(selector)  # parse_selector gave the full sysfs form
    if gpu is None:
        raise DeviceNotVisibleError(f"no GPU of this machine matches {selector!r} (or more than one does): "
                                    f"{len(inv.gpus)} GPU(s), see `gpuaffinity doctor`")
    logical = -1
    try:
        for d in _resolved(policy, disable, allow_subprocess, stacklevel=5):
            if d.uuid == gpu.uuid and (mig is None or d.mig_uuid == mig):
                logical = d.logical_id
                break
    except GpuAffinityError:
        pass
    return PhysicalDevice(logical, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, mig, gpu.name, "selector",
                          ("selector",), (), False)


ON_FAILURE_VAR = "GPUAFFINITY_ON_FAILURE"


def plan(logical_id: int | str, *, mode: str = "node", memory: str = "bind", policy: str | None = None,
         disable: Iterable[str] | None = None, allow_subprocess: bool = True) -> BindRecord:
    """What ``bind`` would apply for CUDA device ``logical_id``, without applying it."""
    with _state.lock:  # lazy imports and NVML: see gpuaffinity._state
        return _plan(logical_id, mode, memory, policy, disable, allow_subprocess)


def _plan(logical_id: int | str, mode: str, memory: str, policy: str | None, disable: Iterable[str] | None,
          allow_subprocess: bool) -> BindRecord:
    from gpuaffinity.inventory import read_inventory
    from gpuaffinity.numa.bind import MEMORY_POLICIES, BindError, BindRecord
    from gpuaffinity.numa.modes import MODES, place
    from gpuaffinity.numa.query import allowed_cpus, localities

    if mode not in MODES:
        raise BindError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if memory not in MEMORY_POLICIES:
        raise BindError(f"unknown memory policy {memory!r}: choose one of {', '.join(MEMORY_POLICIES)}")
    dev = resolve(logical_id, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    inventory = read_inventory()
    locs = localities([g.pci_bus_id for g in inventory.gpus] + [dev.pci_bus_id])
    by_node: dict[int, list[str]] = {}
    for bus, loc in locs.items():
        for n in loc.numa_nodes:
            by_node.setdefault(n, []).append(bus)
    allowed = allowed_cpus()
    placement = place(locs[dev.pci_bus_id], mode, allowed, by_node)
    rec = BindRecord(dev.logical_id, dev.pci_bus_id, mode, memory if placement.numa_nodes else "none",
                     placement.numa_nodes, placement.cpus, notes=list(placement.notes))
    if memory != "none" and not placement.numa_nodes:
        rec.notes.append("memory policy left alone: the GPU has no NUMA node")
    if not placement.cpus:
        rec.failures.append(f"no CPU to bind to: none of the CPUs near GPU {dev.pci_bus_id} is allowed to this "
                            "process (its affinity mask or cgroup cpuset excludes them)")
    return rec


def bind(logical_id: int | str, *, mode: str = "node", memory: str = "bind", on_failure: str | None = None,
         policy: str | None = None, disable: Iterable[str] | None = None,
         allow_subprocess: bool = True) -> BindRecord:
    """Bind this process to the NUMA node of CUDA device ``logical_id``; return what was applied.

    ``mode``: ``node`` (default), ``socket``, ``exclusive`` or ``llc`` (docs/numa.md).
    ``memory``: ``bind`` (default), ``preferred`` or ``none``.
    ``on_failure``: ``warn`` (default, or GPUAFFINITY_ON_FAILURE): a BindWarning, and the
    process runs on with whatever could be applied, listed in the record; ``error``: a
    BindError, with nothing left applied.
    """
    from gpuaffinity.core.errors import BindWarning
    from gpuaffinity.numa.bind import BindError, apply

    policy_ = on_failure or os.environ.get(ON_FAILURE_VAR) or "warn"
    if policy_ not in ("warn", "error"):
        raise BindError(f"unknown failure policy {policy_!r} (from {'on_failure' if on_failure else ON_FAILURE_VAR})"
                        ": choose warn or error")
    rec = plan(logical_id, mode=mode, memory=memory, policy=policy, disable=disable, allow_subprocess=allow_subprocess)
    if rec.failures:  # nothing can be applied at all
        if policy_ == "error":
            raise BindError("; ".join(rec.failures))
        warnings.warn(f"gpuaffinity: not bound: {'; '.join(rec.failures)}", BindWarning, stacklevel=2)
        return rec
    apply(rec, policy_)
    if rec.failures:
        warnings.warn(f"gpuaffinity: bound only in part ({rec.summary()}): {'; '.join(rec.failures)}",
                      BindWarning, stacklevel=2)
    return rec
