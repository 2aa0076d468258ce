"""The ``gpuaffinity`` command (also ``python -m gpuaffinity``).

Exit status: 0 success; 2 usage; 1 any other error, with one line on stderr.
``sim run`` exits with the status of the command it ran (127: not found,
126: not executable, 128+N: killed by signal N).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_EPILOG_SIM = """\
examples:
  gpuaffinity sim list
  gpuaffinity sim run dgx-h100 -- python3 -c 'import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetCount())'
  CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2 gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.sim.demo
  gpuaffinity sim run ./my-machine.toml --fault cuInit=999 -- my-launcher --serve

TOPOLOGY is a preset name (see `sim list`) or a path to a topology file (docs/simulator.md).
The command runs with the simulated libnvidia-ml.so.1 and libcuda.so.1 first on
LD_LIBRARY_PATH, so unmodified pynvml, torch and cuda-python see the simulated GPUs.
Environment, stdin and exit status pass through.
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpuaffinity",
                description="Which physical GPU is CUDA device N, and which NUMA node and CPUs sit next to it?")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sim = sub.add_parser("sim", help="run programs against a simulated GPU machine",
                         description="A simulated machine: fake NVIDIA libraries and sysfs from a topology file.",
                         epilog=_EPILOG_SIM, formatter_class=argparse.RawDescriptionHelpFormatter)
    simsub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", parser_class=_Parser)
    simsub.add_parser("list", help="list the bundled preset machines")
    run = simsub.add_parser(
        "run", help="run CMD against a simulated machine",
        usage="gpuaffinity sim run [--fault NAME=CODE[:TIMES]] [--counters DIR] TOPOLOGY -- CMD [ARG ...]",
        description="Run CMD with the simulated NVIDIA libraries of TOPOLOGY.",
        epilog=_EPILOG_SIM, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("topology", metavar="TOPOLOGY", help="preset name or topology file")
    run.add_argument("--fault", action="append", default=[], metavar="NAME=CODE[:TIMES]",
                     help="make the named NVML/CUDA entry point return CODE (only its first TIMES calls); "
                          "repeatable, e.g. --fault nvmlInit=9 --fault cuInit=999")
    run.add_argument("--counters", metavar="DIR",
                     help="write per-process call counts of every simulated entry point to DIR/<pid>.<lib>.counts")
    simsub.add_parser("check", help="check a topology file and print what it describes").add_argument(
        "topology", metavar="TOPOLOGY")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in args_in:
        i = args_in.index("--")
        args_in, cmd = args_in[:i], args_in[i + 1:]
    parser = build_parser()
    try:
        args = parser.parse_args(args_in)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "sim":
            return _sim(args, cmd, parser)
        raise UsageError(f"gpuaffinity: unknown command {args.command!r}")
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _sim(args: argparse.Namespace, cmd: list[str], parser: argparse.ArgumentParser) -> int:
    from gpuaffinity.sim import SimulatorError, TopologyError, list_presets, load_topology

    try:
        if args.sim_command == "list":
            rows = [(name, load_topology(name)) for name in list_presets()]
            width = max(len(n) for n, _ in rows)
            print(f"{'PRESET':<{width}}  GPUS  NODES  DESCRIPTION")
            for name, t in rows:
                print(f"{name:<{width}}  {len(t.gpus):>4}  {len(t.nodes):>5}  {t.description}")
            return EXIT_OK
        if args.sim_command == "check":
            return _sim_check(load_topology(args.topology))
        if args.sim_command == "run":
            if not cmd:
                raise UsageError("gpuaffinity sim run: no command given: write it after `--`, "
                                 "e.g. gpuaffinity sim run dgx-h100 -- nvidia-smi-like-tool")
            from gpuaffinity.sim.machine import check_fault
            for f in args.fault:
                try:
                    check_fault(f)
                except ValueError as e:
                    raise UsageError(f"gpuaffinity sim run: {e}") from None
            return _sim_run(args.topology, cmd, args.fault, args.counters)
        raise UsageError("gpuaffinity sim: say `list`, `run` or `check` (see `gpuaffinity sim --help`)")
    except (TopologyError, SimulatorError) as e:
        print(f"gpuaffinity: {e}", file=sys.stderr)
        return EXIT_ERROR


def _sim_check(t: object) -> int:
    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.sim.topology import Topology

    assert isinstance(t, Topology)
    print(f"{t.source}: {t.name}: {len(t.gpus)} GPUs, {len(t.nodes)} NUMA nodes, "
          f"{len(t.cpus)} CPUs, {t.threads_per_core} thread(s) a core")
    order = t.cuda_default_order()
    for i, g in enumerate(t.gpus):
        node = "none (-1)" if g.numa_node < 0 else str(g.numa_node)
        migs = f", {len(g.migs)} MIG instances" if g.migs else ""
        print(f"  nvml {i}  cuda(FASTEST_FIRST) {order.index(i)}  {g.pci_bus_id}  {g.uuid}  node {node}  "
              f"{g.name}{migs}")
    for n in t.nodes:
        print(f"  node {n.id}  socket {n.socket}  cpus {format_cpulist(n.cpus)}")
    return EXIT_OK


def _sim_run(topology: str, cmd: list[str], faults: list[str], counters: str | None) -> int:
    from gpuaffinity.sim.machine import simulated

    with simulated(topology, faults=faults, counters=counters) as machine:
        try:
            child = subprocess.Popen(cmd, env=machine.env)
        except FileNotFoundError:
            print(f"gpuaffinity: sim run: command not found: {cmd[0]}", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"gpuaffinity: sim run: not executable: {cmd[0]}", file=sys.stderr)
            return 126
        # The child gets terminal signals itself; pass on the ones sent to us alone.
        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)
        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
        try:
            rc = child.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return 128 - rc if rc < 0 else rc
