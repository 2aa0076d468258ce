"""A simulated machine: the built libraries, a rendered config and a fake sysfs.

``simulated(topology)`` prepares everything in a private temporary folder and
removes it on exit; its ``env`` is the environment a child process needs to
see the simulated GPUs through the real pynvml, cuda.bindings, torch or any
other program that loads ``libnvidia-ml.so.1`` and ``libcuda.so.1``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.settings import DEV_VAR, PROCFS_VAR, SYSFS_VAR
from gpuaffinity.core.settings import SIM_ALLOWED_VAR as ALLOWED_VAR
from gpuaffinity.core.settings import SIM_CONFIG_VAR as CONFIG_VAR
from gpuaffinity.core.settings import SIM_COUNTERS_VAR as COUNTERS_VAR
from gpuaffinity.core.settings import SIM_FAULTS_VAR as FAULTS_VAR
from gpuaffinity.core.settings import SIM_START_MASK_VAR as START_MASK_VAR
from gpuaffinity.core.settings import SIM_TOPOLOGY_VAR as TOPOLOGY_VAR
from gpuaffinity.sim.build import SimulatorError, library_dir
from gpuaffinity.sim.render import (
    render_config,
    render_dev,
    render_driver_binding,
    render_procfs,
    render_running,
    render_sysfs,
)
from gpuaffinity.sim.topology import ProcessView, Topology, load_topology


@dataclass(frozen=True)
class SimMachine:
    topology: Topology
    folder: Path
    libdir: Path
    config: Path
    sysfs: Path
    env: dict[str, str]


#: What the C side holds (csrc/sim_common.h): SIM_MAX_FAULTS faults, the whole value in a 4096-byte buffer.
MAX_FAULTS = 32
MAX_FAULTS_TEXT = 4095


def entry_points() -> frozenset[str]:
    """Every function the simulated libraries export (read from their sources)."""
    import re

    found: set[str] = set()
    for src in sorted(Path(__file__).with_name("csrc").glob("*.c")):
        found.update(re.findall(r"SIM_EXPORT\s+[\w\s*]+?\b(\w+)\s*\(", src.read_text()))
    return frozenset(found - {"gpuaffinitySimCallCount"})


def check_fault(spec: str) -> str:
    """Validate one ``NAME=CODE[:TIMES]`` fault; return it, or raise ValueError (one line)."""
    name, eq, rest = spec.partition("=")
    code, _, times = rest.partition(":")
    ok = bool(eq) and name.isidentifier() and name.isascii() and _is_int(code) and (
        not times or (times.isascii() and times.isdigit() and len(times) < 10))
    if not ok:
        raise ValueError(f"bad fault {spec[:80]!r}: want NAME=CODE or NAME=CODE:TIMES, e.g. cuInit=999 or "
                         "nvmlDeviceGetHandleByIndex=15:1")
    known = entry_points()
    # a name without a suffix also covers its _vN and WithFlags variants (csrc/sim_common.h)
    if not any(k == name or k.startswith(name) and (k[len(name):] == "WithFlags" or
                                                    k[len(name):len(name) + 2] == "_v") for k in known):
        raise ValueError(f"unknown fault name {name!r}: the simulator has no such entry point (see "
                         "docs/simulator.md; e.g. nvmlInit, nvmlDeviceGetHandleByIndex, cuInit)")
    return spec


#: NVML's DRIVER_NOT_LOADED and GPU_IS_LOST, and CUDA's NO_DEVICE
NVML_DRIVER_NOT_LOADED, NVML_GPU_IS_LOST, CUDA_NO_DEVICE = 9, 15, 100
#: the NVML entry points that give a GPU's handle: a lost GPU fails every one of them
HANDLE_CALLS = ("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByPciBusId", "nvmlDeviceGetHandleByUUID")


def fault_world(faults: Sequence[str]) -> tuple[list[str], bool]:
    """The faults as the machine they stand for, and whether the NVIDIA driver is absent there.

    Most faults are one entry point failing, and nothing else changes.  Two stand for a state of the machine,
    which every program must see alike, whatever it reads (gpuaffinity reads the driver's /proc files before
    NVML): ``nvmlInit=9`` (DRIVER_NOT_LOADED, for good: no ``:TIMES``) is a host without the kernel module,
    so no /proc/driver/nvidia, no /dev/nvidia* nodes, and ``cuInit`` fails with CUDA_ERROR_NO_DEVICE (unless a
    cuInit fault is given; modelled, not measured); a GPU_IS_LOST (15) fault for good on an entry point that
    gives a GPU's handle is every GPU fallen off the bus, so every handle call fails so (the other GPU calls
    need a handle first)."""
    out = list(faults)
    # as the libraries read a fault (csrc/sim_common.c): the code in any base strtol takes, a name with or
    # without its _vN / WithFlags variant; with :TIMES it is a passing failure, not a state
    parsed = [(n, int(code, 0), bool(times)) for n, _, rest in (f.partition("=") for f in faults)
              for code, _, times in [rest.partition(":")]]
    lasting = [(n, c) for n, c, passing in parsed if not passing]

    def covers(name: str, base: str) -> bool:
        rest = name[len(base):]
        return name.startswith(base) and (rest in ("", "WithFlags") or rest[:2] == "_v" and rest[2:].isdigit())

    no_driver = any(covers(n, "nvmlInit") and c == NVML_DRIVER_NOT_LOADED for n, c in lasting)
    if no_driver:
        out.append(f"nvmlInit={NVML_DRIVER_NOT_LOADED}")  # every variant: pynvml and gpuaffinity call different ones
        if not any(covers(n, "cuInit") for n, _c, _t in parsed):
            out.append(f"cuInit={CUDA_NO_DEVICE}")
    if any(covers(n, c) for c in HANDLE_CALLS for n, code in lasting if code == NVML_GPU_IS_LOST):
        out += [f"{c}={NVML_GPU_IS_LOST}" for c in HANDLE_CALLS]
    return list(dict.fromkeys(out)), no_driver


def check_faults(specs: Sequence[str]) -> list[str]:
    """Validate every fault and what the simulator can hold of them; ValueError (one line) otherwise."""
    out = [check_fault(f) for f in specs]
    if len(out) > MAX_FAULTS:
        raise ValueError(f"{len(out)} faults: the simulator holds at most {MAX_FAULTS}")
    if len(",".join(out)) > MAX_FAULTS_TEXT:
        raise ValueError(f"the faults take {len(','.join(out))} characters: the simulator holds at most "
                         f"{MAX_FAULTS_TEXT}")
    return out


def _is_int(s: str) -> bool:
    if not s.isascii() or len(s) > 12:
        return False
    try:
        value = int(s, 0)
    except ValueError:
        return False
    return -(1 << 31) <= value < 1 << 31


@contextmanager
def simulated(topology: Topology | str | os.PathLike[str], *, faults: Sequence[str] = (),
              counters: str | os.PathLike[str] | None = None, cpuset: str | None = None,
              base_env: Mapping[str, str] | None = None, process: ProcessView | None = None) -> Iterator[SimMachine]:
    """The machine ready to run programs on; ``process`` replaces the topology's own process view
    (which GPUs the process can open, and how the others are kept away)."""
    topo = topology if isinstance(topology, Topology) else load_topology(os.fspath(topology))
    if process is not None:
        topo = replace(topo, process=process)
    check_faults(faults)
    faults, no_driver = fault_world(faults)
    check_faults(faults)
    allowed = topo.cpus
    if cpuset is not None:
        try:
            allowed = parse_cpulist(cpuset)
        except ValueError as e:
            raise ValueError(f"bad --cpuset: {e}") from None
        if not allowed <= topo.cpus:
            raise ValueError(f"--cpuset names CPUs the machine does not have: {format_cpulist(allowed - topo.cpus)} "
                             f"(it has {format_cpulist(topo.cpus)})")
    libdir = library_dir()
    folder = Path(tempfile.mkdtemp(prefix="gpuaffinity-sim-"))
    try:
        config = folder / "machine.conf"
        config.write_text(render_config(topo))
        sysfs = folder / "sys"
        render_sysfs(topo, sysfs)
        render_driver_binding(topo, sysfs)
        if no_driver:  # no kernel module: no /proc/driver/nvidia, no device nodes (fault_world)
            (folder / "proc").mkdir()
            (folder / "dev").mkdir()
        else:
            render_procfs(topo, folder / "proc")
            render_dev(topo, folder / "dev")
        render_running(topo, folder / "proc", folder / "dev", driver=not no_driver)  # the other processes
        env = dict(os.environ if base_env is None else base_env)
        for var, value in topo.process.env:  # what the scheduler sets, unless the caller set it
            env.setdefault(var, value)
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{libdir}{os.pathsep}{old}" if old else str(libdir)
        env[CONFIG_VAR] = str(config)
        env[SYSFS_VAR] = str(sysfs)
        env[PROCFS_VAR] = str(folder / "proc")
        env[DEV_VAR] = str(folder / "dev")
        env[TOPOLOGY_VAR] = topo.source
        env[ALLOWED_VAR] = format_cpulist(allowed)
        env[START_MASK_VAR] = format_cpulist(os.sched_getaffinity(0))  # narrower later: bound since
        if faults:
            env[FAULTS_VAR] = ",".join(faults)
        if counters is not None:
            counters = os.path.abspath(counters)
            try:
                os.makedirs(counters, exist_ok=True)
            except OSError as e:
                raise SimulatorError(f"--counters {counters}: cannot use it as a folder ({e.strerror or e})") \
                    from None
            env[COUNTERS_VAR] = counters
        yield SimMachine(topo, folder, libdir, config, sysfs, env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_counters(folder: str | os.PathLike[str]) -> dict[tuple[int, str], dict[str, int]]:
    """Counters the fake libraries wrote: {(pid, "nvml" or "cuda"): {call: count}}."""
    out: dict[tuple[int, str], dict[str, int]] = {}
    for p in Path(folder).glob("*.counts"):
        pid, lib, _ = p.name.split(".", 2)
        counts: dict[str, int] = {}
        for line in p.read_text().splitlines():
            name, _, n = line.partition(" ")
            counts[name] = int(n)
        out[(int(pid), lib)] = counts
    return out


__all__ = ["SimMachine", "SimulatorError", "check_fault", "read_counters", "simulated"]
