"""Real sysfs is messier than the textbook tree: each variant the simulator can render, and what the
NUMA stage makes of it (the same placement as the clean tree, with a note where files disagree)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from gpuaffinity.core.cpulist import format_cpulist, format_cpumask, parse_cpulist, parse_cpumask
from gpuaffinity.core.notes import kind_of
from gpuaffinity.numa.modes import MODES, Placement, cores_of, place
from gpuaffinity.numa.query import Locality, gpu_locality
from gpuaffinity.numa.sysfs import Sysfs, read_text
from gpuaffinity.sim import load_topology
from gpuaffinity.sim.topology import SYSFS_QUIRKS
from helpers.numa_oracle import VM_2NODE, Oracle, cached_render, plan_in_process, render


@pytest.fixture(autouse=True)
def no_driver_files(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUAFFINITY_PROCFS_ROOT", str(tmp_path / "proc"))


def quirky(shape: str, *quirks: str):
    topo = load_topology(shape)
    return dataclasses.replace(topo, sysfs_quirks=quirks, name=f"{shape}+{'+'.join(quirks)}")


def placements(result):
    return {bus: {mode: (format_cpulist(c), n) for mode, (c, n, _notes) in modes.items()}
            for bus, modes in result.items()}


def all_notes(result):
    return {note for modes in result.values() for (_c, _n, notes) in modes.values() for note in notes}


# quirk -> (shape, the note it must produce or None, modes whose answer may differ from the clean tree's)
EXPECTED = {
    "nul-terminated": ("irregular-2s", None, ()),
    "no-node-cpulist": ("irregular-2s", "{root}/devices/system/node/node*/cpulist is missing: each node's CPUs taken "
                        "from its cpumap", ()),
    "no-numa-node": ("xeon-snc2", "{root}/bus/pci/devices/0000:3a:00.0/numa_node is missing: node(s) 1 taken from its "
                     "local CPUs (20-39,100-119)", ()),
    "no-local-cpulist": ("irregular-2s", None, ()),
    "hex-siblings": ("epyc-nps4", None, ()),
    "package-unknown": ("epyc-nps4", "the kernel does not tell which package this GPU's CPUs are on "
                        "(physical_package_id missing or -1): socket mode uses the GPU's node", ("socket",)),
    "local-cpulist-contradicts": ("xeon-snc4", "{root}/bus/pci/devices/0000:1b:00.0/local_cpulist (14-27,126-139) is "
                                  "not node 0's CPUs (0-13,112-125): using the node's", ()),
    "cache-reordered": ("epyc-nps2", None, ()),
    "no-l1i": ("irregular-2s", None, ()),
}


def test_every_quirk_has_a_test():
    assert set(EXPECTED) == set(SYSFS_QUIRKS)


@pytest.mark.parametrize("quirk", sorted(EXPECTED))
def test_quirky_tree_gives_the_clean_answer(quirk, tmp_path):
    shape, note, differ = EXPECTED[quirk]
    clean = load_topology(shape)
    odd = quirky(shape, quirk)
    restriction = frozenset(sorted(clean.cpus)[: len(clean.cpus) * 2 // 3])
    clean_root, odd_root = cached_render(clean), cached_render(odd)
    for allowed in (None, restriction):
        want = plan_in_process(clean, clean_root, allowed)
        got = plan_in_process(odd, odd_root, allowed)
        w, g = placements(want), placements(got)
        for bus in w:
            for mode in MODES:
                if mode not in differ:
                    assert g[bus][mode] == w[bus][mode], (quirk, bus, mode)
        if note:
            full = note.format(root=odd_root)
            assert full in all_notes(got), sorted(all_notes(got))
    if differ:  # the unknown package: socket falls back to the node
        for bus in g:
            assert g[bus]["socket"] == g[bus]["node"]


def test_nul_terminated_files_are_really_nul_terminated(tmp_path):
    root = render(quirky("irregular-2s", "nul-terminated"), tmp_path)
    raw = (root / "devices/system/cpu/cpu3/topology/thread_siblings_list").read_bytes()
    assert raw == b"3,43\n\0"
    assert read_text(root / "devices/system/cpu/cpu3/topology/thread_siblings_list") == "3,43"
    assert parse_cpulist("0-3,8\n\0") == frozenset({0, 1, 2, 3, 8})


def test_old_code_would_take_the_l2_for_the_l3_when_caches_are_reordered(tmp_path):
    root = render(quirky("epyc-nps2", "cache-reordered"), tmp_path)
    cache = root / "devices/system/cpu/cpu0/cache"
    # the same four caches, the last two swapped: L1d, L1i, L3, L2
    assert [((cache / f"index{i}/level").read_text().strip(), (cache / f"index{i}/type").read_text().strip())
            for i in range(4)] == [("1", "Data"), ("1", "Instruction"), ("3", "Unified"), ("2", "Unified")]
    assert Sysfs(root).last_level_cache(0) == parse_cpulist("0-7,96-103")


def test_hex_only_siblings_keep_threads_together(tmp_path):
    root = render(quirky("epyc-nps4", "hex-siblings"), tmp_path)
    assert not (root / "devices/system/cpu/cpu0/topology/thread_siblings_list").exists()
    assert Sysfs(root).siblings(0) == frozenset({0, 128})


def test_cpumask_forms():
    assert parse_cpumask("00000002,00000001") == frozenset({0, 33})
    assert parse_cpumask("f,ffffffff\n\0") == frozenset(range(36))
    assert parse_cpumask("") == frozenset()
    assert parse_cpumask(" 00000000 ") == frozenset()
    for bad in ("ff,ff", "123456789", "zz", "f,,00000000", "00000000,"):
        with pytest.raises(ValueError):
            parse_cpumask(bad)


# ---- files that are missing, garbled or contradict each other ---------------------------------------


@pytest.fixture
def tree(tmp_path):
    topo = load_topology("xeon-snc2")
    return topo, render(topo, tmp_path / "sys")


def test_garbled_lists_are_noted_and_the_mask_used(tree):
    topo, root = tree
    (root / "devices/system/node/node1/cpulist").write_text("20-x\n")
    (root / "devices/system/cpu/cpu20/topology/core_cpus_list").write_text("21\n")
    fs = Sysfs(root)
    notes: list[str] = []
    assert fs.node_cpus(1, notes) == parse_cpulist("20-39,100-119")
    assert any("node1/cpulist is not a CPU list" in n for n in notes)
    assert fs.siblings(20, notes) == frozenset({20, 100})  # core_cpus_list leaves out 20: thread_siblings_list
    assert any("leaves out CPU 20 itself" in n for n in notes)


def test_disagreeing_list_and_mask_are_noted(tree):
    topo, root = tree
    (root / "devices/system/node/node1/cpumap").write_text("00000000,00000000,000fffff\n")
    (root / f"bus/pci/devices/{topo.gpus[2].pci_bus_id}/local_cpus").write_text("00000001\n")
    notes: list[str] = []
    fs = Sysfs(root)
    assert fs.node_cpus(1, notes) == parse_cpulist("20-39,100-119")
    assert any("cpulist (20-39,100-119) and cpumap (0-19) disagree: using cpulist" in n for n in notes)
    fs.pci_local_cpus(topo.gpus[2].pci_bus_id, notes)
    assert any("local_cpus (0) disagree: using the list" in n for n in notes)


def test_no_node_files_at_all_falls_back_to_nvml(tmp_path):
    topo = load_topology("xeon-snc2")
    every = topo.cpus
    loc = gpu_locality(topo.gpus[2].pci_bus_id, every, (frozenset({1}), parse_cpulist("20-39,100-119")),
                       sysfs=Sysfs(tmp_path / "nothing"))
    assert (loc.numa_nodes, loc.source, format_cpulist(loc.cpus)) == ((1,), "nvml", "20-39,100-119")
    fs = Sysfs(tmp_path / "nothing")
    for mode in MODES:
        p = place(loc, mode, every, allowed_mems=None, sysfs=fs)
        assert (p.memory_nodes, format_cpulist(p.bind_cpus)) == ((1,), "20-39,100-119"), mode
    assert any("package" in n for n in place(loc, "socket", every, allowed_mems=None, sysfs=fs).notes)
    assert (f"no thread siblings in {tmp_path / 'nothing'}/devices/system/cpu/cpu*/topology: a CPU without them is "
            "taken as a core of its own") in place(loc, "exclusive", every, allowed_mems=None, sysfs=fs).notes
    nothing = gpu_locality(topo.gpus[2].pci_bus_id, every, None, sysfs=fs)
    assert (nothing.numa_nodes, nothing.source) == ((), "none")


def test_node_list_from_folders_and_memory_from_meminfo(tree):
    topo, root = tree
    (root / "devices/system/node/online").write_text("0-q\n")
    (root / "devices/system/node/has_memory").unlink()
    (root / "devices/system/node/node3/meminfo").write_text("Node 3 MemTotal:       0 kB\n")
    fs = Sysfs(root)
    notes: list[str] = []
    assert fs.nodes_with_memory(notes) == frozenset({0, 1, 2})
    assert notes == [f"{root}/devices/system/node/online is not a CPU list ('q' is not a CPU number in cpulist "
                     "'0-q'): ignored"]
    assert fs.node_ids() == (0, 1, 2, 3)
    (root / "devices/system/node/node2/meminfo").unlink()
    assert Sysfs(root).nodes_with_memory() is None


def test_bad_distance_file_is_noted_and_nothing_is_nearest(tree):
    topo, root = tree
    (root / "devices/system/node/node1/distance").write_text("10 12\n")
    notes: list[str] = []
    assert Sysfs(root).nearest(1, frozenset({0, 2, 3}), notes) == ()
    assert any("does not list one distance per online node" in n for n in notes)
    assert Sysfs(root).nearest(0, frozenset({1, 2, 3})) == (1,)
    assert Sysfs(root).nearest(0, frozenset({2, 3})) == (2, 3)


def test_numa_node_garbled_or_missing_without_local_cpus(tree):
    topo, root = tree
    bus = topo.gpus[2].pci_bus_id
    (root / f"bus/pci/devices/{bus}/numa_node").write_text("one\n")
    (root / f"bus/pci/devices/{bus}/local_cpulist").unlink()
    (root / f"bus/pci/devices/{bus}/local_cpus").unlink()
    loc = gpu_locality(bus, topo.cpus, None, sysfs=Sysfs(root))
    assert loc.numa_nodes == () and loc.source == "none"
    assert any("numa_node says 'one', not a node" in n for n in loc.notes)


def test_offline_cpus_are_never_placed(tmp_path):
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path)
    assert (root / "devices/system/cpu/cpu36/online").read_text().strip() == "0"
    assert not (root / "devices/system/cpu/cpu36/topology").exists()
    assert (root / "devices/system/cpu/cpu30/topology/thread_siblings_list").read_text().strip() == "30"
    assert (root / "devices/system/cpu/smt/control").read_text().strip() == "on"
    # an affinity mask that names offline CPUs (a stale cpuset) still places online CPUs only
    got = plan_in_process(topo, root, parse_cpulist("30-39,70-79"))
    for mode in MODES:
        assert format_cpulist(got["0000:c1:00.0"][mode][0]) == "30-35", mode


def test_empty_cpuset_places_nothing_and_crashes_nothing(tmp_path):
    topo = load_topology("irregular-2s")
    got = plan_in_process(topo, render(topo, tmp_path), frozenset())
    assert {c for modes in got.values() for (c, _n, _notes) in modes.values()} == {frozenset()}
    assert "none of this GPU's local CPUs (0-9,40-49) is allowed to this process (allowed: none; affinity mask or " \
           "cgroup cpuset)" in got["0000:11:00.0"]["node"][2]
    oracle = Oracle(topo)
    assert all(oracle.expect(g, m, frozenset())[0] == frozenset() for g in topo.gpus for m in MODES)


# ---- the NUMA stage called the way the rest of the package calls it ---------------------------------


def test_place_reads_sysfs_and_mems_allowed_itself(monkeypatch, tmp_path):
    from gpuaffinity.numa.modes import cores_of

    topo = load_topology("gh200")
    monkeypatch.setenv("GPUAFFINITY_SYSFS_ROOT", str(cached_render(topo)))
    bus = topo.gpus[0].pci_bus_id
    loc = gpu_locality(bus, topo.cpus, (frozenset({0}), topo.cpus, frozenset({1})))
    assert (loc.numa_nodes, loc.gpu_memory_nodes, loc.cpu_nodes) == ((0,), (1,), (0,))
    p = place(loc, "exclusive", topo.cpus)
    assert (p.memory_nodes, format_cpulist(p.bind_cpus)) == ((0,), "0-71")
    assert cores_of(frozenset({0, 1})) == [(0,), (1,)]
    status = tmp_path / "proc" / "self" / "status"
    status.parent.mkdir(parents=True)
    status.write_text("Name:\tpython3\nMems_allowed:\t00000002\nMems_allowed_list:\t1\n")
    left = place(loc, "node", topo.cpus)
    assert left.memory_nodes == () and left.notes[-1] == (
        "memory on node(s) 0 is not allowed to this process (Mems_allowed_list 1, from its cgroup cpuset): left out "
        "of the memory policy")
    assert place(loc, "node", topo.cpus, gpu_memory=True).memory_nodes == (1,)
    status.write_text("Mems_allowed_list:\tx\n")
    assert place(loc, "node", topo.cpus).memory_nodes == (0,)  # unreadable: no limit
    with pytest.raises(ValueError, match=r"^unknown mode 'nodes': choose one of node, socket, exclusive, llc$"):
        place(loc, "nodes", topo.cpus)


def test_sysfs_root_is_sys_unless_the_simulator_says(monkeypatch):
    from pathlib import Path

    from gpuaffinity.numa.sysfs import sysfs_root

    monkeypatch.delenv("GPUAFFINITY_SYSFS_ROOT", raising=False)
    assert sysfs_root() == Path("/sys") and Sysfs().root == Path("/sys")
    monkeypatch.setenv("GPUAFFINITY_SYSFS_ROOT", "/elsewhere")
    assert Sysfs().root == Path("/elsewhere")


def _device(root, bus, vendor, cls, node):
    base = root / "bus" / "pci" / "devices" / bus
    base.mkdir(parents=True)
    for name, text in (("vendor", vendor), ("class", cls), ("numa_node", str(node))):
        (base / name).write_text(text + "\n")


def test_exclusive_counts_gpus_this_process_cannot_open(tmp_path):
    """The split counts every GPU of the node the PCI tree shows, not only those this process sees."""
    topo = load_topology("dgx-h100")
    root = render(topo, tmp_path / "sys")
    _device(root, "0000:05:00.0", "0x15b3", "0x020000", 0)  # a NIC: not a GPU
    _device(root, "0000:06:00.0", "0x10de", "0x068000", 0)  # an NVSwitch: not a GPU
    _device(root, "0000:07:00.0", "0x10de", "0x040300", 0)  # a GPU's audio function: not a GPU
    _device(root, "0000:e0:00.0", "0x10de", "0x030000", 1)  # a VGA NVIDIA GPU on node 1: counts
    _device(root, "0000:e1:00.0", "0x10de", "0x030200", -1)  # no node: counts nowhere
    fs = Sysfs(root)
    assert fs.gpus_by_node() == {0: [g.pci_bus_id for g in topo.gpus[:4]],
                                 1: [g.pci_bus_id for g in topo.gpus[4:]] + ["0000:e0:00.0"]}
    for gpu, want in ((topo.gpus[1], "14-27,126-139"), (topo.gpus[4], "56-67,168-179")):
        loc = gpu_locality(gpu.pci_bus_id, topo.cpus, None, sysfs=fs)
        p = place(loc, "exclusive", topo.cpus, {gpu.numa_node: [gpu.pci_bus_id]}, allowed_mems=None, sysfs=fs)
        assert format_cpulist(p.bind_cpus) == want
    assert Sysfs(tmp_path / "none").gpus_by_node() == {}


def test_node_lists_that_name_offline_cpus(tmp_path):
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/node/node3/cpulist").write_text("30-39,70-79\n")
    assert Sysfs(root).node_cpus(3) == parse_cpulist("30-35")
    (root / "devices/system/cpu/online").unlink()
    assert Sysfs(root).node_cpus(3) == parse_cpulist("30-39,70-79")  # without cpu/online: as the node says


def test_socket_without_the_online_file(tmp_path):
    topo = load_topology("xeon-snc2")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/cpu/online").unlink()
    got = plan_in_process(topo, root)
    assert format_cpulist(got[topo.gpus[0].pci_bus_id]["socket"][0]) == "0-39,80-119"
    assert format_cpulist(got[topo.gpus[7].pci_bus_id]["socket"][0]) == "40-79,120-159"


def test_memory_placement_notes_what_sysfs_did_not_say(tmp_path):
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/node/has_memory").write_text("0-x\n")
    fs = Sysfs(root)
    notes: list[str] = []
    assert fs.nodes_with_memory(notes) == frozenset({0, 2, 3, 4})  # from meminfo
    assert notes == [f"{root}/devices/system/node/has_memory is not a CPU list ('x' is not a CPU number in cpulist "
                     "'0-x'): ignored"]
    bus = "0000:31:00.0"  # node 1: CPUs, no memory
    loc = gpu_locality(bus, topo.cpus, None, sysfs=fs)
    assert notes[0] in place(loc, "node", topo.cpus, allowed_mems=None, sysfs=fs).notes
    (root / "devices/system/node/node1/distance").write_text("10 12 21\n")
    fs = Sysfs(root)
    p = place(gpu_locality(bus, topo.cpus, None, sysfs=fs), "node", topo.cpus, allowed_mems=None, sysfs=fs)
    assert p.memory_nodes == ()
    assert p.notes[-2:] == (
        f"{root}/devices/system/node/node1/distance ('10 12 21') does not list one distance per online node (0-4): "
        "ignored",
        "node 1 has no memory: memory goes to the nearest node(s) with memory (unknown: memory left alone)")


def test_nearest_never_names_the_node_itself_or_an_unknown_one(tree):
    topo, root = tree
    fs = Sysfs(root)
    assert fs.nearest(0, frozenset({0, 1, 7})) == (1,)
    assert fs.nearest(0, frozenset({0})) == ()
    (root / "devices/system/node/online").write_text("0-z\n")
    notes: list[str] = []
    assert Sysfs(root).distances(0, notes) == {0: 10, 1: 12, 2: 21, 3: 21}
    assert notes == [f"{root}/devices/system/node/online is not a CPU list ('z' is not a CPU number in cpulist "
                     "'0-z'): ignored"]


def _caches(root, cpu, *entries):
    """Write cpu<N>/cache/index<i> folders: (level or None, type or None, shared_cpu_list or None)."""
    for i, (level, kind, shared) in enumerate(entries):
        base = root / "devices/system/cpu" / f"cpu{cpu}" / "cache" / f"index{i}"
        base.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("shared_cpu_list", shared)):
            if text is not None:
                (base / name).write_text(f"{text}\n")


def test_the_last_level_cache_is_read_by_level_and_type(tmp_path):
    root = tmp_path / "sys"
    _caches(root, 0, ("1", "Data", "0"), ("3", "Instruction", "0-7"), ("2", "Unified", "0-1"))
    _caches(root, 1, ("1", "Data", "1"), ("3", None, "0-3"), ("3", "Unified", "0-7"))  # no type: unified; first L3
    _caches(root, 2, (None, "Unified", "0-15"), ("3", "Unified", None), ("2", "Unified", "2-3"))
    _caches(root, 3, ("x", "Unified", "0-15"))
    _caches(root, 5, ("3", "Unified", "0-q"))
    fs = Sysfs(root)
    notes: list[str] = []
    assert fs.last_level_cache(0, notes) == frozenset({0, 1})  # the level-3 instruction cache does not count
    assert fs.last_level_cache(1, notes) == frozenset({0, 1, 2, 3})
    assert fs.last_level_cache(2, notes) == frozenset({2, 3})  # an L3 without CPUs, a cache without level: skipped
    assert fs.last_level_cache(3, notes) is None and fs.last_level_cache(4, notes) is None
    assert notes == [f"a cache in {root}/devices/system/cpu/cpu*/cache has no level: ignored"]
    assert fs.last_level_cache(5, notes) is None
    assert notes[-1] == (f"{root}/devices/system/cpu/cpu5/cache/index0/shared_cpu_list is not a CPU list ('q' is not "
                         "a CPU number in cpulist '0-q'): ignored")


def test_llc_mode_passes_on_what_the_cache_files_did_not_say(tmp_path):
    topo = load_topology("epyc-nps2")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/cpu/cpu0/cache/index3/level").unlink()
    got = plan_in_process(topo, root)
    notes = got[topo.gpus[0].pci_bus_id]["llc"][2]
    assert f"a cache in {root}/devices/system/cpu/cpu*/cache has no level: ignored" in notes
    # CPU 0's last level is then its L2 (0,96): a domain of its own, so node 0 has 4 domains, 2 a GPU
    assert format_cpulist(got[topo.gpus[0].pci_bus_id]["llc"][0]) == "0-7,96-103"


def test_unknown_package_note_in_full(tmp_path):
    odd = quirky("epyc-nps4", "package-unknown")
    got = plan_in_process(odd, cached_render(odd))
    assert got["0000:07:00.0"]["socket"][2] == (
        "the kernel does not tell which package this GPU's CPUs are on (physical_package_id missing or -1): socket "
        "mode uses the GPU's node",)


@pytest.mark.parametrize(("keep", "form"), [("core_cpus", "mask"), ("thread_siblings_list", "list")])
def test_siblings_from_whichever_file_is_there(tmp_path, keep, form):
    topo = load_topology("epyc-nps4")
    root = render(topo, tmp_path / "sys")
    base = root / "devices/system/cpu/cpu0/topology"
    for name in ("core_cpus", "core_cpus_list", "thread_siblings", "thread_siblings_list"):
        if name != keep:
            (base / name).unlink()
    assert Sysfs(root).siblings(0) == frozenset({0, 128}), form


def test_a_vm_gpu_has_no_preference_and_never_an_offline_cpu(tmp_path):
    from gpuaffinity.sim.topology import parse_topology

    topo = parse_topology({"name": "vm-offline", "offline_cpus": "6-7", "numa_node": [{"id": 0, "cpus": "0-7"}],
                           "gpu": [{"uuid": "GPU-00000000-0000-0000-0000-000000000001", "pci_bus_id": "0000:01:00.0",
                                    "name": "NVIDIA H100", "numa_node": -1}]})
    got = plan_in_process(topo, render(topo, tmp_path / "sys"), frozenset(range(8)), mems=frozenset())
    for mode in MODES:
        cpus, nodes, notes = got["0000:01:00.0"][mode]
        assert (format_cpulist(cpus), nodes) == ("0-5", ())
        assert notes == ("the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and this host "
                         "has one NUMA node (NVML was not asked: it can name no other): no preference",
                         "no NUMA preference: every allowed CPU")



def test_locality_reads_allowed_cpus_itself(monkeypatch):
    topo = load_topology("xeon-snc2")
    monkeypatch.setenv("GPUAFFINITY_SIM_ALLOWED_CPUS", "20-24")
    loc = gpu_locality(topo.gpus[2].pci_bus_id, None, None, sysfs=Sysfs(cached_render(topo)))
    assert format_cpulist(loc.cpus) == "20-24" and format_cpulist(loc.local_cpus) == "20-39,100-119"


def test_a_gpu_on_a_node_nothing_describes(tmp_path):
    """Node 3's lists and distances unreadable: the device's own local list, limited to online CPUs."""
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path / "sys")
    for name in ("cpulist", "cpumap", "distance"):
        (root / "devices/system/node/node3" / name).unlink()
    bus = "0000:c1:00.0"
    (root / "bus/pci/devices" / bus / "local_cpulist").write_text("30-39,70-79\n")
    (root / "bus/pci/devices" / bus / "local_cpus").write_text(format_cpumask(parse_cpulist("30-39,70-79")) + "\n")
    loc = gpu_locality(bus, topo.cpus, None, sysfs=Sysfs(root))
    assert (loc.numa_nodes, format_cpulist(loc.cpus)) == ((3,), "30-35")
    assert loc.notes == (
        f"neither {root}/devices/system/node/node3/cpulist nor cpumap can be read: node 3 taken as having no CPUs",
        "node 3 has no CPUs: the CPUs of the nearest node(s) (unknown) are used")


def test_notes_from_every_file_reach_the_locality(tmp_path):
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/node/online").write_text("0-q\n")
    (root / "devices/system/node/node4/distance").write_text("10 12\n")
    bus = "0000:e1:00.0"  # node 4: memory, no CPUs
    (root / "bus/pci/devices" / bus / "local_cpus").write_text("00000001\n")
    loc = gpu_locality(bus, topo.cpus, None, sysfs=Sysfs(root))
    assert (loc.numa_nodes, loc.cpus) == ((4,), frozenset())
    assert loc.notes == (
        f"{root}/devices/system/node/online is not a CPU list ('q' is not a CPU number in cpulist '0-q'): ignored",
        f"{root}/bus/pci/devices/{bus}/local_cpulist (empty) and {root}/bus/pci/devices/{bus}/local_cpus (0) "
        "disagree: using the list",
        f"{root}/devices/system/node/node4/distance ('10 12') does not list one distance per online node (0-4): "
        "ignored",
        "node 4 has no CPUs: the CPUs of the nearest node(s) (unknown) are used")


def test_a_vm_without_the_online_file(tmp_path):
    topo = load_topology("vm-4gpu")
    root = render(topo, tmp_path / "sys")
    (root / "devices/system/cpu/online").unlink()
    loc = gpu_locality(topo.gpus[0].pci_bus_id, topo.cpus, None, sysfs=Sysfs(root))
    assert (loc.numa_nodes, format_cpulist(loc.cpus)) == ((), "0-31")


def test_nothing_known_is_an_empty_locality(tmp_path):
    from gpuaffinity.numa.query import Locality

    loc = gpu_locality("0000:01:00.0", frozenset({0, 1}), None, sysfs=Sysfs(tmp_path))
    assert loc == Locality("0000:01:00.0", (), frozenset(), frozenset(), "none", (
        f"neither sysfs ({tmp_path}/bus/pci/devices/0000:01:00.0) nor NVML gives this GPU's locality: no preference",))


def test_sysfs_cpus_win_over_nvml_cpus(tree):
    topo, root = tree
    loc = gpu_locality(topo.gpus[2].pci_bus_id, topo.cpus, (frozenset({1}), frozenset({0, 1})), sysfs=Sysfs(root))
    assert (loc.numa_nodes, format_cpulist(loc.cpus), loc.source) == ((1,), "20-39,100-119", "sysfs+nvml")


def test_empty_lists_are_said_to_be_empty(tree):
    topo, root = tree
    bus = topo.gpus[2].pci_bus_id
    (root / "bus/pci/devices" / bus / "local_cpulist").write_text("\n")
    (root / "bus/pci/devices" / bus / "local_cpus").write_text("00000000\n")
    (root / "devices/system/node/node0/cpulist").write_text("\n")
    (root / "devices/system/node/node2/cpumap").write_text("zz\n")
    fs = Sysfs(root)
    loc = gpu_locality(bus, topo.cpus, None, sysfs=fs)
    assert loc.notes == (
        f"{root}/devices/system/node/node0/cpulist (empty) and cpumap (0-19,80-99) disagree: using cpulist",
        f"{root}/devices/system/node/node2/cpumap is not a CPU mask ('zz' is not a group of 32-bit hex digits in "
        "cpumask 'zz'): ignored",
        f"{root}/bus/pci/devices/{bus}/local_cpulist (empty) is not node 1's CPUs (20-39,100-119): using the node's")
    (root / "devices/system/node/node0/cpumap").write_text("00000000\n")
    (root / "devices/system/node/node0/cpulist").write_text("0-19,80-99\n")
    notes: list[str] = []
    Sysfs(root).node_cpus(0, notes)
    assert notes == [f"{root}/devices/system/node/node0/cpulist (0-19,80-99) and cpumap (empty) disagree: using "
                     "cpulist"]


@pytest.mark.parametrize(("text", "node"), [("3\n", 3), ("-1\n", -1), ("-7\n", -1), ("+1\n", None), ("1_0\n", None),
                                           ("\u0661\n", None), ("\n", None), ("-\n", None), ("0x1\n", None)])
def test_numa_node_is_a_plain_integer(tree, text, node):
    """The kernel writes a decimal integer, -1 for none; anything else is garbled, never read as some node."""
    topo, root = tree
    bus = topo.gpus[0].pci_bus_id
    (root / f"bus/pci/devices/{bus}/numa_node").write_text(text)
    notes: list[str] = []
    assert Sysfs(root).pci_numa_node(bus, notes) == node
    assert bool(notes) is (node is None)


def test_has_memory_reads_the_total_wherever_the_line_starts():
    """meminfo's MemTotal, at the start of the text or after the node prefix; none, or zero: no memory."""
    from gpuaffinity.numa.sysfs import _has_memory

    assert _has_memory("Node 0 MemTotal:       65536 kB\nNode 0 MemFree: 1 kB\n") is True
    assert _has_memory("MemTotal: 5 kB\n") is True  # the very first characters
    assert _has_memory("Node 2 MemTotal:       0 kB\n") is False
    assert _has_memory("Node 2 MemFree: 5 kB\n") is False  # no total at all
    assert _has_memory("") is False


