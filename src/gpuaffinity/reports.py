"""The reports of ``gpuaffinity resolve`` and ``gpuaffinity doctor``, and how every command says a warning or an
error: one line each on stderr (gpuaffinity.text makes it safe to print).

Owns: what ``resolve`` and ``doctor`` print.
"""

from __future__ import annotations

import sys

from gpuaffinity.core.errors import EXIT_ERROR, EXIT_OK, UsageError, exit_status
from gpuaffinity.text import cut, lay_out, out, say

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from gpuaffinity.host import Host


def options(args: argparse.Namespace) -> dict:
    # `--disable a,b` as GPUAFFINITY_DISABLE=a,b is read: each name, as if repeated
    disable = [n for item in args.disable or () for n in item.split(",")]
    return {"policy": args.policy, "disable": disable or None, "allow_subprocess": not args.no_subprocess}


def resolve_report(args: argparse.Namespace) -> int:
    from gpuaffinity.select import parse_selector

    ids: list[int | str] = []
    for text in args.ids:
        try:
            ids.append(parse_selector(text))
        except ValueError as e:
            raise UsageError(f"gpuaffinity resolve: {e}") from None
    from gpuaffinity.host import scope

    with scope() as host:  # one Host for the command: one NVML session, each GPU's locality asked once
        # When the CUDA driver is asked in a forked child, its cuInit takes longer than NVML's start: ask every
        # GPU's locality in that time (it depends on the bus id and this process's allowed CPUs only, not on the
        # answer).
        host.eager = True
        return _resolve_in(args, ids, host)


