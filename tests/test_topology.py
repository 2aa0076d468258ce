"""Topology files: presets, checks with one-line errors, the rendered sysfs tree."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuaffinity.core.cpulist import format_cpulist, format_cpumask, parse_cpulist
from gpuaffinity.sim import TopologyError, list_presets, load_topology
from gpuaffinity.sim.render import mig_cap_minor, render_dev, render_sysfs

GOOD = """
name = "t"
[[numa_node]]
id = 0
cpus = "0-3"
[[numa_node]]
id = 1
cpus = "4-7"
[[gpu]]
uuid = "GPU-b9eccfb1-9bb7-c430-154d-cfd6d08463e0"
pci_bus_id = "0000:86:00.0"
name = "NVIDIA H200"
numa_node = 1
[[gpu]]
uuid = "GPU-00eccfb1-9bb7-c430-154d-cfd6d08463e0"
pci_bus_id = "0000:06:00.0"
name = "NVIDIA H200"
numa_node = 0
"""


def write(tmp_path, text):
    p = tmp_path / "machine.toml"
    p.write_text(text)
    return p


def test_presets_load():
    assert {"dgx-h100", "vm-4gpu", "mixed-4gpu", "mig-a100", "h200x4-vm"} <= set(list_presets())
    dgx = load_topology("dgx-h100")
    assert len(dgx.gpus) == 8 and len(dgx.cpus) == 224 and dgx.threads_per_core == 2
    assert [g.numa_node for g in dgx.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(g.numa_node == -1 for g in load_topology("vm-4gpu").gpus)
    mixed = load_topology("mixed-4gpu")
    assert mixed.cuda_default_order() != list(range(4))
    assert sum(bool(g.migs) for g in load_topology("mig-a100").gpus) == 2


def test_gpus_come_in_pci_order(tmp_path):
    topo = load_topology(write(tmp_path, GOOD))
    assert [g.pci_bus_id for g in topo.gpus] == ["0000:06:00.0", "0000:86:00.0"]


@pytest.mark.parametrize(("old", "new", "message"), [
    ('uuid = "GPU-00eccfb1', 'uuid = "GPU-b9eccfb1', "gpu[1].uuid: duplicate UUID"),
    ('"0000:06:00.0"', '"0000:06:00"', "gpu[1].pci_bus_id: malformed PCI bus id"),
    ('"0000:06:00.0"', '"0000:86:00.0"', "gpu[1].pci_bus_id: duplicate PCI bus id"),
    ("numa_node = 0", "numa_node = 5", "gpu[1].numa_node: unknown NUMA node 5"),
    ('cpus = "4-7"', 'cpus = "7-4"', "numa_node[1].cpus: bad cpulist"),
    ('cpus = "4-7"', 'cpus = "3-7"', "numa_node[1].cpus: CPU 3 is already in NUMA node 0"),
    ('cpus = "4-7"', 'cpus = "4,x"', "numa_node[1].cpus: bad cpulist"),
    ('name = "NVIDIA H200"\nnuma_node = 0', 'name = "NVIDIA H200"\nnuma = 0', "gpu[1].numa: unknown field"),
    ('uuid = "GPU-00eccfb1-9bb7-c430-154d-cfd6d08463e0"', 'uuid = "GPU-xyz"', "gpu[1].uuid: malformed GPU UUID"),
    ('name = "t"', 'name = 3', "name: must be a string"),
    ('pci_bus_id = "0000:06:00.0"\n', '', "gpu[1].pci_bus_id: missing"),
    ('id = 1', 'id = 0', "numa_node[1].id: duplicate NUMA node id 0"),
])
def test_bad_files_name_file_field_and_problem(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


MIG = """[[gpu.mig]]
uuid = "MIG-68b49734-b70d-a03b-466b-3aa827a0018a"
gpu_instance = 1
compute_instance = 0
name = "NVIDIA H200 MIG 3g.71gb"
memory_mib = 71936
multiprocessors = 60
"""


@pytest.mark.parametrize(("old", "new", "message"), [
    ('uuid = "MIG-68b49734-b70d-a03b-466b-3aa827a0018a"\n', '', "gpu[1].mig[0].uuid: missing"),
    ('"MIG-68b49734', '"GPU-68b49734', "gpu[1].mig[0].uuid: malformed MIG UUID 'GPU-68b49734-b70d-a03b-466b-"
                                        "3aa827a0018a' (want MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
])
def test_a_bad_mig_instance_names_its_field(tmp_path, old, new, message):
    assert [m.uuid for g in load_topology(write(tmp_path, GOOD + MIG)).gpus for m in g.migs] == [
        "MIG-68b49734-b70d-a03b-466b-3aa827a0018a"]
    path = write(tmp_path, GOOD + MIG.replace(old, new, 1))
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    assert str(e.value) == f"{path}: {message}"


def test_not_toml_and_unknown_preset(tmp_path):
    with pytest.raises(TopologyError, match="not valid TOML"):
        load_topology(write(tmp_path, "name = "))
    with pytest.raises(TopologyError, match="neither a topology file nor a preset .*dgx-h100"):
        load_topology("no-such-machine")


def test_a_device_or_a_pipe_is_refused_as_no_topology_file(tmp_path):
    fifo = tmp_path / "machine.toml"
    os.mkfifo(fifo)
    for path in ("/dev/null", str(fifo)):
        with pytest.raises(TopologyError) as e:
            load_topology(path)
        assert str(e.value) == (f"{path!r} is not a regular file (a device, a pipe or a socket): name a topology "
                                "file (.toml)")


@given(st.sets(st.integers(0, 300)))
def test_cpulist_round_trip(cpus):
    assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_cpulist_forms():
    assert parse_cpulist("0-3,8,10-14:2") == {0, 1, 2, 3, 8, 10, 12, 14}
    assert parse_cpulist(" \n") == frozenset()
    assert format_cpumask(range(64)) == "ffffffff,ffffffff"
    assert format_cpumask({0, 33}) == "00000002,00000001"
    for bad in ("1-", "a", "1,,2", "3-1"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def test_sysfs_tree_of_the_dgx(tmp_path):
    topo = load_topology("dgx-h100")
    render_sysfs(topo, tmp_path)

    def read(rel):
        return (tmp_path / rel).read_text().strip()

    for g in topo.gpus:
        base = f"bus/pci/devices/{g.pci_bus_id}"
        assert read(f"{base}/numa_node") == str(g.numa_node)
        assert read(f"{base}/local_cpulist") == format_cpulist(topo.node(g.numa_node).cpus)
    assert read("devices/system/node/node1/cpulist") == "56-111,168-223"
    assert read("devices/system/node/online") == "0-1"
    assert read("devices/system/cpu/cpu3/topology/thread_siblings_list") == "3,115"
    assert read("devices/system/cpu/cpu115/topology/core_id") == read("devices/system/cpu/cpu3/topology/core_id")
    assert read("devices/system/cpu/cpu170/topology/physical_package_id") == "1"
    assert read("devices/system/cpu/online") == "0-223"


def test_sysfs_caches_of_a_sub_numa_xeon_share_l3_across_the_package(tmp_path):
    """xeon-snc2 (l3 = "package"): L1 and L2 are the core's, the L3 spans both nodes of the socket."""
    render_sysfs(load_topology("xeon-snc2"), tmp_path)
    cache = tmp_path / "devices/system/cpu/cpu20/cache"  # node 1, socket 0

    def index(i: int) -> tuple[str, ...]:
        return tuple((cache / f"index{i}" / f).read_text().strip()
                     for f in ("level", "type", "shared_cpu_list", "shared_cpu_map"))

    core = format_cpumask({20, 100})
    assert [index(i) for i in range(4)] == [
        ("1", "Data", "20,100", core), ("1", "Instruction", "20,100", core), ("2", "Unified", "20,100", core),
        ("3", "Unified", "0-39,80-119", format_cpumask(parse_cpulist("0-39,80-119")))]
    other = tmp_path / "devices/system/cpu/cpu60/cache/index3/shared_cpu_list"  # node 3, socket 1
    assert other.read_text().strip() == "40-79,120-159"