def test_notes_are_said_in_full(tree):
    """What a user reads, asserted whole: the mutation pass showed that a changed word, a lost path or a note
    dropped on the way (an online list read without its notes) went unnoticed."""
    topo, root = tree
    # a siblings list that leaves out the CPU itself
    (root / "devices/system/cpu/cpu3/topology/core_cpus_list").write_text("4\n")
    notes: list[str] = []
    Sysfs(root).siblings(3, notes)
    assert f"{root}/devices/system/cpu/cpu3/topology/core_cpus_list (4) leaves out CPU 3 itself: ignored" in notes
    # a garbled numa_node names the device's own file
    bus = topo.gpus[0].pci_bus_id
    (root / f"bus/pci/devices/{bus}/numa_node").write_text("x\n")
    notes = []
    assert Sysfs(root).pci_numa_node(bus, notes) is None
    assert notes == [f"{root}/bus/pci/devices/{bus}/numa_node says 'x', not a node: ignored"]
    # a garbled online list, met first through a node's CPUs: its note still reaches that caller
    (root / "devices/system/cpu/online").write_text("0-z\n")
    notes = []
    Sysfs(root).node_cpus(0, notes)
    assert any(n.startswith(f"{root}/devices/system/cpu/online is not a CPU list (") and n.endswith("): ignored")
               for n in notes), notes


