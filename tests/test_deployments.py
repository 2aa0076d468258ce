"""Deployment shapes: a process that can open fewer GPUs than the host has, against the simulated driver.

Every shape x CUDA_VISIBLE_DEVICES in integer, UUID, prefix and MIG forms x both orders x every policy:
gpuaffinity's answer must be what the simulated CUDA driver, queried through cuda.bindings in a fresh
process of the same shape, enumerates; ``nvml_index`` must be what pynvml numbers in that process.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import CUDA_VARS, child_env, run_json
from gpuaffinity.sim import load_topology, simulated
from gpuaffinity.sim.topology import make_process
from test_resolve import CHILD

# The driver's truth in one fresh process (CUDA reads CUDA_VISIBLE_DEVICES once, at cuInit).
TRUTH = r"""
import json
from cuda.bindings import driver as d
(rc,) = d.cuInit(0)
out = {"cuInit": int(rc), "devices": []}
if rc == d.CUresult.CUDA_SUCCESS:
    _, n = d.cuDeviceGetCount()
    for i in range(n):
        _, bus = d.cuDeviceGetPCIBusId(32, i)
        _, u = getattr(d, "cuDeviceGetUuid_v2", d.cuDeviceGetUuid)(i)  # v2: the MIG instance where there is one
        out["devices"].append([bus.split(b"\0", 1)[0].decode().lower(), bytes(u.bytes).hex()])
print(json.dumps(out))
"""

NVML_LIST = r"""
import json, pynvml
pynvml.nvmlInit()
buses = [pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).busId
         for i in range(pynvml.nvmlDeviceGetCount())]
