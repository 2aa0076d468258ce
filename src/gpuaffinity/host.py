"""One look at this machine for one command: what every stage after the GPU list takes, read once.

A ``Host`` is built from one settings snapshot (``Settings.inventory_env``: the file roots, the inventory's
source) and owns, for its lifetime:

* **one NVML session**, opened at its first use (the GPU list where it comes from NVML, then locality) and shut
  down by ``close()``: a command starts NVML once, whichever stages ask;
* **the CPUs and memory nodes this process may use** (``numa.query.allowed_cpus``, ``allowed_memory_nodes``),
  read once;
* **one sysfs view** (``numa.sysfs.Sysfs``: each file read once);
* **the GPU list** (``gpuaffinity.inventory``), read once;
* **each GPU's locality**, asked once (``localities``).

A command (the CLI, ``plan``, ``bind``) opens one with ``scope()``; a resolution run inside that scope takes it,
and one run outside builds its own and closes it at its end.  The NVML session never outlives the outermost
scope: nothing of NVML is left initialised in the process after a call returns (a process that forks workers
afterwards gives them no NVML state), and the CPUs allowed are read afresh by the next command (a binding
changes them).

Locality asks NVML only where NVML's answer can change it: a host whose sysfs lists one NUMA node, and every
asked GPU's ``numa_node`` file present, gets its answer from sysfs alone (``numa.query.nvml_can_matter`` owns
that rule and says why it is equal).

The Host is the layer above the stages: it imports them (lazily), and none of them imports it.

Owns: one command's look at the machine: its NVML session and the facts read once for the command.
"""

from __future__ import annotations

import os

from gpuaffinity import _state
from gpuaffinity.core.settings import DEV_VAR, PROCFS_VAR, SIM_ALLOWED_VAR, SIM_START_MASK_VAR, SOURCE_VAR, SYSFS_VAR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from gpuaffinity.core.model import Inventory
    from gpuaffinity.numa.query import Locality
    from gpuaffinity.numa.sysfs import Sysfs
    from gpuaffinity.nvml_lite import Session

#: the snapshot's variables a Host takes (Settings.inventory_env)
_ROOTS = (PROCFS_VAR, DEV_VAR, SYSFS_VAR, SOURCE_VAR)
#: the variables a Host reads besides the snapshot's roots: the simulator's cpuset and its start mask
_OWN_VARS = (SIM_ALLOWED_VAR, SIM_START_MASK_VAR)