def test_node_folders_other_than_nodeN_are_not_nodes(tree):
    """Without node/online, the node<N> folders count, and nothing else there ('nodeX', 'possible', 'power')."""
    topo, root = tree
    base = root / "devices/system/node"
    (base / "online").unlink()
    (base / "nodeinfo").mkdir()
    (base / "power").mkdir(exist_ok=True)
    (base / "has_cpu").write_text("0-1\n")
    assert Sysfs(root).node_ids() == tuple(sorted(n.id for n in topo.nodes))


def test_the_nearest_cpu_node_to_gpu_memory_keeps_its_notes(tmp_path):
    """The firmware puts the GPU's PCI device on its own memory node, and NVML names only that node: its place is
    the CPU node nearest that memory, and when the distances cannot be read, the note saying so reaches the
    locality."""
    topo = load_topology("gh200")
    root = render(topo, tmp_path / "sys")
    bus = topo.gpus[0].pci_bus_id
    (root / f"bus/pci/devices/{bus}/numa_node").write_text("1\n")
    mem = frozenset({1})
    loc = gpu_locality(bus, topo.cpus, (mem, topo.cpus, mem), sysfs=Sysfs(root))
    assert loc.numa_nodes == (0,)  # Grace, the node nearest the HBM
    (root / "devices/system/node/node1/distance").write_text("10\n")
    loc = gpu_locality(bus, topo.cpus, (mem, topo.cpus, mem), sysfs=Sysfs(root))
    assert any(n.startswith(f"{root}/devices/system/node/node1/distance") and
               "does not list one distance per online node" in n for n in loc.notes), loc.notes


