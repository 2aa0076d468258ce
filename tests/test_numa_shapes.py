"""Every machine shape, every mode, with 1, 3, 4 and 8 GPUs and with cpusets: exact CPUs and nodes.

In process: the rendered sysfs of each preset, the simulator's NVML answers,
and gpuaffinity.numa's rules, against ``numa_oracle`` (the rules computed from
the topology file alone) and against literal answers written out below.
End to end: ``gpuaffinity.plan`` in a child process on each simulated machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_json
from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.numa.modes import MODES
from gpuaffinity.sim import load_topology, simulated
from gpuaffinity.sim.topology import parse_topology
from helpers.numa_oracle import VM_2NODE, Oracle, cached_render, plan_in_process, with_gpus

SHAPES = ["epyc-nps2", "epyc-nps4", "xeon-snc2", "xeon-snc4", "gh200", "gb200-tray", "irregular-2s", "dgx-h100",
          "vm-4gpu"]
COUNTS = (1, 3, 4, 8)


def cpusets(topo) -> dict[str, frozenset[int] | None]:
    """The restrictions every shape is checked under, built from the machine itself.

    ``part-node``: half the cores of the first GPU's CPU node, both threads;
    ``nodes``: that node whole and a third of the next node with CPUs;
    ``thin``: one thread of each of the first three cores of that node."""
    oracle = Oracle(topo)
    first = sorted(oracle.local_cpus(oracle.gpu_nodes(topo.gpus[0])) or topo.cpus)
    cores = oracle.cores(frozenset(first))
    others = sorted(n for n in oracle.cpu_nodes if not oracle.node_cpus[n] & set(first))
    more = oracle.cores(oracle.node_cpus[others[0]]) if others else []
    return {
        "all": None,
        "part-node": frozenset(c for core in cores[: max(1, len(cores) // 2)] for c in core),
        "nodes": frozenset(first) | frozenset(c for core in more[: max(1, len(more) // 3)] for c in core),
        "thin": frozenset(core[0] for core in cores[:3]),
    }


GPUS = {shape: len(load_topology(shape).gpus) for shape in SHAPES}
VARIANTS = [(shape, count) for shape in SHAPES
            for count in sorted({c for c in COUNTS if c <= GPUS[shape]} | {GPUS[shape]})]  # and all of its GPUs


@pytest.fixture(scope="module")
def rendered():
    return cached_render


@pytest.fixture(autouse=True)
def no_driver_files(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUAFFINITY_PROCFS_ROOT", str(tmp_path / "proc"))


@pytest.mark.parametrize(("shape", "count"), VARIANTS, ids=[f"{s}-{c}gpu" for s, c in VARIANTS])
def test_every_mode_gives_the_rule(rendered, shape, count):
    topo = with_gpus(load_topology(shape), count)
    oracle = Oracle(topo)
    root = rendered(topo)
    for name, allowed in cpusets(topo).items():
        got = plan_in_process(topo, root, allowed)
        for gpu in topo.gpus:
            for mode in MODES:
                cpus, nodes, notes = got[gpu.pci_bus_id][mode]
                want_cpus, want_nodes, want_notes = oracle.expect_full(gpu, mode, allowed)
                where = f"{shape} x{count} cpuset {name} GPU {gpu.pci_bus_id} {mode}"
                assert format_cpulist(cpus) == format_cpulist(want_cpus), where
                assert nodes == want_nodes, where
                assert list(notes) == want_notes, where
        _check_exclusive_shares(topo, oracle, got, allowed)


def _check_exclusive_shares(topo, oracle, got, allowed):
    """Shares of GPUs with the same node(s): disjoint and covering the pool when there are enough cores,
    with a core's allowed threads in one share when there are at least as many cores as GPUs."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for gpu in topo.gpus:
        groups.setdefault(tuple(sorted(oracle.gpu_nodes(gpu))), []).append(gpu.pci_bus_id)
    for nodes, buses in groups.items():
        if not nodes:
            continue
        usable = topo.cpus if allowed is None else allowed & topo.cpus
        pool = oracle.local_cpus(set(nodes)) & usable
        cores = oracle.cores(pool)
        shares = [got[b]["exclusive"][0] for b in buses]
        if len(buses) != len(oracle.peers(next(g for g in topo.gpus if g.pci_bus_id == buses[0]))):
            continue  # this node's split also counts GPUs of other nodes (a GPU spanning nodes)
        if len(pool) >= len(buses):
            assert sum(len(s) for s in shares) == len(pool) and frozenset().union(*shares) == pool
            assert all(shares), f"a GPU without CPUs on node(s) {nodes}"
        if len(cores) >= len(buses):
            for core in cores:
                assert sum(bool(set(core) & s) for s in shares) == 1, f"core {core} split"
            sizes = [len(oracle.cores(s)) for s in shares]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