def test_sysfs_node_files_of_a_gh200_tell_cpu_nodes_from_memory_nodes(tmp_path):
    """gh200: node 0 has the Grace CPUs and LPDDR5X, node 1 the GPU's HBM and no CPU, nodes 2-8 neither."""
    render_sysfs(load_topology("gh200"), tmp_path)
    node = tmp_path / "devices/system/node"
    assert [(node / f).read_text().strip() for f in ("online", "has_cpu", "has_memory", "has_normal_memory")] == [
        "0-8", "0", "0-1", "0-1"]


def test_sysfs_distances_of_a_sub_numa_xeon_are_10_local_12_same_socket_21_across(tmp_path):
    render_sysfs(load_topology("xeon-snc2"), tmp_path)
    node = tmp_path / "devices/system/node"
    assert [(node / f"node{n}/distance").read_text().strip() for n in range(4)] == [
        "10 12 21 21", "12 10 21 21", "21 21 10 12", "21 21 12 10"]


def test_a_mig_container_s_dev_holds_its_gpu_and_its_instance_s_capability_alone(tmp_path):
    """mig-container is given GPU 0000:87:00.0's instance MIG-7cbdd8d7-...: of the host's GPU and capability nodes,
    those two alone are there (others = "absent")."""
    topo = load_topology("mig-container")
    i = next(n for n, g in enumerate(topo.gpus) if g.pci_bus_id == "0000:87:00.0")
    j = next(n for n, m in enumerate(topo.gpus[i].migs) if m.uuid == "MIG-7cbdd8d7-1463-b16d-adaa-b2c3504c2658")
    render_dev(topo, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["nvidia-caps", "nvidia-uvm", f"nvidia{i}", "nvidiactl"]
    assert os.listdir(tmp_path / "nvidia-caps") == [f"nvidia-cap{mig_cap_minor(i, j)}"]


def test_sysfs_of_a_vm_gives_no_node(tmp_path):
    topo = load_topology("vm-4gpu")
    render_sysfs(topo, tmp_path)
    bus = topo.gpus[0].pci_bus_id
    assert (tmp_path / f"bus/pci/devices/{bus}/numa_node").read_text().strip() == "-1"
    assert (tmp_path / f"bus/pci/devices/{bus}/local_cpulist").read_text().strip() == "0-31"


def test_a_topology_of_its_own_takes_its_process_and_running_tables(tmp_path):
    """A topology written whole (no ``base``) with [process] and [[running]]: both are read, not only a derived
    one's (every preset with a process view derives from another)."""
    from gpuaffinity.sim.topology import policy_text

    path = tmp_path / "own.toml"
    path.write_text('name = "own"\n[[numa_node]]\nid = 0\ncpus = "0-3"\n[[numa_node]]\nid = 1\ncpus = "4-7"\n'
                    + "".join(f'[[gpu]]\nuuid = "GPU-0000000{i}-1111-2222-3333-444444444444"\npci_bus_id = '
                              f'"0000:{i + 1}0:00.0"\nname = "NVIDIA H100 80GB HBM3"\nnuma_node = {i}\n'
                              for i in (0, 1))
                    + '[process]\ngpus = [1]\nothers = "absent"\nenv = { CUDA_VISIBLE_DEVICES = "0" }\n'
                    + '[[running]]\npid = 4101\nopens = [0]\npolicy = "bind=relative:1"\n')
    topo = load_topology(path)
    assert (topo.process.gpus, topo.process.others, topo.process.env) == ((1,), "absent",
                                                                        (("CUDA_VISIBLE_DEVICES", "0"),))
    assert [(r.pid, r.opens) for r in topo.running] == [(4101, (0,))]
    # the kernel's flags as numa_maps prints them: =static, =relative, =balancing or static|balancing
    assert [policy_text(t, frozenset({0, 1})) for t in ("bind=relative:1", "bind=static|balancing:0-1",
                                                        "interleave=static:0-1")] == [
        "bind=relative:1", "bind=static|balancing:0-1", "interleave=static:0-1"]
