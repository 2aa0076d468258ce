"""``gpuaffinity sim``: list, check and run a command on a simulated machine, with the shell's job control (the
command gets the terminal, Ctrl-C and Ctrl-Z reach it, its exit status is the command's).
"""

from __future__ import annotations

import signal

from gpuaffinity.core.errors import EXIT_ERROR, EXIT_OK, UsageError
from gpuaffinity.text import cannot_run, say

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

#: Signals `sim run` passes on to its command (once) instead of dying without removing the simulated machine.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def sim_command(args: argparse.Namespace, cmd: list[str], parser: argparse.ArgumentParser) -> int:
    from gpuaffinity.sim import SimulatorError, TopologyError, list_presets, load_topology

    try:
        if args.sim_command == "list":
            rows = [(name, load_topology(name)) for name in list_presets()]
            width = max(len(n) for n, _ in rows)
            print(f"{'PRESET':<{width}}  GPUS  NODES  DESCRIPTION")
            for name, t in rows:
                n = len(t.gpus)
                gpus = str(n) if t.process.gpus is None else f"{len(t.process.gpus)}/{n}"
                print(f"{name:<{width}}  {gpus:>4}  {len(t.nodes):>5}  {t.description}")
            return EXIT_OK
        if args.sim_command == "check":
            return _sim_check(load_topology(args.topology))
        if args.sim_command == "run":
            if not cmd:
                raise UsageError("gpuaffinity sim run: no command given: write it after `--`, "
                                 "e.g. gpuaffinity sim run dgx-h100 -- nvidia-smi-like-tool")
            if not cmd[0] or "\0" in "".join(cmd):
                raise UsageError("gpuaffinity sim run: the command after `--` is empty or holds a NUL byte")
            from gpuaffinity.sim.machine import check_faults
            try:
                check_faults(args.fault)
            except ValueError as e:
                raise UsageError(f"gpuaffinity sim run: {e}") from None
            topo = load_topology(args.topology)
            shape = {"gpus": _list(args.gpus), "others": args.others, "proc": args.proc, "migs": _list(args.mig)}
            if any(v is not None for v in shape.values()):
                from gpuaffinity.sim.topology import make_process

                try:
                    process = make_process(topo, where="--", **shape)
                except TopologyError as e:  # "<source>: --gpus: what is wrong"
                    raise UsageError(f"gpuaffinity sim run: {str(e).split(': ', 1)[-1]}") from None
                from dataclasses import replace

                topo = replace(topo, process=process)
            try:
                return _sim_run(topo, cmd, args.fault, args.counters, args.cpuset)
            except TopologyError:
                raise
            except ValueError as e:  # a bad --cpuset
                raise UsageError(f"gpuaffinity sim run: {e}") from None
        raise UsageError("gpuaffinity sim: say `list`, `run` or `check` (see `gpuaffinity sim --help`)")
    except (TopologyError, SimulatorError) as e:
        say(f"gpuaffinity: {e}")
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
    p = t.process
    if p.restricted or p.env:
        opens = "every GPU" if p.gpus is None else "GPUs at PCI positions " + ",".join(map(str, p.gpus))
        print(f"  process: opens {opens}; the others {p.others}; /proc {p.proc}"
              + (f"; MIG instances {', '.join(p.migs)}" if p.migs is not None else ""))
        for var, value in p.env:
            print(f"  process env: {var}={value}")
    for r in t.running:  # the other processes ([[running]])
        gpus = ",".join(t.gpus[i].pci_bus_id for i in r.opens) or "none"
        print(f"  running: pid {r.pid} {r.name}  uid {r.uid}  state {r.state}  threads {1 + len(r.threads)}  "
              f"cpus {format_cpulist(r.cpus)}  GPUs {gpus}" + ("" if r.readable else "  (not readable)"))
    return EXIT_OK


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _sim_run(topology: object, cmd: list[str], faults: list[str], counters: str | None, cpuset: str | None) -> int:
    """Run CMD on the simulated machine, as a shell runs a job: in a process group of its own, which holds the
    terminal while it runs.  So a signal sent to `sim run`'s group reaches CMD once (passed on), one from the
    terminal reaches CMD alone, and Ctrl-Z stops both; every signal in FORWARDED is passed on, and the
    simulated machine's folder is removed whatever ends the run (but SIGKILL)."""
    from gpuaffinity.sim.machine import simulated

    early: list[int] = []
    old = {s: signal.signal(s, lambda signum, _f: early.append(signum)) for s in FORWARDED}
    try:
        with simulated(topology, faults=faults, counters=counters, cpuset=cpuset) as machine:
            if early:  # asked to stop while the machine was being prepared
                return 128 + early[0]
            return _run_job(cmd, machine.env, early)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _foreground_tty() -> int | None:
    """The file descriptor of our controlling terminal when our process group holds it, else None."""
    import os

    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            continue
    return None


def _give_terminal(fd: int, pgid: int) -> None:
    import os

    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may not take the terminal else
    try:
        os.tcsetpgrp(fd, pgid)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


def _run_job(cmd: list[str], env: dict[str, str], early: list[int]) -> int:
    import os

    tty = _foreground_tty()
    # SIGCHLD ignored by whoever started us (inherited across exec) would make the kernel reap the job, and our
    # wait for it fail: the default here; the job itself gets the disposition it would have had without us
    inherited = signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def own_group() -> None:  # in the child, before exec: its own group, and the terminal if we had it
        os.setpgid(0, 0)
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
        if inherited == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    try:
        import subprocess  # only `sim run` starts a process; resolve and bind never do

        child = subprocess.Popen(cmd, env=env, preexec_fn=own_group)
    except OSError as e:
        return cannot_run("sim run", cmd, e)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    for s in early:
        forward(s, None)
    try:
        while True:
            _pid, status = os.waitpid(child.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                break
            # the job was stopped (Ctrl-Z): stop too, so that the shell sees it; carry on where it resumes us
            if tty is not None:
                _give_terminal(tty, os.getpgrp())
            os.kill(os.getpid(), signal.SIGSTOP)
            if tty is not None and os.tcgetpgrp(tty) == os.getpgrp():
                _give_terminal(tty, child.pid)
            os.killpg(child.pid, signal.SIGCONT)
    finally:
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
    rc = os.waitstatus_to_exitcode(status)
    child.returncode = rc
    return 128 - rc if rc < 0 else rc
