"""Topology files: a machine's NUMA nodes, CPUs and GPUs, in TOML.

The simulator's input and a user-facing format (schema in docs/simulator.md).
``load_topology`` reads and checks one file; every problem is reported as a
``TopologyError`` whose message names the file, the field and what is wrong.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.errors import TopologyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PRESET_DIR = Path(__file__).with_name("presets")

_HEX_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GPU_UUID_RE = re.compile(rf"GPU-{_HEX_UUID}")
MIG_UUID_RE = re.compile(rf"MIG-{_HEX_UUID}")
PCI_BUS_ID_RE = re.compile(r"([0-9a-fA-F]{4}|[0-9a-fA-F]{8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")




#: The C side's limits (csrc/sim_common.h): CPUs and NUMA node ids in an affinity mask of 16 64-bit words.
MAX_CPU = MAX_NODE = 1024


@dataclass(frozen=True)
class MigInstance:
    uuid: str
    gpu_instance: int
    compute_instance: int
    name: str
    memory_mib: int
    multiprocessors: int


@dataclass(frozen=True)
class Gpu:
    uuid: str
    pci_bus_id: str  # 0000:3b:00.0, lower case, 4-digit domain: the sysfs form
    name: str
    numa_node: int  # -1: no locality given
    cuda_order: int | None
    memory_mib: int
    compute_capability: tuple[int, int]
    multiprocessors: int
    pci_device_id: int
    pci_subsystem_id: int
    migs: tuple[MigInstance, ...] = ()
    gpu_memory_node: int | None = None  # the node holding the GPU's own memory (Grace Hopper), if any
    nvml_numa_node: int | None = None  # with numa_node = -1: the node NVML names anyway (a GPU behind a switch)
    #: the driver excludes it (NVreg_ExcludedGpus): /proc lists it with "GPU Excluded: Yes", NVML and CUDA do not
    excluded: bool = False

    @property
    def pci_fields(self) -> tuple[int, int, int, int]:
        m = PCI_BUS_ID_RE.fullmatch(self.pci_bus_id)
        assert m is not None
        return (int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4], 16))


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: frozenset[int]  # every CPU of the node, offline ones included
    socket: int
    memory_mib: int = 65536  # 0: a node with CPUs but no memory


#: How the GPUs a process may not use are kept from it.
OTHERS = ("denied", "absent", "readonly")
#: What the driver's /proc shows the process: every GPU of the host, or only its own.
PROC_VIEWS = ("host", "masked")


@dataclass(frozen=True)
class ProcessView:
    """What one process on the machine may open: a deployment shape.

    ``gpus``: PCI-order positions of the GPUs whose device node opens (None:
    all).  ``others``: how the rest are kept away: ``denied`` (the node is
    there, the open is refused, as a device cgroup does) or ``absent`` (no
    node, as in a container given some nodes).  ``proc``: ``host`` (the
    driver's /proc lists every GPU) or ``masked`` (only the process's, as the
    NVIDIA container toolkit arranges).  ``migs``: the MIG instances (UUIDs)
    the process may use (None: all of its GPUs').  ``env``: variables the
    scheduler sets for the process (``sim run`` applies those not already set).
    """

    gpus: tuple[int, ...] | None = None
    others: str = "denied"
    proc: str = "host"
    migs: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()

    @property
    def restricted(self) -> bool:
        return self.gpus is not None or self.migs is not None or self.proc != "host"

    def opens(self, index: int) -> bool:
        return self.gpus is None or index in self.gpus

    def uses_mig(self, uuid: str) -> bool:
        return self.migs is None or uuid.lower() in (m.lower() for m in self.migs)


#: pids and tids stay below PID_MAX_LIMIT (4194304), the largest pid_max Linux allows.
PID_LIMIT = 4194304
#: The states a simulated process or thread may be in, and the words /proc/PID/status prints for each.
STATES = {"R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "Z": "zombie", "I": "idle"}
#: Memory policy modes as the kernel prints them in numa_maps (mm/mempolicy.c).
POLICY_MODES = ("default", "local", "prefer", "bind", "interleave", "weighted interleave", "prefer (many)")
#: Page sizes a mapping may have: base pages, and 2 MiB or 1 GiB hugetlb pages.
PAGE_SIZES_KB = (4, 2048, 1048576)
#: The C side's limit (csrc/sim_common.h, SIM_MAX_PROCS): processes with a CUDA context on one GPU.
MAX_CONTEXTS = 128
#: What a topology writes for GPU memory NVML cannot tell (NVML_VALUE_NOT_AVAILABLE).
NOT_AVAILABLE = "n/a"


@dataclass(frozen=True)
class Mapping:
    """One memory mapping (VMA) of a simulated process: one line of its numa_maps."""

    policy: str | None  # the VMA's own policy as the kernel prints it; None: the task's policy shows
    pages: tuple[tuple[int, int], ...]  # (node, pages) in node order, pages > 0 only
    file: str | None = None  # the mapped file; None: anonymous memory
    kind: str | None = None  # "heap" or "stack" (anonymous only)
    kernelpagesize_kb: int = 4

    @property
    def total(self) -> int:
        return sum(n for _, n in self.pages)


@dataclass(frozen=True)
class Thread:
    """A thread of a simulated process other than its main thread."""

    tid: int
    name: str
    cpus: frozenset[int]
    state: str = "S"


@dataclass(frozen=True)
class Context:
    """A CUDA context of a simulated process: what NVML's running-process list reports on ``gpu``."""

    gpu: int  # PCI-order position
    mib: int | None  # GPU memory used; None: NVML_VALUE_NOT_AVAILABLE
    mig: int | None = None  # index of the MIG instance of that GPU, or None


@dataclass(frozen=True)
class RunningProcess:
    """A process running on the simulated machine (``[[running]]``), rendered as a fake /proc/<pid>."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    uid: int
    gid: int
    ppid: int
    state: str
    kernel_thread: bool
    readable: bool
    environ: tuple[tuple[str, str], ...]
    cpus: frozenset[int]
    mems: frozenset[int]
    policy: str
    exe: str
    opens: tuple[int, ...]  # PCI-order positions of the GPUs whose device node it holds open
    contexts: tuple[Context, ...]
    binding: str | None  # the binding record, as JSON text
    threads: tuple[Thread, ...] = ()
    mappings: tuple[Mapping, ...] = ()

    @property
    def has_mm(self) -> bool:
        """Whether it has an address space: kernel threads and zombies have none."""
        return not self.kernel_thread and self.state != "Z"


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    nodes: tuple[NumaNode, ...]
    gpus: tuple[Gpu, ...]  # NVML order: ascending PCI bus id
    threads_per_core: int = 1
    driver_version: str = "580.159.04"
    cuda_driver_version: int = 13000
    source: str = "<memory>"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    process: ProcessView = ProcessView()
    offline_cpus: frozenset[int] = frozenset()
    l3: int | str | None = None  # cores per last-level cache in a node, "node", "package", or None: no cache files
    sysfs_quirks: tuple[str, ...] = ()
    running: tuple[RunningProcess, ...] = ()  # other processes on the machine ([[running]])

    @property
    def all_cpus(self) -> frozenset[int]:
        """Every CPU the nodes name, offline ones included."""
        return frozenset().union(*(n.cpus for n in self.nodes))

    @property
    def cpus(self) -> frozenset[int]:
        """The online CPUs."""
        return self.all_cpus - self.offline_cpus

    def node(self, node_id: int) -> NumaNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def cuda_default_order(self) -> list[int]:
        """NVML indices in CUDA's FASTEST_FIRST order (PCI order breaks ties)."""
        def rank(i: int) -> tuple[int, int]:
            r = self.gpus[i].cuda_order
            return (i if r is None else r, i)
        return sorted(range(len(self.gpus)), key=rank)

    def cores(self) -> list[tuple[int, ...]]:
        """Physical cores as tuples of hyperthread siblings, node by node.

        A node's sorted CPU list is cut into ``threads_per_core`` equal runs; the
        k-th CPU of each run share core k (how Linux numbers Intel and AMD parts:
        0-55 are first threads, 112-167 their siblings).
        """
        out: list[tuple[int, ...]] = []
        for n in self.nodes:
            cpus = sorted(n.cpus)
            per = len(cpus) // self.threads_per_core
            out.extend(tuple(cpus[k + t * per] for t in range(self.threads_per_core)) for k in range(per))
        return out


_TOP_KEYS = {"name", "description", "threads_per_core", "driver_version", "cuda_driver_version",
             "numa_node", "gpu", "base", "process", "offline_cpus", "l3", "sysfs_quirks", "running"}
_PROCESS_KEYS = {"gpus", "others", "proc", "mig", "env"}
_NODE_KEYS = {"id", "cpus", "socket", "memory_mib"}
_GPU_KEYS = {"uuid", "pci_bus_id", "name", "numa_node", "cuda_order", "memory_mib",
             "compute_capability", "multiprocessors", "pci_device_id", "pci_subsystem_id", "mig",
             "gpu_memory_node", "nvml_numa_node", "excluded"}
#: Ways real sysfs trees differ from the textbook one; the simulator renders each on request (docs/simulator.md).
SYSFS_QUIRKS = ("nul-terminated", "no-node-cpulist", "no-numa-node", "no-local-cpulist", "hex-siblings",
                "package-unknown", "local-cpulist-contradicts", "cache-reordered", "no-l1i")
_RUNNING_KEYS = {"pid", "name", "cmdline", "uid", "gid", "ppid", "state", "kernel_thread", "readable", "environ",
                 "cpus", "mems", "policy", "exe", "opens", "contexts", "binding", "thread", "mapping"}
_THREAD_KEYS = {"tid", "name", "cpus", "state"}
_MAPPING_KEYS = {"policy", "pages", "file", "kind", "kernelpagesize_kB"}
_MIG_KEYS = {"uuid", "gpu_instance", "compute_instance", "name", "memory_mib", "multiprocessors"}

# Defaults by model name: (memory MiB, compute capability, SMs, PCI device id)
_MODELS = {
    "H100": (81559, (9, 0), 132, 0x233010DE),
    "H200": (143771, (9, 0), 132, 0x233510DE),
    "A100": (81920, (8, 0), 108, 0x20B210DE),
    "L40S": (46068, (8, 9), 142, 0x26B910DE),
    "A10": (23028, (8, 6), 72, 0x223610DE),
    "T4": (15360, (7, 5), 40, 0x1EB810DE),
}


def _model_defaults(name: str) -> tuple[int, tuple[int, int], int, int]:
    for key, val in _MODELS.items():
        if key in name:
            return val
    return (16384, (8, 0), 80, 0x20B010DE)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def resolve_topology_path(spec: str | Path) -> Path:
    """A preset name or a path to a topology file."""
    shown = repr(str(spec)) if len(str(spec)) <= 120 else f"{str(spec)[:120]!r}..."
    if not str(spec).strip():
        raise TopologyError(f"{shown}: no topology given: name a preset (`gpuaffinity sim list`) or a topology file")
    try:
        p = Path(spec)
        bare = p.suffix != ".toml" and "/" not in str(spec)
        if bare and (PRESET_DIR / f"{spec}.toml").is_file():  # a preset's name is the preset, whatever the
            return PRESET_DIR / f"{spec}.toml"                # working directory holds (write ./NAME for a file)
        if not bare or p.exists():
            if p.is_dir():
                raise TopologyError(f"{shown} is a directory, not a topology file: name a .toml file in it, or a "
                                    "preset (`gpuaffinity sim list`)")
            if p.exists() and not p.is_file():
                raise TopologyError(f"{shown} is not a regular file (a device, a pipe or a socket): name a topology "
                                    "file (.toml)")
            if not p.is_file():
                raise TopologyError(f"{shown}: no such topology file")
            return p
        preset = PRESET_DIR / f"{spec}.toml"
        if not preset.is_file():
            raise TopologyError(
                f"{shown} is neither a topology file nor a preset (presets: {', '.join(list_presets())})")
        return preset
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        if isinstance(e, TopologyError):
            raise
        raise TopologyError(f"{shown} cannot be a topology file or a preset ({e.__class__.__name__})") from None


def load_topology(spec: str | Path, _depth: int = 0) -> Topology:
    if _depth > 4:
        raise TopologyError(f"{spec}: `base` nests more than 4 deep")
    path = resolve_topology_path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise TopologyError(f"{path}: not valid TOML: nested too deeply") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TopologyError(f"{path}: cannot read: {e}") from None
    return parse_topology(data, str(path), _depth)


def parse_topology(data: dict[str, Any], source: str = "<memory>", _depth: int = 0) -> Topology:
    """Check a parsed TOML document and build the Topology it describes."""
    c = _Checker(source)
    c.keys(data, _TOP_KEYS, "")
    if "base" in data:
        return _derived(c, data, _depth)
    name = c.typed(data, "name", str, "", required=True)
    tpc = c.typed(data, "threads_per_core", int, "", default=1)
    if tpc not in (1, 2, 4, 8):
        c.fail("threads_per_core", f"must be 1, 2, 4 or 8, not {tpc}")

    nodes: list[NumaNode] = []
    seen_cpus: dict[int, int] = {}
    raw_nodes = c.table_list(data, "numa_node", "")
    if not raw_nodes:
        c.fail("numa_node", "at least one [[numa_node]] is required")
    for i, raw in enumerate(raw_nodes):
        where = f"numa_node[{i}]"
        c.keys(raw, _NODE_KEYS, where)
        nid = c.typed(raw, "id", int, where, required=True)
        if not 0 <= nid < MAX_NODE:
            c.fail(f"{where}.id", f"must be 0 to {MAX_NODE - 1}, not {nid}")
        if any(n.id == nid for n in nodes):
            c.fail(f"{where}.id", f"duplicate NUMA node id {nid}")
        cpus_text = c.typed(raw, "cpus", str, where, required=True)
        try:
            cpus = parse_cpulist(cpus_text, limit=MAX_CPU)
        except ValueError as e:
            c.fail(f"{where}.cpus", f"bad cpulist (CPUs 0 to {MAX_CPU - 1}): {e}")
        for cpu in sorted(cpus):
            if cpu in seen_cpus:
                c.fail(f"{where}.cpus", f"CPU {cpu} is already in NUMA node {seen_cpus[cpu]}")
            seen_cpus[cpu] = nid
        if len(cpus) % tpc:
            c.fail(f"{where}.cpus", f"{len(cpus)} CPUs do not split into cores of {tpc} threads")
        socket = c.typed(raw, "socket", int, where, default=nid)
        mem = c.typed(raw, "memory_mib", int, where, default=65536)
        if mem < 0:
            c.fail(f"{where}.memory_mib", f"must be 0 or more, not {mem}")
        nodes.append(NumaNode(nid, cpus, socket, mem))
    node_ids = {n.id for n in nodes}
    offline, l3, quirks = _sysfs_keys(c, data, frozenset(seen_cpus))

    gpus: list[Gpu] = []
    uuids: dict[str, str] = {}
    buses: dict[str, str] = {}
    ranks: dict[int, str] = {}
    for i, raw in enumerate(c.table_list(data, "gpu", "")):
        where = f"gpu[{i}]"
        c.keys(raw, _GPU_KEYS, where)
        uuid = c.typed(raw, "uuid", str, where, required=True)
        if not GPU_UUID_RE.fullmatch(uuid):
            c.fail(f"{where}.uuid", f"malformed GPU UUID {uuid!r} (want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        c.unique(uuids, uuid.lower(), f"{where}.uuid", f"duplicate UUID {uuid}")
        bus = c.typed(raw, "pci_bus_id", str, where, required=True)
        m = PCI_BUS_ID_RE.fullmatch(bus)
        if not m:
            c.fail(f"{where}.pci_bus_id", f"malformed PCI bus id {bus!r} (want DDDD:BB:DD.F, e.g. 0000:3b:00.0)")
        dom = int(m[1], 16)
        if dom > 0xFFFF:
            c.fail(f"{where}.pci_bus_id", f"PCI domain of {bus!r} does not fit 16 bits")
        bus = f"{dom:04x}:{m[2].lower()}:{m[3].lower()}.{m[4]}"
        c.unique(buses, bus, f"{where}.pci_bus_id", f"duplicate PCI bus id {bus}")
        model = c.typed(raw, "name", str, where, required=True)
        node = c.typed(raw, "numa_node", int, where, required=True)
        if node != -1 and node not in node_ids:
            c.fail(f"{where}.numa_node", f"unknown NUMA node {node} (nodes: {sorted(node_ids)}; -1 for none)")
        rank = c.typed(raw, "cuda_order", int, where, default=None)
        if rank is not None:
            c.unique(ranks, rank, f"{where}.cuda_order", f"duplicate cuda_order {rank}")
        own = c.typed(raw, "gpu_memory_node", int, where, default=None)
        if own is not None and (own not in node_ids or own == node or any(n.cpus for n in nodes if n.id == own)):
            c.fail(f"{where}.gpu_memory_node", f"must name a NUMA node without CPUs other than numa_node, not {own}")
        nv_node = c.typed(raw, "nvml_numa_node", int, where, default=None)
        if nv_node is not None and (node != -1 or nv_node not in node_ids):
            c.fail(f"{where}.nvml_numa_node", "only for a GPU with numa_node = -1, naming a known NUMA node")
        mem, cc, sms, devid = _model_defaults(model)
        mem = c.typed(raw, "memory_mib", int, where, default=mem)
        cc_text = c.typed(raw, "compute_capability", str, where, default=f"{cc[0]}.{cc[1]}")
        ccm = re.fullmatch(r"(\d+)\.(\d+)", cc_text)
        if not ccm:
            c.fail(f"{where}.compute_capability", f"want MAJOR.MINOR such as \"9.0\", not {cc_text!r}")
        sms = c.typed(raw, "multiprocessors", int, where, default=sms)
        devid = c.typed(raw, "pci_device_id", int, where, default=devid)
        subsys = c.typed(raw, "pci_subsystem_id", int, where, default=0x17A610DE)
        migs: list[MigInstance] = []
        for j, rm in enumerate(c.table_list(raw, "mig", where)):
            mw = f"{where}.mig[{j}]"
            c.keys(rm, _MIG_KEYS, mw)
            mu = c.typed(rm, "uuid", str, mw, required=True)
            if not MIG_UUID_RE.fullmatch(mu):
                c.fail(f"{mw}.uuid", f"malformed MIG UUID {mu!r} (want MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
            c.unique(uuids, mu.lower(), f"{mw}.uuid", f"duplicate UUID {mu}")
            gi = c.typed(rm, "gpu_instance", int, mw, required=True)
            ci = c.typed(rm, "compute_instance", int, mw, required=True)
            if gi < 0 or ci < 0:
                c.fail(mw, "gpu_instance and compute_instance must be 0 or more")
            if any((x.gpu_instance, x.compute_instance) == (gi, ci) for x in migs):
                c.fail(mw, f"duplicate MIG instance {gi}/{ci}")
            migs.append(MigInstance(
                mu, gi, ci, c.typed(rm, "name", str, mw, default=f"{model} MIG {gi}/{ci}"),
                c.typed(rm, "memory_mib", int, mw, default=max(mem // 7, 1)),
                c.typed(rm, "multiprocessors", int, mw, default=max(sms // 7, 1))))
        if len(migs) > 8:
            c.fail(f"{where}.mig", "at most 8 MIG instances a GPU")
        excluded = c.typed(raw, "excluded", bool, where, default=False)
        if excluded and migs:
            c.fail(f"{where}.excluded", "an excluded GPU has no MIG instances (the driver does not bring it up)")
        gpus.append(Gpu(uuid, bus, model, node, rank, mem, (int(ccm[1]), int(ccm[2])), sms, devid, subsys,
                        tuple(sorted(migs, key=lambda x: (x.gpu_instance, x.compute_instance))), own, nv_node,
                        excluded))
    if len(gpus) > 64:
        c.fail("gpu", "at most 64 GPUs")
    gpus.sort(key=lambda g: g.pci_fields)  # NVML numbers GPUs in PCI bus order
    # Among GPUs of one model, FASTEST_FIRST keeps PCI order: measured on every lent host (4x and 2x H200), and
    # what the grammar counts on.  cuda_order may rank models against each other, not reorder one model.
    last: dict[str, tuple[int, str]] = {}
    for i, g in enumerate(gpus):
        rank = i if g.cuda_order is None else g.cuda_order
        seen = last.get(g.name)
        if seen is not None and rank < seen[0]:
            c.fail("gpu", f"cuda_order puts {g.pci_bus_id} before {seen[1]}, another {g.name}: GPUs of one model "
                          "keep PCI order under FASTEST_FIRST (measured); rank models, not GPUs of one model")
        last[g.name] = (rank, g.pci_bus_id)
    topo = Topology(
        name=name,
        description=c.typed(data, "description", str, "", default=""),
        nodes=tuple(sorted(nodes, key=lambda n: n.id)),
        gpus=tuple(gpus),
        threads_per_core=tpc,
        driver_version=c.typed(data, "driver_version", str, "", default="580.159.04"),
        cuda_driver_version=c.typed(data, "cuda_driver_version", int, "", default=13000),
        source=source,
        offline_cpus=offline,
        l3=l3,
        sysfs_quirks=quirks,
    )
    if "process" in data:
        topo = replace(topo, process=_process(c, topo, data["process"]))
    if "running" in data:
        topo = replace(topo, running=_running(c, topo, data))
    return topo


def _derived(c: _Checker, data: dict[str, Any], depth: int) -> Topology:
    """``base = "PRESET or FILE"``: that machine, with this file's name, description and [process]."""
    for key in data:
        if key not in ("base", "name", "description", "process", "running"):
            c.fail(key, "a file with `base` takes only name, description, [process] and [[running]]: the machine is "
                        "the base's")
    spec = c.typed(data, "base", str, "", required=True)
    target: str | Path = spec
    if ("/" in spec or spec.endswith(".toml")) and not Path(spec).is_absolute() and c.source != "<memory>":
        target = Path(c.source).parent / spec  # a relative path is relative to this file
    try:
        base = load_topology(target, depth + 1)
    except TopologyError as e:
        c.fail("base", str(e))
    topo = replace(base, name=c.typed(data, "name", str, "", default=base.name),
                   description=c.typed(data, "description", str, "", default=base.description), source=c.source)
    if "process" in data:
        topo = replace(topo, process=_process(c, topo, data["process"]))
    if "running" in data:  # this file's processes replace the base's
        topo = replace(topo, running=_running(c, topo, data))
    return topo


def gpu_positions(topo: Topology, selectors: list[Any], where: str) -> tuple[int, ...]:
    """PCI-order positions of GPUs named by position (int), PCI bus id or GPU UUID; TopologyError otherwise."""
    out: list[int] = []
    for sel in selectors:
        if isinstance(sel, int) and not isinstance(sel, bool):
            hit = sel if 0 <= sel < len(topo.gpus) else None
        elif isinstance(sel, str):
            text = sel.strip().lower()
            if text.isdigit():
                hit = int(text) if int(text) < len(topo.gpus) else None
            else:
                hit = next((i for i, g in enumerate(topo.gpus)
                            if text in (g.uuid.lower(), g.pci_bus_id, g.pci_bus_id[5:])), None)
        else:
            raise TopologyError(f"{topo.source}: {where}: {sel!r} is not a GPU (give its position, bus id or UUID)")
        if hit is None:
            raise TopologyError(f"{topo.source}: {where}: no GPU {sel!r} on this machine "
                                f"({len(topo.gpus)} GPUs: positions 0-{len(topo.gpus) - 1}, bus ids or UUIDs)")
        if hit not in out:
            out.append(hit)
    return tuple(sorted(out))


def make_process(topo: Topology, *, gpus: list[Any] | None = None, others: str | None = None,
                 proc: str | None = None, migs: list[str] | None = None,
                 env: dict[str, str] | None = None, where: str = "process.") -> ProcessView:
    """A ProcessView for ``topo``, starting from the topology's own, with the given parts replaced.

    ``where`` prefixes the field in error messages (``process.`` for the file, ``--`` for options)."""
    cur = topo.process
    if others is not None and others not in OTHERS:
        raise TopologyError(f"{topo.source}: {where}others: {others!r}: choose {' or '.join(OTHERS)}")
    if proc is not None and proc not in PROC_VIEWS:
        raise TopologyError(f"{topo.source}: {where}proc: {proc!r}: choose {' or '.join(PROC_VIEWS)}")
    mig_ids = None
    if migs is not None:
        known = {m.uuid.lower(): m.uuid for g in topo.gpus for m in g.migs}
        mig_ids = []
        for m in migs:
            if not isinstance(m, str) or m.strip().lower() not in known:
                raise TopologyError(f"{topo.source}: {where}mig: {m!r} is not a MIG instance of this machine")
            mig_ids.append(known[m.strip().lower()])
    return ProcessView(
        gpus=cur.gpus if gpus is None else gpu_positions(topo, gpus, f"{where}gpus"),
        others=cur.others if others is None else others,
        proc=cur.proc if proc is None else proc,
        migs=cur.migs if mig_ids is None else tuple(mig_ids),
        env=cur.env if env is None else tuple(sorted(env.items())))


def _process(c: _Checker, topo: Topology, raw: Any) -> ProcessView:
    c.keys(raw, _PROCESS_KEYS, "process")
    gpus = raw.get("gpus")
    if gpus is not None and not isinstance(gpus, list):
        c.fail("process.gpus", "must be a list of GPU positions, bus ids or UUIDs")
    migs = raw.get("mig")
    if migs is not None and not isinstance(migs, list):
        c.fail("process.mig", "must be a list of MIG UUIDs")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        c.fail("process.env", "must be a table of strings, e.g. env = { CUDA_VISIBLE_DEVICES = \"0,1\" }")
    return make_process(topo, gpus=gpus, others=c.typed(raw, "others", str, "process", default=None),
                        proc=c.typed(raw, "proc", str, "process", default=None), migs=migs, env=env)


def policy_text(text: Any, memory_nodes: frozenset[int]) -> str:
    """A memory policy as the kernel prints it in numa_maps (``prefer:1``, ``bind=static:0-1``, ``weighted
    interleave:0-3``...), checked and with its nodes in the kernel's shortest form; ValueError says what is wrong.

    The grammar is mm/mempolicy.c's ``mpol_to_str``: MODE[=FLAGS][:NODES], FLAGS ``static`` or ``relative``,
    optionally ``|balancing`` (or ``balancing`` alone); a mode with nodes (all but default and local) needs them,
    ``prefer`` exactly one.  Balancing goes with bind and prefer (many) only, as set_mempolicy(2) accepts
    (measured on Linux 6.18: interleave with it is EINVAL)."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string such as \"default\" or \"bind:0\", not {text!r}")
    head, colon, nodes_text = text.partition(":")
    mode, eq, flags = head.partition("=")
    if mode not in POLICY_MODES:
        raise ValueError(f"unknown mode in {text!r} (modes: {', '.join(POLICY_MODES)})")
    if eq and flags not in ("static", "relative", "balancing", "static|balancing", "relative|balancing"):
        raise ValueError(f"bad flags in {text!r}: want =static, =relative or =balancing, or static|balancing")
    if eq and mode in ("default", "local"):
        raise ValueError(f"{mode} takes no flags: {text!r}")
    if "balancing" in flags and mode not in ("bind", "prefer (many)"):
        raise ValueError(f"balancing goes with bind and prefer (many) only, not {mode}: {text!r}")
    if mode in ("default", "local"):
        if colon:
            raise ValueError(f"{mode} takes no nodes: {text!r}")
        return mode
    try:
        nodes = parse_cpulist(nodes_text, limit=MAX_NODE)
    except ValueError as e:
        raise ValueError(f"bad node list in {text!r}: {e}") from None
    if not nodes:
        raise ValueError(f"{mode} needs nodes, e.g. {mode}:0: {text!r}")
    if mode == "prefer" and len(nodes) != 1:
        raise ValueError(f"prefer takes one node (prefer (many) takes several): {text!r}")
    if not nodes <= memory_nodes:
        raise ValueError(f"{text!r} names nodes without memory on this machine: "
                         f"{format_cpulist(nodes - memory_nodes)} (nodes with memory: {format_cpulist(memory_nodes)})")
    return f"{head}:{format_cpulist(nodes)}"


def _running(c: _Checker, topo: Topology, data: dict[str, Any]) -> tuple[RunningProcess, ...]:
    """``[[running]]``: the other processes on the machine (docs/simulator.md, "Processes")."""
    raws = c.table_list(data, "running", "")
    pids: dict[int, str] = {}
    for i, raw in enumerate(raws):
        where = f"running[{i}]"
        c.keys(raw, _RUNNING_KEYS, where)
        pid = c.typed(raw, "pid", int, where, required=True)
        if not 1 <= pid < PID_LIMIT:
            c.fail(f"{where}.pid", f"must be 1 to {PID_LIMIT - 1}, not {pid}")
        c.unique(pids, pid, f"{where}.pid", f"duplicate pid {pid}")
    tids: dict[int, str] = {}
    out = [_one_process(c, topo, raw, f"running[{i}]", pids, tids) for i, raw in enumerate(raws)]
    per_gpu: dict[int, int] = {}
    for p in out:
        for ctx in p.contexts:
            per_gpu[ctx.gpu] = per_gpu.get(ctx.gpu, 0) + 1
            if per_gpu[ctx.gpu] > MAX_CONTEXTS:
                c.fail("running", f"more than {MAX_CONTEXTS} processes with a context on GPU "
                                  f"{topo.gpus[ctx.gpu].pci_bus_id}: the simulator holds at most {MAX_CONTEXTS}")
    return tuple(out)


def _one_process(c: _Checker, topo: Topology, raw: dict[str, Any], where: str, pids: dict[int, str],
                 tids: dict[int, str]) -> RunningProcess:
    pid = raw["pid"]
    memory_nodes = frozenset(n.id for n in topo.nodes if n.memory_mib > 0)
    kthread = c.typed(raw, "kernel_thread", bool, where, default=False)
    state = c.typed(raw, "state", str, where, default="I" if kthread else "S")
    if state not in STATES:
        c.fail(f"{where}.state", f"want one of {', '.join(STATES)}, not {state!r}")
    if state == "I" and not kthread:
        c.fail(f"{where}.state", "I (idle) is a kernel thread's state: set kernel_thread = true")
    if state == "Z" and kthread:
        c.fail(f"{where}.state", "a kernel thread is not left a zombie: give it another state")
    has_mm = not kthread and state != "Z"
    what = "a kernel thread" if kthread else "a zombie"
    if not has_mm:  # no address space, no files, no arguments: what the kernel shows for these
        for key in ("cmdline", "environ", "opens", "contexts", "binding", "thread", "mapping", "exe"):
            if key in raw:
                c.fail(f"{where}.{key}", f"{what} has none (its /proc shows none): leave it out")
    name = c.typed(raw, "name", str, where, default="python3")
    _comm(c, name, f"{where}.name")
    uid = c.typed(raw, "uid", int, where, default=0)
    gid = c.typed(raw, "gid", int, where, default=uid)
    for key, val in (("uid", uid), ("gid", gid)):
        if not 0 <= val < 0xFFFFFFFF:
            c.fail(f"{where}.{key}", f"must be 0 to {0xFFFFFFFF - 1}, not {val}")
    if kthread and uid != 0:
        c.fail(f"{where}.uid", "a kernel thread runs as root (uid 0)")
    ppid = c.typed(raw, "ppid", int, where, default=2 if kthread else 1)
    if not 0 <= ppid < PID_LIMIT:
        c.fail(f"{where}.ppid", f"must be 0 to {PID_LIMIT - 1}, not {ppid}")
    cmdline = _strings(c, raw.get("cmdline", [name] if has_mm else []), f"{where}.cmdline")
    env_raw = raw.get("environ", {})
    if not isinstance(env_raw, dict):
        c.fail(f"{where}.environ", "must be a table of strings, e.g. environ = { CUDA_VISIBLE_DEVICES = \"3\" }")
    environ = []
    for k, v in env_raw.items():
        if not k or "=" in k or "\0" in k:
            c.fail(f"{where}.environ", f"{k[:60]!r} cannot be a variable's name (empty, or holds = or NUL)")
        if not isinstance(v, str) or "\0" in v:
            c.fail(f"{where}.environ.{k[:60]}", f"must be a string without NUL, not {v!r}"[:200])
        environ.append((k, v))
    cpus = _cpus(c, topo, raw, "cpus", where, topo.cpus)
    mems_text = c.typed(raw, "mems", str, where, default=None)
    mems = memory_nodes
    if mems_text is not None:
        try:
            mems = parse_cpulist(mems_text, limit=MAX_NODE)
        except ValueError as e:
            c.fail(f"{where}.mems", f"bad node list: {e}")
        if not mems or not mems <= memory_nodes:
            c.fail(f"{where}.mems", f"must name nodes with memory of this machine ({format_cpulist(memory_nodes)}), "
                                    f"not {mems_text!r}")
    try:
        policy = policy_text(raw.get("policy", "default"), memory_nodes)
    except ValueError as e:
        c.fail(f"{where}.policy", str(e))
    exe = c.typed(raw, "exe", str, where, default=f"/usr/bin/{name}")
    if not exe.startswith("/"):
        c.fail(f"{where}.exe", f"must be an absolute path, not {exe!r}")
    contexts = _contexts(c, topo, raw.get("contexts", {}), f"{where}.contexts")
    needed = sorted({ctx.gpu for ctx in contexts})
    if "opens" in raw:
        if not isinstance(raw["opens"], list):
            c.fail(f"{where}.opens", "must be a list of GPU bus ids (or PCI-order positions or UUIDs)")
        opens = gpu_positions(topo, raw["opens"], f"{where}.opens")
        for gpu in needed:
            if gpu not in opens:
                c.fail(f"{where}.opens", f"a CUDA context holds its GPU's device node open: add "
                                         f"{topo.gpus[gpu].pci_bus_id} (it has a context there)")
    else:
        opens = tuple(needed)
    binding = None
    if "binding" in raw:
        if not isinstance(raw["binding"], dict):
            c.fail(f"{where}.binding", "must be a table")
        try:
            binding = json.dumps(raw["binding"], ensure_ascii=False, allow_nan=False)  # JSON has no NaN
        except (TypeError, ValueError) as e:
            c.fail(f"{where}.binding", f"cannot be written as JSON (a date, a time, nan or inf?): {e}")
    threads = []
    for j, rt in enumerate(c.table_list(raw, "thread", where)):
        tw = f"{where}.thread[{j}]"
        c.keys(rt, _THREAD_KEYS, tw)
        tid = c.typed(rt, "tid", int, tw, required=True)
        if not 1 <= tid < PID_LIMIT:
            c.fail(f"{tw}.tid", f"must be 1 to {PID_LIMIT - 1}, not {tid}")
        if tid == pid:
            c.fail(f"{tw}.tid", f"{tid} is the process's own pid: the main thread (tid = pid) is always there; "
                                "list the other threads")
        if tid in pids:
            c.fail(f"{tw}.tid", f"{tid} is the pid of another process ({pids[tid]})")
        c.unique(tids, tid, f"{tw}.tid", f"duplicate tid {tid}")
        tname = c.typed(rt, "name", str, tw, default=name)
        _comm(c, tname, f"{tw}.name")
        tstate = c.typed(rt, "state", str, tw, default="S")
        if tstate not in ("R", "S", "D", "T"):
            c.fail(f"{tw}.state", f"want R, S, D or T, not {tstate!r}")
        threads.append(Thread(tid, tname, _cpus(c, topo, rt, "cpus", tw, cpus), tstate))
    mappings = [_mapping(c, topo, rm, f"{where}.mapping[{j}]", memory_nodes)
                for j, rm in enumerate(c.table_list(raw, "mapping", where))]
    for kind in ("heap", "stack"):
        if sum(m.kind == kind for m in mappings) > 1:
            c.fail(f"{where}.mapping", f"a process has one {kind}, not {sum(m.kind == kind for m in mappings)}")
    if sum(m.total * m.kernelpagesize_kb for m in mappings) > 1 << 36:  # 64 TiB: the layout's room
        c.fail(f"{where}.mapping", "the mappings hold more than 64 TiB")
    return RunningProcess(
        pid=pid, name=name, cmdline=cmdline, uid=uid, gid=gid, ppid=ppid, state=state, kernel_thread=kthread,
        readable=c.typed(raw, "readable", bool, where, default=True), environ=tuple(environ), cpus=cpus, mems=mems,
        policy=policy, exe=exe, opens=opens, contexts=contexts, binding=binding, threads=tuple(threads),
        mappings=tuple(mappings))


def _comm(c: _Checker, name: str, where: str) -> None:
    """A task's name (comm): 1 to 15 bytes, as the kernel keeps it (TASK_COMM_LEN 16 with its NUL)."""
    if not name or len(name.encode()) > 15:
        c.fail(where, f"must be 1 to 15 bytes (the kernel's comm), not {len(name.encode())}: {name!r}")


def _strings(c: _Checker, val: Any, where: str) -> tuple[str, ...]:
    if not isinstance(val, list) or not all(isinstance(v, str) and "\0" not in v for v in val):
        c.fail(where, "must be a list of strings without NUL bytes")
    if sum(len(v) + 1 for v in val) > 1 << 17:
        c.fail(where, "longer than 128 KiB")
    return tuple(val)


def _cpus(c: _Checker, topo: Topology, raw: dict[str, Any], key: str, where: str,
          default: frozenset[int]) -> frozenset[int]:
    text = c.typed(raw, key, str, where, default=None)
    if text is None:
        return default
    try:
        cpus = parse_cpulist(text, limit=MAX_CPU)
    except ValueError as e:
        c.fail(f"{where}.{key}", f"bad cpulist: {e}")
    if not cpus:
        c.fail(f"{where}.{key}", "a task runs on at least one CPU: the list is empty")
    if not cpus <= topo.cpus:
        c.fail(f"{where}.{key}", f"CPUs {format_cpulist(cpus - topo.cpus)} are not online CPUs of this machine "
                                 f"({format_cpulist(topo.cpus)})")
    return cpus


def _contexts(c: _Checker, topo: Topology, raw: Any, where: str) -> tuple[Context, ...]:
    """``contexts = { BUS_ID_OR_MIG_UUID = MIB }``: the CUDA contexts NVML lists for the process."""
    if not isinstance(raw, dict):
        c.fail(where, "must be a table of GPU bus id = MiB, e.g. contexts = { \"0000:1b:00.0\" = 2048 }")
    out: list[Context] = []
    for key, mib in raw.items():
        label = f"{where}.{key[:60]!r}" if not key.isidentifier() else f"{where}.{key}"
        mig = next(((i, j) for i, g in enumerate(topo.gpus) for j, m in enumerate(g.migs)
                    if m.uuid.lower() == key.strip().lower()), None)
        if mig is not None:
            gpu, index = mig
        else:
            (gpu,) = gpu_positions(topo, [key], where)
            index = None
            if topo.gpus[gpu].migs:
                c.fail(label, f"GPU {topo.gpus[gpu].pci_bus_id} is in MIG mode: a context is on one of its MIG "
                              "instances; name that instance's MIG UUID")
        if any(x.gpu == gpu for x in out):
            c.fail(label, f"a second context on GPU {topo.gpus[gpu].pci_bus_id}")
        if index is not None and any(x.mig is not None for x in out):
            c.fail(label, "a process uses one MIG instance at most (CUDA's rule)")
        if mib == NOT_AVAILABLE:
            out.append(Context(gpu, None, index))
            continue
        if isinstance(mib, bool) or not isinstance(mib, int) or not 0 <= mib < 1 << 40:
            c.fail(label, f"want the GPU memory used in MiB (0 or more), or \"{NOT_AVAILABLE}\", not {mib!r}")
        out.append(Context(gpu, mib, index))
    return tuple(out)


def _mapping(c: _Checker, topo: Topology, raw: dict[str, Any], where: str, memory_nodes: frozenset[int]) -> Mapping:
    c.keys(raw, _MAPPING_KEYS, where)
    policy = None
    if "policy" in raw:
        try:
            policy = policy_text(raw["policy"], memory_nodes)
        except ValueError as e:
            c.fail(f"{where}.policy", str(e))
    pages_raw = raw.get("pages", {})
    if not isinstance(pages_raw, dict):
        c.fail(f"{where}.pages", "must be a table of node = pages, e.g. pages = { \"0\" = 1000, \"1\" = 24 }")
    pages: dict[int, int] = {}
    for key, n in pages_raw.items():
        if not (key.isascii() and key.isdigit() and len(key) < 6) or int(key) not in {x.id for x in topo.nodes}:
            c.fail(f"{where}.pages", f"{key[:40]!r} is not a NUMA node of this machine "
                                     f"({format_cpulist(x.id for x in topo.nodes)})")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 36:
            c.fail(f"{where}.pages.{key}", f"want a number of pages (0 or more), not {n!r}")
        if n and int(key) not in memory_nodes:
            c.fail(f"{where}.pages.{key}", f"node {key} has no memory (memory_mib = 0): no page can sit there")
        if n:
            pages[int(key)] = pages.get(int(key), 0) + n
    file = c.typed(raw, "file", str, where, default=None)
    if file is not None and not file.startswith("/"):
        c.fail(f"{where}.file", f"must be an absolute path, not {file!r}")
    kind = c.typed(raw, "kind", str, where, default=None)
    if kind is not None and kind not in ("heap", "stack"):
        c.fail(f"{where}.kind", f"want \"heap\" or \"stack\", not {kind!r}")
    if kind is not None and file is not None:
        c.fail(f"{where}.kind", f"the {kind} is anonymous memory: a mapping with a file is neither")
    size = c.typed(raw, "kernelpagesize_kB", int, where, default=4)
    if size not in PAGE_SIZES_KB:
        c.fail(f"{where}.kernelpagesize_kB", f"want 4, 2048 or 1048576 (hugetlb), not {size}")
    if kind is not None and size != 4:
        c.fail(f"{where}.kernelpagesize_kB", f"the {kind} has base pages (4 kB), not hugetlb pages")
    return Mapping(policy, tuple(sorted(pages.items())), file, kind, size)


def _sysfs_keys(c: _Checker, data: dict[str, Any], cpus: frozenset[int]
                ) -> tuple[frozenset[int], int | str | None, tuple[str, ...]]:
    """The keys that shape only the rendered sysfs: offline CPUs, caches, quirks."""
    try:
        offline = parse_cpulist(c.typed(data, "offline_cpus", str, "", default=""))
    except ValueError as e:
        c.fail("offline_cpus", f"bad cpulist: {e}")
    if not cpus:
        c.fail("numa_node", "the machine needs at least one CPU")
    if not offline <= cpus or offline == cpus:
        c.fail("offline_cpus", "must name CPUs of the nodes, and leave at least one online")
    l3 = data.get("l3")
    if l3 is not None and l3 not in ("node", "package") and (type(l3) is not int or l3 < 1):
        c.fail("l3", f"want a number of cores per last-level cache, \"node\" or \"package\", not {l3!r}")
    quirks = data.get("sysfs_quirks", [])
    if not isinstance(quirks, list) or any(q not in SYSFS_QUIRKS for q in quirks):
        c.fail("sysfs_quirks", f"want a list of: {', '.join(SYSFS_QUIRKS)}")
    return offline, l3, tuple(quirks)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> None:
        raise TopologyError(f"{self.source}: {where}: {what}")

    def keys(self, table: Any, allowed: set[str], where: str) -> None:
        if not isinstance(table, dict):
            self.fail(where or "top level", "must be a table")
        for k in table:
            if k not in allowed:
                key = k if k.isidentifier() else repr(k)[:60]
                self.fail(f"{where}.{key}" if where else key, f"unknown field (known: {', '.join(sorted(allowed))})")

    def typed(self, table: dict[str, Any], key: str, kind: type, where: str, *,
              required: bool = False, default: Any = None) -> Any:
        label = f"{where}.{key}" if where else key
        if key not in table:
            if required:
                self.fail(label, "missing")
            return default
        val = table[key]
        if kind is bool and not isinstance(val, bool):
            self.fail(label, f"must be true or false, not {val!r}")
        if kind is int and (isinstance(val, bool) or not isinstance(val, int)):
            self.fail(label, f"must be an integer, not {val!r}")
        if kind is str and not isinstance(val, str):
            self.fail(label, f"must be a string, not {val!r}")
        if kind is str and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in val):
            # the simulator's config is one record a line: a newline in a name would add a record
            self.fail(label, f"must not hold control characters (newline, tab, ...): {val[:60]!r}")
        if kind is str and len(val) > 256:
            self.fail(label, f"longer than 256 characters ({len(val)})")
        if kind is int and not -(1 << 63) <= val < 1 << 63:
            self.fail(label, f"out of range: {str(val)[:40]}")
        return val

    def table_list(self, table: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
        val = table.get(key, [])
        if not isinstance(val, list) or not all(isinstance(v, dict) for v in val):
            self.fail(f"{where}.{key}" if where else key, f"must be an array of tables ([[{key}]])")
        return val

    def unique(self, seen: dict[Any, str], value: Any, where: str, what: str) -> None:
        if value in seen:
            self.fail(where, f"{what} (also {seen[value]})")
        seen[value] = where
