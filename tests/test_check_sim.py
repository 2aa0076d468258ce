"""`gpuaffinity check` on processes the simulator models ([[running]] in a topology file): the rows must be what the
topology says, with numbers computed here from the topology's own tables, never from gpuaffinity."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from gpuaffinity.sim.topology import load_topology

PAGE = 4096


def run_check(machine, *args, **env):
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", *map(str, args), "--json"],
                          env={**machine.env, "CUDA_VISIBLE_DEVICES": "0", **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (0, 4), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def rows_by_pid(report):
    return {r["pid"]: r for r in report["rows"]}


def expected_pages(proc):
    """Bytes per node of the process's own memory: anonymous mappings and /dev files, from the topology."""
    out: dict[str, int] = {}
    for m in proc.mappings:
        if m.file and not m.file.startswith(("/dev/", "/anon_hugepage", "/SYSV", "/memfd:")):
            continue
        for node, n in m.pages:
            out[str(node)] = out.get(str(node), 0) + n * m.kernelpagesize_kb * 1024
    return {k: v for k, v in sorted(out.items()) if v}


def test_busy_dgx_rows_are_the_topologys_truth(sim_factory):
    machine = sim_factory("busy-dgx")
    topo = load_topology("busy-dgx")
    rc, report = run_check(machine, "--pages", 4101, 4201, 4301, 4401)
    rows = rows_by_pid(report)
    assert rc == 4 and set(rows) == {4101, 4201, 4301, 4401}
    # 4301 has no memory policy (unbound: the worse problem) and 40% of its pages remote
    want = {4101: "ok", 4201: "threads-drifted", 4301: "unbound", 4401: "no-access"}
    assert {p: r["status"] for p, r in rows.items()} == want
    for p in topo.running:
        row = rows[p.pid]
        (ctx,) = p.contexts
        gpu = topo.gpus[ctx.gpu]
        bus = gpu.pci_bus_id
        assert (row["pci_bus_id"], row["uuid"]) == (bus, gpu.uuid)
        assert row["numa_nodes"] == [gpu.numa_node]
        assert row["gpu_memory"] == {bus: ctx.mib * (1 << 20)}
        if p.readable:
            assert row["pages"]["nodes"] == expected_pages(p), p.pid
            assert row["affinity"] == sorted(p.cpus)
            assert row["threads"]["count"] == 1 + len(p.threads)
    assert rows[4101]["source"] == "binding" and rows[4101]["binding"]["how"] == "in-process"
    assert rows[4201]["threads"]["off"] == [{"tid": 4202, "name": "pt_nccl_watchdg", "cpus": "0-3"}]
    assert rows[4201]["memory"] == {"policy": "bind", "nodes": [1], "kernel": "MPOL_BIND"}
    p4301 = rows[4301]["pages"]
    assert p4301["local"] == round(p4301["nodes"]["1"] / p4301["total"], 4) == 0.6
    assert "40% of its memory" in " ".join(rows[4301]["problems"])
    assert rows[4401]["pages"] is None and rows[4401]["uid"] == 1001 and rows[4401]["source"] == "nvml"


def _machine_text(rng: random.Random, nodes: int) -> tuple[str, dict[int, dict[str, int]], dict[int, float]]:
    text = 'name = "paged"\n'
    for n in range(nodes):
        text += f'[[numa_node]]\nid = {n}\ncpus = "{4 * n}-{4 * n + 3}"\n'
    for n in range(nodes):
        text += (f'[[gpu]]\nuuid = "GPU-{n:08x}-1111-2222-3333-444444444444"\n'
                 f'pci_bus_id = "0000:{16 * n + 16:02x}:00.0"\nname = "NVIDIA H100 80GB HBM3"\nnuma_node = {n}\n')
    truth: dict[int, dict[str, int]] = {}
    local: dict[int, float] = {}
    for i in range(4):
        pid, gpu = 1000 + 10 * i, rng.randrange(nodes)
        text += (f'[[running]]\npid = {pid}\ncpus = "{4 * gpu}-{4 * gpu + 3}"\npolicy = "prefer:{gpu}"\n'
                 f'opens = ["0000:{16 * gpu + 16:02x}:00.0"]\n')
        per: dict[str, int] = {}
        for m in range(rng.randrange(1, 5)):
            pages = {str(n): rng.choice([0, 1, 7, 4096, 100_000, 900_000]) for n in range(nodes)}
            kind = rng.choice(["", "file", "dev"]) if m else rng.choice(["", "heap", "file", "dev"])
            size = 4 if kind == "heap" else rng.choice([4, 4, 2048])
            extra = {"": "", "heap": 'kind = "heap"\n', "file": 'file = "/usr/lib/libfoo.so"\n',
                     "dev": 'file = "/dev/shm/nccl-x"\n'}[kind]
            text += (f"[[running.mapping]]\n{extra}kernelpagesize_kB = {size}\npages = {{ "
                     + ", ".join(f'"{k}" = {v}' for k, v in pages.items()) + " }\n")
            if kind != "file":
                for k, v in pages.items():
                    per[k] = per.get(k, 0) + v * size * 1024
        truth[pid] = {k: v for k, v in sorted(per.items()) if v}
        total = sum(truth[pid].values())
        local[pid] = round(truth[pid].get(str(gpu), 0) / total, 4) if total else None
    return text, truth, local


