"""The one lock every cold path of gpuaffinity runs under, made safe across fork().

A child forked while another thread is half-way through a resolution would
inherit, held, locks that no thread of the child will ever release: this one,
pynvml's library lock (taken at every nvmlInit and nvmlShutdown) and the import
locks of the modules a first call imports lazily; the child would hang on the
first of them it needs (seen: 1 child in 8 hung on an import lock).  So fork()
waits for the lock (``before``), and the child starts with fresh locks.  The
hooks are registered when the package is imported, before any lazy import can
start; ``_thread`` is built in, so this costs nothing at import.
"""

from __future__ import annotations

import _thread
import os
import sys

#: Reentrant, so that a strategy that forks while resolving does not deadlock in the fork hook.
lock = _thread.RLock()
_forking = _thread._local()

def _before_fork() -> None:
    lock.acquire()
    _forking.held = True


def _after_fork_in_parent() -> None:
    if getattr(_forking, "held", False):
        _forking.held = False
        lock.release()


def _after_fork_in_child() -> None:
    global lock
    lock = _thread.RLock()  # the child has one thread: nothing can be half-way through here
    host = sys.modules.get("gpuaffinity.host")
    if host is not None:  # a command's scope is the parent's: the child starts outside it (its NVML is the parent's)
        host._current = None
    pynvml = sys.modules.get("pynvml")
    held = getattr(pynvml, "libLoadLock", None)
    if held is not None and held.locked():  # taken by a thread of the parent that the child does not have
        pynvml.libLoadLock = _thread.allocate_lock()  # type: ignore[union-attr]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
