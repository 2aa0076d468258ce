"""The simulated libcuda.so.1 against the real driver's recorded behaviour and the pure grammar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid as uuidlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REAL_DATA, child_env, load_probe, run_json
from gpuaffinity.core.cvd import GpuIdentity, apply_cvd
from gpuaffinity.sim import simulated
from gpuaffinity.sim.build import library_dir
from gpuaffinity.sim.render import render_config
from gpuaffinity.sim.topology import parse_topology

PROBE = load_probe()
COMPARED = ["cuInit", "cuDeviceGetCount", "count", "devices", "cuDeviceGet_past_end", "cuDeviceGetByPCIBusId"]
DATASETS = sorted(p for p in REAL_DATA.parent.glob("real-*") if (p / "cvd_cases.json").exists())


def captured_topology(folder):
    """The lent machine a dataset was recorded on, as a topology (its UUIDs, bus ids, nodes and CPUs)."""
    facts = json.loads((folder / "topology.json").read_text())
    sysfs = facts["sysfs"]
    nodes = [{"id": int(name[4:]), "cpus": n["cpulist"]} for name, n in sysfs["nodes"].items()]
    gpus = [{"uuid": g["uuid"], "pci_bus_id": g["busIdLegacy"].lower(), "name": g["name"],
             "numa_node": int(sysfs["pci"][g["busIdLegacy"].lower()]["numa_node"])} for g in facts["gpus"]]
    return parse_topology({"name": folder.name, "numa_node": nodes, "gpu": gpus,
                           "driver_version": facts["driver_version"]})


def driver_result(case: dict, data: dict) -> tuple:
    """What the driver did in one recorded run, with GPUs named by their position in PCI order, so runs on
    machines with other UUIDs compare."""
    bus = data["bus_ids"]
    return (case["cuInit"], case["cuDeviceGetCount"], case["count"], case["cuDeviceGet_past_end"],
            tuple((d["ordinal"], d["rc_get"], d["rc_bus"], bus.index(d["pci_bus_id"]), d["rc_uuid"],
                   d["uuid"] == data["uuids"][bus.index(d["pci_bus_id"])]) for d in case.get("devices", [])),
            tuple(sorted((bus.index(b), tuple(v)) for b, v in case["cuDeviceGetByPCIBusId"].items())))


def distinct_cases() -> dict[str, list[tuple]]:
    """Recorded runs grouped by distinct case: the form of the value (its label) and what the driver did.

    Every dataset and every CUDA_DEVICE_ORDER recorded for a label is kept, as evidence, inside its case;
    a label whose runs differed would become two cases."""
    groups: dict[tuple, list[tuple]] = {}
    for folder in DATASETS:
        data = json.loads((folder / "cvd_cases.json").read_text())
        for case in data["cases"]:
            groups.setdefault((case["label"], driver_result(case, data)), []).append((folder, case, data))
    out: dict[str, list[tuple]] = {}
    for (label, _result), runs in sorted(groups.items(), key=lambda kv: kv[0][0]):
        name = label if label not in out else f"{label}-{sum(k.startswith(label) for k in out) + 1}"
        out[name] = runs
    return out


CASES = distinct_cases()


@pytest.fixture(scope="module")
def captured():
    opened, stack = {}, []
    yield lambda folder: opened.get(folder) or opened.setdefault(folder, _open(folder, stack))
    for cm in stack:
        cm.__exit__(None, None, None)


def _open(folder, stack):
    from gpuaffinity.sim import simulated
    cm = simulated(captured_topology(folder))
    stack.append(cm)
    return cm.__enter__()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.slow
def test_simulator_equals_real_driver(captured, name):
    """Each distinct case on the simulated copy of every machine it was recorded on: the same devices, order
    and error codes as the real driver gave there (one run a machine; the orders agree, see the pure test)."""
    seen = set()
    for folder, case, data in CASES[name]:
        if folder in seen:
            continue
        seen.add(folder)
        got = run_json(captured(folder), PROBE.CHILD, json.dumps(data["bus_ids"]), cvd=case["cvd"],
                       order=case["order"])
        for key in COMPARED:
            assert got[key] == case[key], f"{folder.name} {key}: simulator {got[key]!r} != real {case[key]!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_pure_grammar_equals_real_driver(name):
    """gpuaffinity.core.cvd.apply_cvd gives the real driver's answer on every recorded run of each case."""
    for folder, case, data in CASES[name]:
        res = apply_cvd(case["cvd"], [GpuIdentity(u) for u in data["uuids"]], device_order=case["order"])
        real = [data["bus_ids"].index(d["pci_bus_id"]) for d in case.get("devices", [])]
        assert (res.gpus, res.error) == (real, case["cuInit"]), (folder.name, case["order"])