print(json.dumps([b.decode().lower()[4:] if isinstance(b, bytes) else b.lower()[4:] for b in buses]))
"""

#: name -> (base topology, process overrides for make_process or None, expected `inventory` label)
SHAPES = {
    "bare-metal": ("dgx-h100", None, "procfs+device-nodes"),
    "slurm-cgroup": ("slurm-2of8", None, "nvml"),
    "container-nodes": ("container-2of8", None, "nvml"),
    "container-masked": ("container-masked-2of8", None, "procfs+device-nodes"),
    "mig-container": ("mig-container", None, "nvml"),
    "mixed-models-cgroup": ("mixed-4gpu", {"gpus": [0, 1, 3], "others": "denied"}, "nvml"),
    "mig-cgroup": ("mig-a100", {"gpus": [0, 2, 3], "others": "denied",
                                "migs": ["MIG-a06bcdfe-7533-40fd-2339-11c082f5e35d",
                                         "MIG-c53c9fd5-4874-0684-3c51-acd4e4479493",
                                         "MIG-234fbb23-dcf9-1c31-18a0-e3334436a18f"]}, "nvml"),
}
ORDERS = (None, "PCI_BUS_ID")
POLICIES = ("first", "verify", "strict")


def shape_topology(name):
    base, over, _label = SHAPES[name]
    topo = load_topology(base)
    return replace(topo, process=make_process(topo, **over)) if over else topo


def cvd_values(topo) -> list[str | None]:
    """Integers, UUIDs, prefixes and MIG forms, naming GPUs this process can and cannot open."""
    view = topo.process
    usable = [i for i in range(len(topo.gpus)) if view.opens(i)]
    hidden = [i for i in range(len(topo.gpus)) if not view.opens(i)]
    u = [g.uuid for g in topo.gpus]
    vals: list[str | None] = [None, "0", "1,0", "1", str(len(usable)), "0,1", " 1", "1gpu"]
    vals += [u[usable[-1]], ",".join(u[i] for i in reversed(usable)), u[usable[0]][:13]]
    vals.append("GPU-")  # a prefix every GPU of the host shares: the driver decides it against hidden GPUs too
    if hidden:
        vals += [u[hidden[0]], f"{u[hidden[0]]},{u[usable[0]]}", f"{u[usable[0]]},{u[hidden[-1]]}", u[hidden[0]][:13]]
    for i, g in enumerate(topo.gpus):
        for m in g.migs:
            vals += [m.uuid, f"MIG-{g.uuid}/{m.gpu_instance}/{m.compute_instance}"]
            if i in usable:
                vals.append(m.uuid[:12])
    return list(dict.fromkeys(vals))


def driver_truth(machine, cases):
    def one(case):
        cvd, order = case
        proc = subprocess.run([sys.executable, "-c", TRUTH], env=child_env(machine, cvd, order),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])
    with cf.ThreadPoolExecutor(4) as ex:
        return list(ex.map(one, cases))


def resolve_all_cases(machine, combos):
    env = {k: v for k, v in machine.env.items() if k not in CUDA_VARS}
    proc = subprocess.run([sys.executable, CHILD, json.dumps(combos)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.slow
def test_every_shape_gives_the_drivers_answer(shape):
    topo = shape_topology(shape)
    label = SHAPES[shape][2]
    cases = [(cvd, order) for cvd in cvd_values(topo) for order in ORDERS]
    with simulated(topo, base_env=dict(os.environ)) as machine:
        truths = driver_truth(machine, cases)
        nvml = run_json(machine, NVML_LIST)
        combos = [[cvd, order, {"policy": p}] for cvd, order in cases for p in POLICIES]
        results = resolve_all_cases(machine, combos)
    assert len(nvml) == (len(topo.gpus) if topo.process.gpus is None else len(topo.process.gpus))
    migs = {m.uuid[4:].replace("-", ""): m.uuid for g in topo.gpus for m in g.migs}
    checked = 0
    for (cvd, order, opts), rec in zip(combos, results, strict=True):
        truth = truths[cases.index((cvd, order))]
        where = f"{shape}: CUDA_VISIBLE_DEVICES={cvd!r} CUDA_DEVICE_ORDER={order!r} policy={opts['policy']}: {rec}"
        if truth["cuInit"] == 101:
            assert rec.get("error") == "InvalidVisibleDevicesError", where
            continue
        assert "error" not in rec, where
        want = [bus for bus, _u in truth["devices"]]
        assert [d["pci_bus_id"] for d in rec["devices"]] == want, where
        for d, (bus, uuid_hex) in zip(rec["devices"], truth["devices"], strict=True):
            assert d["nvml_index"] == nvml.index(bus), where  # pynvml's index in this process
            assert d["mig_uuid"] == migs.get(uuid_hex), where
            assert d["inventory"] == label, where
            if d["fallback"]:
                assert rec["warnings"], where
            if opts["policy"] == "strict":
                assert d["driver_asked"] and "pci" in d["answered"], where
            assert (len(d["agreed"]) >= 2) == (len(d["answered"]) >= 2 and not d["disagreed"]), where
            checked += 1
    assert checked > 0


def test_a_lone_answer_is_not_called_agreed(sim_factory):
    """Without torch and with CUDA down, only cvd answers under verify: nothing agreed with it, and it says so."""
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_all_cases(machine, [["3,1", None, {}]])
    for d in rec["devices"]:
        assert (d["answered"], d["agreed"], d["driver_asked"]) == (["cvd"], [], False)
        assert d["verdicts"]["pci"][1] is False  # not asked
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=child_env(machine, "3,1"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.count("by cvd alone, not cross-checked; the CUDA driver was not asked") == 2
    assert "agree" not in out.stdout.split("Devices:")[1]
    table = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve"], env=child_env(machine, "3,1"),
                           capture_output=True, text=True, check=True).stdout
    assert [line.split()[-2:] for line in table.splitlines()[1:]] == [["cvd", "alone"]] * 2


def test_doctor_says_why_the_list_came_from_nvml(sim_factory):
    machine = sim_factory("slurm-2of8")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=child_env(machine, "0,1"),
                         capture_output=True, text=True, check=True).stdout
    assert "GPUs this process can use (NVML order = PCI order): 2" in out
    assert "listed from NVML: the driver's /proc lists GPU minor 0, but " in out and "does not open (ENXIO)" in out
    assert "the driver's /proc lists 8 GPUs of the host; this process can open 2 of them" in out


EDIT_DEV = r"""
import json, os, sys
import gpuaffinity
print(json.dumps([[d.pci_bus_id, d.nvml_index, d.inventory] for d in gpuaffinity.resolve_all()]))
"""


def test_proc_listing_one_gpu_short_or_one_too_many(tmp_path):
    """/proc lists fewer GPUs than the process opens (an extra node), or more (a node removed): the driver's view."""
    topo = load_topology("container-masked-2of8")
    with simulated(topo, base_env=dict(os.environ)) as machine:
        dev = machine.folder / "dev"
        base = run_json(machine, EDIT_DEV)
        assert base == [[topo.gpus[2].pci_bus_id, 0, "procfs+device-nodes"],
                        [topo.gpus[5].pci_bus_id, 1, "procfs+device-nodes"]]
        (dev / "nvidia0").write_text("")  # a node /proc does not list, and it opens: NVML sees three GPUs
        extra = run_json(machine, EDIT_DEV)
        truth = driver_truth(machine, [(None, None)])[0]
        three = [topo.gpus[i].pci_bus_id for i in (0, 2, 5)]
        assert [d[0] for d in extra] == [b for b, _ in truth["devices"]] == three
        assert [d[1:] for d in extra] == [[0, "nvml"], [1, "nvml"], [2, "nvml"]]
        (dev / "nvidia0").unlink()
        (dev / "nvidia5").unlink()  # /proc lists a GPU whose node is gone: one GPU left
        short = run_json(machine, EDIT_DEV)
        assert short == [[topo.gpus[2].pci_bus_id, 0, "nvml"]]
        assert [b for b, _ in driver_truth(machine, [(None, None)])[0]["devices"]] == [topo.gpus[2].pci_bus_id]