def test_a_file_that_is_not_text_is_read_with_replacement(tmp_path):
    """Bytes that are not UTF-8 (a corrupt or hostile sysfs) are never a UnicodeDecodeError: the text is read
    with replacement characters, and then judged as garbled by whoever parses it."""
    f = tmp_path / "cpulist"
    f.write_bytes(b"0-3\xff\xfe\n\0")
    assert read_text(f) == "0-3\ufffd\ufffd"


def test_a_local_cpu_list_and_mask_that_disagree_are_said_in_full(tree):
    topo, root = tree
    bus = topo.gpus[0].pci_bus_id
    base = root / f"bus/pci/devices/{bus}"
    (base / "local_cpus").write_text("0\n")  # an empty mask against a non-empty list
    notes: list[str] = []
    listed = Sysfs(root).pci_local_cpus(bus, notes)
    assert listed and notes == [f"{base}/local_cpulist ({format_cpulist(listed)}) and {base}/local_cpus (empty) "
                                "disagree: using the list"]
    # no list, and a mask that is no mask: the mask's own note reaches the caller
    (base / "local_cpulist").unlink()
    (base / "local_cpus").write_text("zz-top\n")
    notes = []
    assert Sysfs(root).pci_local_cpus(bus, notes) is None
    assert len(notes) == 1 and notes[0].startswith(f"{base}/local_cpus is not a CPU mask (")


