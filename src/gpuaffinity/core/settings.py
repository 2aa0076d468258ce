"""One snapshot of everything that decides a resolution: the cache key, and what the resolution reads.

The environment is read once per call, here.  The snapshot is the cache key,
and the resolution it keys reads its inputs from the snapshot, never from
``os.environ`` again: a thread that changes CUDA_VISIBLE_DEVICES while another
resolves cannot leave an answer under the wrong key.

Owns: the snapshot of the environment a resolution reads, its cache key, and the registry of gpuaffinity's variables.
"""

from __future__ import annotations

import os

from gpuaffinity.core.errors import GpuAffinityError
from gpuaffinity.core.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

CVD = "CUDA_VISIBLE_DEVICES"
ORDER = "CUDA_DEVICE_ORDER"
POLICY_VAR = "GPUAFFINITY_POLICY"
DISABLE_VAR = "GPUAFFINITY_DISABLE"
NO_SUBPROCESS_VAR = "GPUAFFINITY_NO_SUBPROCESS"
PROCFS_VAR = "GPUAFFINITY_PROCFS_ROOT"
DEV_VAR = "GPUAFFINITY_DEV_ROOT"
SYSFS_VAR = "GPUAFFINITY_SYSFS_ROOT"
SOURCE_VAR = "GPUAFFINITY_INVENTORY"

#: Every variable a resolution depends on, in the order of Settings' environment fields.
ENV_VARS = (CVD, ORDER, POLICY_VAR, DISABLE_VAR, NO_SUBPROCESS_VAR, PROCFS_VAR, DEV_VAR, SYSFS_VAR, SOURCE_VAR)

POLICIES = ("first", "verify", "strict")
#: The NUMA stage's choices (docs/numa.md), named once here so that the command line need not load that stage.
MODES = ("node", "socket", "exclusive", "llc")
MEMORY_POLICIES = ("preferred", "bind", "none")
#: The default memory policy everywhere one exists (plan, bind, the command line, the Ray hook, ray-check): it
#: spills to other nodes when the GPU's are full instead of getting the process killed (docs/numa.md).
DEFAULT_MEMORY = "preferred"
FAILURE_POLICIES = ("warn", "error")
ON_FAILURE_VAR = "GPUAFFINITY_ON_FAILURE"
#: The binding a program was started with (``gpuaffinity bind ID -- CMD``): read by ``gpuaffinity check`` from
#: /proc/PID/environ (gpuaffinity.intent).
BOUND_VAR = "GPUAFFINITY_BOUND"
#: The simulator's own variables (csrc/sim_common.h, gpuaffinity.sim.machine).
SIM_FAULTS_VAR = "GPUAFFINITY_SIM_FAULTS"
SIM_COUNTERS_VAR = "GPUAFFINITY_SIM_COUNTERS"
SIM_TOPOLOGY_VAR = "GPUAFFINITY_SIM_TOPOLOGY"
#: Set by ``gpuaffinity sim run``: the simulated machine's config; the roots below live beside it there.
SIM_CONFIG_VAR = "GPUAFFINITY_SIM_CONFIG"
SIM_ALLOWED_VAR = "GPUAFFINITY_SIM_ALLOWED_CPUS"
#: Set by ``gpuaffinity sim run``: this host's real CPU mask when the simulation began.  A process whose own mask is
#: narrower has been bound since, and its allowed CPUs narrow with it, as a real bound process's do (allowed_cpus).
SIM_START_MASK_VAR = "GPUAFFINITY_SIM_START_MASK"
#: Variables that replace what this machine says, meant for the simulator only.
SIM_ROOTS = (PROCFS_VAR, DEV_VAR, SYSFS_VAR, SIM_ALLOWED_VAR)
#: The Ray hook's choices (gpuaffinity.ray_worker), set by `ray-check` in the probes' runtime environment too.
RAY_MODE_VAR = "GPUAFFINITY_RAY_MODE"
RAY_MEMORY_VAR = "GPUAFFINITY_RAY_MEMORY"
#: A traceback instead of one line, for a bug of gpuaffinity (the command line).
DEBUG_VAR = "GPUAFFINITY_DEBUG"
#: Where the simulator keeps its compiled libraries (gpuaffinity.sim.build).
SIM_CACHE_VAR = "GPUAFFINITY_SIM_CACHE"

