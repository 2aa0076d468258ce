"""The ``gpuaffinity`` command (also ``python -m gpuaffinity``): the parser, and each command's dispatch.

The reports of ``resolve`` and ``doctor`` are in ``gpuaffinity.reports``, ``check``'s in ``gpuaffinity.live``,
``ray-check``'s in ``gpuaffinity.ray_check``; ``sim``'s job control is in ``gpuaffinity.sim.jobs``; what reaches
the terminal, in ``gpuaffinity.text``.

Exit status: 0 success; 2 usage; 1 any other error, with one line on stderr.
``sim run`` exits with the status of the command it ran (127: not found,
126: not executable, 128+N: killed by signal N).
"""

from __future__ import annotations

import argparse
import signal
import sys

from gpuaffinity.core.errors import EXIT_ERROR, EXIT_FOUND, EXIT_OK, EXIT_USAGE, UsageError, exit_status
from gpuaffinity.core.settings import DEBUG_VAR, DEFAULT_MEMORY, FAILURE_POLICIES, MEMORY_POLICIES, MODES, POLICIES
from gpuaffinity.reports import no_device_category, options, print_warnings, strip_prefix
from gpuaffinity.text import cannot_run, cut, out, say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence



_EPILOG_SIM = """\
examples:
  gpuaffinity sim list
  gpuaffinity sim run dgx-h100 -- python3 -c 'import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetCount())'
  CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2 gpuaffinity sim run dgx-h100 -- python3 -m gpuaffinity.sim.demo
  gpuaffinity sim run ./my-machine.toml --fault cuInit=999 -- my-launcher --serve
  gpuaffinity sim run slurm-2of8 -- gpuaffinity doctor          a job that may open 2 of 8 GPUs
  gpuaffinity sim run dgx-h100 --gpus 2,5 --others absent -- gpuaffinity resolve

TOPOLOGY is a preset name (see `sim list`) or a path to a topology file (docs/simulator.md).
The command runs with the simulated libnvidia-ml.so.1 and libcuda.so.1 first on
LD_LIBRARY_PATH, so unmodified pynvml, torch and cuda-python see the simulated GPUs.
Environment, stdin and exit status pass through.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpuaffinity",
                description="Which physical GPU is CUDA device N, and which NUMA node and CPUs sit next to it?")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    policy_help = ("how strategies are combined: first (take the first answer), verify (default: check with the "
                   "other cheap strategies, warn on disagreement), strict (disagreement, or no answer at all, is an "
                   "error, exit 3); default from GPUAFFINITY_POLICY")
    res = sub.add_parser(
        "resolve", help="which physical GPU is each CUDA device",
        description="Map logical CUDA device ids (as this process's CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER "
                    "number them) to physical GPUs, with their NUMA nodes and nearby CPUs.",
        epilog=_EPILOG_RESOLVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    res.add_argument("ids", nargs="*", metavar="ID",
                     help="logical CUDA device ids (default: every visible device), or physical selectors: a GPU "
                          "UUID or unique prefix, a MIG UUID, a PCI bus id")
    res.add_argument("--json", action="store_true", help="print a JSON array, one object per device")
    _resolution_options(res, policy_help)
    doc = sub.add_parser(
        "doctor", help="explain the mapping: every strategy's answer, the environment, warnings",
        description="A report a person reads: per logical device what each strategy said and why, whether they "
                    "agree, the NUMA nodes and CPUs, the relevant environment, and every warning.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _resolution_options(doc, policy_help)
    doc.add_argument("--verbose", "-v", action="store_true",
                     help="also print the traceback of every strategy that raised")
    bnd = sub.add_parser(
        "bind", help="run CMD bound to a GPU's NUMA node",
        usage=_BIND_USAGE,
        description="Resolve CUDA device ID, pin this process's CPUs (every thread) and memory policy to the "
                    "GPU's NUMA node, then replace this process with CMD (exec: no shell, no numactl). "
                    "CMD's exit status is the command's.",
        epilog=_EPILOG_BIND, formatter_class=argparse.RawDescriptionHelpFormatter)
    bnd.add_argument("id", metavar="ID", help="logical CUDA device id, as CMD will see it; or a GPU UUID (or unique "
                                              "prefix), MIG UUID or PCI bus id")
    bnd.add_argument("--mode", choices=MODES, default="node",
                     help="which CPUs: node (default), socket, exclusive (this GPU's even share of its node's "
                          "cores), llc (CPUs sharing the node's last-level cache)")
    bnd.add_argument("--memory", choices=MEMORY_POLICIES, default=DEFAULT_MEMORY,
                     help="memory policy: preferred (default: allocate on the GPU's node(s), spill to other nodes "
                          "when they are full), bind (only there: the OOM killer ends CMD when they are full), "
                          "none (see docs/numa.md)")
    bnd.add_argument("--on-failure", choices=FAILURE_POLICIES, default=None,
                     help="warn (default, or GPUAFFINITY_ON_FAILURE): run CMD anyway, unbound where binding "
                          "failed; error: exit 1 without running CMD")
    bnd.add_argument("--dry-run", action="store_true", help="print what would be applied; run nothing")
    _resolution_options(bnd, policy_help)
    ray = sub.add_parser(
        "ray-check", help="check every GPU worker of a running Ray cluster: its GPU, NUMA node and binding",
        description="Connect to a running Ray cluster and, on every node, place one probe per GPU the way a GPU "
                    "actor is placed (num_gpus=1 on that node, under the one-line binding's runtime environment "
                    "unless --runtime-env says otherwise). Each probe reports Ray's GPU id, the environment, the "
                    "physical GPU it resolves to (every strategy, the CUDA driver's answer included), that GPU's "
                    "NUMA node and CPUs, and the CPU affinity and memory policy in effect. One row per GPU.",
        epilog=_EPILOG_RAY, formatter_class=argparse.RawDescriptionHelpFormatter)
    ray.add_argument("--address", metavar="HOST:PORT",
                     help="the cluster (default: RAY_ADDRESS, else \"auto\": the cluster Ray recorded for this user "
                          "on this machine, never another user's; --address local is refused)")
    ray.add_argument("--mode", choices=MODES, default="node",
                     help="the binding the workers should have, as for `gpuaffinity bind` (default node)")
    ray.add_argument("--memory", choices=MEMORY_POLICIES, default=DEFAULT_MEMORY,
                     help=f"the memory policy they should have (default {DEFAULT_MEMORY}; none: do not check memory)")
    ray.add_argument("--runtime-env", metavar="JSON",
                     help="the probes' Ray runtime environment, as your jobs pass it to ray.init (default: "
                          "the one-line binding with --mode and --memory)")
    ray.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                     help="give up on probes without an answer after this long (default 120); they get a "
                          "TIMEOUT row")
    ray.add_argument("--pages", action="store_true",
                     help="also read where each probe's resident memory is (numa_maps); a row with less than "
                          "--min-local of it on its GPU's node(s) is REMOTE-MEMORY")
    ray.add_argument("--min-local", type=float, default=0.8, metavar="SHARE",
                     help="with --pages: the share of memory that must be on the GPU's node(s) (default 0.8)")
    ray.add_argument("--json", action="store_true", help="print the report as JSON (rows, settings, ok)")
    chk = sub.add_parser(
        "check", help="where GPU workers are right now: their GPU, every thread's CPUs, memory policy and pages",
        usage="gpuaffinity check [PID ...] [--all] [--json] [--pages] [--min-local SHARE] [--mode MODE] "
              "[--memory POLICY] [--no-nvml]",
        description="Check running processes from outside: the GPU each holds or was bound for (read in *its* "
                    "view: its recorded binding, NVML's process list, its open device nodes and its own "
                    "CUDA_VISIBLE_DEVICES; never this shell's), that GPU's NUMA node(s) and CPUs, the CPU mask "
                    "of every thread, the memory policy, and with --pages where its resident memory is. One row "
                    "per process.",
        epilog=_EPILOG_CHECK, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("pids", nargs="*", metavar="PID", help="process ids to check (default: every GPU process, "
                                                           "as --all)")
    chk.add_argument("--all", action="store_true", dest="all_processes",
                     help="every process that holds an NVIDIA GPU or records a gpuaffinity binding (without root: "
                          "your own, and those NVML names, which get a NO-ACCESS row)")
    chk.add_argument("--pages", action="store_true",
                     help="also read where each process's resident memory is (/proc/PID/numa_maps: the kernel "
                          "walks every page, about 4 to 15 ms per GiB resident; off by default)")
    chk.add_argument("--min-local", type=float, default=0.8, metavar="SHARE",
                     help="with --pages: the share of memory that must be on the GPU's node(s), else "
                          "REMOTE-MEMORY (default 0.8; at least 64 MiB must be elsewhere to fail)")
    chk.add_argument("--mode", choices=MODES, default="node",
                     help="the binding a process without a recorded one should have, as for `gpuaffinity bind` "
                          "(default node); a recorded binding is judged by its own mode")
    chk.add_argument("--memory", choices=(*MEMORY_POLICIES, "any"), default="any",
                     help="the memory policy a process without a recorded binding should have: any (default: any "
                          "policy onto its GPU's node(s), not the default policy), preferred, bind, or none (do not "
                          "check the policy); a recorded binding is judged by its own")
    chk.add_argument("--no-nvml", action="store_true",
                     help="do not ask NVML which processes compute on which GPU (device nodes and bindings only)")
    chk.add_argument("--json", action="store_true", help='print {"ok", "seconds", "settings", "notes", "rows"}')
    sim = sub.add_parser("sim", help="run programs against a simulated GPU machine",
                         description="A simulated machine: fake NVIDIA libraries and sysfs from a topology file.",
                         epilog=_EPILOG_SIM, formatter_class=argparse.RawDescriptionHelpFormatter)
    simsub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", parser_class=_Parser)
    simsub.add_parser("list", help="list the bundled preset machines")
    run = simsub.add_parser(
        "run", help="run CMD against a simulated machine",
        usage="gpuaffinity sim run [--fault NAME=CODE[:TIMES]] [--cpuset CPULIST] [--counters DIR] [--gpus LIST] "
              "[--others denied|absent|readonly] [--proc host|masked] [--mig LIST] TOPOLOGY -- CMD [ARG ...]",
        description="Run CMD with the simulated NVIDIA libraries of TOPOLOGY.",
        epilog=_EPILOG_SIM, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("topology", metavar="TOPOLOGY", help="preset name or topology file")
    run.add_argument("--fault", action="append", default=[], metavar="NAME=CODE[:TIMES]",
                     help="make the named NVML/CUDA entry point return CODE (only its first TIMES calls); "
                          "repeatable, e.g. --fault nvmlInit=9 --fault cuInit=999")
    run.add_argument("--cpuset", metavar="CPULIST",
                     help="CPUs the simulated process may use (a simulated cgroup cpuset; default: all of the "
                          "machine's), e.g. --cpuset 0-27,112-139")
    run.add_argument("--counters", metavar="DIR",
                     help="write per-process call counts of every simulated entry point to DIR/<pid>.<lib>.counts")
    shape = run.add_argument_group(
        "deployment shape", "what the process may open, as a device cgroup or a container decides (default: the "
                            "topology's [process] table, else every GPU)")
    shape.add_argument("--gpus", metavar="LIST",
                       help="the GPUs whose device node opens, comma-separated: PCI-order positions, bus ids or "
                            "UUIDs (e.g. --gpus 2,5); NVML and CUDA number only these")
    shape.add_argument("--others", choices=("denied", "absent", "readonly"),
                       help="how the other GPUs are kept away: denied (node present, open refused: a device "
                            "cgroup), absent (no node: a container given some nodes) or readonly (the node opens "
                            "for reading only: a device cgroup granting r, docker --device ...:r)")
    shape.add_argument("--proc", choices=("host", "masked"),
                       help="what the driver's /proc lists: host (every GPU, the default) or masked (only the "
                            "process's GPUs, as the NVIDIA container toolkit arranges)")
    shape.add_argument("--mig", metavar="LIST", help="the MIG instances (UUIDs, comma-separated) the process may use")
    simsub.add_parser("check", help="check a topology file and print what it describes").add_argument(
        "topology", metavar="TOPOLOGY")
    return p


def _resolution_options(p: argparse.ArgumentParser, policy_help: str) -> None:
    p.add_argument("--policy", choices=POLICIES, help=policy_help)
    p.add_argument("--disable", action="append", default=[], metavar="NAME",
                   help="leave out a plugin or strategy by name (repeatable, or names joined by commas; also "
                        "GPUAFFINITY_DISABLE=a,b)")
    p.add_argument("--no-subprocess", action="store_true",
                   help="never start a child process to ask the CUDA driver (also GPUAFFINITY_NO_SUBPROCESS=1)")


_EPILOG_RESOLVE = """\
examples:
  gpuaffinity resolve                 every visible device, as a table
  gpuaffinity resolve 0 --json        device 0 as JSON: uuid, pci_bus_id, nvml_index, numa_nodes, cpus, ...
  CUDA_VISIBLE_DEVICES=GPU-8932f937,3 gpuaffinity resolve --policy strict