# ---- literal answers, shape by shape -------------------------------------------------------------------


def plan_of(rendered, topo, allowed=None, **kw):
    return plan_in_process(topo, rendered(topo), allowed if allowed is None else frozenset(allowed), **kw)


def cpus_of(result, bus, mode):
    return format_cpulist(result[bus][mode][0])


def test_amd_nps4_socket_is_every_node_of_the_package_and_llc_a_ccx(rendered):
    topo = load_topology("epyc-nps4")
    got = plan_of(rendered, topo)
    first, second = "0000:07:00.0", "0000:0f:00.0"  # both on node 3, socket 0
    assert cpus_of(got, first, "node") == "48-63,176-191" and got[first]["node"][1] == (3,)
    assert cpus_of(got, first, "socket") == "0-63,128-191" and got[first]["socket"][1] == (0, 1, 2, 3)
    assert [cpus_of(got, b, "exclusive") for b in (first, second)] == ["48-55,176-183", "56-63,184-191"]
    assert [cpus_of(got, b, "llc") for b in (first, second)] == ["48-55,176-183", "56-63,184-191"]
    assert got["0000:87:00.0"]["socket"][1] == (4, 5, 6, 7)


def test_intel_snc2_socket_spans_both_clusters_and_llc_is_the_node(rendered):
    topo = load_topology("xeon-snc2")
    got = plan_of(rendered, topo)
    bus = "0000:3a:00.0"  # node 1, socket 0
    assert cpus_of(got, bus, "node") == "20-39,100-119"
    assert cpus_of(got, bus, "socket") == "0-39,80-119" and got[bus]["socket"][1] == (0, 1)
    assert cpus_of(got, bus, "exclusive") == "20-29,100-109"
    assert cpus_of(got, "0000:5d:00.0", "exclusive") == "30-39,110-119"
    assert cpus_of(got, bus, "llc") == "20-39,100-119"  # one L3 per package: both GPUs share the node's part


def test_intel_snc4_one_gpu_a_node(rendered):
    topo = load_topology("xeon-snc4")
    got = plan_of(rendered, topo)
    bus = "0000:c3:00.0"  # node 5, socket 1
    assert [cpus_of(got, bus, m) for m in MODES] == ["70-83,182-195", "56-111,168-223", "70-83,182-195",
                                                      "70-83,182-195"]
    assert got[bus]["socket"][1] == (4, 5, 6, 7) and got[bus]["node"][1] == (5,)


def test_grace_hopper_cpu_node_not_the_gpu_memory_node(rendered):
    topo = load_topology("gh200")
    bus = topo.gpus[0].pci_bus_id
    got = plan_of(rendered, topo)
    for mode in MODES:
        assert (cpus_of(got, bus, mode), got[bus][mode][1]) == ("0-71", (0,))
    notes = got[bus]["node"][2]
    assert any("own memory is NUMA node 1" in n for n in notes)
    asked = plan_of(rendered, topo, gpu_memory=True)
    assert asked[bus]["node"][1] == (0, 1)


def test_grace_hopper_without_nvml_still_binds_the_cpu_node(rendered):
    """No NVML at all: sysfs alone puts the GPU on the Grace node; the HBM node is unknown and not touched."""
    topo = load_topology("gh200")
    got = plan_of(rendered, topo, nvml=False)
    assert (cpus_of(got, topo.gpus[0].pci_bus_id, "node"), got[topo.gpus[0].pci_bus_id]["node"][1]) == ("0-71", (0,))


def test_grace_hopper_memory_node_named_by_nvml_affinity_is_left_out(rendered, tmp_path):
    """If NVML's node-scope memory affinity also named the HBM node, it still would not be bound to."""
    from gpuaffinity.numa.query import gpu_locality
    from gpuaffinity.numa.sysfs import Sysfs

    topo = load_topology("gh200")
    bus = topo.gpus[0].pci_bus_id
    loc = gpu_locality(bus, topo.cpus, (frozenset({0, 1}), topo.cpus, frozenset({1})), sysfs=Sysfs(rendered(topo)))
    assert (loc.numa_nodes, loc.gpu_memory_nodes, loc.cpu_nodes) == ((0,), (1,), (0,))
    assert any("node(s) 1 hold this GPU's own memory" in n for n in loc.notes)