def test_preset_is_the_first_captured_machine(sim_factory):
    preset = sim_factory("h200x4-vm").topology
    captured = captured_topology(REAL_DATA)
    assert [(g.uuid, g.pci_bus_id, g.numa_node) for g in preset.gpus] == [
        (g.uuid, g.pci_bus_id, g.numa_node) for g in captured.gpus]
    assert preset.cpus == captured.cpus


def test_fastest_first_differs_from_pci_order_on_mixed_models(sim_factory):
    machine = sim_factory("mixed-4gpu")
    buses = [g.pci_bus_id.upper() for g in machine.topology.gpus]
    fastest = run_json(machine, PROBE.CHILD, "[]")
    pci = run_json(machine, PROBE.CHILD, "[]", order="PCI_BUS_ID")
    assert [buses.index(d["pci_bus_id"]) for d in pci["devices"]] == [0, 1, 2, 3]
    assert [buses.index(d["pci_bus_id"]) for d in fastest["devices"]] == [1, 3, 0, 2]
    # an integer list indexes the FASTEST_FIRST order, not NVML's
    sub = run_json(machine, PROBE.CHILD, "[]", cvd="0,2")
    assert [buses.index(d["pci_bus_id"]) for d in sub["devices"]] == [1, 0]


def test_mig_instances(sim_factory):
    machine = sim_factory("mig-a100")
    gpus = machine.topology.gpus
    mig = gpus[2].migs[1]
    by_uuid = run_json(machine, PROBE.CHILD, "[]", cvd=mig.uuid)
    assert [d["uuid"][4:] for d in by_uuid["devices"]] == [mig.uuid[4:]]
    assert by_uuid["devices"][0]["pci_bus_id"] == gpus[2].pci_bus_id.upper()
    path = f"MIG-{gpus[0].uuid}/{gpus[0].migs[2].gpu_instance}/{gpus[0].migs[2].compute_instance}"
    by_path = run_json(machine, PROBE.CHILD, "[]", cvd=path)
    assert [d["uuid"][4:] for d in by_path["devices"]] == [gpus[0].migs[2].uuid[4:]]
    # one MIG device a process: the second MIG entry ends the list
    two = run_json(machine, PROBE.CHILD, "[]", cvd=f"{mig.uuid},{gpus[0].migs[0].uuid}")
    assert two["count"] == 1
    # unset: GPU 0 shows its first instance, GPU 2 (also MIG) ends the list
    unset = run_json(machine, PROBE.CHILD, "[]", order="PCI_BUS_ID")
    assert [d["uuid"][4:] for d in unset["devices"]] == [gpus[0].migs[0].uuid[4:], gpus[1].uuid[4:]]


FORK = r"""
import ctypes, json, os
cu = ctypes.CDLL("libcuda.so.1")
before = cu.cuInit(0)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    n = ctypes.c_int(-1)
    os.write(w, json.dumps([cu.cuInit(0), cu.cuDeviceGetCount(ctypes.byref(n)),
                            cu.gpuaffinitySimCallCount(b"cuInit")]).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(r, 1000))
print(json.dumps({"parent_init": before, "child": child, "parent_count": cu.gpuaffinitySimCallCount(b"cuInit")}))
"""


def test_cuda_breaks_in_a_child_forked_after_cuinit(sim_factory):
    out = run_json(sim_factory("dgx-h100"), FORK)
    assert out["parent_init"] == 0
    assert out["child"] == [3, 3, 1]  # NOT_INITIALIZED twice; the child counts its own calls only
    assert out["parent_count"] == 1