def test_a_node_of_another_device_is_not_taken_for_a_gpu(tmp_path):
    """The /proc fast path needs each GPU's node to be its own character device; elsewhere NVML answers."""
    from gpuaffinity.inventory import _device_nodes_mismatch

    dev = tmp_path / "dev"
    dev.mkdir()
    # real nodes: /dev/null is a character device of another major than any NVIDIA node
    os.symlink("/dev/null", dev / "nvidiactl")
    os.symlink("/dev/zero", dev / "nvidia0")
    why = _device_nodes_mismatch(dev, (0,), simulated=False)
    assert why == f"{dev / 'nvidia0'} is not the device node of GPU minor 0"
    (dev / "nvidia0").unlink()
    (dev / "nvidia0").write_text("")  # a plain file is a node only in the simulator's /dev
    assert _device_nodes_mismatch(dev, (0,), simulated=False) == f"{dev / 'nvidia0'} is not the device node of " \
                                                                 "GPU minor 0"
    assert _device_nodes_mismatch(dev, (0,), simulated=True) is None


# Found by an adversarial pass over the changes above; each defect is now a test.

RACE_TORCH = r"""
import json, os, threading, time, torch, gpuaffinity
want = {"0,1": [0, 1], "1,0": [1, 0]}
def flip(stop):
    while not stop.is_set():
        for v in want:
            os.environ["CUDA_VISIBLE_DEVICES"] = v
        time.sleep(0)  # yields the GIL: the resolving thread runs between flips, not once a switch interval
bad = 0
for trial in range(40):
    gpuaffinity.clear_cache()
    stop = threading.Event()
    t = threading.Thread(target=flip, args=(stop,))
    t.start()
    gpuaffinity.resolve_all(policy="first")
    stop.set(); t.join()
    for v in want:  # the environment fixed: the cached answers must be for it
        os.environ["CUDA_VISIBLE_DEVICES"] = v
        bad += [d.nvml_index for d in gpuaffinity.resolve_all(policy="first")] != want[v]
print(json.dumps(bad))
"""


def test_torchs_helper_never_answers_for_another_snapshot(sim_factory):
    """torch's helper reads the variables itself: with another thread changing them, its answer is dropped."""
    pytest.importorskip("torch")
    assert run_json(sim_factory("dgx-h100"), RACE_TORCH) == 0


def test_torch_under_first_keeps_the_mig_instance(sim_factory):
    pytest.importorskip("torch")
    machine = sim_factory("mig-container")
    code = "import json, torch, gpuaffinity; d = gpuaffinity.resolve(0, policy='first'); print(json.dumps(" \
           "[d.mig_uuid, d.strategy]))"
    assert run_json(machine, code) == ["MIG-7cbdd8d7-1463-b16d-adaa-b2c3504c2658", "cvd"]


@pytest.mark.parametrize("fault", ["nvmlDeviceGetMigMode=3", "nvmlDeviceGetMigDeviceHandleByIndex=4",
                                   "nvmlDeviceGetMigDeviceHandleByIndex=6"])