def test_grace_hopper_driver_numa_status_names_the_memory_node(rendered, tmp_path, monkeypatch):
    """Without NVML's answer, /proc/driver/nvidia/gpus/<bus>/numa_status (what hwloc reads) names the HBM node."""
    from gpuaffinity.numa.query import gpu_locality
    from gpuaffinity.numa.sysfs import Sysfs

    topo = load_topology("gh200")
    bus = topo.gpus[0].pci_bus_id
    status = tmp_path / "proc" / "driver" / "nvidia" / "gpus" / bus / "numa_status"
    status.parent.mkdir(parents=True)
    status.write_text("Node:                          1\nStatus:                        online\n")
    loc = gpu_locality(bus, topo.cpus, None, sysfs=Sysfs(rendered(topo)))
    assert (loc.numa_nodes, loc.gpu_memory_nodes) == ((0,), (1,))
    other = gpu_locality(bus, topo.cpus, (frozenset({0}), topo.cpus, frozenset({2})), sysfs=Sysfs(rendered(topo)))
    assert other.gpu_memory_nodes == (2,) and any("numa_status says 1: using NVML" in n for n in other.notes)


def test_a_gpu_whose_pci_node_is_its_own_memory_takes_the_nearest_cpu_node(tmp_path):
    from gpuaffinity.numa.query import gpu_locality
    from gpuaffinity.numa.sysfs import Sysfs
    from helpers.numa_oracle import render

    topo = load_topology("gh200")
    root = render(topo, tmp_path / "sys")
    bus = topo.gpus[0].pci_bus_id
    (root / "bus/pci/devices" / bus / "numa_node").write_text("1\n")
    (root / "bus/pci/devices" / bus / "local_cpulist").write_text("\n")  # node 1 has no CPUs
    (root / "bus/pci/devices" / bus / "local_cpus").write_text("00000000,00000000,00000000\n")
    loc = gpu_locality(bus, topo.cpus, (frozenset({1}), frozenset(), frozenset({1})), sysfs=Sysfs(root))
    assert (loc.numa_nodes, format_cpulist(loc.cpus), loc.gpu_memory_nodes) == ((0,), "0-71", (1,))
    assert loc.notes == (
        "this GPU's own memory is NUMA node 1 (coherent GPU memory): memory policies leave it out unless asked",
        "node(s) 1 hold this GPU's own memory: its place is the CPU node(s) nearest that memory")


def test_numa_status_is_read_from_its_node_line(tmp_path):
    from gpuaffinity.numa.query import driver_gpu_memory_node

    status = tmp_path / "proc" / "driver" / "nvidia" / "gpus" / "0009:01:00.0" / "numa_status"
    status.parent.mkdir(parents=True)
    for text, want in (("Numa: 7\nNode: 1\n", 1), ("Node: x\n", None), ("Status: online\n", None),
                       ("Node:\t\t2\n", 2)):
        status.write_text(text)
        assert driver_gpu_memory_node("0009:01:00.0") == want, text
    assert driver_gpu_memory_node("0000:00:00.0") is None


def test_a_two_node_vm_where_nvml_names_every_node_has_no_preference(rendered):
    topo = parse_topology(VM_2NODE)
    got = plan_of(rendered, topo)
    assert (cpus_of(got, "0000:01:00.0", "node"), got["0000:01:00.0"]["node"][1]) == ("0-7", ())
    # one note says what NVML named and why it is not used (before: "no preference", then "NVML names ..., ignored")
    assert got["0000:01:00.0"]["node"][2][:2] == (
        "the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and NVML's node(s) 0-1 are "
        "every node with CPUs here, which tells nothing: no preference", "no NUMA preference: every allowed CPU")


def test_grace_blackwell_two_gpus_a_grace(rendered):
    topo = load_topology("gb200-tray")
    got = plan_of(rendered, topo)
    buses = [g.pci_bus_id for g in topo.gpus]
    assert [cpus_of(got, b, "exclusive") for b in buses] == ["0-35", "36-71", "72-107", "108-143"]
    assert [got[b]["node"][1] for b in buses] == [(0,), (0,), (1,), (1,)]
    assert [cpus_of(got, b, "llc") for b in buses] == ["0-71", "0-71", "72-143", "72-143"]
    asked = plan_of(rendered, topo, gpu_memory=True)
    assert [asked[b]["node"][1] for b in buses] == [(0, 2), (0, 10), (1, 18), (1, 26)]


