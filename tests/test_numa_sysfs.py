"""Real sysfs is messier than the textbook tree: each variant the simulator can render, and what the
NUMA stage makes of it (the same placement as the clean tree, with a note where files disagree)."""

from __future__ import annotations

import dataclasses

import pytest

from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist, parse_cpumask
from gpuaffinity.numa.modes import MODES, place
from gpuaffinity.numa.query import gpu_locality
from gpuaffinity.numa.sysfs import Sysfs, read_text
from gpuaffinity.sim import load_topology
from gpuaffinity.sim.topology import SYSFS_QUIRKS
from numa_oracle import Oracle, plan_in_process, render


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
    "no-node-cpulist": ("irregular-2s", "cpulist is missing: node 0's CPUs taken from its cpumap", ()),
    "no-numa-node": ("xeon-snc2", "numa_node is missing: node(s) 1 taken from its local CPUs (20-39,100-119)", ()),
    "no-local-cpulist": ("irregular-2s", None, ()),
    "hex-siblings": ("epyc-nps4", None, ()),
    "package-unknown": ("epyc-nps4", "physical_package_id missing or -1): socket mode uses the GPU's node",
                        ("socket",)),
    "local-cpulist-contradicts": ("xeon-snc4", "local_cpulist (14-27,126-139) is not node 0's CPUs "
                                  "(0-13,112-125): using the node's", ()),
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
    clean_root, odd_root = render(clean, tmp_path / "clean"), render(odd, tmp_path / "odd")
    for allowed in (None, restriction):
        want = plan_in_process(clean, clean_root, allowed)
        got = plan_in_process(odd, odd_root, allowed)
        w, g = placements(want), placements(got)
        for bus in w:
            for mode in MODES:
                if mode not in differ:
                    assert g[bus][mode] == w[bus][mode], (quirk, bus, mode)
        if note:
            assert any(note in n for n in all_notes(got)), sorted(all_notes(got))
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
    assert (root / "devices/system/cpu/cpu0/cache/index3/level").read_text().strip() == "2"
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
        assert (p.numa_nodes, format_cpulist(p.cpus)) == ((1,), "20-39,100-119"), mode
    assert any("package" in n for n in place(loc, "socket", every, allowed_mems=None, sysfs=fs).notes)
    nothing = gpu_locality(topo.gpus[2].pci_bus_id, every, None, sysfs=fs)
    assert (nothing.numa_nodes, nothing.source) == ((), "none")


def test_node_list_from_folders_and_memory_from_meminfo(tree):
    topo, root = tree
    (root / "devices/system/node/online").unlink()
    (root / "devices/system/node/has_memory").unlink()
    (root / "devices/system/node/node3/meminfo").write_text("Node 3 MemTotal:       0 kB\n")
    fs = Sysfs(root)
    assert fs.node_ids() == (0, 1, 2, 3)
    assert fs.nodes_with_memory() == frozenset({0, 1, 2})
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
    oracle = Oracle(topo)
    assert all(oracle.expect(g, m, frozenset())[0] == frozenset() for g in topo.gpus for m in MODES)