def test_nvml_wrong_about_mig_is_caught_by_the_driver_under_verify(sim_factory, fault):
    machine = sim_factory("mig-a100")
    truth = [b for b, _ in driver_truth(machine, [(None, None)])[0]["devices"]]
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--json"],
                         env=child_env(machine, GPUAFFINITY_SIM_FAULTS=fault), capture_output=True, text=True)
    assert [d["pci_bus_id"] for d in json.loads(out.stdout)] == truth
    assert "gpuaffinity: warning:" in out.stderr


def test_one_model_in_another_order_than_pci_is_refused_as_a_topology(tmp_path):
    from gpuaffinity.sim import TopologyError
    from gpuaffinity.sim.topology import parse_topology

    gpus = [{"uuid": f"GPU-{i}0000000-0000-0000-0000-000000000000", "pci_bus_id": f"0000:{i}1:00.0",
             "name": "NVIDIA H100 80GB HBM3", "numa_node": 0, "cuda_order": 1 - i} for i in range(2)]
    with pytest.raises(TopologyError, match="GPUs of one model keep PCI order under FASTEST_FIRST"):
        parse_topology({"name": "x", "numa_node": [{"id": 0, "cpus": "0-3"}], "gpu": gpus})


def test_a_selector_is_an_answer_alone_and_a_prefix_counts_hidden_gpus(sim_factory):
    machine = sim_factory("slurm-2of8")
    host = machine.topology.gpus
    code = ("import json, sys, gpuaffinity\nout = []\nfor s in sys.argv[1:]:\n    try:\n"
            "        d = gpuaffinity.resolve(s); out.append([d.pci_bus_id, list(d.answered), list(d.agreed), "
            "d.inventory])\n    except gpuaffinity.GpuAffinityError as e:\n        out.append(str(e))\n"
            "print(json.dumps(out))")
    whole, shared, hidden = run_json(machine, code, host[5].uuid, "GPU-2", host[0].uuid, cvd="0,1")
    assert whole == [host[5].pci_bus_id, ["selector"], [], "nvml"]
    assert "'GPU-2' matches 2 GPU UUIDs (a prefix must be unique)" in shared  # 29ec... and hidden 25ab...
    assert f"names a GPU of the host that this process cannot open ({host[0].uuid})" in hidden


def test_an_unknown_inventory_source_is_an_error(sim_factory):
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve"],
                         env=child_env(sim_factory("dgx-h100"), GPUAFFINITY_INVENTORY="nvlm"), capture_output=True,
                         text=True)
    assert out.returncode == 1 and "unknown GPUAFFINITY_INVENTORY 'nvlm': choose nvml" in out.stderr


@pytest.mark.parametrize("source", ["auto", "nvml"])
def test_the_inventory_counts_the_host_s_gpus_from_either_source(sim_factory, source):
    code = ("import json; from gpuaffinity.inventory import read_inventory; inv = read_inventory()\n"
            "print(json.dumps([inv.source, inv.host_gpus, len(inv.gpus)]))")
    assert run_json(sim_factory("dgx-h100"), code, GPUAFFINITY_INVENTORY=source) == [
        "procfs" if source == "auto" else "nvml", 8, 8]


@pytest.mark.parametrize(("value", "source"), [("auto", "procfs"), ("", "procfs"), ("nvml", "nvml")])
def test_each_documented_inventory_source_is_taken(sim_factory, value, source):
    code = "import json; from gpuaffinity.inventory import read_inventory; print(json.dumps(read_inventory().source))"
    assert run_json(sim_factory("dgx-h100"), code, GPUAFFINITY_INVENTORY=value) == source


DEV_EDIT = r"""
import json, os, gpuaffinity
os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["T_UUID"]
before = gpuaffinity.resolve(0).nvml_index
os.remove(os.path.join(os.environ["GPUAFFINITY_DEV_ROOT"], "nvidia0"))
cached = gpuaffinity.resolve(0).nvml_index
gpuaffinity.clear_cache()
print(json.dumps([before, cached, gpuaffinity.resolve(0).nvml_index]))
"""