def test_irregular_host(rendered):
    topo = load_topology("irregular-2s")
    got = plan_of(rendered, topo)
    node0 = ["0000:11:00.0", "0000:12:00.0", "0000:13:00.0"]
    # 10 cores for 3 GPUs: 4, 3, 3 in PCI order, siblings together
    assert [cpus_of(got, b, "exclusive") for b in node0] == ["0-3,40-43", "4-6,44-46", "7-9,47-49"]
    # L3 per 4 cores: domains 0-3, 4-7, 8-9, one each
    assert [cpus_of(got, b, "llc") for b in node0] == ["0-3,40-43", "4-7,44-47", "8-9,48-49"]
    # node 1 has CPUs but no memory: its CPUs, memory on the nearest node with memory (0, same socket)
    assert (cpus_of(got, "0000:31:00.0", "node"), got["0000:31:00.0"]["node"][1]) == ("10-19,50-59", (0,))
    # numa_node -1, NVML says node 2: node 2
    assert (cpus_of(got, "0000:a1:00.0", "node"), got["0000:a1:00.0"]["node"][1]) == ("20-29,60-69", (2,))
    # node 3: 36-39 offline, SMT off (70-79 offline): six single-thread cores
    assert cpus_of(got, "0000:c1:00.0", "node") == "30-35"
    assert cpus_of(got, "0000:c1:00.0", "socket") == "20-35,60-69"
    # node 4 has memory but no CPUs: the CPUs of the nearest nodes (2 and 3), memory on node 4
    assert (cpus_of(got, "0000:e1:00.0", "node"), got["0000:e1:00.0"]["node"][1]) == ("20-35,60-69", (4,))
    assert any("whose own GPUs do not count it" in n for n in got["0000:e1:00.0"]["exclusive"][2])


def _one_node(cores: int, gpus: int, threads: int = 2):
    doc = {"name": f"{cores}c{gpus}g", "threads_per_core": threads,
           "numa_node": [{"id": 0, "cpus": f"0-{cores * threads - 1}"}],
           "gpu": [{"uuid": f"GPU-{i:08x}-0000-0000-0000-000000000000", "pci_bus_id": f"0000:{i + 1:02x}:00.0",
                    "name": "NVIDIA H100", "numa_node": 0} for i in range(gpus)]}
    return parse_topology(doc)


def test_fewer_cpus_than_gpus_deals_threads_round_robin(rendered):
    topo = _one_node(1, 3)
    got = plan_of(rendered, topo)
    assert [cpus_of(got, g.pci_bus_id, "exclusive") for g in topo.gpus] == ["0", "1", "0"]
    assert got["0000:03:00.0"]["exclusive"][2] == (
        "1 allowed cores for 3 GPUs on node(s) 0: split by hardware thread, so siblings are split",
        "2 allowed CPUs for 3 GPUs on node(s) 0: no core of its own for each GPU, they are dealt round-robin: GPU 3 "
        "gets 0, as does GPU 1")


def test_ten_cores_for_four_gpus_split_three_three_two_two(rendered):
    topo = _one_node(10, 4)
    got = plan_of(rendered, topo)
    assert [cpus_of(got, g.pci_bus_id, "exclusive") for g in topo.gpus] == [
        "0-2,10-12", "3-5,13-15", "6-7,16-17", "8-9,18-19"]


def test_cpuset_of_three_of_five_cores_for_four_gpus(rendered):
    """The issue's case: every GPU gets CPUs cut from the 3 allowed cores, none from the 2 forbidden ones."""
    topo = _one_node(5, 4)
    got = plan_of(rendered, topo, parse_cpulist("0-2,5-7"))
    assert [cpus_of(got, g.pci_bus_id, "exclusive") for g in topo.gpus] == ["0,5", "1,6", "2", "7"]
    assert got[topo.gpus[3].pci_bus_id]["exclusive"][2] == (
        "3 allowed cores for 4 GPUs on node(s) 0: split by hardware thread, so siblings are split",
        "GPU 4 of 4 on node(s) 0: 1 of the 6 allowed CPUs")
    single = _one_node(5, 4, threads=1)
    got = plan_of(rendered, single, parse_cpulist("0-2"))
    assert [cpus_of(got, g.pci_bus_id, "exclusive") for g in single.gpus] == ["0", "1", "2", "0"]
    assert any("dealt round-robin: GPU 4 gets 0, as does GPU 1" in n
               for n in got[single.gpus[3].pci_bus_id]["exclusive"][2])