#: Every variable gpuaffinity reads: (name, shown by `gpuaffinity doctor` even when unset, what it does).  The one
#: list: doctor prints it, and a test holds it equal to the names the code reads.
VARIABLES: tuple[tuple[str, bool, str], ...] = (
    (CVD, True, "the CUDA devices this process sees, in their order"),
    (ORDER, True, "CUDA's device order: FASTEST_FIRST (the default) or PCI_BUS_ID"),
    (POLICY_VAR, True, "first, verify (the default) or strict"),
    (DISABLE_VAR, True, "plugins or strategies left out, by name"),
    (NO_SUBPROCESS_VAR, False, "1: never start a child process to ask the CUDA driver"),
    (SOURCE_VAR, False, "nvml: always list the GPUs with NVML"),
    (ON_FAILURE_VAR, False, "warn (the default) or error, for bind"),
    (BOUND_VAR, False, "the binding `gpuaffinity bind ID -- CMD` started this process with"),
    (RAY_MODE_VAR, False, "the Ray hook's mode"),
    (RAY_MEMORY_VAR, False, "the Ray hook's memory policy"),
    (DEBUG_VAR, False, "1: a traceback for a bug of gpuaffinity"),
    (SIM_CONFIG_VAR, False, "the simulated machine (gpuaffinity sim run)"),
    (SIM_TOPOLOGY_VAR, False, "the simulated machine's topology file"),
    (PROCFS_VAR, False, "the simulator's /proc"),
    (DEV_VAR, False, "the simulator's /dev"),
    (SYSFS_VAR, False, "the simulator's /sys"),
    (SIM_ALLOWED_VAR, False, "the simulator's cpuset"),
    (SIM_START_MASK_VAR, False, "this host's CPU mask when the simulation began"),
    (SIM_FAULTS_VAR, False, "faults the simulator injects"),
    (SIM_COUNTERS_VAR, False, "where the simulator counts calls"),
    (SIM_CACHE_VAR, False, "where the simulator keeps its compiled libraries"),
)


def stray_sim_variables(env: dict[str, str] | os._Environ | None = None) -> list[str]:
    """Warnings for simulator variables set outside ``gpuaffinity sim run``: each one makes gpuaffinity answer
    for another machine than this one (a /proc with other GPUs, a cpuset wider than this process's)."""
    env = os.environ if env is None else env
    config = env.get(SIM_CONFIG_VAR) or ""
    # the config's own folder, made absolute as the roots are: a relative config ("m.json") has the folder ""
    home = os.path.dirname(os.path.abspath(config)) if config and os.path.isfile(config) else None
    out = []
    for var in SIM_ROOTS:
        value = env.get(var)
        if value is None:
            continue
        inside = home is not None and (var == SIM_ALLOWED_VAR or os.path.abspath(value).startswith(home + os.sep))
        if not inside:
            out.append(f"gpuaffinity: {var}={value[:120]!r} is set outside `gpuaffinity sim run`: gpuaffinity "
                       f"reads {'its CPU list' if var == SIM_ALLOWED_VAR else 'that folder'} instead of this "
                       f"machine's; unset it unless you mean it")
    return out

# os.environ.get encodes the name on every call; the warm path reads the encoded mapping underneath
# it directly where CPython has one (tests/test_resolve.py checks it against the public mapping).
_ENV = getattr(os.environ, "_data", None)
_ENV_B = tuple(v.encode() for v in ENV_VARS)
_FAST = isinstance(_ENV, dict) and os.name == "posix" and hasattr(os, "fsdecode")


#: Variables strategies declared they read (Strategy.env_vars): they join the key once a resolution saw them.
_EXTRA: tuple[str, ...] = ()
_EXTRA_KEYS: tuple = ()

