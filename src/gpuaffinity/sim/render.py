"""Turn a Topology into what the fake libraries and the fake sysfs hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, format_cpumask, parse_cpulist, to_mask_words
from gpuaffinity.sim.topology import Gpu, Topology

_MASK_WORDS = 16  # 1024 CPUs or nodes, the C side's limit


def gpu_locality(topo: Topology, gpu: Gpu) -> dict[str, frozenset[int]]:
    """Nodes and CPUs NVML reports for a GPU, at node and at socket scope, and its own memory node.

    A GPU whose firmware gives no node (-1) is reported near every node with
    CPUs, as NVML did on the lent H200 VM (node mask 0x1 on a one-node
    machine), unless the topology names the node NVML gives anyway
    (``nvml_numa_node``: a GPU behind a switch on a 2-socket host, modelled).
    ``gpu_mem`` is what ``nvmlDeviceGetNumaNodeId`` returns: the node holding
    the GPU's own memory (Grace Hopper, modelled), empty elsewhere.  CPU masks
    hold online CPUs only.
    """
    if gpu.numa_node >= 0:
        nodes = frozenset({gpu.numa_node})
    elif gpu.nvml_numa_node is not None:
        nodes = frozenset({gpu.nvml_numa_node})
    else:
        nodes = frozenset(n.id for n in topo.nodes if n.cpus - topo.offline_cpus)
    sockets = {topo.node(n).socket for n in nodes}
    socket_nodes = frozenset(n.id for n in topo.nodes if n.socket in sockets)
    online = topo.cpus
    return {
        "node_mem": nodes,
        "socket_mem": socket_nodes,
        "node_cpu": frozenset().union(*(topo.node(n).cpus for n in nodes)) & online,
        "socket_cpu": frozenset().union(*(topo.node(n).cpus for n in socket_nodes)) & online,
        "gpu_mem": frozenset() if gpu.gpu_memory_node is None else frozenset({gpu.gpu_memory_node}),
    }


def _mask(numbers: frozenset[int]) -> str:
    words = to_mask_words(numbers)
    if len(words) > _MASK_WORDS:
        raise ValueError(f"number {max(numbers)} is past the simulator's limit of {64 * _MASK_WORDS}")
    return ",".join(f"{w:x}" for w in words)


def mig_cap_minor(gpu_minor: int, mig_index: int) -> int:
    """The minor of /dev/nvidia-caps/nvidia-cap<N> that grants use of a MIG instance (1 and 2 are the
    driver's MIG config and monitor capabilities, as on the lent hosts)."""
    return 3 + 8 * gpu_minor + mig_index


def render_config(topo: Topology) -> str:
    """The line format documented at the top of csrc/sim_common.h."""
    ranks = {idx: pos for pos, idx in enumerate(topo.cuda_default_order())}
    lines = [
        f"# gpuaffinity simulator config, from {topo.source}",
        f"driver_version {topo.driver_version}",
        f"nvml_version {topo.cuda_driver_version // 1000}.{topo.driver_version}",
        f"cuda_driver_version {topo.cuda_driver_version}",
    ]
    for i, g in enumerate(topo.gpus):
        dom, bus, dev, fn = g.pci_fields
        lines.append(
            f"gpu {g.uuid} {g.pci_bus_id} {dom} {bus} {dev} {fn} {g.pci_device_id:#x} {g.pci_subsystem_id:#x} "
            f"{ranks[i]} {g.numa_node} {g.memory_mib} {g.compute_capability[0]} {g.compute_capability[1]} "
            f"{g.multiprocessors} {i} {g.name}")
        for kind, nums in gpu_locality(topo, g).items():
            lines.append(f"mask {kind} {_mask(nums)}")
        for j, m in enumerate(g.migs):
            lines.append(f"mig {m.uuid} {m.gpu_instance} {m.compute_instance} {m.memory_mib} "
                         f"{m.multiprocessors} {mig_cap_minor(i, j)} {m.name}")
    return "\n".join(lines) + "\n"


def render_sysfs(topo: Topology, root: Path) -> None:
    """Write the parts of /sys the package reads, under ``root`` (which stands for /sys).

    Offline CPUs have no topology or cache folder and leave their siblings'
    lists, as Linux does.  ``topo.sysfs_quirks`` render the variants real
    kernels show (docs/simulator.md): NUL-terminated lists, missing list files,
    mask-only siblings, an unknown package, contradicting files, caches in
    another order.
    """
    quirks = set(topo.sysfs_quirks)
    end = "\n\0" if "nul-terminated" in quirks else "\n"

    def put(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + end)

    online = topo.cpus
    cpus_of = {n.id: n.cpus & online for n in topo.nodes}
    with_cpus = [n.id for n in topo.nodes if cpus_of[n.id]]
    for g in topo.gpus:
        base = f"bus/pci/devices/{g.pci_bus_id}"
        local = cpus_of[g.numa_node] if g.numa_node >= 0 else online
        if "local-cpulist-contradicts" in quirks and g.numa_node >= 0:
            others = [n for n in with_cpus if n != g.numa_node] or [g.numa_node]
            local = cpus_of[others[0]]
        if "no-numa-node" not in quirks:
            put(f"{base}/numa_node", str(g.numa_node))
        if "no-local-cpulist" not in quirks:
            put(f"{base}/local_cpulist", format_cpulist(local))
        put(f"{base}/local_cpus", format_cpumask(local))
        put(f"{base}/vendor", "0x10de")
        put(f"{base}/device", f"{g.pci_device_id >> 16:#06x}")
        put(f"{base}/class", "0x030200")
    node_ids = [n.id for n in topo.nodes]
    with_memory = [n.id for n in topo.nodes if n.memory_mib > 0]
    put("devices/system/node/online", format_cpulist(node_ids))
    put("devices/system/node/possible", format_cpulist(node_ids))
    put("devices/system/node/has_cpu", format_cpulist(with_cpus))
    put("devices/system/node/has_memory", format_cpulist(with_memory))
    put("devices/system/node/has_normal_memory", format_cpulist(with_memory))
    for n in topo.nodes:
        if "no-node-cpulist" not in quirks:
            put(f"devices/system/node/node{n.id}/cpulist", format_cpulist(cpus_of[n.id]))
        put(f"devices/system/node/node{n.id}/cpumap", format_cpumask(cpus_of[n.id]))
        dist = " ".join("10" if m.id == n.id else ("12" if m.socket == n.socket else "21") for m in topo.nodes)
        put(f"devices/system/node/node{n.id}/distance", dist)
        put(f"devices/system/node/node{n.id}/meminfo", f"Node {n.id} MemTotal:       {n.memory_mib * 1024} kB")
    put("devices/system/cpu/online", format_cpulist(online))
    put("devices/system/cpu/offline", format_cpulist(topo.offline_cpus))
    put("devices/system/cpu/possible", format_cpulist(topo.all_cpus))
    put("devices/system/cpu/present", format_cpulist(topo.all_cpus))
    cores = [tuple(c for c in core if c in online) for core in topo.cores()]
    smt = topo.threads_per_core > 1
    put("devices/system/cpu/smt/control", "notsupported" if not smt else
        ("on" if any(len(c) > 1 for c in cores) else "off"))
    put("devices/system/cpu/smt/active", "1" if any(len(c) > 1 for c in cores) else "0")
    socket_of = {cpu: n.socket for n in topo.nodes for cpu in n.cpus}
    package_cpus: dict[int, set[int]] = {}
    for cpu in online:
        package_cpus.setdefault(socket_of[cpu], set()).add(cpu)
    llc = _llc_groups(topo)
    for cpu in sorted(topo.all_cpus - online):
        put(f"devices/system/cpu/cpu{cpu}/online", "0")
    for core_id, siblings in enumerate(cores):
        for cpu in siblings:
            t = f"devices/system/cpu/cpu{cpu}/topology"
            package = package_cpus[socket_of[cpu]]
            put(f"devices/system/cpu/cpu{cpu}/online", "1")
            put(f"{t}/physical_package_id", "-1" if "package-unknown" in quirks else str(socket_of[cpu]))
            put(f"{t}/core_id", str(core_id))
            put(f"{t}/thread_siblings", format_cpumask(siblings))
            if "hex-siblings" not in quirks:
                put(f"{t}/thread_siblings_list", format_cpulist(siblings))
                put(f"{t}/core_cpus", format_cpumask(siblings))
                put(f"{t}/core_cpus_list", format_cpulist(siblings))
            put(f"{t}/core_siblings_list", format_cpulist(package))
            put(f"{t}/package_cpus_list", format_cpulist(package))
            if llc:
                _render_caches(put, quirks, f"devices/system/cpu/cpu{cpu}/cache", siblings, llc[cpu])


def _llc_groups(topo: Topology) -> dict[int, frozenset[int]]:
    """Each online CPU's last-level cache group, as ``topo.l3`` says; empty without cache information."""
    if topo.l3 is None:
        return {}
    node_of = {cpu: n.id for n in topo.nodes for cpu in n.cpus}
    out: dict[int, frozenset[int]] = {}
    for n in topo.nodes:
        mine = [c for c in topo.cores() if node_of[c[0]] == n.id]  # physical groups: offline CPUs keep theirs
        if topo.l3 == "package":
            groups = [frozenset(cpu for m in topo.nodes if m.socket == n.socket for cpu in m.cpus & topo.cpus)]
        elif topo.l3 == "node":
            groups = [n.cpus & topo.cpus]
        else:
            size = int(topo.l3)
            groups = [frozenset(cpu for c in mine[i:i + size] for cpu in c) & topo.cpus
                      for i in range(0, len(mine), size)]
        for group in groups:
            for cpu in group:
                if node_of[cpu] == n.id:
                    out[cpu] = group
    return out


def _render_caches(put, quirks: set[str], base: str, siblings: tuple[int, ...], llc: frozenset[int]) -> None:
    core = format_cpulist(siblings)
    caches = [("1", "Data", core), ("1", "Instruction", core), ("2", "Unified", core), ("3", "Unified",
                                                                                         format_cpulist(llc))]
    if "no-l1i" in quirks:
        caches = [("1", "Unified", core), caches[2], caches[3]]
    if "cache-reordered" in quirks:
        caches = [caches[0], caches[1], caches[3], caches[2]]
    for i, (level, kind, shared) in enumerate(caches):
        put(f"{base}/index{i}/level", level)
        put(f"{base}/index{i}/type", kind)
        put(f"{base}/index{i}/shared_cpu_list", shared)
        put(f"{base}/index{i}/shared_cpu_map", format_cpumask(parse_cpulist(shared)))


def render_driver_binding(topo: Topology, root: Path) -> None:
    """``bus/pci/drivers/nvidia/<bus>`` under ``root`` (which stands for /sys): every GPU of the host is bound
    to the driver, whatever the process may open (containers do not mask sysfs)."""
    drv = root / "bus" / "pci" / "drivers" / "nvidia"
    drv.mkdir(parents=True, exist_ok=True)
    for g in topo.gpus:
        (drv / g.pci_bus_id).symlink_to(f"../../../../devices/pci0000:00/{g.pci_bus_id}")
    for name in ("bind", "unbind", "new_id", "remove_id", "uevent"):
        (drv / name).write_text("")


def render_procfs(topo: Topology, root: Path) -> None:
    """The driver's /proc/driver/nvidia files, under ``root`` (which stands for /proc).

    The ``information`` layout is the one driver 580.159.04 writes (seen on the lent H200s).  Every GPU of
    the host is listed, as the driver does for any process, unless the topology's process view is
    ``proc = "masked"`` (the NVIDIA container toolkit hides the other GPUs' folders)."""
    base = root / "driver" / "nvidia"
    view = topo.process
    for minor, g in enumerate(topo.gpus):
        if view.proc == "masked" and not view.opens(minor):
            continue
        info = base / "gpus" / g.pci_bus_id / "information"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(
            f"Model: \t\t {g.name}\nIRQ:   \t\t {100 + minor}\nGPU UUID: \t {g.uuid}\n"
            f"Video BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n"
            f"DMA Mask: \t 0xfffffffffffff\nBus Location: \t {g.pci_bus_id}\nDevice Minor: \t {minor}\n"
            f"GPU Firmware: \t {topo.driver_version}\nGPU Excluded:\t No\n")
        caps = base / "capabilities" / f"gpu{minor}" / "mig"
        caps.mkdir(parents=True, exist_ok=True)
        (caps / "config").write_text("DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n")
        for j, m in enumerate(g.migs):
            ci = caps / f"gi{m.gpu_instance}" / f"ci{m.compute_instance}"
            ci.mkdir(parents=True, exist_ok=True)
            (ci / "access").write_text(f"DeviceFileMinor: {mig_cap_minor(minor, j)}\nDeviceFileMode: 292\n"
                                       "DeviceFileModify: 1\n")


def render_dev(topo: Topology, root: Path) -> None:
    """The device nodes, under ``root`` (which stands for /dev), as the topology's process view has them.

    A node this process may open is a plain file.  One kept from it is missing (``others = "absent"``)
    or is a socket, which open() refuses with ENXIO (``"denied"``, standing for a device cgroup's EPERM:
    root may open any plain file, so a refused open needs a node that cannot be opened at all)."""
    view = topo.process
    caps = root / "nvidia-caps"
    caps.mkdir(parents=True)
    (root / "nvidiactl").write_text("")

    def node(path: Path, usable: bool) -> None:
        if usable:
            path.write_text("")
        elif view.others == "denied":
            os.mknod(path, stat.S_IFSOCK | 0o666)  # no privilege needed for a socket node

    for minor, g in enumerate(topo.gpus):
        node(root / f"nvidia{minor}", view.opens(minor))
        for j, m in enumerate(g.migs):
            node(caps / f"nvidia-cap{mig_cap_minor(minor, j)}", view.opens(minor) and view.uses_mig(m.uuid))