def test_as_many_cores_as_gpus_one_core_each(rendered):
    topo = _one_node(4, 4)
    got = plan_of(rendered, topo)
    assert [cpus_of(got, g.pci_bus_id, "exclusive") for g in topo.gpus] == ["0,4", "1,5", "2,6", "3,7"]
    assert got[topo.gpus[1].pci_bus_id]["exclusive"][2] == ("GPU 2 of 4 on node(s) 0: 1 of the 4 allowed cores",)
    few = plan_of(rendered, _one_node(2, 3, threads=1))
    assert [cpus_of(few, g.pci_bus_id, "exclusive") for g in _one_node(2, 3, threads=1).gpus] == ["0", "1", "0"]
    assert few["0000:03:00.0"]["exclusive"][2] == (
        "2 allowed cores for 3 GPUs on node(s) 0: no core of its own for each GPU, they are dealt round-robin: GPU 3 "
        "gets 0, as does GPU 1",)


def test_empty_cpuset_on_the_node_gives_no_cpu_and_says_so(rendered):
    topo = load_topology("dgx-h100")
    got = plan_of(rendered, topo, parse_cpulist("0-7"))
    bus = topo.gpus[4].pci_bus_id  # node 1
    for mode in ("node", "exclusive", "llc"):
        assert got[bus][mode][0] == frozenset()
    assert any("none of this GPU's local CPUs" in n for n in got[bus]["node"][2])


# ---- the memory nodes this process may use (Mems_allowed) ---------------------------------------------


def test_memory_nodes_are_limited_to_mems_allowed(rendered):
    topo = load_topology("epyc-nps4")
    got = plan_of(rendered, topo, mems=frozenset({0, 3}))
    bus = "0000:07:00.0"  # node 3
    assert got[bus]["node"][1] == (3,) and got[bus]["socket"][1] == (0, 3)
    assert any("Mems_allowed_list 0,3" in n for n in got[bus]["socket"][2])
    assert got["0000:47:00.0"]["node"][1] == ()  # node 1 is not allowed: memory left alone
    none = plan_of(rendered, topo, mems=frozenset())
    assert none[bus]["node"][1] == () and none[bus]["node"][2][-1] == (
        "memory on node(s) 3 is not allowed to this process (Mems_allowed_list empty, from its cgroup cpuset): left "
        "out of the memory policy")


def test_mems_allowed_is_read_from_proc_self_status(tmp_path, monkeypatch):
    from gpuaffinity.numa.query import allowed_memory_nodes

    status = tmp_path / "proc" / "self" / "status"
    status.parent.mkdir(parents=True)
    status.write_text("Name:\tpython3\nMems_allowed:\t00000000,00000005\nMems_allowed_list:\t0,2\n")
    assert allowed_memory_nodes() == frozenset({0, 2})
    status.write_text("Name:\tpython3\n")
    assert allowed_memory_nodes() is None
    monkeypatch.delenv("GPUAFFINITY_PROCFS_ROOT")
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("Mems_allowed_list"))
    assert allowed_memory_nodes() == parse_cpulist(line.split(":")[1])


# ---- end to end: gpuaffinity.plan in a child process on each simulated machine ------------------------

PLAN = r"""
import json, os, sys, gpuaffinity
out = {}
for d in gpuaffinity.resolve_all():
    out[d.pci_bus_id] = {m: [sorted((r := gpuaffinity.plan(d.logical_id, mode=m)).bind_cpus), list(r.memory_nodes)]
                         for m in ("node", "socket", "exclusive", "llc")}
print(json.dumps(out))
"""


@pytest.mark.parametrize("shape", [s for s in SHAPES if s not in ("dgx-h100", "vm-4gpu")])
@pytest.mark.slow
def test_plan_end_to_end_on_each_shape(shape):
    topo = load_topology(shape)
    oracle = Oracle(topo)
    restrictions = cpusets(topo)
    for name in ("all", "nodes"):
        allowed = restrictions[name]
        with simulated(topo, cpuset=None if allowed is None else format_cpulist(allowed)) as machine:
            got = run_json(machine, PLAN, cvd=",".join(reversed([str(i) for i in range(len(topo.gpus))])))
        assert sorted(got) == sorted(g.pci_bus_id for g in topo.gpus)
        for gpu in topo.gpus:
            for mode in MODES:
                cpus, nodes = oracle.expect(gpu, mode, allowed)
                assert got[gpu.pci_bus_id][mode] == [sorted(cpus), list(nodes)], (shape, name, gpu.pci_bus_id, mode)


