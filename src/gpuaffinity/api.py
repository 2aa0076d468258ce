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

Owns: the answer for a snapshot (the cache), and the resolution of a physical selector.
"""

from __future__ import annotations

import warnings

from gpuaffinity import _state
from gpuaffinity.core.chain import resolve_one
from gpuaffinity.core.errors import (
    ConflictError,
    DeviceNotVisibleError,
    DisagreementWarning,
    GpuAffinityError,
    GpuAffinityWarning,
    InvalidVisibleDevicesError,
    NoDeviceWarning,
    PluginWarning,
    SimulationWarning,
    UnresolvedError,
    VisibleDevicesWarning,
    shown,
)
from gpuaffinity.core.model import Inventory, PhysicalDevice
from gpuaffinity.core.plugins import PluginInfo, build_manager, collect_strategies
from gpuaffinity.core.record import field, record
from gpuaffinity.core.settings import (
    DISABLE_VAR,
    KEY_BASE,
    Settings,
    make_key,
    normalize_disable,
    stray_sim_variables,
    watch,
)
from gpuaffinity.core.strategy import ResolveContext, Strategy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from gpuaffinity.host import Host

_cache: dict[tuple, tuple[PhysicalDevice, ...]] = {}
_why_none: dict[tuple, str] = {}  # for a key whose answer is no device: Resolution.no_device, said again on errors
#: the GPU list each cached answer was resolved over (the next stage, planning, takes it: it never lists again)
_inventories: dict[tuple, Inventory] = {}
_WARNED: set[str] = set()  # plugins already warned about


@record
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
    #: "" when the process sees a CUDA device; else one line: why not, what it can open, what to write
    no_device: str = ""


def clear_cache() -> None:
    """Forget every cached result (the next call resolves afresh)."""
    with _state.lock:
        _cache.clear()
        _why_none.clear()
        _inventories.clear()




#: The longest ``timeout`` run_resolution takes: a day, far past any cuInit, and within what poll() and
#: subprocess can wait for (about 2.1 million seconds and less).
MAX_TIMEOUT = 86400


def run_resolution(*, policy: str | None = None, disable: Iterable[str] | str | None = None,
                   allow_subprocess: bool = True, timeout: float = 120.0, strict_errors: bool = True,
                   settings: Settings | None = None) -> Resolution:
    """Resolve every visible device without the cache, keeping every strategy's verdict.

    ``settings``: the snapshot to resolve under (default: read now from the arguments and the environment).  The
    machine is read through the command's Host (gpuaffinity.host.scope) where one is open, else through one of
    this call's own, closed when it returns."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT} (a day), "
                         f"not {timeout!r}")
    st = settings or Settings.from_key(make_key(policy, normalize_disable(disable), allow_subprocess))
    from gpuaffinity import host as host_

    host = host_.current(st.inventory_env)  # the command's, where one is open: its NVML session serves every stage
    if host is None:
        with host_.Host(st.inventory_env) as own:  # this call's own: its NVML session ends with the call
            return _run(st, own, timeout, strict_errors)
    return _run(st, host, timeout, strict_errors)