def _resolve_in(args: argparse.Namespace, ids: list[int | str], host: Host) -> int:
    import json
    import warnings

    from gpuaffinity.api import resolve, resolve_all
    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.placement import refuse_lost

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            devices = [resolve(i, **options(args)) for i in ids] if ids else resolve_all(**options(args))
        except GpuAffinityError as e:
            print_warnings(caught, but=no_device_category(e))
            say(f"gpuaffinity: {strip_prefix(e)}")
            return exit_status(e)
    if not devices:  # never an empty table with exit 0: say why, what this process can open, what to write
        from gpuaffinity.api import no_device_reason
        from gpuaffinity.core.errors import NoDeviceWarning

        print_warnings(caught, but=NoDeviceWarning)
        say(f"gpuaffinity: {no_device_reason(**options(args))}")
        if args.json:
            print("[]")  # what a script parses stays JSON; the exit status says it is no answer
        return EXIT_ERROR
    print_warnings(caught)
    locs = host.localities(d.pci_bus_id for d in devices)
    refuse_lost(locs[d.pci_bus_id] for d in devices)
    rows = []
    for d in devices:
        loc = locs[d.pci_bus_id]
        rows.append({**d.to_dict(), "numa_nodes": list(loc.numa_nodes), "cpus": format_cpulist(loc.cpus)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = [("CUDA", "NVML", "PCI", "UUID", "NODES", "CPUS", "BY")]
    for r in rows:
        by = r["strategy"] + (" (fallback)" if r["fallback"] else "")
        if r["agreed"]:
            by += f" = {'='.join(x for x in r['agreed'] if x != r['strategy'])}"
        elif not r["fallback"]:
            by += " alone"
        if r["disagreed"]:
            by += f"; disagreed: {','.join(r['disagreed'])}"
        uuid = r["uuid"] + (f" / {r['mig_uuid']}" if r["mig_uuid"] else "")
        nodes = ",".join(map(str, r["numa_nodes"])) or "none"
        table.append((str(r["logical_id"]), str(r["nvml_index"]), r["pci_bus_id"], uuid, nodes, r["cpus"] or "-", by))
    _print_table(table)
    return EXIT_OK


def strip_prefix(e: Exception) -> str:
    text = str(e)
    return text[len("gpuaffinity: "):] if text.startswith("gpuaffinity: ") else text


def print_warnings(caught: list, but: type[Warning] | None = None) -> None:
    """Each warning caught, one line each; ``but``: a category left out (an error line about to be said holds it)."""
    for w in caught:
        if but is None or not issubclass(w.category, but):
            say(f"gpuaffinity: warning: {strip_prefix(w.message)}")


def no_device_category(e: Exception) -> type[Warning] | None:
    """NoDeviceWarning where ``e`` is the error for a device this process does not see: its line says it all."""
    from gpuaffinity.core.errors import DeviceNotVisibleError, NoDeviceWarning

    return NoDeviceWarning if isinstance(e, DeviceNotVisibleError) else None


def _print_table(rows: list[tuple[str, ...]], indent: str = "") -> None:
    for line in lay_out(rows, indent):
        print(line)


def consensus(d: object) -> str:
    """What stands behind one answer, in words: who answered, who agreed, whether the driver was asked."""
    from gpuaffinity.core.model import PhysicalDevice

    assert isinstance(d, PhysicalDevice)
    driver = "the CUDA driver was asked" if d.driver_asked else "the CUDA driver was not asked"
    if d.fallback:
        head = f"FALLBACK: by {d.strategy}"
    elif d.disagreed:
        head = f"DISAGREEMENT: {', '.join(d.disagreed)} named another GPU; using {d.strategy}"
    elif d.agreed:
        head = f"by {d.strategy}; confirmed: {', '.join(d.agreed)} agree"
    else:
        head = f"by {d.strategy} alone, not cross-checked"
    return f"{head}; {driver}"


def _plugins(res: object) -> None:
    """Which plugins are loaded (where from, what they contribute) and which names are disabled, by whom."""
    from gpuaffinity.core.settings import DISABLE_VAR

    plugins = getattr(res, "plugins", [])
    third = [p for p in plugins if p.target]
    out("\nPlugins" + ("" if third else ": only the built-in ones"))
    rows = [(p.name, f"{p.distribution} {p.version}".strip(), f"{p.name} = {p.target}",
             ", ".join(p.strategies) or "none", p.problem) for p in third]
    if rows:
        _print_table([("PLUGIN", "DISTRIBUTION", "ENTRY POINT", "STRATEGIES", "PROBLEM"), *rows], "  ")
    st = res.settings  # type: ignore[attr-defined]
    sources = [(n, "--disable") for n in st.disable_arg or ()]
    sources += [(n.strip(), DISABLE_VAR) for n in (st.disable_env or "").split(",") if n.strip()]
    if sources:
        out("  disabled: " + ", ".join(f"{n} (from {src})" for n, src in sources))


def doctor_report(args: argparse.Namespace) -> int:
    import os

    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.core.model import Abstain

    out("Environment")
    from gpuaffinity.core.settings import VARIABLES

    for var, always, _what in VARIABLES:  # the simulator's and the rarer switches: shown only when set
        value = os.environ.get(var)
        if value is not None or always:
            out(f"  {var:<28} {'<unset>' if value is None else cut(repr(value))}")
    from gpuaffinity.resolvers._common import cuda_initialized_here
    torch = sys.modules.get("torch")
    out(f"  {'torch imported':<28} {'yes, ' + torch.__version__ if torch else 'no (gpuaffinity never imports it)'}")
    out(f"  {'CUDA initialised here':<28} {'yes' if cuda_initialized_here() else 'no'}")
    from gpuaffinity.numa.query import allowed_cpus
    out(f"  {'allowed CPUs':<28} {format_cpulist(allowed_cpus())}")
    label, value = _in_effect()
    out(f"  {label:<28} {value}")

    from gpuaffinity.api import run_resolution
    from gpuaffinity.host import scope

    with scope() as host:  # one NVML session for the GPU list and every locality
        try:
            res = run_resolution(**options(args), strict_errors=False)
        except GpuAffinityError as e:
            say(f"gpuaffinity: {strip_prefix(e)}")
            return exit_status(e)
        host.health = True  # a GPU NVML says is lost is reported, on a host of one node too
        locs = host.localities(g.pci_bus_id for g in res.inventory.gpus)  # once for both sections
    inv = res.inventory
    out(f"\nGPUs this process can use (NVML order = PCI order): {len(inv.gpus)}")
    for note in inv.notes:
        out(f"  {note}")
    table = [("NVML", "PCI", "UUID", "MODEL", "NODES", "LOCAL CPUS")]
    for g in res.inventory.gpus:
        loc = locs[g.pci_bus_id]
        migs = f" + {len(g.migs)} MIG" if g.migs else ""
        table.append((str(g.nvml_index), g.pci_bus_id, g.uuid + migs, g.name,
                      ",".join(map(str, loc.numa_nodes)) or "none", format_cpulist(loc.local_cpus) or "-"))
    _print_table(table, "  ")
    out(f"\nStrategies (priority order; equal priorities by name; policy {res.policy})")
    _print_table([(s.name, str(s.priority), getattr(s, "describe", "")) for s in res.strategies], "  ")
    if not res.strategies:
        out("  none: every strategy is disabled, so nothing can resolve; enable one (GPUAFFINITY_DISABLE, "
              "--disable)")
    _plugins(res)
    if res.context.grammar.unsure:
        out(f"  note: the reading of CUDA_VISIBLE_DEVICES {res.context.grammar.unsure}; the default policy "
              "checks it with the driver")
    width = max([len(s.name) for s in res.strategies] + [8])
    out(f"\nDevices: this process sees {res.context.visible}" + (" (why, and what to write: below)" if
                                                                  res.no_device else ""))
    for d in res.devices:
        loc = locs[d.pci_bus_id]
        mig = f" MIG {d.mig_uuid}" if d.mig_uuid else ""
        out(f"  cuda {d.logical_id} -> nvml {d.nvml_index}  {d.pci_bus_id}  {d.uuid}{mig}")
        out(f"      {consensus(d)}; nodes {','.join(map(str, loc.numa_nodes)) or 'none'}; "
              f"cpus {format_cpulist(loc.cpus) or '-'}")
        for note in loc.notes:
            out(f"      note: {note}")
        if loc.lost:
            out(f"      LOST: {loc.lost}")
            if res.error is None:
                from gpuaffinity.core.errors import GpuLostError

                res.error = GpuLostError(loc.lost)
        for v in d.verdicts:
            if isinstance(v.result, Abstain):
                said = ("skipped: " if not v.ran else "abstained: ") + v.result.reason
            else:
                g = res.inventory.by_uuid(v.result.uuid)
                said = f"nvml {g.nvml_index if g else '?'} ({v.result.detail})"
            out(f"      {v.strategy:<{width}} {said}")
            if args.verbose and v.trace:
                for line in v.trace.rstrip().splitlines():
                    out(f"      {'':<{width}} | {line}")
    if res.warnings or res.error:
        out("\nWarnings and errors")
        for _cat, msg in res.warnings:
            out(f"  warning: {strip_prefix(msg)}")
        if res.error:
            out(f"  error: {strip_prefix(res.error)}")
    else:
        out("\nNo warnings.")
    if res.error is not None:  # the report is on stdout; the status's one line on stderr, as for every command
        say(f"gpuaffinity: {strip_prefix(res.error)}")
        return exit_status(res.error)
    return EXIT_OK


def _in_effect() -> tuple[str, str]:
    """doctor's line on this process's CPU affinity and memory policy, as the kernel has them now: its label
    ("this process is bound to", or "this process runs on" where its memory policy is the default) and value."""
    import os

    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.numa.bind import MPOL_DEFAULT, get_mempolicy, policy_mode, policy_name

    cpus = f"CPUs {format_cpulist(os.sched_getaffinity(0))}"
    try:
        mode, nodes = get_mempolicy()
    except Exception as e:  # unreadable (seccomp, an architecture gpuaffinity has no call numbers for)
        return "this process runs on", f"{cpus}; memory policy unreadable ({cut(str(e), 120)})"
    if policy_mode(mode) == MPOL_DEFAULT:
        return "this process runs on", f"{cpus}; memory not bound (MPOL_DEFAULT: pages go to the node it runs on)"
    return "this process is bound to", f"{cpus}; memory policy {policy_name(mode)}" + (
        f" node(s) {format_cpulist(nodes)}" if nodes else "")