if _FAST:
    _get = _ENV.get  # type: ignore[union-attr]
    _B0, _B1, _B2, _B3, _B4, _B5, _B6, _B7, _B8 = _ENV_B

    def make_key(policy: str | None, disable: tuple[str, ...] | None, allow_subprocess: bool) -> tuple:
        """The cache key of a call now: its options (``disable`` already normalised) and one read of ENV_VARS
        and of the strategies' declared variables (bytes, from the encoded mapping; written out, twice as fast
        as a loop: this is the warm path)."""
        g = _get
        key = (policy, disable, allow_subprocess, g(_B0), g(_B1), g(_B2), g(_B3), g(_B4), g(_B5), g(_B6), g(_B7),
               g(_B8))
        return key + tuple(map(g, _EXTRA_KEYS)) if _EXTRA_KEYS else key
else:  # pragma: no cover - platforms without the encoded mapping
    def make_key(policy: str | None, disable: tuple[str, ...] | None, allow_subprocess: bool) -> tuple:
        """The cache key of a call now: its options and one read of ENV_VARS and the declared variables."""
        return (policy, disable, allow_subprocess, *map(os.environ.get, ENV_VARS), *map(os.environ.get, _EXTRA))


#: how long the part of every key is that holds the options and ENV_VARS (a strategy's declared variables follow)
KEY_BASE = 3 + len(ENV_VARS)


def watch(names: Iterable[str]) -> bool:
    """Add variables that strategies read to every later key; True when that changed the key's shape."""
    global _EXTRA, _EXTRA_KEYS
    new = sorted(set(_EXTRA) | set(names))
    if tuple(new) == _EXTRA:
        return False
    _EXTRA = tuple(new)
    _EXTRA_KEYS = tuple(v.encode() for v in _EXTRA) if _FAST else _EXTRA
    return True


def _str(value: str | bytes | None) -> str | None:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def normalize_disable(disable: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """Names to leave out, from any iterable of names or one comma-separated string."""
    if disable is None:
        return None
    if isinstance(disable, str):
        names = disable.split(",")
    else:
        names = list(disable)
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"disable must hold strategy or plugin names (strings), not {type(n).__name__}")
    out = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    return out or None


@record(frozen=True)
class Settings:
    """What one resolution reads: the caller's options and the environment, read once."""

    cvd: str | None
    device_order: str | None
    policy_arg: str | None
    policy_env: str | None
    disable_arg: tuple[str, ...] | None
    disable_env: str | None
    allow_subprocess: bool
    no_subprocess_env: str | None
    procfs_root: str | None
    dev_root: str | None
    sysfs_root: str | None
    inventory_source: str | None
    #: the variables strategies declared (``env_vars``) that the key holds, with their values
    extra: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def from_key(cls, key: tuple) -> Settings:
        policy, disable, allow, *values = key
        cvd, order, pol, dis, nosub, procfs, dev, sysfs, source = (_str(v) for v in values[:len(ENV_VARS)])
        declared = values[len(ENV_VARS):]
        # the key holds the declared variables in the order of _EXTRA when it was made; where more were declared
        # since (watch, another thread), which value is which cannot be told: none is kept, and they are read anew
        extra = tuple(zip(_EXTRA, map(_str, declared), strict=True)) if len(declared) == len(_EXTRA) else ()
        return cls(cvd, order, policy, pol, disable, dis, allow, nosub, procfs, dev, sysfs, source, extra)

    @property
    def policy(self) -> str:
        """The policy in force; GpuAffinityError naming the source when it is not one of POLICIES."""
        chosen = self.policy_arg or self.policy_env or "verify"
        if chosen not in POLICIES:
            source = "policy argument" if self.policy_arg else POLICY_VAR
            raise GpuAffinityError(f"unknown {source} {chosen[:80]!r}: choose one of {', '.join(POLICIES)}")
        return chosen

    @property
    def disabled(self) -> frozenset[str]:
        names = set(self.disable_arg or ())
        names.update(n.strip() for n in (self.disable_env or "").split(",") if n.strip())
        return frozenset(names)

    @property
    def subprocess_allowed(self) -> bool:
        return self.allow_subprocess and (self.no_subprocess_env or "") in ("", "0")

    @property
    def inventory_env(self) -> dict[str, str | None]:
        return {PROCFS_VAR: self.procfs_root, DEV_VAR: self.dev_root, SYSFS_VAR: self.sysfs_root,
                SOURCE_VAR: self.inventory_source}
