"""Turn a Topology into what the fake libraries and the fake sysfs hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gpuaffinity.core.cpulist import format_cpulist, format_cpumask, parse_cpulist, to_mask_words
from gpuaffinity.sim.topology import MAX_NODE, STATES, Gpu, Mapping, RunningProcess, Topology

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
        if g.excluded:  # the driver does not bring it up: NVML and CUDA never see it (its minor stays reserved)
            continue
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
        for p in topo.running:  # the CUDA contexts on this GPU, in the order of the topology's [[running]]
            for ctx in p.contexts:
                if ctx.gpu == i:
                    used = "n/a" if ctx.mib is None else str(ctx.mib * 1024 * 1024)
                    where = "" if ctx.mig is None else \
                        f" {g.migs[ctx.mig].gpu_instance} {g.migs[ctx.mig].compute_instance}"
                    lines.append(f"proc {p.pid} {used}{where}")
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
            f"GPU Firmware: \t {topo.driver_version}\nGPU Excluded:\t {'Yes' if g.excluded else 'No'}\n")
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
    (root / "nvidia-uvm").write_text("")

    def node(path: Path, usable: bool) -> None:
        if usable:
            path.write_text("")
        elif view.others == "denied":
            os.mknod(path, stat.S_IFSOCK | 0o666)  # no privilege needed for a socket node
        elif view.others == "readonly":
            # a node that opens for reading only (a device cgroup granting `r`, `--device …:r`); NVML opens its
            # nodes read-write.  A read-only sysfs attribute opens O_RDONLY and refuses O_RDWR with EACCES, even
            # for root (sysfs checks its own modes), and reads as a plain file, as the simulator's nodes are
            os.symlink(READ_ONLY, path)

    for minor, g in enumerate(topo.gpus):
        node(root / f"nvidia{minor}", view.opens(minor))
        for j, m in enumerate(g.migs):
            node(caps / f"nvidia-cap{mig_cap_minor(minor, j)}", view.opens(minor) and view.uses_mig(m.uuid))


# ---- other processes: /proc/<pid> ([[running]]) ------------------------------------------------------------

#: What a read-only device node of the simulated /dev links to (``others = "readonly"``, in render_dev).
READ_ONLY = "/sys/devices/system/cpu/online"
#: Where a reader that may not read (another user's process, without root) is sent: a write-only sysctl, which
#: open() for reading refuses with EACCES even for root (root bypasses file modes, not this file's missing read).
UNREADABLE = "/proc/sys/vm/drop_caches"
#: The name of the memfd that holds a process's binding record, as ``os.memfd_create`` makes it.
BINDING_MEMFD = "gpuaffinity-binding"
_TEXT_BASE, _MMAP_TOP, _STACK_BASE = 0x555555554000, 0x7F0000000000, 0x7FFC00000000
_TEXT_KB, _TEXT_PAGES, _STACK_MIN_KB = 1024, 64, 132  # the executable's text: 1 MiB mapped, 64 pages resident


def kernel_bitmap(numbers: frozenset[int] | set[int], nbits: int) -> str:
    """A bitmap as /proc/PID/status prints ``Cpus_allowed`` and ``Mems_allowed`` (``%*pb``, lib/vsprintf.c):
    32-bit groups, most significant first, every group 8 hex digits but the first, which has as many as its
    bits need (``nbits`` = 2: ``3``)."""
    value = sum(1 << n for n in numbers)
    chunks = max(1, (nbits + 31) // 32)
    first = (nbits - 32 * (chunks - 1) + 3) // 4
    return ",".join(f"{value >> 32 * i & 0xFFFFFFFF:0{first if i == chunks - 1 else 8}x}"
                    for i in range(chunks - 1, -1, -1))


def _escape_path(path: str) -> str:
    """A path as numa_maps prints it: newline, tab, space and '=' as octal escapes (seq_file_path's "\\n\\t= ")."""
    return "".join(f"\\{ord(ch):03o}" if ch in "\n\t= " else ch for ch in path)


def _text_node(topo: Topology, p: RunningProcess) -> int | None:
    """Where the executable's resident text sits: the node of the main thread's first CPU if it has memory,
    else the first node it may allocate on (None: a machine without memory anywhere)."""
    first = min(p.cpus)
    node = next(n for n in topo.nodes if first in n.cpus)
    return node.id if node.memory_mib > 0 and node.id in p.mems else min(p.mems, default=None)


def _layout(topo: Topology, p: RunningProcess) -> list[tuple[int, int, Mapping]]:
    """(address, size in bytes, mapping) of each VMA in ascending address order: the executable's text first,
    then the heap after it, the other mappings packed below 0x7f0000000000, the stack at the top."""
    node = _text_node(topo, p)
    text = Mapping(None, () if node is None else ((node, _TEXT_PAGES),), p.exe)
    out = [(_TEXT_BASE, _TEXT_KB * 1024, text)]

    def size(m: Mapping) -> int:
        least = _STACK_MIN_KB // 4 if m.kind == "stack" else 1
        return max(m.total, least) * m.kernelpagesize_kb * 1024

    heap = [m for m in p.mappings if m.kind == "heap"]
    if heap:
        out.append((_TEXT_BASE + _TEXT_KB * 1024 + (2 << 20), size(heap[0]), heap[0]))
    middle = [m for m in p.mappings if m.kind is None]
    room = sum(size(m) + m.kernelpagesize_kb * 1024 + 4096 for m in middle)
    addr = (_MMAP_TOP - room) & ~((1 << 30) - 1)
    for m in middle:
        align = m.kernelpagesize_kb * 1024
        addr = (addr + align - 1) & ~(align - 1)
        out.append((addr, size(m), m))
        addr += size(m) + 4096  # a guard gap: the kernel merges adjacent anonymous VMAs of one policy
    out += [(_STACK_BASE, size(m), m) for m in p.mappings if m.kind == "stack"]
    return out


def numa_maps(topo: Topology, p: RunningProcess) -> str:
    """``/proc/<pid>/numa_maps`` as mm/mempolicy.c's show_numa_map writes it; empty without an address space."""
    if not p.has_mm:
        return ""
    lines = []
    for addr, _size, m in _layout(topo, p):
        parts = [f"{addr:08x}", m.policy or p.policy]
        huge = m.kernelpagesize_kb > 4
        if m.file is not None:
            parts.append(f"file={_escape_path(m.file)}")
        elif huge:  # anonymous hugetlb memory is a file of the hugetlbfs the kernel mounts for it
            parts.append(f"file={_escape_path('/anon_hugepage (deleted)')}")
        elif m.kind is not None:
            parts.append(m.kind)
        if huge:
            parts.append("huge")
        if m.total:
            parts += [f"mapped={m.total}"] if m.file is not None else [f"anon={m.total}", f"dirty={m.total}"]
            parts += [f"N{node}={n}" for node, n in m.pages]
            parts.append(f"kernelpagesize_kB={m.kernelpagesize_kb}")
        lines.append(" ".join(parts))
    return "".join(line + "\n" for line in lines)


def _memory_lines(topo: Topology, p: RunningProcess) -> list[str]:
    """The Vm*/Rss* lines of status (fs/proc/task_mmu.c task_mem), consistent with numa_maps: VmRSS is the
    resident base pages (hugetlb pages count in HugetlbPages instead, as in the kernel)."""
    layout = _layout(topo, p)
    anon = sum(m.total * 4 for _, _, m in layout if m.file is None and m.kernelpagesize_kb == 4)
    file = sum(m.total * 4 for _, _, m in layout if m.file is not None and m.kernelpagesize_kb == 4)
    huge = sum(m.total * m.kernelpagesize_kb for _, _, m in layout if m.kernelpagesize_kb > 4)
    vm = sum(size for _, size, _ in layout) // 1024
    data = sum(size for _, size, m in layout if m.file is None and m.kind != "stack") // 1024
    stack = sum(size for _, size, m in layout if m.kind == "stack") // 1024
    rss = anon + file
    rows = [("VmPeak", vm), ("VmSize", vm), ("VmLck", 0), ("VmPin", 0), ("VmHWM", rss), ("VmRSS", rss),
            ("RssAnon", anon), ("RssFile", file), ("RssShmem", 0), ("VmData", data), ("VmStk", stack),
            ("VmExe", _TEXT_KB), ("VmLib", 0), ("VmPTE", 4 * max(1, -(-rss // 2048))), ("VmSwap", 0),
            ("HugetlbPages", huge)]
    return [f"{key}:\t{value:8d} kB" for key, value in rows]


def _fds(p: RunningProcess, pid_dir: Path, dev_root: Path, driver: bool) -> list[tuple[int, str]]:
    """(fd, link target) of a process: stdin, stdout and stderr on /dev/null; the binding record's memfd; the
    driver's control and UVM nodes and each opened GPU's node (none without the driver)."""
    if not p.has_mm:
        return []
    links = [(0, "/dev/null"), (1, "/dev/null"), (2, "/dev/null")]
    if p.binding is not None:
        links.append((3, str(pid_dir.absolute() / ".memfd" / f"memfd:{BINDING_MEMFD} (deleted)")))
    if driver and p.opens:
        names = ["nvidiactl", "nvidia-uvm"] + [f"nvidia{minor}" for minor in p.opens]
        links += [(len(links) + k, str(dev_root.absolute() / name)) for k, name in enumerate(names)]
    return links


def _status(topo: Topology, p: RunningProcess, tid: int, name: str, state: str, cpus: frozenset[int],
            nfds: int) -> str:
    """``/proc/<pid>/status`` and ``task/<tid>/status`` (fs/proc/array.c), the lines in the kernel's order: a
    subset of Linux 6.18's (no signal, capability or seccomp lines)."""
    zombie = p.state == "Z"
    lines = [f"Name:\t{name.replace(chr(92), chr(92) * 2)}"]
    if not zombie:  # an exited task has no fs_struct: no Umask line
        lines.append("Umask:\t0022")
    group = 0 if p.kernel_thread else p.pid
    fdsize = 0 if zombie else max(64, 1 << max(nfds - 1, 0).bit_length())
    lines += [f"State:\t{state} ({STATES[state]})", f"Tgid:\t{p.pid}", "Ngid:\t0", f"Pid:\t{tid}", f"PPid:\t{p.ppid}",
              "TracerPid:\t0", f"Uid:\t{p.uid}\t{p.uid}\t{p.uid}\t{p.uid}",
              f"Gid:\t{p.gid}\t{p.gid}\t{p.gid}\t{p.gid}", f"FDSize:\t{fdsize}", "Groups:\t ",
              f"NStgid:\t{p.pid}", f"NSpid:\t{tid}", f"NSpgid:\t{group}", f"NSsid:\t{group}",
              f"Kthread:\t{int(p.kernel_thread)}"]
    if p.has_mm:
        lines += _memory_lines(topo, p)
    lines += [f"Threads:\t{1 + len(p.threads)}",
              f"Cpus_allowed:\t{kernel_bitmap(cpus, max(topo.all_cpus) + 1)}",
              f"Cpus_allowed_list:\t{format_cpulist(cpus)}",
              f"Mems_allowed:\t{kernel_bitmap(p.mems, MAX_NODE)}",
              f"Mems_allowed_list:\t{format_cpulist(p.mems)}",
              "voluntary_ctxt_switches:\t0", "nonvoluntary_ctxt_switches:\t0"]
    return "".join(line + "\n" for line in lines)


def render_running(topo: Topology, proc_root: Path, dev_root: Path, *, driver: bool = True) -> None:
    """``<pid>/...`` under ``proc_root`` (which stands for /proc) for every ``[[running]]`` process: status,
    comm, cmdline, environ, numa_maps, fd/, task/<tid>/status and comm, and the binding record's memfd.

    ``readable = false`` is another user's process seen without root: environ, numa_maps and fd/ are links
    to a file nobody may read (UNREADABLE), so opening the first two fails with EACCES and listing fd/ with
    ENOTDIR; for a kernel thread or a zombie only fd/ is refused, environ and numa_maps read empty (they have
    no address space to guard).  ``driver``: False on a machine without the NVIDIA kernel module, where no
    process holds a GPU's device node."""
    for p in topo.running:
        d = proc_root / str(p.pid)
        (d / "task").mkdir(parents=True)
        fds = _fds(p, d, dev_root, driver)
        threads = [(p.pid, p.name, p.state, p.cpus)] + [(t.tid, t.name, t.state, t.cpus) for t in p.threads]
        for tid, name, state, cpus in threads:
            t = d / "task" / str(tid)
            t.mkdir()
            (t / "status").write_bytes(_status(topo, p, tid, name, state, cpus, len(fds)).encode())
            (t / "comm").write_bytes(f"{name}\n".encode())
        (d / "status").write_bytes((d / "task" / str(p.pid) / "status").read_bytes())
        (d / "comm").write_bytes(f"{p.name}\n".encode())
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in p.cmdline))
        if p.binding is not None:
            (d / ".memfd").mkdir()
            (d / ".memfd" / f"memfd:{BINDING_MEMFD} (deleted)").write_bytes(p.binding.encode())
        private = {"environ": b"".join(f"{k}={v}".encode() + b"\0" for k, v in p.environ),
                   "numa_maps": numa_maps(topo, p).encode()}
        for name, content in private.items():
            if p.readable or not p.has_mm:
                (d / name).write_bytes(content)
            else:
                (d / name).symlink_to(UNREADABLE)
        if p.readable:
            (d / "fd").mkdir()
            for fd, target in fds:
                (d / "fd" / str(fd)).symlink_to(target)
        else:
            (d / "fd").symlink_to(UNREADABLE)
