"""Strategy ``pci``: ask the CUDA driver for each device's PCI bus id, then NVML for that bus.

Ground truth: the driver applies CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER
itself.  The price is ``cuInit``, and a process that calls ``cuInit`` and
later forks leaves CUDA unusable in its children (a forked worker, a
multiprocessing "fork" pool).  So:

* If CUDA is already initialised in this process (someone else paid, and the
  fork hazard exists anyway), the query runs here: cheap, a few microseconds
  a device.
* Otherwise it runs in a short-lived child process, never here: expensive
  (``cuInit``, about 0.1 s on an H200 host), so the chain asks it only when
  something calls for it (core/chain.py) or under the strict policy.
  ``allow_subprocess=False`` (CLI ``--no-subprocess``, environment
  GPUAFFINITY_NO_SUBPROCESS=1) forbids the child.

  The child is a fork of this process when this process has exactly one
  thread (/proc/self/task) and no libcuda mapped (/proc/self/maps): fork
  copies no lock another thread could hold, the copy starts no interpreter,
  and it can initialise CUDA (a copy of a process that had initialised it
  cannot).  With other threads it is a new
  interpreter in isolated mode (``python -I``) whose whole program is _cuquery.py:
  nothing from the caller's working directory, PYTHONPATH or user site is
  imported into it, nor anything of gpuaffinity.  Either way the child sets
  the variables being resolved, calls ``cuInit``, answers down a pipe and is
  gone; the parent never initialises CUDA.

The query is plain ctypes on ``libcuda.so.1``: the same functions
cuda-python's bindings call, and no import to pay for.

Owns: the CUDA driver's own answer.
"""

from __future__ import annotations

import os
import sys
import time

from gpuaffinity.core.cvd import CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_NO_DEVICE
from gpuaffinity.core.errors import InvalidVisibleDevicesError, shown
from gpuaffinity.core.model import Abstain, Answer
from gpuaffinity.core.settings import NO_SUBPROCESS_VAR
from gpuaffinity.core.strategy import Cost, ResolveContext, StashKey, Strategy
from gpuaffinity.resolvers import _cuquery
from gpuaffinity.resolvers._common import cuda_up, libcuda_mapped
from gpuaffinity.resolvers._cuquery import query_driver

#: the CUDA driver's table for this resolution (asked once: in this process, or in a child)
TABLE: StashKey[dict] = StashKey("pci.table")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def child_program() -> str:
    """The isolated child's whole program: _cuquery.py's text, then the query and its answer on stdout."""
    with open(_cuquery.__file__, encoding="utf-8") as f:
        return f.read() + "\nimport json\nprint(json.dumps(query_driver(True)))\n"