@pytest.mark.parametrize("seed", range(6))
def test_pages_rows_equal_the_numa_maps_given_on_several_nodes(tmp_path, seed):
    from gpuaffinity.sim import simulated

    rng = random.Random(seed)
    text, truth, local = _machine_text(rng, rng.choice([2, 3, 4, 8]))
    path = tmp_path / "paged.toml"
    path.write_text(text)
    with simulated(str(path)) as machine:
        rc, report = run_check(machine, "--pages", "--min-local", "0", *truth)
    rows = rows_by_pid(report)
    assert set(rows) == set(truth)
    for pid, nodes in truth.items():
        assert rows[pid]["pages"]["nodes"] == nodes, (seed, pid)
        assert rows[pid]["pages"]["local"] == local[pid], (seed, pid)
        assert rows[pid]["status"] == "ok", rows[pid]  # --min-local 0, bound, preferred on its node


def test_modelled_zombie_kernel_thread_and_absent_pids(tmp_path):
    from gpuaffinity.sim import simulated

    path = tmp_path / "odd.toml"
    path.write_text('base = "dgx-h100"\nname = "odd"\n'
                    '[[running]]\npid = 700\nstate = "Z"\n'
                    '[[running]]\npid = 701\nname = "kworker/0:1"\nkernel_thread = true\n'
                    '[[running]]\npid = 702\nopens = ["0000:1b:00.0"]\ncpus = "56-111"\n')
    with simulated(str(path)) as machine:
        rc, report = run_check(machine, 700, 701, 702)
        rows = rows_by_pid(report)
        assert rows[700]["status"] == "gone" and "zombie" in rows[700]["problems"][0]
        assert rows[701]["status"] == "no-gpu"
        # GPU 0000:1b:00.0 is on node 0; the process runs on node 1's CPUs, no binding recorded
        assert rows[702]["status"] == "off-node" or rows[702]["status"] == "unbound", rows[702]
        assert rows[702]["source"] == "device-nodes" and rows[702]["pci_bus_id"] == "0000:1b:00.0"
        rc, report = run_check(machine, "--all")
        assert {r["pid"] for r in report["rows"]} >= {702}
        assert 700 not in {r["pid"] for r in report["rows"]}  # --all: only processes with a GPU or a binding


def _found_without_nvmls_list(report):
    """busy-dgx's 4101 and 4301 as a check finds them without NVML's process list: by the binding 4101 records,
    by the device node 4301 holds; no GPU memory (NVML's list gives it)."""
    rows = rows_by_pid(report)
    assert {p: (r["status"], r["source"], r["pci_bus_id"], r["gpu_memory"]) for p, r in rows.items()} == {
        4101: ("ok", "binding", "0000:52:00.0", {}), 4301: ("unbound", "device-nodes", "0000:d1:00.0", {})}
    assert report["settings"]["nvml"] is False


def test_without_libnvidia_ml_the_check_finds_gpus_by_bindings_and_device_nodes(sim_factory):
    """A container given the driver's /proc files and device nodes but not the NVIDIA library: the check runs,
    and its note says why NVML's process list is missing."""
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real NVML is installed here")
    rc, report = run_check(sim_factory("busy-dgx"), 4101, 4301, LD_LIBRARY_PATH="/nonexistent")
    assert rc == 4
    _found_without_nvmls_list(report)
    assert report["notes"] == ["NVML's process list: unavailable (loading libnvidia-ml.so.1 returned NVML error -1)"]


OLD_NVML_C = r"""
/* An NVML without nvmlDeviceGetComputeRunningProcesses_v3 (older than R510), nor the locality calls. */
static int gpu;
#define API __attribute__((visibility("default")))
API int nvmlInit_v2(void) { return 0; }
API int nvmlShutdown(void) { return 0; }
API int nvmlDeviceGetHandleByPciBusId_v2(const char *b, void **h) { (void)b; *h = &gpu; return 0; }
"""


def test_a_driver_without_the_v3_process_list_is_a_note_not_a_crash(sim_factory, tmp_path):
    """NVML's FUNCTION_NOT_FOUND for the process list, GPU by GPU: the check finds the GPUs by bindings and device
    nodes, locality by sysfs, and never fails on the missing function (AttributeError, exit 1)."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "old.c").write_text(OLD_NVML_C)
    subprocess.run([cc, "-shared", "-fPIC", "-fvisibility=hidden", "-o", str(tmp_path / "libnvidia-ml.so.1"),
                    str(tmp_path / "old.c")], check=True)
    machine = sim_factory("busy-dgx")
    rc, report = run_check(machine, 4101, 4301, LD_LIBRARY_PATH=str(tmp_path))
    assert rc == 4
    _found_without_nvmls_list(report)
    (note,) = report["notes"]
    buses = ", ".join(g.pci_bus_id for g in machine.topology.gpus)
    assert note == (f"NVML's process list: unavailable for GPU(s) {buses} (nvmlDeviceGetComputeRunningProcesses_v3 "
                    "returned NVML error 13 (Function Not Found)): their processes are found by their device nodes "
                    "and bindings"), note  # the error once, not once a GPU


def test_a_check_starts_nvml_once_for_its_process_lists_and_every_gpus_locality(tmp_path):
    """One fact, one owner: the check's one NVML session lists each GPU's processes and locates every GPU it
    judges (the simulator's call counters: one nvmlInit_v2, one nvmlShutdown, in the one process that asks)."""
    counters = tmp_path / "counters"
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "--counters", str(counters), "busy-dgx",
                           "--", sys.executable, "-m", "gpuaffinity", "check", "--all"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 4, proc.stderr  # busy-dgx holds a drifted thread and remote pages by design
    from gpuaffinity.sim import read_counters

    nvml = [calls for (_pid, lib), calls in read_counters(counters).items() if lib == "nvml"]
    assert len(nvml) == 1, nvml
    assert (nvml[0]["nvmlInit_v2"], nvml[0]["nvmlShutdown"]) == (1, 1), nvml
    assert nvml[0]["nvmlDeviceGetMemoryAffinity"] == 4, nvml  # each GPU with a worker, located once
