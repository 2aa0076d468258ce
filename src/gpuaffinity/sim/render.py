"""Turn a Topology into what the fake libraries and the fake sysfs hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, format_cpumask, to_mask_words
from gpuaffinity.sim.topology import Gpu, Topology

_MASK_WORDS = 16  # 1024 CPUs or nodes, the C side's limit


def gpu_locality(topo: Topology, gpu: Gpu) -> dict[str, frozenset[int]]:
    """Nodes and CPUs NVML reports for a GPU, at node and at socket scope.

    A GPU whose firmware gives no node (-1) is reported near every node, as
    NVML did on the lent H200 VM (node mask 0x1 on a one-node machine).
    """
    if gpu.numa_node < 0:
        nodes = frozenset(n.id for n in topo.nodes)
        socket_nodes = nodes
    else:
        nodes = frozenset({gpu.numa_node})
        sock = topo.node(gpu.numa_node).socket
        socket_nodes = frozenset(n.id for n in topo.nodes if n.socket == sock)
    return {
        "node_mem": nodes,
        "socket_mem": socket_nodes,
        "node_cpu": frozenset().union(*(topo.node(n).cpus for n in nodes)),
        "socket_cpu": frozenset().union(*(topo.node(n).cpus for n in socket_nodes)),
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
    """Write the parts of /sys the package reads, under ``root`` (which stands for /sys)."""
    def put(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")

    all_cpus = topo.cpus
    for g in topo.gpus:
        base = f"bus/pci/devices/{g.pci_bus_id}"
        local = topo.node(g.numa_node).cpus if g.numa_node >= 0 else all_cpus
        put(f"{base}/numa_node", str(g.numa_node))
        put(f"{base}/local_cpulist", format_cpulist(local))
        put(f"{base}/local_cpus", format_cpumask(local))
        put(f"{base}/vendor", "0x10de")
        put(f"{base}/device", f"{g.pci_device_id >> 16:#06x}")
        put(f"{base}/class", "0x030200")
    node_ids = [n.id for n in topo.nodes]
    put("devices/system/node/online", format_cpulist(node_ids))
    put("devices/system/node/possible", format_cpulist(node_ids))
    put("devices/system/node/has_cpu", format_cpulist(node_ids))
    for n in topo.nodes:
        put(f"devices/system/node/node{n.id}/cpulist", format_cpulist(n.cpus))
        put(f"devices/system/node/node{n.id}/cpumap", format_cpumask(n.cpus))
        dist = " ".join("10" if m.id == n.id else ("12" if m.socket == n.socket else "21") for m in topo.nodes)
        put(f"devices/system/node/node{n.id}/distance", dist)
    put("devices/system/cpu/online", format_cpulist(all_cpus))
    put("devices/system/cpu/possible", format_cpulist(all_cpus))
    put("devices/system/cpu/present", format_cpulist(all_cpus))
    socket_of = {cpu: n.socket for n in topo.nodes for cpu in n.cpus}
    package_cpus: dict[int, set[int]] = {}
    for cpu, sock in socket_of.items():
        package_cpus.setdefault(sock, set()).add(cpu)
    for core_id, siblings in enumerate(topo.cores()):
        for cpu in siblings:
            t = f"devices/system/cpu/cpu{cpu}/topology"
            put(f"{t}/physical_package_id", str(socket_of[cpu]))
            put(f"{t}/core_id", str(core_id))
            put(f"{t}/thread_siblings_list", format_cpulist(siblings))
            put(f"{t}/core_siblings_list", format_cpulist(package_cpus[socket_of[cpu]]))
            put(f"{t}/package_cpus_list", format_cpulist(package_cpus[socket_of[cpu]]))


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
