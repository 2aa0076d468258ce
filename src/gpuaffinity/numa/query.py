"""Where a physical GPU sits: NUMA nodes and nearby CPUs, limited to the CPUs this process may use.

Two sources, checked against each other:

* NVML: the memory affinity at node scope (every node a GPU spans), the CPU
  affinity, and, where the GPU's own memory is a NUMA node (Grace Hopper,
  Grace Blackwell), that node (``nvmlDeviceGetNumaNodeId``).
* sysfs: the PCI device's ``numa_node`` and ``local_cpulist`` (or
  ``local_cpus``), and the nodes' ``cpulist`` (or ``cpumap``), read through
  ``gpuaffinity.numa.sysfs``.

sysfs wins where they differ.  The case that matters is a VM whose firmware
gives no node (``numa_node`` = -1): NVML still names node 0 there (seen on the
lent H200 VM), and binding to that invented node would be wrong.  A GPU with
no node has no preference, and says so.  Without sysfs, NVML's answer is used.
The rules, shape by shape, are in docs/numa.md.

Owns: each GPU's locality, and the CPUs and memory nodes this process may use.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.errors import GpuAffinityError
from gpuaffinity.core.record import record, replace
from gpuaffinity.core.settings import PROCFS_VAR, SIM_ALLOWED_VAR, SIM_START_MASK_VAR, SYSFS_VAR
from gpuaffinity.numa.sysfs import Sysfs, read_text, sysfs_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from gpuaffinity.host import Host
    from gpuaffinity.nvml_lite import Session

__all__ = ["SIM_ALLOWED_VAR", "SYSFS_VAR", "Locality", "allowed_cpus", "allowed_memory_nodes", "gpu_locality",
           "localities", "node_cpus", "nvml_affinity", "nvml_can_matter", "sysfs_root"]


def _procfs_root(env: Mapping[str, str | None] | None = None) -> Path:
    return Path((os.environ if env is None else env).get(PROCFS_VAR) or "/proc")


def allowed_cpus(env: Mapping[str, str | None] | None = None) -> frozenset[int]:
    """The CPUs this process may run on: its affinity mask (cgroup cpusets, Slurm and
    Kubernetes limits show here, and so does a binding: a bound process's mask is narrower than its cpuset), or on
    a simulated machine the simulated cpuset, narrowed as the real mask is once the process (or a parent) was bound
    since the simulation began (``GPUAFFINITY_SIM_START_MASK``).  ``env``: where those two variables are read
    (a Host's snapshot; default: os.environ)."""
    env = os.environ if env is None else env
    sim = env.get(SIM_ALLOWED_VAR)
    if sim is not None:
        try:
            cpuset = parse_cpulist(sim)
        except ValueError as e:
            raise GpuAffinityError(f"{SIM_ALLOWED_VAR} (the simulator's cpuset) is not a CPU list: {e}; unset it "
                                   "outside `gpuaffinity sim run`") from None
        start = env.get(SIM_START_MASK_VAR)
        now = frozenset(os.sched_getaffinity(0))
        if start:
            try:
                began = parse_cpulist(start)
            except ValueError:
                began = now
            if now < began:  # bound since: the simulated process's own mask is narrower than its cpuset
                return cpuset & now
        return cpuset
    return frozenset(os.sched_getaffinity(0))


def allowed_memory_nodes(env: Mapping[str, str | None] | None = None) -> frozenset[int] | None:
    """The NUMA nodes this process may allocate on (``Mems_allowed_list`` in ``/proc/self/status``,
    set by a cgroup cpuset or Kubernetes' memory manager); None when the kernel does not say.  ``env``: where
    /proc's root is read (a Host's snapshot; default: os.environ)."""
    text = read_text(_procfs_root(env) / "self" / "status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Mems_allowed_list:"):
            try:
                return parse_cpulist(line[len("Mems_allowed_list:"):])
            except ValueError:
                return None
    return None


@record(frozen=True)
class Locality:
    """Where a GPU sits.

    ``numa_nodes`` is empty when nothing names a node (``numa_node`` = -1,
    common in VMs): no preference, never an invented node 0.  ``cpus`` is the
    GPU's local CPUs intersected with this process's allowed CPUs;
    ``local_cpus`` is before that intersection (online CPUs only).
    ``notes`` says what a user should know (disagreement between NVML and
    sysfs or between sysfs files, an empty intersection…).
    ``gpu_memory_nodes`` are nodes that hold the GPU's own memory (Grace
    Hopper, Grace Blackwell): never in ``numa_nodes``.  ``cpu_nodes`` are the
    nodes ``local_cpus`` come from: ``numa_nodes``, unless those have no CPUs.
    """

    pci_bus_id: str
    numa_nodes: tuple[int, ...]
    cpus: frozenset[int]
    local_cpus: frozenset[int]
    source: str
    notes: tuple[str, ...] = ()
    gpu_memory_nodes: tuple[int, ...] = ()
    cpu_nodes: tuple[int, ...] = ()
    #: "" unless NVML says the GPU is lost (fallen off the bus): then why no process may be placed next to it
    lost: str = ""


def node_cpus(node: int) -> frozenset[int] | None:
    """A node's online CPUs from sysfs (``cpulist``, else ``cpumap``); None when the node is unknown."""
    fs = Sysfs()
    if node not in fs.node_ids() and fs.text(f"devices/system/node/node{node}/cpulist") is None:
        return None
    return fs.node_cpus(node)


#: NVML's answer for one GPU: (nodes at node scope, CPUs at node scope[, the GPU's own memory node(s)]).
NvmlAnswer = tuple[frozenset[int], ...]


def nvml_affinity(bus_ids: Iterable[str], lost: dict[str, str] | None = None,
                  session: Session | None = None) -> dict[str, NvmlAnswer]:
    """NVML's (nodes, CPUs, GPU memory nodes) for each GPU bus id; empty where NVML cannot tell.

    Through ``gpuaffinity.nvml_lite``: pynvml's very C calls, without importing pynvml.  ``lost`` learns, by bus
    id, why a GPU that NVML says is lost (fallen off the bus) is no place for a process: any other failure only
    costs this second source, but a lost GPU is unusable, whatever the driver's files still list."""
    import contextlib

    from gpuaffinity.nvml_lite import GPU_IS_LOST, NvmlLiteError, Session

    out: dict[str, NvmlAnswer] = {}
    try:
        with contextlib.nullcontext(session) if session is not None else Session() as nv:
            for bus in bus_ids:
                try:
                    h = nv.handle(bus)
                    nodes, cpus = nv.memory_affinity(h), nv.cpu_affinity(h)
                except NvmlLiteError as e:
                    if e.code == GPU_IS_LOST and lost is not None:
                        lost[bus] = (f"GPU {bus} is lost: {e}, so it has fallen off the bus and nothing can use it "
                                     "until it is reset or the host rebooted (the kernel log says more: Xid 79); no "
                                     "process is placed next to it")
                    continue
                own: frozenset[int] = frozenset()
                try:  # only where the GPU's memory is a NUMA node; NOT_SUPPORTED elsewhere (measured on x86)
                    own = frozenset({nv.numa_node_id(h)})
                except NvmlLiteError:
                    pass
                out[bus] = (nodes, cpus, own)
    except NvmlLiteError:
        return out
    return out


def driver_gpu_memory_node(pci_bus_id: str, procfs: Path | None = None) -> int | None:
    """The node the driver says holds the GPU's memory (``/proc/driver/nvidia/gpus/<bus>/numa_status``,
    line ``Node:``), on platforms where it is one; None elsewhere.  ``procfs``: /proc's root (default: the
    environment's)."""
    text = read_text((procfs or _procfs_root()) / "driver" / "nvidia" / "gpus" / pci_bus_id / "numa_status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Node:") and line[len("Node:"):].strip().isdigit():
            return int(line[len("Node:"):])
    return None


def gpu_locality(pci_bus_id: str, allowed: frozenset[int] | None = None,
                 nvml: NvmlAnswer | None = None, *, sysfs: Sysfs | None = None, procfs: Path | None = None,
                 one_node: bool = False) -> Locality:
    """Combine sysfs and (when given) NVML's answer for one GPU (rules: docs/numa.md, "Where a GPU sits").
    ``one_node``: NVML was not asked, as sysfs lists one NUMA node (``nvml_can_matter`` says why that is equal)."""
    allowed = allowed_cpus() if allowed is None else allowed
    fs = Sysfs() if sysfs is None else sysfs
    dev = fs.pci_dir(pci_bus_id)
    notes: list[str] = []
    nv_nodes, nv_cpus, nv_own = (*nvml, frozenset(), frozenset())[:3] if nvml else (frozenset(),) * 3
    online = fs.online_cpus(notes)
    node_cpu = {n: fs.node_cpus(n, notes) for n in fs.node_ids(notes)}
    cpu_nodes = frozenset(n for n, c in node_cpu.items() if c)
    every_cpu = online if online is not None else frozenset().union(*node_cpu.values())
    own = _own_memory_nodes(pci_bus_id, nv_own, notes, procfs)
    node = fs.pci_numa_node(pci_bus_id, notes)
    local_file = fs.pci_local_cpus(pci_bus_id, notes)
    if local_file is not None and online is not None:
        local_file &= online
    source = "sysfs+nvml" if nvml else "sysfs"

    # 1. the GPU's nodes
    nodes: set[int] = set()
    if node is None:
        derived = {n for n in cpu_nodes if local_file and node_cpu[n] <= local_file}
        if derived and local_file != every_cpu:
            nodes = derived
            notes.append(f"{dev}/numa_node is missing: node(s) {format_cpulist(nodes)} taken from its local CPUs "
                         f"({format_cpulist(local_file or ())})")
        elif nvml:
            nodes, source = set(nv_nodes), "nvml"
            notes.append(f"{dev}/numa_node is missing: using NVML's answer")
        else:
            return Locality(pci_bus_id, (), frozenset(), frozenset(), "none",
                            (*notes, f"neither sysfs ({dev}) nor NVML gives this GPU's locality: no preference"))
    elif node < 0:
        named = nv_nodes - own
        if named and named < cpu_nodes:
            nodes = set(named)
            notes.append(f"the firmware gives no NUMA node for this GPU (numa_node = -1) but NVML names node(s) "
                         f"{format_cpulist(named)} of {format_cpulist(cpu_nodes)}: using NVML's answer")
        else:  # one note, saying what NVML said and why it is not used
            if one_node:
                nvml_said = "this host has one NUMA node (NVML was not asked: it can name no other)"
            elif not named:
                nvml_said = "NVML names none either" if not nv_nodes else \
                    f"NVML names only the GPU's own memory node(s) {format_cpulist(nv_nodes)}"
            elif named >= cpu_nodes:
                nvml_said = f"NVML's node(s) {format_cpulist(named)} are every node with CPUs here, which tells nothing"
            else:
                nvml_said = f"NVML's node(s) {format_cpulist(named)} are not nodes with CPUs here, ignored"
            notes.append(f"the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and "
                         f"{nvml_said}: no preference")
    else:
        nodes = {node}
        if nv_nodes and node not in nv_nodes:
            notes.append(f"NVML names node(s) {format_cpulist(nv_nodes)} but sysfs says {node}: using sysfs")
        else:
            nodes |= nv_nodes
    if own & nodes:
        notes.append(f"node(s) {format_cpulist(own & nodes)} hold this GPU's own memory: its place is the CPU "
                     "node(s) nearest that memory")
        nodes = (nodes - own) or {n for o in own for n in fs.nearest(o, cpu_nodes, notes)}
    if len(nodes) > 1:
        notes.append(f"this GPU spans NUMA nodes {format_cpulist(nodes)}")

    # 2. the CPUs near them
    users: set[int] = set()
    for n in sorted(nodes):
        if n in cpu_nodes:
            users.add(n)
            continue
        near = fs.nearest(n, cpu_nodes, notes)
        users.update(near)
        notes.append(f"node {n} has no CPUs: the CPUs of the nearest node(s) {format_cpulist(near) or '(unknown)'} "
                     "are used")
    local = frozenset().union(*(node_cpu[n] for n in users))
    if not nodes:
        local = every_cpu  # no preference: every CPU, whatever the device's local list says
    elif source == "nvml" and nv_cpus:
        local = nv_cpus
    elif not local and local_file:
        local = local_file
    if node is not None and node >= 0 and node_cpu.get(node) and local_file is not None \
            and local_file != node_cpu[node]:
        notes.append(f"{dev}/local_cpulist ({format_cpulist(local_file) or 'empty'}) is not node {node}'s CPUs "
                     f"({format_cpulist(node_cpu[node])}): using the node's")
    if online is not None:
        local &= online
    cpus = local & allowed
    if local and not cpus:
        # plain info: binding fails on it with its own error, which says the same thing once
        notes.append(f"none of this GPU's local CPUs ({format_cpulist(local)}) is allowed to this "
                     f"process (allowed: {format_cpulist(allowed) or 'none'}; affinity mask or cgroup cpuset)")
    return Locality(pci_bus_id, tuple(sorted(nodes)), cpus, local, source, tuple(notes), tuple(sorted(own)),
                    tuple(sorted(users)))


def _own_memory_nodes(pci_bus_id: str, nv_own: frozenset[int], notes: list[str],
                      procfs: Path | None = None) -> frozenset[int]:
    """Nodes holding the GPU's own memory: NVML's ``nvmlDeviceGetNumaNodeId``, else the driver's numa_status."""
    driver = driver_gpu_memory_node(pci_bus_id, procfs)
    if nv_own and driver is not None and driver not in nv_own:
        notes.append(f"NVML says this GPU's memory is node {format_cpulist(nv_own)}, the driver's numa_status says "
                     f"{driver}: using NVML")
    own = nv_own or (frozenset({driver}) if driver is not None else frozenset())
    if own:
        notes.append(f"this GPU's own memory is NUMA node {format_cpulist(own)} (coherent GPU memory): memory "
                     "policies leave it out unless asked")
    return own


def nvml_can_matter(fs: Sysfs, bus_ids: Iterable[str]) -> bool:
    """Whether NVML's locality can change any of these GPUs' answers (the rules above): not where sysfs lists one
    NUMA node and each GPU's ``numa_node`` file is there.  Rule by rule (docs/numa.md): a GPU with ``numa_node``
    >= 0 is on the only node, and NVML can add no other (there is none); one with -1 takes NVML's node only where
    NVML names some but not all nodes with CPUs, which one node cannot give; the GPU's own memory node (Grace)
    would be a second node; the missing-file rule, the only one that takes NVML's CPUs, is excluded by the
    condition.  tests/test_numa_shapes.py holds the answers equal on every preset."""
    if len(fs.node_ids()) != 1:
        return True
    return any(fs.pci_numa_node(b) is None for b in bus_ids)


def localities(bus_ids: Iterable[str], use_nvml: bool = True, session: Session | None = None, *,
               host: Host | None = None) -> dict[str, Locality]:
    """Locality of several GPUs with one NVML session and one look at sysfs; NVML asked only where its answer
    can change one (``nvml_can_matter``).

    ``host``: the command's Host (gpuaffinity.host), whose allowed CPUs, sysfs view and NVML session are used;
    without one, this call reads them itself, over ``session`` where the caller has one open (else a session of
    its own)."""
    from gpuaffinity.nvml_lite import NvmlLiteError

    ids = list(dict.fromkeys(bus_ids))
    fs = host.sysfs if host is not None else Sysfs()
    allowed = host.allowed_cpus if host is not None else allowed_cpus()
    lost: dict[str, str] = {}
    nv: dict[str, NvmlAnswer] = {}
    places = use_nvml and nvml_can_matter(fs, ids)
    # Only NVML says a GPU is lost (fallen off the bus).  Where its places change nothing (one node) it is still
    # asked that where a session is open anyway (no start more: the GPU list came from NVML, or the caller's) or
    # where the caller asks for the GPUs' health (doctor); its places are then not used: every answer stays the same
    open_ = session if host is None else host.open_session
    health = use_nvml and (open_ is not None or (host is not None and host.health))
    if places or health:
        try:
            answers = nvml_affinity(ids, lost, host.nvml() if host is not None else session)
        except NvmlLiteError:  # no NVML here (the host's session could not start): sysfs answers alone
            answers = {}
        if places:
            nv = answers
    one_node = use_nvml and not places
    procfs = _procfs_root(host.env) if host is not None else None
    out = {b: gpu_locality(b, allowed, nv.get(b), sysfs=fs, procfs=procfs, one_node=one_node) for b in ids}
    for b, why in lost.items():
        out[b] = replace(out[b], lost=why)
    return out