def test_a_garbled_online_list_is_noted_in_the_locality(tree):
    topo, root = tree
    (root / "devices/system/cpu/online").write_text("0-z\n")
    bus = topo.gpus[0].pci_bus_id
    loc = gpu_locality(bus, topo.cpus, None, sysfs=Sysfs(root))
    assert any(n.startswith(f"{root}/devices/system/cpu/online is not a CPU list (") for n in loc.notes), loc.notes


def test_a_garbled_simulated_cpuset_says_what_to_do(monkeypatch):
    from gpuaffinity.core.errors import GpuAffinityError
    from gpuaffinity.numa.query import allowed_cpus

    monkeypatch.setenv("GPUAFFINITY_SIM_ALLOWED_CPUS", "zz")
    with pytest.raises(GpuAffinityError) as e:
        allowed_cpus()
    assert str(e.value).startswith("GPUAFFINITY_SIM_ALLOWED_CPUS (the simulator's cpuset) is not a CPU list: ")
    assert str(e.value).endswith("; unset it outside `gpuaffinity sim run`")


def test_nvmls_cpus_are_cut_to_the_online_ones(tmp_path):
    """The firmware gives no node, NVML's CPU affinity names offline CPUs (36-39 on node 3 here) and the affinity
    mask names them too (a stale cpuset): the locality holds online CPUs only."""
    topo = load_topology("irregular-2s")
    root = render(topo, tmp_path)
    bus = "0000:c1:00.0"
    (root / f"bus/pci/devices/{bus}/numa_node").unlink()
    for name in ("local_cpulist", "local_cpus"):
        (root / f"bus/pci/devices/{bus}/{name}").unlink(missing_ok=True)
    nv = (frozenset({3}), parse_cpulist("30-39"), frozenset())
    loc = gpu_locality(bus, parse_cpulist("0-79"), nv, sysfs=Sysfs(root))
    assert loc.source == "nvml" and format_cpulist(loc.cpus) == "30-35"