def test_fault_injection_and_counters(sim_factory, tmp_path):
    machine = sim_factory("dgx-h100")
    code = ("import ctypes, json; cu = ctypes.CDLL('libcuda.so.1');"
            "print(json.dumps([cu.cuInit(0), cu.cuInit(0), cu.cuInit(0)]))")
    env = child_env(machine, GPUAFFINITY_SIM_FAULTS="cuInit=999:2", GPUAFFINITY_SIM_COUNTERS=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [999, 999, 0]
    from gpuaffinity.sim import read_counters
    counts = read_counters(tmp_path)
    assert [c["cuInit"] for (pid, lib), c in counts.items() if lib == "cuda"] == [3]


def test_a_fault_named_without_its_version_suffix_hits_the_versioned_call(tmp_path):
    """libcuda exports cuDeviceTotalMem_v2 alone: `--fault cuDeviceTotalMem=999` is taken, and that call fails."""
    code = ("import ctypes, json; cu = ctypes.CDLL('libcuda.so.1'); b = ctypes.c_size_t(0);"
            "print(json.dumps([cu.cuInit(0), cu.cuDeviceTotalMem_v2(ctypes.byref(b), 0)]))")
    with simulated("dgx-h100", faults=["cuDeviceTotalMem=999"], base_env=dict(os.environ)) as machine:
        assert run_json(machine, code) == [0, 999]


# ---- property: the C simulator and the pure grammar agree everywhere ------------------------------


@st.composite
def topologies(draw):
    n = draw(st.integers(1, 16))
    share = draw(st.booleans())  # GPUs whose UUIDs share a long prefix make prefixes ambiguous
    uuids = []
    for _ in range(n):
        u = str(uuidlib.UUID(int=draw(st.integers(0, 2**128 - 1))))
        if share:
            u = "8932f937-d72c" + u[13:]
        uuids.append(f"GPU-{u}")
    if len({u.lower() for u in uuids}) < n:
        uuids = [f"GPU-{uuidlib.UUID(int=i + 1)}" for i in range(n)]
    nodes = draw(st.integers(1, 4))
    ranks = draw(st.permutations(list(range(n))))
    doc = {"name": "random", "numa_node": [{"id": i, "cpus": f"{4 * i}-{4 * i + 3}"} for i in range(nodes)],
           "gpu": []}
    for i, u in enumerate(uuids):
        # a model a rank: FASTEST_FIRST reorders models, never GPUs of one model (the topology checker holds it)
        gpu = {"uuid": u, "pci_bus_id": f"0000:{i + 1:02x}:00.0", "name": f"NVIDIA H100 r{ranks[i]}",
               "numa_node": draw(st.integers(-1, nodes - 1)), "cuda_order": ranks[i]}
        if draw(st.integers(0, 5)) == 0:
            gpu["mig"] = [{"uuid": f"MIG-{uuidlib.UUID(int=draw(st.integers(0, 2**120 - 1)) * 256 + 16 * i + k)}",
                           "gpu_instance": k + 1, "compute_instance": 0} for k in range(draw(st.integers(1, 3)))]
        doc["gpu"].append(gpu)
    return parse_topology(doc)


def _entries(topo):
    n = len(topo.gpus)
    ints = st.integers(-2, n + 2).map(str)
    decorated = st.tuples(st.sampled_from(["", " ", "+", "0", "\t"]), st.integers(0, n + 1),
                          st.sampled_from(["", " ", "x", "gpu", ".5"])).map(lambda t: f"{t[0]}{t[1]}{t[2]}")
    uuids = [g.uuid for g in topo.gpus]
    migs = [m.uuid for g in topo.gpus for m in g.migs]
    paths = [f"MIG-{g.uuid}/{m.gpu_instance}/{m.compute_instance}" for g in topo.gpus for m in g.migs]
    uuid_forms = st.tuples(st.sampled_from(uuids), st.integers(4, 42),
                           st.sampled_from(["", "upper", "lowertag", "junk"])).map(_uuid_form)
    choices = [ints, decorated, uuid_forms, st.sampled_from(["", "a", "GPU-", "MIG-", "-1"])]
    if migs:
        choices.append(st.sampled_from(migs + paths))
    return st.one_of(*choices)


def _uuid_form(t):
    u, cut, how = t
    text = u[:cut]
    if how == "upper":
        text = "GPU-" + text[4:].upper()
    elif how == "lowertag":
        text = "gpu-" + text[4:]
    elif how == "junk":
        text = u + "zz"
    return text


HARNESS = r"""
import ctypes, json, sys
cu = ctypes.CDLL("libcuda.so.1")
rc = cu.cuInit(0)
n = ctypes.c_int(0)
cu.cuDeviceGetCount(ctypes.byref(n))
out = []
for i in range(n.value):
    b = ctypes.create_string_buffer(32); cu.cuDeviceGetPCIBusId(b, 32, i)
    u = (ctypes.c_ubyte * 16)(); cu.cuDeviceGetUuid_v2(u, i)
    out.append([b.value.decode().lower(), bytes(u).hex()])
print(json.dumps({"rc": rc, "devices": out}))
"""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
def test_simulator_follows_the_pure_grammar(data, tmp_path_factory):
    topo = data.draw(topologies())
    entries = data.draw(st.lists(_entries(topo), min_size=0, max_size=6))
    cvd = data.draw(st.one_of(st.none(), st.just(",".join(entries))))
    order = data.draw(st.sampled_from([None, "FASTEST_FIRST", "PCI_BUS_ID", "BOGUS"]))
    folder = tmp_path_factory.mktemp("prop")
    conf = folder / "machine.conf"
    conf.write_text(render_config(topo))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    env.update(LD_LIBRARY_PATH=str(library_dir()), GPUAFFINITY_SIM_CONFIG=str(conf))
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    if order is not None:
        env["CUDA_DEVICE_ORDER"] = order
    got = json.loads(subprocess.run([sys.executable, "-c", HARNESS], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    idents = topo.gpus  # apply_cvd reads .uuid and .migs, which the topology's records have
    want = apply_cvd(cvd, idents, topo.cuda_default_order(), order)
    assert got["rc"] == want.error, (cvd, order, want.stopped)
    expected = []
    for d in want.devices:
        g = topo.gpus[d.gpu]
        u = g.migs[d.mig].uuid if d.mig is not None else g.uuid
        expected.append([g.pci_bus_id, u[4:].replace("-", "")])
    assert got["devices"] == expected, (cvd, order, want.stopped)