def test_device_nodes_changing_under_a_running_process_need_clear_cache(tmp_path):
    """Documented limit (docs/deployments.md): the cache is keyed by the environment, not by /dev, which a
    process's cgroup does not change in its life; clear_cache() reads the new view."""
    with simulated("dgx-h100", base_env=dict(os.environ)) as machine:
        assert run_json(machine, DEV_EDIT, T_UUID=machine.topology.gpus[3].uuid) == [3, 3, 2]


#: (simulator arguments, how many of the five commands below start NVML): a host of several NUMA nodes asks NVML
#: for locality, and where the GPU list comes from NVML too (a restricted process, MIG), both from one session; a
#: host of one node (the VMs) asks NVML nothing when its GPU list comes from the driver's files, but doctor, the
#: health report, asks it whether a GPU is lost
NVML_SHAPES = [(["dgx-h100"], 5), (["slurm-2of8"], 5), (["container-2of8"], 5), (["mig-container"], 5),
               (["dgx-h100", "--gpus", "2,5", "--others", "absent"], 5), (["mixed-4gpu"], 5), (["vm-4gpu"], 1),
               (["h200x4-vm"], 1)]


@pytest.mark.parametrize(("shape", "starts"), NVML_SHAPES, ids=[" ".join(s) for s, _n in NVML_SHAPES])
def test_every_command_starts_nvml_once_in_every_shape(tmp_path, shape, starts):
    """One Host a command (gpuaffinity.host): the GPU list, the driver's count, each GPU's locality and the plan
    share one NVML session.  Five commands on one simulated machine, each its own process; the simulator's counters
    by process: `starts` of them started NVML, each once, and shut it down once (the CUDA driver, where asked, in
    the forked probe: mixed-4gpu, whose CUDA order is unknown)."""
    import shlex

    from gpuaffinity.sim import read_counters

    py = shlex.quote(sys.executable)
    commands = [f"{py} -m gpuaffinity resolve --json", f"{py} -m gpuaffinity bind 0 --dry-run",
                f"{py} -m gpuaffinity doctor", f"{py} -m gpuaffinity resolve 0",
                f"{py} -c 'import gpuaffinity; gpuaffinity.plan(0)'"]
    script = "".join(f"{c} > /dev/null || exit 9\n" for c in commands)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "--counters", str(tmp_path), *shape,
                           "--", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    nvml = [c for (_pid, lib), c in read_counters(tmp_path).items() if lib == "nvml"]
    assert len(nvml) == starts, nvml  # every command asked NVML, or doctor alone
    assert all(c.get("nvmlInit_v2", 0) == 1 and c.get("nvmlShutdown", 0) == 1 for c in nvml), nvml


@pytest.mark.parametrize("preset", ["dgx-h100", "slurm-2of8", "container-2of8", "mig-container"])
def test_planning_takes_the_gpu_list_the_answer_was_resolved_over(preset):
    """Planning takes the list the resolution made (one listing a command): the plan is the same as with the list
    read again."""
    # the plan made with the list read again, in one process: the same CPUs, nodes and sharing
    code = ("import json, gpuaffinity\nfrom gpuaffinity import api\nr = gpuaffinity.plan(0)\napi._inventories.clear()\n"
            "again = gpuaffinity.plan(0)\nprint(json.dumps([repr(r), repr(again)]))")
    with simulated(preset) as machine:
        first, again = run_json(machine, code)
    assert first == again


@pytest.mark.parametrize(("mode", "asked"), [("node", 1), ("socket", 1), ("exclusive", 8), ("llc", 8)])
def test_planning_locates_the_other_gpus_only_where_the_mode_splits_among_them(tmp_path, mode, asked):
    """node and socket place the GPU by its own locality alone; exclusive and llc share the node's CPUs among
    its GPUs, so every GPU's place is needed.  The simulator's counters: NVML asked for that many GPUs' memory
    affinity, each once."""
    from gpuaffinity.sim import read_counters

    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "--counters", str(tmp_path), "dgx-h100",
                           "--", sys.executable, "-m", "gpuaffinity", "bind", "0", "--mode", mode, "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    calls = {k: sum(c.get(k, 0) for (_p, lib), c in read_counters(tmp_path).items() if lib == "nvml")
             for k in ("nvmlDeviceGetMemoryAffinity", "nvmlInit_v2")}
    assert calls == {"nvmlDeviceGetMemoryAffinity": asked, "nvmlInit_v2": 1}, calls