def test_place_keeps_the_note_about_an_unreadable_online_file(tmp_path):
    cpu = tmp_path / "devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text("0-x\n")
    loc = Locality("0000:01:00.0", (), frozenset(), frozenset(), "sysfs")
    got = place(loc, "node", frozenset({0, 1}), sysfs=Sysfs(tmp_path), allowed_mems=None)
    assert got == Placement("node", (), frozenset({0, 1}), (
        f"{cpu / 'online'} is not a CPU list ('x' is not a CPU number in cpulist '0-x'): ignored",
        "no NUMA preference: every allowed CPU"))
    assert [kind_of(n) for n in got.notes] == ["info", "attention"]


def test_cores_are_ordered_by_their_first_cpu(tmp_path):
    for cpu, siblings in {0: "0,4", 1: "1,5", 4: "0,4", 5: "1,5", 2: "2"}.items():
        top = tmp_path / f"devices/system/cpu/cpu{cpu}/topology"
        top.mkdir(parents=True)
        (top / "core_cpus_list").write_text(siblings + "\n")
    assert cores_of(frozenset({0, 1, 2, 4, 5}), Sysfs(tmp_path), []) == [(0, 4), (1, 5), (2,)]


def test_the_simulated_cpuset_narrows_with_the_mask_once_the_process_was_bound(monkeypatch):
    """allowed_cpus(env) on a simulated machine: the simulated cpuset, narrowed to the process's own mask where that
    mask is narrower than the one the simulation began with (the process was bound since), read from ``env`` (a
    Host's snapshot), not os.environ."""
    from gpuaffinity.core.cpulist import format_cpulist as fmt
    from gpuaffinity.numa.query import allowed_cpus

    now = frozenset(os.sched_getaffinity(0))
    wide = fmt(now | {4090})
    env = {"GPUAFFINITY_SIM_ALLOWED_CPUS": "0-4095", "GPUAFFINITY_SIM_START_MASK": wide}
    monkeypatch.setenv("GPUAFFINITY_SIM_ALLOWED_CPUS", "1")
    assert allowed_cpus(env) == now  # began wider than now: bound since, so the cpuset narrows to the mask
    assert allowed_cpus({**env, "GPUAFFINITY_SIM_START_MASK": fmt(now)}) == frozenset(range(4096))  # not narrower
    assert allowed_cpus({**env, "GPUAFFINITY_SIM_START_MASK": "not a list"}) == frozenset(range(4096))
    assert allowed_cpus({"GPUAFFINITY_SIM_ALLOWED_CPUS": "2-3"}) == {2, 3}  # no start mask: the cpuset
    assert allowed_cpus() == {1}  # the environment's, where no env is given
    assert allowed_cpus({}) == now  # no simulator: this process's mask