exit status: 0 ok; 1 error (one line on stderr); 2 usage; 3 --policy strict refused (strategies
disagree, or none could answer).
"""


_EPILOG_RAY = """\
examples:
  gpuaffinity ray-check                          the cluster Ray recorded for you on this machine, as a table
  gpuaffinity ray-check --address 10.0.0.1:6379 --json
  gpuaffinity ray-check --runtime-env "$(cat my_job_runtime_env.json)"   what your jobs' workers get

each row is one GPU of one node: Ray's GPU id, CUDA_VISIBLE_DEVICES in the worker, the physical GPU (PCI bus
id, UUID) the CUDA driver names, its NUMA node and CPUs, the worker's CPU affinity and memory policy, which
strategies agreed, and a status: ok, UNBOUND, OFF-NODE, THREADS-DRIFTED, REMOTE-MEMORY (--pages), DISAGREE,
DUPLICATE, TIMEOUT, ERROR, NOT-INSTALLED (no-gpus: a node where Ray counts no GPU), judged by the code that
judges `gpuaffinity check`. Each problem is explained under the table. docs/ray.md has more.

exit status: 0 every GPU worker bound next to its GPU; 4 some row has a problem; 1 the check could not run
(no Ray, no cluster; one line on stderr); 2 usage.
"""


_EPILOG_CHECK = """\
examples:
  gpuaffinity check                       every GPU process you may read (as root: every one)
  gpuaffinity check 4242 4243 --json      these processes, as JSON
  gpuaffinity check --all --pages         with where their memory is (slower: 4 to 15 ms per GiB resident)

