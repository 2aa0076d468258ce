"""Topology files: a machine's NUMA nodes, CPUs and GPUs, in TOML.

The simulator's input and a user-facing format (schema in docs/simulator.md).
``load_topology`` reads and checks one file; every problem is reported as a
``TopologyError`` whose message names the file, the field and what is wrong.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuaffinity.core.cpulist import parse_cpulist

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PRESET_DIR = Path(__file__).with_name("presets")

_HEX_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GPU_UUID_RE = re.compile(rf"GPU-{_HEX_UUID}")
MIG_UUID_RE = re.compile(rf"MIG-{_HEX_UUID}")
PCI_BUS_ID_RE = re.compile(r"([0-9a-fA-F]{4}|[0-9a-fA-F]{8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


class TopologyError(ValueError):
    """A topology file that cannot be used; the message is one line."""


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
    offline_cpus: frozenset[int] = frozenset()
    l3: int | str | None = None  # cores per last-level cache in a node, "node", "package", or None: no cache files
    sysfs_quirks: tuple[str, ...] = ()

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
             "numa_node", "gpu", "offline_cpus", "l3", "sysfs_quirks"}
_NODE_KEYS = {"id", "cpus", "socket", "memory_mib"}
_GPU_KEYS = {"uuid", "pci_bus_id", "name", "numa_node", "cuda_order", "memory_mib",
             "compute_capability", "multiprocessors", "pci_device_id", "pci_subsystem_id", "mig",
             "gpu_memory_node", "nvml_numa_node"}
#: Ways real sysfs trees differ from the textbook one; the simulator renders each on request (docs/simulator.md).
SYSFS_QUIRKS = ("nul-terminated", "no-node-cpulist", "no-numa-node", "no-local-cpulist", "hex-siblings",
                "package-unknown", "local-cpulist-contradicts", "cache-reordered", "no-l1i")
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
    p = Path(spec)
    if p.suffix == ".toml" or p.exists() or "/" in str(spec):
        if not p.is_file():
            raise TopologyError(f"{spec}: no such topology file")
        return p
    preset = PRESET_DIR / f"{spec}.toml"
    if not preset.is_file():
        raise TopologyError(
            f"{spec!r} is neither a topology file nor a preset (presets: {', '.join(list_presets())})")
    return preset


def load_topology(spec: str | Path) -> Topology:
    path = resolve_topology_path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TopologyError(f"{path}: cannot read: {e}") from None
    return parse_topology(data, str(path))


def parse_topology(data: dict[str, Any], source: str = "<memory>") -> Topology:
    """Check a parsed TOML document and build the Topology it describes."""
    c = _Checker(source)
    c.keys(data, _TOP_KEYS, "")
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
        if nid < 0:
            c.fail(f"{where}.id", f"must be 0 or more, not {nid}")
        if any(n.id == nid for n in nodes):
            c.fail(f"{where}.id", f"duplicate NUMA node id {nid}")
        cpus_text = c.typed(raw, "cpus", str, where, required=True)
        try:
            cpus = parse_cpulist(cpus_text)
        except ValueError as e:
            c.fail(f"{where}.cpus", f"bad cpulist: {e}")
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
        gpus.append(Gpu(uuid, bus, model, node, rank, mem, (int(ccm[1]), int(ccm[2])), sms, devid, subsys,
                        tuple(sorted(migs, key=lambda x: (x.gpu_instance, x.compute_instance))), own, nv_node))
    if len(gpus) > 64:
        c.fail("gpu", "at most 64 GPUs")
    gpus.sort(key=lambda g: g.pci_fields)  # NVML numbers GPUs in PCI bus order
    return Topology(
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
                self.fail(f"{where}.{k}" if where else k,
                          f"unknown field (known: {', '.join(sorted(allowed))})")

    def typed(self, table: dict[str, Any], key: str, kind: type, where: str, *,
              required: bool = False, default: Any = None) -> Any:
        label = f"{where}.{key}" if where else key
        if key not in table:
            if required:
                self.fail(label, "missing")
            return default
        val = table[key]
        if kind is int and (isinstance(val, bool) or not isinstance(val, int)):
            self.fail(label, f"must be an integer, not {val!r}")
        if kind is str and not isinstance(val, str):
            self.fail(label, f"must be a string, not {val!r}")
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