def test_allowed_memory_nodes_read_the_given_procfs(tmp_path, monkeypatch):
    from gpuaffinity.numa.query import allowed_memory_nodes

    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("Name:\tx\nMems_allowed_list:\t1,3\n")
    monkeypatch.setenv("GPUAFFINITY_PROCFS_ROOT", str(tmp_path / "elsewhere"))
    assert allowed_memory_nodes({"GPUAFFINITY_PROCFS_ROOT": str(tmp_path)}) == {1, 3}
    assert allowed_memory_nodes() is None  # the environment's root has no status file


@pytest.mark.parametrize(("nvml", "said"), [
    (None, "NVML names none either"),
    ((frozenset({2}), frozenset(range(8)), frozenset({2})), "NVML names only the GPU's own memory node(s) 2"),
    ((frozenset({3}), frozenset(range(8)), frozenset()), "NVML's node(s) 3 are not nodes with CPUs here, ignored"),
    ((frozenset({0, 1}), frozenset(range(8)), frozenset()),
     "NVML's node(s) 0-1 are every node with CPUs here, which tells nothing"),
])
def test_a_gpu_without_a_node_on_two_nodes_says_what_nvml_named_and_why_it_is_not_used(nvml, said):
    """gpu_locality called as a caller outside a Host does (no one_node): every way NVML's answer can fail to place
    a GPU without a node, each with its own note, and no preference."""
    from gpuaffinity.sim.topology import parse_topology

    topo = parse_topology(VM_2NODE)
    loc = gpu_locality("0000:01:00.0", frozenset(range(8)), nvml, sysfs=Sysfs(cached_render(topo)))
    assert (loc.numa_nodes, format_cpulist(loc.cpus)) == ((), "0-7")
    assert ("the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and "
            f"{said}: no preference") in loc.notes, loc.notes