NUMA_ID = r"""
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    try:
        out.append(pynvml.nvmlDeviceGetNumaNodeId(h))
    except pynvml.NVMLError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_nvml_numa_node_id_is_the_gpu_memory_node_on_grace_only(sim_factory):
    assert run_json(sim_factory("gb200-tray"), NUMA_ID) == [2, 10, 18, 26]
    assert run_json(sim_factory("dgx-h100"), NUMA_ID) == ["Not Supported"] * 8
    resolved = run_json(sim_factory("gh200"), "import json, sys, subprocess\n"
                        "r = subprocess.run([sys.executable, '-m', 'gpuaffinity', 'resolve', '--json'], "
                        "capture_output=True, text=True, check=True)\nprint(json.dumps(json.loads(r.stdout)))")
    assert [(d["numa_nodes"], d["cpus"]) for d in resolved] == [([0], "0-71")]


def test_shapes_are_presets_documented_with_their_rules():
    from conftest import ROOT
    numa = (ROOT / "docs" / "numa.md").read_text()
    for shape in SHAPES:
        assert f"`{shape}`" in numa, shape


PRESETS = sorted(p.stem for p in (Path(parse_topology.__code__.co_filename).parent / "presets").glob("*.toml"))
ONE_NODE = [
    {"name": "vm", "numa_node": [{"id": 0, "cpus": "0-7"}], "gpu": [
        {"uuid": f"GPU-00000000-0000-0000-0000-00000000000{i}", "pci_bus_id": f"0000:0{i + 1}:00.0",
         "name": "NVIDIA H100", "numa_node": node, **extra}
        for i, (node, extra) in enumerate([(-1, {}), (0, {}), (-1, {"nvml_numa_node": 0})])]},
    {"name": "vm-offline", "offline_cpus": "6-7", "numa_node": [{"id": 0, "cpus": "0-7"}], "gpu": [
        {"uuid": "GPU-00000000-0000-0000-0000-000000000001", "pci_bus_id": "0000:01:00.0", "name": "NVIDIA H100",
         "numa_node": 0}]},
]


@pytest.mark.parametrize("shape", PRESETS
                         + [t["name"] for t in ONE_NODE])
def test_where_nvml_is_not_asked_its_answer_would_change_nothing(rendered, shape):
    """The proof of the shortcut in gpuaffinity.host: on every machine where the Host does not ask NVML for
    locality (one NUMA node, each GPU's numa_node file there), the answer with NVML's is the answer without, field
    by field, under every cpuset (only the note on a GPU without a node, and the source, say which it was)."""
    from gpuaffinity.numa.query import gpu_locality, nvml_can_matter
    from gpuaffinity.numa.sysfs import Sysfs
    from gpuaffinity.sim.render import gpu_locality as nvml_answer

    topo = next((parse_topology(t) for t in ONE_NODE if t["name"] == shape), None) or load_topology(shape)
    root = rendered(topo)
    buses = [g.pci_bus_id for g in topo.gpus]
    asks = nvml_can_matter(Sysfs(root), buses)
    assert asks == (len(topo.nodes) != 1), shape  # a host of one node, and only such a host, is not asked
    if asks:
        return
    for allowed in cpusets(topo).values():
        allowed = topo.cpus if allowed is None else allowed
        for g in topo.gpus:
            m = nvml_answer(topo, g)
            fs = Sysfs(root)
            with_nvml = gpu_locality(g.pci_bus_id, allowed, (m["node_mem"], m["node_cpu"], m["gpu_mem"]), sysfs=fs)
            without = gpu_locality(g.pci_bus_id, allowed, None, sysfs=fs, one_node=True)
            fields = ("numa_nodes", "cpus", "local_cpus", "cpu_nodes", "gpu_memory_nodes", "lost")
            assert [getattr(with_nvml, f) for f in fields] == [getattr(without, f) for f in fields], (shape, g)
            if g.numa_node < 0:
                assert any("this host has one NUMA node (NVML was not asked" in n for n in without.notes)
