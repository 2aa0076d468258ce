"""`gpuaffinity check` run in a child forked from the test process (so a change to the code in memory is seen there):
the simulated machine's roots set in its environment, the simulator's NVML loaded by absolute path under its soname,
and real processes of this host, or processes the simulator models, to check.  Every row is asserted whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import CPUS, child_env
from gpuaffinity.sim.build import library_dir
from helpers.forked import forked, value

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"


def _check(env, nvml, pids, kwargs):
    import ctypes

    from gpuaffinity import live

    os.environ.clear()
    os.environ.update(env)
    if nvml:
        ctypes.CDLL(str(library_dir() / "libnvidia-ml.so.1"))
    report = live.check(pids, **kwargs)
    return {"ok": report.ok, "rows": report.rows, "notes": report.notes, "settings": report.settings,
            "table": live.render(report).splitlines()}


def check(machine, pids, nvml=False, **kwargs):
    kwargs.setdefault("use_nvml", nvml)
    return value(forked(_check, {k: v for k, v in machine.env.items() if k != "CUDA_VISIBLE_DEVICES"}, nvml,
                        pids, kwargs))


@pytest.fixture
def started(host8, sim_factory):
    machine = sim_factory(str(host8))
    procs = []

    def start(gpu, *opts, cvd=None, code=SLEEPER):
        p = subprocess.Popen([sys.executable, "-m", "gpuaffinity", "bind", str(gpu), *opts, "--", sys.executable,
                              "-c", code], env=child_env(machine, cvd), stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().startswith("ready")
        return p.pid

    yield machine, start
    for p in procs:
        p.kill()
        p.wait()


def test_a_bound_process_row_whole(started):
    machine, start = started
    pid = start(1)
    got = check(machine, [pid])
    (row,) = got["rows"]
    binding = row.pop("binding")
    assert binding == {"how": "exec", "pid": pid, "pci_bus_id": "0000:20:00.0", "mode": "node", "memory": "preferred",
                       "bind_cpus": str(CPUS[0]), "memory_nodes": [0], "applied": True, "failures": []}
    assert {k: row[k] for k in ("pid", "name", "status", "pci_bus_id", "uuid", "problems", "notes", "uid", "env",
                                "gpu_memory", "source", "mode", "memory_asked", "numa_nodes", "cpus", "bind_cpus",
                                "memory_nodes", "worker_cpus", "affinity", "memory", "threads", "pages")} == {
        "pid": pid, "name": "python3", "status": "ok", "pci_bus_id": "0000:20:00.0",
        "uuid": "GPU-00000001-0000-0000-0000-000000000000", "problems": [], "notes": [], "uid": os.getuid(),
        "env": {}, "gpu_memory": {}, "source": "binding", "mode": "node", "memory_asked": "preferred",
        "numa_nodes": [0], "cpus": str(CPUS[0]), "bind_cpus": str(CPUS[0]), "memory_nodes": [0],
        "worker_cpus": f"{CPUS[0]},{CPUS[1]}" if CPUS[1] != CPUS[0] + 1 else f"{CPUS[0]}-{CPUS[1]}",
        "affinity": [CPUS[0]], "memory": {"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"},
        "threads": {"count": 1, "off": []}, "pages": None}
    assert got["ok"] is True and got["settings"] == {"mode": "node", "memory": "any", "pages": False,
                                                      "min_local": 0.8, "all": False, "nvml": False}
    assert got["notes"] == ["NVML's process list: not asked (--no-nvml)"]
    assert got["table"][0].split() == ["PID", "NAME", "GPU", "UUID", "BY", "NUMA", "BIND", "CPUS", "AFFINITY",
                                       "THREADS", "MEMORY", "LOCAL", "STATUS"]
    assert got["table"][1].split() == [str(pid), "python3", "0000:20:00.0", "GPU-00000001", "binding", "0",
                                       str(CPUS[0]), str(CPUS[0]), "1/1", "preferred", "0", "-", "ok"]
    assert got["table"][-1].startswith("1 process(es), 1 with a GPU, checked in ") and \
        got["table"][-1].endswith(" s: every one bound next to its GPU")


def test_widened_drifted_and_remote_rows(started):
    machine, start = started
    wide = start(2)
    os.sched_setaffinity(wide, set(CPUS))
    far = start(5, "--memory", "none", code="import time; b = b'x' * (100 << 20); print('ready', flush=True); "
                                            "time.sleep(120)")
    got = check(machine, [wide, far], pages=True)
    rows = {r["pid"]: r for r in got["rows"]}
    assert rows[wide]["status"] == "unbound" and rows[wide]["problems"] == [
        f"runs on CPUs {CPUS[0]}-{CPUS[1]}, not bound to its GPU's node 0 (CPUs {CPUS[0]}): gpuaffinity bound it to "
        f"CPUs {CPUS[0]} (exec), and something moved it since (taskset, a cgroup, a library: docs/check.md)"]
    assert rows[far]["status"] == "remote-memory" and rows[far]["pages"]["local"] == 0.0
    assert rows[far]["problems"][0].startswith("100% of its memory (") and \
        " is off its GPU's node(s) 1: node 0 " in rows[far]["problems"][0]
    assert got["ok"] is False and got["table"][-1].endswith(": 2 with a problem")
    lines = [x for x in got["table"] if x.startswith(f"{wide} (python3) 0000:30:00.0: PROBLEM: runs on CPUs")]
    assert len(lines) == 1


def test_gone_kernel_thread_and_a_process_without_a_gpu(started):
    machine, start = started
    plain = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        plain.stdout.readline()
        got = check(machine, [4194303, plain.pid, 2, 4194303])
    finally:
        plain.kill()
        plain.wait()
    rows = {r["pid"]: r for r in got["rows"]}
    assert len(got["rows"]) == 3  # a pid given twice is one row
    # docs/check.md: every row has pid, status, pci_bus_id, uuid, problems and notes, a gone one too
    assert rows[4194303] == {"pid": 4194303, "name": "", "status": "gone", "pci_bus_id": None, "uuid": None,
                             "problems": ["process 4194303 does not exist in this pid namespace: nothing to check"],
                             "notes": []}
    (line,) = [x for x in got["table"][1:4] if x.startswith("4194303 ")]  # the header, then a line a row
    assert line.split() == ["4194303", *["-"] * 10, "GONE"]  # no name, no GPU: every cell a dash
    assert (rows[plain.pid]["status"], rows[plain.pid]["notes"]) == (
        "no-gpu", ["it holds no NVIDIA GPU and records no gpuaffinity binding"])
    if rows[2]["name"] == "kthreadd":
        assert (rows[2]["status"], rows[2]["notes"]) == ("no-gpu", ["a kernel thread: it holds no GPU"])


def test_modelled_processes_with_nvml(sim_factory):
    got = check(sim_factory("busy-dgx"), [4101, 4201, 4301, 4401], nvml=True, pages=True)
    rows = {r["pid"]: r for r in got["rows"]}
    assert {p: (r["status"], r["source"], r["pci_bus_id"]) for p, r in rows.items()} == {
        4101: ("ok", "binding", "0000:52:00.0"), 4201: ("threads-drifted", "nvml", "0000:c3:00.0"),
        4301: ("unbound", "nvml", "0000:d1:00.0"), 4401: ("no-access", "nvml", "0000:9d:00.0")}
    assert rows[4201]["problems"] == ["1 of 3 threads may run off its GPU's CPUs 56-111,168-223: 4202 "
                                      "(pt_nccl_watchdg) on CPUs 0-3"]
    assert rows[4301]["problems"] == [
        "memory policy is the default: nothing keeps its memory on its GPU's node 1: no gpuaffinity binding is "
        "recorded for it",
        "40% of its memory (156.4 MiB of 391.0 MiB) is off its GPU's node(s) 1: node 0 156.4 MiB"]
    assert rows[4401]["problems"] == [
        "part of it cannot be read: environ: Permission denied; fd: Not a directory; numa_maps: Permission denied "
        "(run the check as its user or as root)"]
    assert rows[4101]["gpu_memory"] == {"0000:52:00.0": 30720 << 20} and got["settings"]["nvml"] is True
    assert got["notes"] == []


ELSEWHERE = """base = "dgx-h100"
name = "elsewhere"
[[running]]
pid = 5301
cpus = "0-55,112-167"
policy = "prefer:0"
environ = { CUDA_VISIBLE_DEVICES = "0" }
contexts = { "0000:9d:00.0" = 1024 }
binding = { v = 1, how = "exec", pid = 5301, pci_bus_id = "0000:1b:00.0", mode = "node", memory = "preferred", \
bind_cpus = "0-55,112-167", memory_nodes = [0], numa_nodes = [0], applied = true, failures = [] }
[[running]]
pid = 5401
cpus = "0-55,112-167"
policy = "prefer:0"
binding = { v = 1, how = "exec", pid = 5401, pci_bus_id = "0000:ee:00.0", mode = "node", memory = "preferred", \
bind_cpus = "0-55,112-167", memory_nodes = [0], numa_nodes = [0], applied = true, failures = [] }
"""


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory, sim_factory):
    """dgx-h100 with a worker bound for GPU 0000:1b:00.0 (node 0) that computes on 0000:9d:00.0 (node 1), and one
    bound for 0000:ee:00.0, a GPU this machine does not have."""
    path = tmp_path_factory.mktemp("elsewhere") / "elsewhere.toml"
    path.write_text(ELSEWHERE)
    return sim_factory(str(path))


def test_a_worker_computing_on_another_gpu_than_its_binding_is_judged_by_nvmls_list(elsewhere):
    got = check(elsewhere, [5301], nvml=True)
    (row,) = got["rows"]
    assert (row["status"], row["source"], row["pci_bus_id"], row["numa_nodes"]) == (
        "off-node", "nvml", "0000:9d:00.0", [1])
    assert row["notes"] == ["the binding was planned for GPU 0000:1b:00.0, but the process computes on "
                            "0000:9d:00.0: judged against that"]
    # the problem does not say that no binding is recorded, beside a note naming it
    assert row["problems"] == ["runs on CPUs 0-55,112-167, not bound to its GPU's node 1 (CPUs 56-111,168-223): its "
                               "gpuaffinity binding is for GPU 0000:1b:00.0, not the GPU it computes on",
                               "memory preferred to node(s) 0, off its GPU's node 1"]
    assert got["table"][1].split()[2:5] == ["0000:9d:00.0", "GPU-76e9c809", "nvml"]  # GPU, UUID, BY


def test_all_leaves_out_a_process_bound_for_a_gpu_this_machine_does_not_show(elsewhere):
    got = check(elsewhere, [], nvml=True, all_processes=True)
    pids = {r["pid"] for r in got["rows"]}
    assert 5301 in pids and 5401 not in pids, got["rows"]
    # this host's real processes are looked at too: another machine's bound ones may be counted with it
    assert any(re.fullmatch(r"\d+ process\(es\) bound for GPUs this machine does not show here were left out \(a "
                            r"binding made in a container that shows other GPUs, or under another simulated "
                            r"machine\)", n) for n in got["notes"]), got["notes"]
    # asked for by pid, it is a row: one this check cannot judge
    (row,) = check(elsewhere, [5401], nvml=True)["rows"]
    assert (row["status"], row["pci_bus_id"], row["source"]) == ("no-access", "0000:ee:00.0", "binding")
    assert row["problems"] == ["its GPU 0000:ee:00.0 (binding) is not among the GPUs this check sees (a container "
                               "that shows other GPUs?): check it from where it runs"]


MIXED_MIG = """name = "mixed-mig"
[[numa_node]]
id = 0
cpus = "0-15"
[[numa_node]]
id = 1
cpus = "16-31"
[[gpu]]
uuid = "GPU-e973d4d0-d37e-6749-4087-c813f045f6e0"
pci_bus_id = "0000:07:00.0"
name = "NVIDIA A100-SXM4-80GB"
numa_node = 0
[[gpu.mig]]
uuid = "MIG-68b49734-b70d-a03b-466b-3aa827a0018a"
gpu_instance = 1
compute_instance = 0
name = "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
memory_mib = 40192
multiprocessors = 42
[[gpu]]
uuid = "GPU-4630de19-bf77-d38d-8b9b-7cefad989a70"
pci_bus_id = "0000:81:00.0"
name = "NVIDIA A10"
numa_node = 1
[[running]]
pid = 5101
cpus = "0-15"
policy = "prefer:0"
environ = { CUDA_VISIBLE_DEVICES = "MIG-68b49734-b70d-a03b-466b-3aa827a0018a" }
opens = ["0000:07:00.0", "0000:81:00.0"]
[[running]]
pid = 5201
cpus = "0-15"
policy = "prefer:0"
environ = { CUDA_VISIBLE_DEVICES = "0" }
opens = ["0000:07:00.0", "0000:81:00.0"]
"""


@pytest.fixture(scope="module")
def mixed_mig(tmp_path_factory, sim_factory):
    """An A100 in MIG mode (node 0) beside an A10 (node 1): a machine of mixed models, whose CUDA order
    (fastest first) is not the PCI order.  5101 and 5201 hold both GPUs' device nodes, 5101 with a MIG UUID in
    its CUDA_VISIBLE_DEVICES, 5201 with an index."""
    path = tmp_path_factory.mktemp("mixed-mig") / "mixed-mig.toml"
    path.write_text(MIXED_MIG)
    return sim_factory(str(path))


BOTH = ("it holds the device nodes of 2 GPUs and nothing says which it computes on: judged against all of them "
        "(NVML's process list: not asked (--no-nvml))")


def test_a_mig_uuid_in_cuda_visible_devices_does_not_count_in_cudas_order(mixed_mig):
    """An index counts in CUDA's fastest-first order, unknown from outside on a machine of mixed models; a UUID
    (GPU- or MIG-) names its device in any order: no note says it cannot be known."""
    rows = {r["pid"]: r for r in check(mixed_mig, [5101, 5201])["rows"]}
    assert rows[5101]["notes"] == [BOTH]
    assert rows[5201]["notes"] == [
        "its CUDA_VISIBLE_DEVICES='0' counts in CUDA's fastest-first order on a machine of mixed GPU models: which "
        "GPUs it shows cannot be known from outside", BOTH]


def test_a_process_of_two_gpus_names_both_in_the_table(mixed_mig):
    got = check(mixed_mig, [5101])
    (row,) = got["rows"]
    assert (row["pci_bus_id"], row["uuid"], row["source"], row["numa_nodes"]) == (
        "0000:07:00.0,0000:81:00.0",
        "GPU-e973d4d0-d37e-6749-4087-c813f045f6e0,GPU-4630de19-bf77-d38d-8b9b-7cefad989a70", "device-nodes", [0, 1])
    # GPU and UUID: comma-joined, each UUID cut to its first 12 characters (docs/check.md)
    assert got["table"][1].split()[:6] == ["5101", "python3", "0000:07:00.0,0000:81:00.0", "GPU-e973d4d0,GPU-4630de19",
                                           "device-nodes", "0,1"]