def _single_threaded() -> bool:
    """No other thread in this process, Python's or a library's (/proc/self/task): fork() is safe here."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _forked_probe(env: dict[str, str | None], timeout: float, meanwhile: Any = None) -> dict[str, Any] | None:
    """query_driver(init=True) in a forked copy of this process: no interpreter to start.  Only while this
    process has one thread (a fork copies no lock another thread holds) and has no libcuda mapped (a fork of a
    process that initialised CUDA cannot initialise it again: cuInit fails in the copy).

    None when pipe() or fork() fails (out of descriptors, processes or memory): the caller tries the isolated
    interpreter.
    Robust to the caller's process state: SIGCHLD ignored or reaped by someone else (the answer is in the pipe
    already), a pipe descriptor above 1023 (poll, not select), an interrupt while waiting (the child is killed
    and reaped, the descriptors closed)."""
    import json
    import select
    import signal

    # no signal handler may run between creating the pipe and the child and the try that cleans them up
    caller_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    _clean_up_after_interrupted_probes()
    try:
        r, w = os.pipe()
    except OSError:  # no descriptor left: the isolated interpreter will say so
        signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
        return None
    if pid == 0:  # the child: the variables of this resolution, cuInit, the answer down the pipe, gone
        code = 1  # what the parent is told, if anything here raises
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
            os.close(r)
            for var, value in env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            data = json.dumps(query_driver(True)).encode()
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _unfinished[pid] = r
    chunks: list[bytes] = []
    finished = False
    status: int | None = None
    deadline = None
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)  # from here the finally below cleans up
        if meanwhile is not None:  # the parent's own work while the child waits for the driver; never fails it
            try:
                meanwhile()
            except Exception:
                pass
        deadline = time.monotonic() + timeout  # from here: the parent's own work is not the child's time
        poller = select.poll()
        poller.register(r, select.POLLIN | select.POLLHUP)
        while True:
            left = deadline - time.monotonic()
            # past the deadline, still take what is already in the pipe (poll with 0) before giving up; waits
            # in slices of at most an hour, within poll()'s range whatever the timeout
            if not poller.poll(min(max(0.0, left), 3600.0) * 1000.0):
                if left <= 0:
                    break
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
    finally:
        # no signal handler may cut the clean-up short (a child left running, a descriptor open)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            del _unfinished[pid]  # before the child is reaped: a pid in there is never one recycled since
            os.close(r)
            status = _reap(pid, finished, deadline)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if not finished:
        return {"rc": None, "devices": [], "error": f"the CUDA probe took over {timeout:g} s (cuInit did not "
                "return in time; nvidia-smi shows whether the driver is healthy)"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        how = "" if status is None else f": {_exit_words(status)}"
        return {"rc": None, "devices": [], "error": f"the CUDA probe (a forked copy) died before it answered{how}"}


#: Forked probes whose clean-up a signal handler cut short (one that raised again as the clean-up began): the
#: child's pid and the parent's end of its pipe.  The next probe kills, reaps and closes them.
_unfinished: dict[int, int] = {}


def _clean_up_after_interrupted_probes() -> None:
    while _unfinished:
        pid, r = _unfinished.popitem()
        try:
            os.close(r)
        except OSError:
            pass
        _reap(pid, False, None)


def _reap(pid: int, answered: bool, deadline: float | None) -> int | None:
    """Wait for the probe child; its wait status, or None when someone else reaped it (SIGCHLD ignored).

    A child that has not answered is killed at once.  One that closed the pipe is given until the deadline to
    exit (it may linger in the driver's teardown), then killed: the wait never outlasts the timeout by more
    than the kill itself."""
    import signal

    if answered and deadline is not None:
        pause = 0.0005
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return status
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:  # SIGCHLD ignored, or another handler reaped it: nothing left to wait for
        return None


def _exit_words(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class PciStrategy(Strategy):
    name = "pci"
    watchdog = False  # its child has a timeout of its own (options['timeout'])
    budget = 600.0
    priority = 100
    asks_driver = True
    describe = "CUDA driver's cuDeviceGetPCIBusId matched to NVML's bus ids (in a child unless CUDA is up here)"

    def cost(self, ctx: ResolveContext) -> Cost:
        return "cheap" if self._in_process(ctx) else "expensive"

    def _in_process(self, ctx: ResolveContext) -> bool:
        return cuda_up(ctx)

    def _table(self, ctx: ResolveContext) -> dict[str, Any]:
        if TABLE in ctx.stash:
            return ctx.stash[TABLE]
        if self._in_process(ctx):
            table = query_driver(init=False)
            table["where"] = "in this process (CUDA was already initialised)"
        elif not ctx.options.get("allow_subprocess", True):
            table = {"rc": None, "devices": [], "error": "CUDA is not initialised here and subprocesses are "
                     f"disabled (allow_subprocess=False or {NO_SUBPROCESS_VAR}); gpuaffinity will not cuInit in "
                     "a process that may fork"}
        else:
            table = self._probe_child(ctx)
        ctx.stash[TABLE] = table
        return table

    def _probe_child(self, ctx: ResolveContext) -> dict[str, Any]:
        timeout = float(ctx.options.get("timeout", 120))
        # fork only with one thread and no libcuda mapped: a copy of a process that initialised CUDA (a forked
        # worker of a CUDA parent, where CUDA is not "up" any more) cannot initialise it, so it gets a new
        # interpreter, which can
        if _single_threaded() and libcuda_mapped() is False:
            host = ctx.host
            buses = [g.pci_bus_id for g in ctx.inventory.gpus]
            # the command's own work for the time the child initialises CUDA (Host.while_probing: locality, where
            # the command asked for it early)
            work = None if host is None else lambda: host.while_probing(buses)
            table = _forked_probe(ctx.env, timeout, work)
            if table is not None:
                table["where"] = "in a child process (a fork of this one)"
                return table
        import json
        import subprocess

        env = dict(os.environ)
        for var, value in ctx.env.items():
            if value is None:
                env.pop(var, None)
            else:
                env[var] = value
        try:
            proc = subprocess.run(child_command(), env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"rc": None, "devices": [], "error": f"the CUDA probe process took over {timeout:g} s (cuInit "
                    "did not return in time; nvidia-smi shows whether the driver is healthy)"}
        except OSError as e:  # no process or descriptor left to start it with
            return {"rc": None, "devices": [], "error": f"the CUDA probe process could not start ({e}); free "
                    "processes or file descriptors (ulimit -u, ulimit -n) and try again"}
        try:
            table = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"rc": None, "devices": [], "error": f"the CUDA probe process failed: {last}"}
        table["where"] = "in a child process (a new isolated interpreter)"
        return table

    def count(self, ctx: ResolveContext) -> int | None:
        """How many devices the driver shows, or None when it cannot be asked.

        Raises InvalidVisibleDevicesError when the driver refuses the variables."""
        table = self._table(ctx)
        if table.get("error"):
            return None
        if table.get("rc") == CUDA_ERROR_INVALID_DEVICE:
            raise InvalidVisibleDevicesError(
                f"the CUDA driver refuses CUDA_VISIBLE_DEVICES={shown(ctx.cvd)} with CUDA_DEVICE_ORDER="
                f"{shown(ctx.device_order)} (cuInit returned CUDA_ERROR_INVALID_DEVICE): a device is named twice, or "
                "the order is not FASTEST_FIRST or PCI_BUS_ID; fix the variable")
        if table.get("rc") == CUDA_ERROR_NO_DEVICE:
            return 0
        return None if table.get("rc") else len(table["devices"])

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        table = self._table(ctx)
        if table.get("error"):
            return Abstain(table["error"])
        if table.get("rc"):
            return Abstain(f"cuInit/cuDeviceGetCount returned CUDA error {table['rc']} ({table.get('where', '')})")
        devices = table["devices"]
        if logical_id >= len(devices):
            return Abstain(f"the CUDA driver shows only {len(devices)} devices")
        bus, uuid_hex = devices[logical_id]
        gpu = ctx.inventory.by_bus(bus)
        if gpu is None:
            return Abstain(f"the CUDA driver's device {logical_id} is at PCI {bus}, where NVML has no GPU")
        mig = next((m.uuid for m in gpu.migs if m.uuid[4:].replace("-", "").lower() == uuid_hex), None)
        return Answer(gpu.uuid, mig, detail=f"cuDeviceGetPCIBusId({logical_id}) = {bus}, {table.get('where', '')}")


def gpuaffinity_strategies() -> list[PciStrategy]:
    return [PciStrategy()]


def child_command() -> list[str]:
    """The probe child: isolated (``python -I``), its whole program the ctypes query above."""
    return [sys.executable, "-I", "-c", child_program()]


if __name__ == "__main__":  # the same probe, by hand: initialise CUDA here, print, exit
    import json

    print(json.dumps(query_driver(True)))