def _run(st: Settings, host: Host, timeout: float, strict_errors: bool) -> Resolution:
    from gpuaffinity.core.cvd import no_device_text, read_cvd, reading_notes
    from gpuaffinity.resolvers import builtin_plugins
    from gpuaffinity.resolvers._common import integers_index_unknown_order

    chosen = st.policy
    disabled = st.disabled
    builtins = builtin_plugins()
    pm, plugins = build_manager(builtins, disabled)
    strategies = collect_strategies(pm, disabled, plugins, builtins)
    inventory = host.inventory()
    grammar = read_cvd(st.cvd, inventory.gpus, None, st.device_order, inventory.hidden, inventory.host_complete,
                       inventory.doubt)
    ctx = ResolveContext(inventory, st.cvd, st.device_order, len(grammar.devices),
                         {"allow_subprocess": st.subprocess_allowed, "timeout": timeout}, grammar=grammar)
    ctx.settings = st
    ctx.host = host
    ctx.declared = frozenset(v for s in strategies for v in getattr(s, "env_vars", ()) or ())
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
    by_driver = must_count and ctx.visible != len(grammar.devices)  # the driver's count replaced the reading
    if not by_driver:
        out.warnings.extend((VisibleDevicesWarning, f"gpuaffinity: CUDA_VISIBLE_DEVICES={shown(ctx.cvd)}: {note}")
                            for note in reading_notes(ctx.cvd, grammar, stop=ctx.visible > 0,
                                                      count=len(inventory.gpus)))
    if ctx.visible == 0:
        pci_order = st.device_order == "PCI_BUS_ID" or inventory.uniform  # else FASTEST_FIRST: only CUDA knows it
        out.no_device = no_device_text(ctx.cvd, grammar, inventory.gpus, inventory.host_uuids, by_driver, pci_order)
        out.warnings.append((NoDeviceWarning, f"gpuaffinity: {out.no_device}"))
    for i in range(ctx.visible):
        try:
            dev, warns = resolve_one(strategies, ctx, i, chosen)
        except Exception as e:
            if strict_errors:
                raise
            out.error = out.error or e
            if isinstance(e, (ConflictError, UnresolvedError)) and e.device is not None:  # doctor shows every verdict
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
    ``NoDriverError`` without NVML, ``ConflictError`` on disagreement under ``strict``, ``UnresolvedError``
    under ``strict`` where no strategy could answer.
    """
    return list(_resolved(policy, normalize_disable(disable), allow_subprocess, stacklevel=2))


def _resolved(policy: str | None, disable: tuple[str, ...] | None, allow_subprocess: bool,
              stacklevel: int, key: tuple | None = None) -> tuple[PhysicalDevice, ...]:
    """The devices for these options (``disable`` normalised) under the environment now, cached.

    ``stacklevel``: how many frames up from the caller of this function the user's call is (warnings
    point there)."""
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
        asked = key
        filed: tuple | None = key
        if watch(v for s in res.strategies for v in getattr(s, "env_vars", ())):
            # a strategy's variables join the key from now on; the key is read again, so where the variables
            # resolved from changed meanwhile (another thread), the answer is filed under no key of another value
            key = make_key(policy, disable, allow_subprocess)
            filed = key if key[:KEY_BASE] == asked[:KEY_BASE] else None
        for category, message in res.warnings:
            warnings.warn(message, category, stacklevel=stacklevel + 1)
        devices = tuple(res.devices)
        if res.no_device:  # under the key asked for and the key cached (a strategy's variables may join it)
            _why_none[asked] = res.no_device
            if filed is not None:
                _why_none[filed] = res.no_device
        if filed is not None:
            _cache[filed] = devices
            _inventories[filed] = res.inventory
        return devices


def inventory_for(policy: str | None, disable: Iterable[str] | str | None,
                  allow_subprocess: bool) -> Inventory | None:
    """The GPU list the cached answer for these options was resolved over, under the environment now (None where
    there is none: nothing resolved yet, or the cache was cleared).  The same key is the same variables, so the same
    list as a new read would give, as the cached answer is the same answer."""
    return _inventories.get(make_key(policy, normalize_disable(disable), allow_subprocess))


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
        from gpuaffinity.select import parse_selector

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
    if not devices and _why_none.get(key):
        raise DeviceNotVisibleError(f"CUDA device {logical_id} is not visible: {_why_none[key]}")
    raise DeviceNotVisibleError(
        f"CUDA device {logical_id} is not visible: this process sees {len(devices)} device(s) "
        f"(0-{len(devices) - 1}) with CUDA_VISIBLE_DEVICES {cvd_text}" if devices else
        f"CUDA device {logical_id} is not visible: this process sees no CUDA device (CUDA_VISIBLE_DEVICES "
        f"{cvd_text})")


def _by_selector(selector: str, policy: str | None, disable: tuple[str, ...] | None,
                 allow_subprocess: bool) -> PhysicalDevice:
    """The GPU a physical selector names (gpuaffinity.select.pick), with its logical id in this process: the
    resolution first (cached), then the selector matched in the very GPU list it was made over (one listing, one
    NVML session: the command's Host).  Where the resolution fails (a variable the driver refuses), the selector
    still names its GPU, with logical id -1."""
    from gpuaffinity.host import scope
    from gpuaffinity.select import pick

    with scope() as host:
        key = make_key(policy, disable, allow_subprocess)
        try:
            # stacklevel: _by_selector, _resolve, resolve, then the user's call
            devices: tuple[PhysicalDevice, ...] | None = _resolved(policy, disable, allow_subprocess, stacklevel=4,
                                                                   key=key)
        except GpuAffinityError:
            devices = None
        inventory = _inventories.get(key) or host.inventory()
        return pick(selector, inventory, devices, host)


def no_device_reason(*, policy: str | None = None, disable: Iterable[str] | str | None = None,
                     allow_subprocess: bool = True) -> str:
    """"" when this process sees a CUDA device under these options; else one line saying why it sees none, which
    GPUs it can open and how they are numbered here (from the cached resolution: nothing is asked again)."""
    key = make_key(policy, normalize_disable(disable), allow_subprocess)
    devices = _resolved(policy, normalize_disable(disable), allow_subprocess, stacklevel=2, key=key)
    return "" if devices else _why_none.get(key, "this process sees no CUDA device")