class Host:
    """What one command sees of this machine (see the module's text).  Not thread-safe on its own: used under
    ``gpuaffinity._state.lock``, as every cold path is."""

    def __init__(self, env: Mapping[str, str | None] | None = None, session: Session | None = None) -> None:
        """``env``: the snapshot's roots (``Settings.inventory_env``; default: os.environ); ``session``: an NVML
        session the caller has open and keeps: used, never shut down here."""
        base = os.environ if env is None else env
        #: the roots and the inventory's source, as the snapshot gave them (None: the real machine's)
        self.env: dict[str, str | None] = {k: base.get(k) for k in _ROOTS}
        self.env.update({k: os.environ.get(k) for k in _OWN_VARS})
        self._nv: Session | None = session
        self._given = session
        self._sysfs: Sysfs | None = None
        self._allowed: frozenset[int] | None = None
        self._locs: dict[str, Locality] = {}
        self._inventory: Inventory | None = None
        self._mems: object = _UNREAD
        #: callers that asked for locality early (the command line, while a forked probe initialises CUDA)
        self.eager = False
        #: ask NVML whether each GPU is lost even where its locality needs no NVML (doctor: a health report)
        self.health = False
        #: how many NVML sessions this host started (what tests count: at most one a scope)
        self.nvml_starts = 0

    # ---- the NVML session ------------------------------------------------------------------------

    def nvml(self) -> Session:
        """The host's NVML session, started at the first call; NvmlLiteError where NVML cannot be loaded or
        started (nothing is kept then: the next call tries again)."""
        if self._nv is None:
            from gpuaffinity.nvml_lite import Session

            nv = Session()
            nv.__enter__()
            self.nvml_starts += 1
            self._nv = nv
        return self._nv

    @property
    def open_session(self) -> Session | None:
        """The NVML session where one is open now (started, or the caller's), else None: nothing is started."""
        return self._nv

    def close(self) -> None:
        """Shut the NVML session down, if one was started (the facts already read stay)."""
        nv, self._nv = self._nv, self._given
        if nv is not None and nv is not self._given:
            nv.__exit__()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the facts -------------------------------------------------------------------------------

    @property
    def sysfs(self) -> Sysfs:
        if self._sysfs is None:
            from pathlib import Path

            from gpuaffinity.numa.sysfs import Sysfs

            self._sysfs = Sysfs(Path(self.env[SYSFS_VAR] or "/sys"))
        return self._sysfs

    @property
    def allowed_cpus(self) -> frozenset[int]:
        if self._allowed is None:
            from gpuaffinity.numa.query import allowed_cpus

            self._allowed = allowed_cpus(self.env)
        return self._allowed

    @property
    def allowed_mems(self) -> frozenset[int] | None:
        """The NUMA nodes this process may allocate on (``Mems_allowed_list``), None where the kernel does not
        say; read once."""
        if self._mems is _UNREAD:
            from gpuaffinity.numa.query import allowed_memory_nodes

            self._mems = allowed_memory_nodes(self.env)
        return self._mems  # type: ignore[return-value]

    def inventory(self) -> Inventory:
        """This process's GPU list (gpuaffinity.inventory), read once for this host's life, NVML asked through
        this host's session."""
        if self._inventory is None:
            from gpuaffinity.inventory import read_inventory

            self._inventory = read_inventory(self.env, host=self)
        return self._inventory

    def localities(self, bus_ids: Iterable[str]) -> dict[str, Locality]:
        """Each GPU's locality (numa.query), by bus id, each asked once for this host's life."""
        from gpuaffinity.numa.query import localities

        ids = list(dict.fromkeys(bus_ids))
        todo = [b for b in ids if b not in self._locs]
        if todo:
            self._locs.update(localities(todo, host=self))
        return {b: self._locs[b] for b in ids}

    def while_probing(self, bus_ids: Iterable[str]) -> None:
        """Work for the time a forked probe initialises CUDA (about 0.5 s on the lent H200s): where the caller
        asked for it (``eager``), each GPU's locality, which depends on the bus id and this process only."""
        if self.eager:
            self.localities(bus_ids)


_current: Host | None = None
_UNREAD = object()


class scope:
    """``with scope() as host:``: the Host every resolution and placement in the block takes (a nested scope
    takes the outer one).  Its NVML session is shut down when the outermost scope ends.  Holds
    ``_state.lock`` for the block."""

    def __init__(self, env: Mapping[str, str | None] | None = None, session: Session | None = None) -> None:
        """``env``: the snapshot's roots (``Settings.inventory_env``; default: os.environ); ``session``: an NVML
        session the caller has open and keeps: used, never shut down here."""
        self._env = env
        self._own = False

    def __enter__(self) -> Host:
        global _current
        self._pid = os.getpid()
        _state.lock.acquire()
        try:
            if _current is None:
                _current, self._own = Host(self._env), True
            return _current
        except BaseException:
            _state.lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        global _current
        if os.getpid() != self._pid:
            # a child forked inside the block: it started outside the scope with a lock of its own (_state's fork
            # hooks), so there is nothing of the parent's to release or shut down here
            return
        try:
            if self._own:
                host, _current = _current, None
                if host is not None:
                    host.close()
        finally:
            _state.lock.release()


def current(env: Mapping[str, str | None]) -> Host | None:
    """The scope's Host where one is open and was built over the same roots as ``env`` (a snapshot taken under
    other variables gets a Host of its own); else None."""
    host = _current
    if host is None:
        return None
    if any(host.env.get(k) != env.get(k) for k in _ROOTS):
        return None
    return host