each row is one process: the GPU(s), how they were found (BY: binding, nvml, device-nodes), the GPU's NUMA
node(s), the CPUs its binding gives it (BIND CPUS), the main thread's CPUs (AFFINITY), the threads within
BIND CPUS of all threads, the memory policy, the share of its memory on the GPU's node(s) (LOCAL, --pages),
and a status: ok, UNBOUND, OFF-NODE, THREADS-DRIFTED, REMOTE-MEMORY, NO-ACCESS, GONE (no-gpu: a process
without a GPU). Each problem is explained under the table. docs/check.md says how to fix each.

exit status: 0 every process bound next to its GPU; 4 some row has a problem; 1 the check could not run
(one line on stderr); 2 usage.
"""


_BIND_USAGE = ("gpuaffinity bind ID [--mode MODE] [--memory POLICY] [--on-failure warn|error] [--dry-run] "
               "[--policy first|verify|strict] [--disable NAME] [--no-subprocess] -- CMD [ARG ...]")

_EPILOG_BIND = """\
examples:
  gpuaffinity bind 0 -- python3 serve.py --port 8000
  gpuaffinity bind 3 --mode exclusive --memory bind -- ./worker
  gpuaffinity bind 0 --dry-run

exit status: CMD's; 1 when resolving or (with --on-failure error) binding fails; 2 usage; 127 CMD not found.
"""


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
            from gpuaffinity.sim.jobs import sim_command

            return sim_command(args, cmd, parser)
        if cmd and args.command != "bind":
            raise UsageError(f"gpuaffinity {args.command}: unexpected arguments after `--`: {' '.join(cmd)}")
        if args.command == "resolve":
            from gpuaffinity.reports import resolve_report

            return resolve_report(args)
        if args.command == "doctor":
            from gpuaffinity.reports import doctor_report

            return doctor_report(args)
        if args.command == "bind":
            return _bind(args, cmd)
        if args.command == "ray-check":
            return _ray_check(args)
        if args.command == "check":
            return _check(args)
        raise UsageError(f"gpuaffinity: unknown command {args.command!r}")
    except UsageError as e:
        say(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gpuaffinity doctor | head`: the reader left; stop quietly, as a shell tool does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:
        from gpuaffinity.core.errors import GpuAffinityError

        if isinstance(e, GpuAffinityError):  # raised outside a command's own handling: still one line
            say(f"gpuaffinity: {strip_prefix(e)}")
            return exit_status(e)
        import os

        if os.environ.get(DEBUG_VAR):
            raise
        # a user never sees a traceback; a bug still says what it is, and tests look for this line
        say(f"gpuaffinity: unexpected {type(e).__name__}: {cut(str(e))} (a bug in gpuaffinity; "
             f"{DEBUG_VAR}=1 shows the traceback)")
        return EXIT_ERROR


def _ray_check(args: argparse.Namespace) -> int:
    import json

    from gpuaffinity.ray_check import check, render

    env = None
    if args.runtime_env is not None:
        try:
            env = json.loads(args.runtime_env)
        except ValueError as e:
            raise UsageError(f"gpuaffinity ray-check: --runtime-env is not JSON: {e}") from None
        if not isinstance(env, dict):
            raise UsageError("gpuaffinity ray-check: --runtime-env must be a JSON object, such as "
                             '\'{"worker_process_setup_hook": "gpuaffinity.ray_worker.setup"}\'')
    if not 0 <= args.min_local <= 1:  # nan too
        raise UsageError(f"gpuaffinity ray-check: --min-local {args.min_local}: give a share from 0 to 1")
    if not 0 < args.timeout <= 86400:  # nan too
        raise UsageError(f"gpuaffinity ray-check: --timeout {args.timeout} s: give a number of seconds above 0, at "
                         "most a day (86400)")
    live = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if live:
            sys.stderr.write(f"\rgpuaffinity ray-check: {done}/{total} GPU probes answered")
            sys.stderr.flush()

    try:
        report = check(args.address, mode=args.mode, memory=args.memory, runtime_env=env, timeout=args.timeout,
                       progress=progress, pages=args.pages, min_local=args.min_local)
    finally:
        if live:
            sys.stderr.write("\r\x1b[K")
    if report.settings.get("found"):  # "auto": which cluster that was, and why it was taken
        sys.stderr.write(f'gpuaffinity ray-check: "auto" is the Ray cluster at {report.settings["cluster"]}, '
                         f'recorded in {report.settings["found"]}\n')
    print(report.to_json() if args.json else render(report))
    return EXIT_OK if report.ok else EXIT_FOUND


def _check(args: argparse.Namespace) -> int:
    from gpuaffinity.live import check, render

    pids = []
    for text in args.pids:
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 1 << 22:
            raise UsageError(f"gpuaffinity check: {text[:40]!r} is not a process id (a number from 1 to 4194303)")
        pids.append(int(text))
    if not 0 <= args.min_local <= 1:  # nan too
        raise UsageError(f"gpuaffinity check: --min-local {args.min_local}: give a share from 0 to 1")
    live = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if live and total > 20:
            sys.stderr.write(f"\rgpuaffinity check: {done}/{total} processes read")
            sys.stderr.flush()

    try:
        report = check(pids, all_processes=args.all_processes, mode=args.mode, memory=args.memory,
                       pages=args.pages, min_local=args.min_local, use_nvml=not args.no_nvml, progress=progress)
    finally:
        if live:
            sys.stderr.write("\r\x1b[K")
    print(report.to_json() if args.json else render(report))
    return EXIT_OK if report.ok else EXIT_FOUND


def _bind(args: argparse.Namespace, cmd: list[str]) -> int:
    import os
    import warnings

    from gpuaffinity.core.cpulist import format_cpulist
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.select import parse_selector

    try:
        selector = parse_selector(args.id)
    except ValueError as e:
        raise UsageError(f"gpuaffinity bind: {e}") from None
    if not cmd and not args.dry_run:
        raise UsageError("gpuaffinity bind: no command given: write it after `--`, e.g. gpuaffinity bind 0 -- "
                         "python3 serve.py (or use --dry-run)")
    if cmd and (not cmd[0] or "\0" in "".join(cmd)):
        raise UsageError("gpuaffinity bind: the command after `--` is empty or holds a NUL byte")
    from gpuaffinity.placement import bind, plan

    opts = options(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if args.dry_run:
                rec = plan(selector, mode=args.mode, memory=args.memory, **opts)
            else:
                rec = bind(selector, mode=args.mode, memory=args.memory, on_failure=args.on_failure, **opts)
        except GpuAffinityError as e:
            print_warnings(caught, but=no_device_category(e))
            say(f"gpuaffinity: {strip_prefix(e)}")
            return exit_status(e)
    print_warnings(caught)
    if args.dry_run:
        out(f"would bind: {rec.summary().replace(' (not applied)', '')}")
        # the fields by their BindRecord names, which mean what they mean in `resolve --json`
        out(f"  numa_nodes {format_cpulist(rec.numa_nodes) or 'none'}; cpus {format_cpulist(rec.cpus) or '-'}")
        out(f"  bind_cpus {format_cpulist(rec.bind_cpus) or '-'}; memory {rec.memory}; memory_nodes "
              f"{format_cpulist(rec.memory_nodes) or 'none'}; memory_policy {rec.memory_policy}")
        if rec.shared_with:
            from gpuaffinity.placement import shared_message

            out(f"  shared_with {','.join(rec.shared_with)}: {shared_message(rec)} (a BindWarning; "
                  "--on-failure error refuses)")
        for note in rec.notes:
            out(f"  note: {note}")
        for failure in rec.failures:
            out(f"  would fail: {failure}")
        return EXIT_OK
    from gpuaffinity.core.notes import kind_of

    for note in rec.notes:
        if kind_of(note) == "attention":  # the binding is weaker than asked: said even without --dry-run
            say(f"gpuaffinity: note: {note}")
    sys.stdout.flush()
    sys.stderr.flush()
    from gpuaffinity.core.settings import BOUND_VAR
    from gpuaffinity.intent import exec_env

    os.environ[BOUND_VAR] = exec_env(rec)  # CMD's /proc/PID/environ: `gpuaffinity check` reads the binding there
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        return cannot_run("bind", cmd, e)
    return EXIT_ERROR  # not reached
