"""Start workers already bound to their GPU's NUMA node, from a Python parent.

Why not simply fork a bound child?  A process that has initialised CUDA
cannot hand a working CUDA to a child it forks: the driver's state does not
survive fork(), and the child fails (torch says "Cannot re-initialize CUDA in
forked subprocess").  gpuaffinity itself never initialises CUDA in your
process (docs/resolving.md), but your parent may have.  So every helper here
starts a *fresh* interpreter: a subprocess through ``gpuaffinity bind``
(which binds itself, then execs the command), or a multiprocessing "spawn"
worker that binds before your function runs.  Each child resolves its device
under its own environment, so a per-worker CUDA_VISIBLE_DEVICES is honoured.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpuaffinity.core.settings import DEFAULT_MEMORY


def bound_command(logical_id: int, cmd: Sequence[str], *, mode: str = "node", memory: str = DEFAULT_MEMORY,
                  on_failure: str | None = None) -> list[str]:
    """The argv that runs ``cmd`` bound to CUDA device ``logical_id``'s node (``gpuaffinity bind`` in an
    isolated interpreter, gpuaffinity._child; ``cmd`` itself runs with the caller's environment).

    ``memory``: ``preferred`` by default, as everywhere (docs/numa.md).  ``on_failure``: None (default) passes
    no ``--on-failure``, so the child's GPUAFFINITY_ON_FAILURE applies (else ``warn``)."""
    from gpuaffinity._child import cli_argv

    failure = () if on_failure is None else ("--on-failure", on_failure)
    return cli_argv("bind", str(int(logical_id)), "--mode", mode, "--memory", memory, *failure, "--", *cmd)


def popen(logical_id: int, cmd: Sequence[str], *, mode: str = "node", memory: str = DEFAULT_MEMORY,
          on_failure: str | None = None, env: Mapping[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen of ``cmd``, bound before it starts (``env`` as for Popen)."""
    return subprocess.Popen(bound_command(logical_id, cmd, mode=mode, memory=memory, on_failure=on_failure),
                            env=None if env is None else dict(env), **kwargs)


def _bound_target(logical_id: int, bind_kwargs: dict[str, Any], env: dict[str, str] | None,
                  target: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    if env:
        os.environ.update(env)
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.placement import bind

    try:
        bind(logical_id, **bind_kwargs)
    except GpuAffinityError as e:  # a device the child cannot have, a refused binding: its one line, exit status 1
        print(f"gpuaffinity: the process for device {logical_id!r} was not started: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return target(*args, **kwargs)


def spawn_process(logical_id: int, target: Callable[..., Any], args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None,
                  mode: str = "node", memory: str = DEFAULT_MEMORY, on_failure: str | None = None,
                  **process_kwargs: Any) -> multiprocessing.process.BaseProcess:
    """A multiprocessing "spawn" Process that binds to the device, then runs ``target``.

    ``env`` is applied in the child before it resolves (e.g. its own CUDA_VISIBLE_DEVICES); so is
    GPUAFFINITY_ON_FAILURE, which applies unless ``on_failure`` is given.  A child whose device cannot be resolved
    (or whose binding fails under ``error``) prints one line and exits with status 1 before ``target`` runs.
    The process is returned unstarted; call ``.start()``.
    """
    ctx = multiprocessing.get_context("spawn")
    bind_kwargs = {"mode": mode, "memory": memory, "on_failure": on_failure}
    return ctx.Process(target=_bound_target, args=(logical_id, bind_kwargs, dict(env) if env else None, target,
                                                   tuple(args), dict(kwargs or {})), **process_kwargs)


def initializer(logical_id: int, mode: str = "node", memory: str = DEFAULT_MEMORY,
                on_failure: str | None = None) -> None:
    """For ``multiprocessing.get_context("spawn").Pool(initializer=gpuaffinity.launch.initializer,
    initargs=(device,))``: bind each pool worker before it takes work (``on_failure`` None: the worker's
    GPUAFFINITY_ON_FAILURE, else ``warn``)."""
    from gpuaffinity.placement import bind

    bind(logical_id, mode=mode, memory=memory, on_failure=on_failure)
