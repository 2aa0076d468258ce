"""`gpuaffinity check` attacked as a careless user and a hostile process would: each test reproduces one defect
found that way, on the simulated two-node machine whose nodes are this host's CPUs 0 and 1 (``host8``), with real
processes and the real /proc (tests/test_check.py shows the setting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import CPUS, child_env, start

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")

SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"


def bus(i: int) -> str:
    return f"0000:{16 * i + 16:02x}:00.0"


@pytest.fixture(scope="module")
def machine(host8, sim_factory):
    return sim_factory(str(host8))


def bound(procs, machine, gpu, code=SLEEPER, *opts, cvd=None, **env):
    return start(procs, machine, [sys.executable, "-m", "gpuaffinity", "bind", str(gpu), *opts, "--",
                                  sys.executable, "-c", code], cvd, **env)


def check(machine, *args, cvd="7"):
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", *map(str, args), "--json"],
                          env=child_env(machine, cvd), capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 4), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def row_of(report, pid):
    (row,) = [r for r in report["rows"] if r["pid"] == pid]
    return row


RECORD = {"v": 1, "how": "exec", "pid": 1, "pci_bus_id": bus(0), "mode": "node", "memory": "none", "bind_cpus": "0",
          "memory_nodes": [], "numa_nodes": [0], "applied": True, "failures": []}


# a forged record ------------------------------------------------------------------------------------------------

def test_a_deeply_nested_record_is_a_note_not_a_crash_of_the_whole_check(machine, procs):
    """json.loads raises RecursionError, not ValueError, for deep nesting: one process whose GPUAFFINITY_BOUND is
    60,000 brackets made every `check` that looked at it (`--all` included) exit 1 with "unexpected RecursionError"."""
    from gpuaffinity import intent

    for text in ("[" * 60_000, '{"v":1,"x":' * 5000):
        with pytest.raises(ValueError, match="not JSON"):
            intent.decode(text)
    p, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND="[" * 60_000)
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 0 and row["status"] == "no-gpu", row
    assert "its exec binding record cannot be read: the record is not JSON" in row["notes"][0]
    rc, report = check(machine, "--all")
    assert row_of(report, p.pid)["status"] == "no-gpu"


def test_a_record_of_overlapping_ranges_costs_nothing():
    """parse_cpulist bounds each number, so "0-999999999" is cheap; but 7,000 copies of "0-65535" in a 56 KiB
    record expanded 458 million numbers: 21 s for one forged process, every check, every one of them."""
    from gpuaffinity import intent
    from gpuaffinity.core.cpulist import parse_cpulist

    forged = json.dumps({**RECORD, "bind_cpus": ",".join(["0-65535"] * 7000)})
    t = time.perf_counter()
    with pytest.raises(ValueError, match="bind_cpus is not a CPU list"):
        intent.decode(forged)
    assert time.perf_counter() - t < 1.0
    # what the kernel writes still parses, up to every number there can be
    assert parse_cpulist("0-65535") == frozenset(range(65536))
    assert parse_cpulist("0-3,8-11:2,5") == {0, 1, 2, 3, 5, 8, 10}


# a careless user --------------------------------------------------------------------------------------------------

DRIFTER = """
import os, threading, time
def run():
    os.sched_setaffinity(0, {OTHER})
    print("ready", threading.get_native_id(), flush=True)
    time.sleep(120)
threading.Thread(target=run, daemon=True).start()
time.sleep(120)
"""


def test_a_thread_id_given_as_a_pid_is_checked_as_its_process(machine, procs):
    """/proc/TID reads for a thread that is not listed in /proc: checked as if it were a process, its own mask was
    taken for the main thread's (OFF-NODE for what is THREADS-DRIFTED), the real main thread counted as another
    thread, the note said the binding came from an ancestor, and `check PID TID` gave one process two rows."""
    p, (tid,) = bound(procs, machine, 0, DRIFTER.replace("OTHER", str(CPUS[1])), "--memory", "none")
    tid = int(tid)
    assert tid != p.pid and str(tid) not in os.listdir("/proc")
    rc, report = check(machine, p.pid, tid)
    assert [r["pid"] for r in report["rows"]] == [p.pid], report["rows"]
    row = report["rows"][0]
    assert rc == 4 and row["status"] == "threads-drifted" and row["affinity"] == [CPUS[0]], row
    assert f"{tid} is a thread of process {p.pid}: checked as that process" in row["notes"]
    rc, report = check(machine, tid)
    row = row_of(report, p.pid)
    assert row["status"] == "threads-drifted" and not any("ancestor" in n for n in row["notes"]), row


def test_a_binding_at_the_end_of_a_large_environment_is_found(machine, procs):
    """The kernel takes up to 6 MiB of environment at exec; check read 1 MiB of /proc/PID/environ, and
    `gpuaffinity bind` appends GPUAFFINITY_BOUND last: a worker started with 1.1 MiB of environment (a few large
    variables, as some job launchers export) was `no-gpu`, unbound to the check, and --all did not find it."""
    fill = {f"FILL{i}": "x" * 120_000 for i in range(10)}
    p, _ = bound(procs, machine, 5, SLEEPER, "--memory", "none", **fill)
    with open(f"/proc/{p.pid}/environ", "rb") as f:
        assert len(f.read()) > 1 << 20
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 0 and row["status"] == "ok" and row["pci_bus_id"] == bus(5), row
    assert row["source"] == "binding" and row["binding"]["pid"] == p.pid
    rc, report = check(machine, "--all")
    assert row_of(report, p.pid)["pci_bus_id"] == bus(5)


def test_an_environment_cut_short_drops_its_last_variable_not_misreads_it():
    """Where the read of an environment stops at its limit, the last variable is cut: it must not be taken (a
    CUDA_VISIBLE_DEVICES=0,1 read as "0," or a record read as half its JSON)."""
    from gpuaffinity import proc

    raw = b"A=1\0CUDA_VISIBLE_DEVICES=0,1\0"
    assert proc._environ(raw) == {"A": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert proc._environ(raw[:-3], whole=False) == {"A": "1"}


# --all ------------------------------------------------------------------------------------------------------------

def _host_view() -> bool:
    try:
        return os.geteuid() == 0 and os.readlink("/proc/self/ns/pid") == "pid:[4026531836]"
    except OSError:
        return False


MONITOR = """
import os, time
dev = os.environ["GPUAFFINITY_DEV_ROOT"]
held = [os.open(os.path.join(dev, n), os.O_RDONLY) for n in ["nvidiactl", *(f"nvidia{i}" for i in range(8))]]
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not _host_view(), reason="needs root in the host's pid namespace (NVML's pids are the host's)")
def test_an_nvml_monitor_holding_every_device_node_is_not_a_gpu_worker(machine, procs):
    """nvidia-smi, DCGM, NVML exporters (and a second `gpuaffinity check`) hold /dev/nvidiactl and every GPU's
    /dev/nvidiaN open without computing: measured on a real H100, an NVML-only process held /dev/nvidia0 as a
    CUDA process does, and NVML's compute list did not name it (it named a CUDA process and an MPS client).  check
    --all judged such a monitor against every GPU it held: memory policy default, UNBOUND, exit 4 on any host that
    runs one.  Where NVML's list is exact (root, in the host's pid namespace), a process NVML lists on none of the
    GPUs it holds, and that records no binding, is not a GPU worker."""
    mon, _ = start(procs, machine, [sys.executable, "-c", MONITOR])
    worker, _ = bound(procs, machine, 2, SLEEPER, "--memory", "none")
    rc, report = check(machine, "--all", "--memory", "none")
    row = row_of(report, mon.pid)
    assert row["status"] == "no-gpu" and row["pci_bus_id"] is None, row
    assert row["notes"] == [f"it holds the device node(s) of GPU(s) {', '.join(bus(i) for i in range(8))}, but NVML "
                            "lists no CUDA context of it there: a monitoring tool (nvidia-smi, DCGM, an NVML exporter) "
                            "or a process whose CUDA has not started"]
    assert row_of(report, worker.pid)["pci_bus_id"] == bus(2)
    rc, report = check(machine, mon.pid)
    assert rc == 0 and row_of(report, mon.pid)["status"] == "no-gpu"
    # without NVML's list nothing says it does not compute: judged against every GPU it holds, as before
    rc, report = check(machine, mon.pid, "--no-nvml", "--memory", "none")
    row = row_of(report, mon.pid)
    assert row["source"] == "device-nodes" and row["pci_bus_id"] == ",".join(bus(i) for i in range(8)), row


# rebind -----------------------------------------------------------------------------------------------------------

REBIND_AFTER_ENV_CHANGE = """
import json, os, warnings
import gpuaffinity
warnings.simplefilter("ignore")
rec = json.loads(os.environ["GPUAFFINITY_BOUND"])
if CHANGE == "other":  # a program that hands a record on to something it starts, or rewrites its environment
    os.environ["GPUAFFINITY_BOUND"] = json.dumps({**rec, "pci_bus_id": "BUS5", "bind_cpus": "FAR"})
else:  # a program that cleans its environment
    del os.environ["GPUAFFINITY_BOUND"]
os.sched_setaffinity(0, {NEAR, FAR})  # something widened it
try:
    got = gpuaffinity.rebind()
    print("ready", got.pci_bus_id, flush=True)
except gpuaffinity.BindError as e:
    print("ready", "BindError", str(e).replace(" ", "_"), flush=True)
import time; time.sleep(120)
"""


@pytest.mark.parametrize("change", ["other", "deleted"])
def test_rebind_reapplies_the_binding_the_process_was_started_with_not_its_changed_environment(machine, procs,
                                                                                            change):
    """docs/check.md: rebind reapplies "the one it was started with", which check reads in /proc/PID/environ.
    rebind read os.environ instead: a program that rewrote the variable was "rebound" where check then called it
    OFF-NODE, and one that deleted it got BindError "records no binding" while check showed its binding."""
    code = (REBIND_AFTER_ENV_CHANGE.replace("CHANGE", repr(change)).replace("BUS5", bus(5))
            .replace("NEAR", str(CPUS[0])).replace('"FAR"', f'"{CPUS[1]}"').replace("FAR", str(CPUS[1])))
    p, said = bound(procs, machine, 1, code, "--memory", "none")
    assert said == [bus(1)], said
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 0 and row["status"] == "ok" and row["affinity"] == [CPUS[0]], row


HOLDS_TWO = """
import os, time
fd = os.open(os.path.join(os.environ["GPUAFFINITY_DEV_ROOT"], "nvidia2"), os.O_RDONLY)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_record_naming_a_gpu_not_here_does_not_hide_a_process_computing_on_one_here(machine, procs):
    """A process holding GPU 2's node whose record names GPU 2 and a GPU this machine does not show was taken as
    another machine's worker: `--all` left it out (one note counts them), by pid it was NO-ACCESS.  What it holds
    here is judged, as for a record naming only GPUs it does not compute on."""
    record = json.dumps({**RECORD, "pci_bus_id": f"{bus(2)},0000:ff:00.0", "bind_cpus": str(CPUS[0])})
    p, _ = start(procs, machine, [sys.executable, "-c", HOLDS_TWO], None, GPUAFFINITY_BOUND=record)
    rc, report = check(machine, "--all", "--memory", "none")
    assert p.pid in {r["pid"] for r in report["rows"]}, report["notes"]
    row = row_of(report, p.pid)
    assert row["pci_bus_id"] == bus(2) and row["source"] == "device-nodes", row
    assert any("the binding was planned for GPU" in n for n in row["notes"]), row["notes"]


# is `ok` ever wrong -----------------------------------------------------------------------------------------------

def test_a_record_whose_cpus_are_off_its_gpus_node_never_makes_an_unbound_process_ok(machine, procs):
    """A row was judged against the CPUs its record names, never checked against the GPU's node as the check sees
    it.  `gpuaffinity bind` where the GPU shows no NUMA node (a container or VM view without it) records every CPU,
    no node, memory none: checked where the node is known, a process running on every CPU of both nodes was `ok`
    for GPU 0, whose node 0 is CPU 0.  A forged record did the same for any process."""
    record = json.dumps({**RECORD, "pci_bus_id": bus(0), "bind_cpus": f"{CPUS[0]},{CPUS[1]}", "numa_nodes": [],
                         "memory": "none"})
    p, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND=record)
    os.sched_setaffinity(p.pid, set(CPUS))
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 4 and row["status"] == "unbound" and row["bind_cpus"] == str(CPUS[0]), row
    assert any("not on its GPU's node 0" in n for n in row["notes"]), row["notes"]
    # a record within the node is judged by its own CPUs, as before
    record = json.dumps({**RECORD, "pci_bus_id": bus(0), "bind_cpus": str(CPUS[0])})
    q, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND=record)
    os.sched_setaffinity(q.pid, {CPUS[0]})
    rc, report = check(machine, q.pid)
    assert rc == 0 and row_of(report, q.pid)["status"] == "ok"


WIDENED = """base = "busy-dgx"
name = "widened"
[[running]]
pid = 4601
cpus = "0-63"
policy = "prefer:0"
contexts = { "0000:52:00.0" = 1024 }
binding = { v = 1, how = "in-process", pid = 4601, pci_bus_id = "0000:52:00.0", logical_id = 0, mode = "node", \
memory = "preferred", bind_cpus = "0-55,112-167", memory_nodes = [0], numa_nodes = [0], applied = true, failures = [] }
"""


def test_a_bound_process_widened_onto_part_of_another_node_is_unbound_not_off_node(tmp_path):
    """docs/check.md: OFF-NODE is "bound, but to CPUs entirely off its GPU's node", UNBOUND "may run on CPUs off
    its GPU's node: never bound, widened since" (fix: rebind).  A bound worker widened to its node's CPUs and 8 of
    the other node's (`taskset -p 0-63`) was OFF-NODE, "something re-pinned it elsewhere"."""
    from gpuaffinity.sim import simulated

    path = tmp_path / "widened.toml"
    path.write_text(WIDENED)
    with simulated(str(path)) as m:
        out = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", "4601", "4201", "--json"],
                             env={**m.env, "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True, text=True, timeout=120)
    rows = {r["pid"]: r for r in json.loads(out.stdout)["rows"]}
    row = rows[4601]
    assert row["status"] == "unbound" and row["affinity"] == list(range(64)), row
    assert row["problems"][0].startswith("runs on CPUs 0-63, not bound to its GPU's node 0"), row["problems"]
    assert "something moved it since" in row["problems"][0]


def test_with_no_gpu_inventory_a_binding_for_a_gpu_sysfs_does_not_show_is_not_ok(host8, procs, machine):
    """Where the check sees no GPU at all (no driver list, NVML down: `--fault nvmlInit=9`), a record naming a GPU
    that sysfs does not show either was judged as a GPU "with no NUMA node": `ok`, exit 0, "every one bound next
    to its GPU".  A GPU named in sysfs is still judged by its sysfs locality."""
    ghost = json.dumps({**RECORD, "pci_bus_id": "0000:ff:00.0", "bind_cpus": str(CPUS[0])})
    real = json.dumps({**RECORD, "pci_bus_id": bus(4), "bind_cpus": str(CPUS[1]), "numa_nodes": [1]})
    a, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND=ghost)
    b, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND=real)
    os.sched_setaffinity(b.pid, {CPUS[1]})
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--fault", "nvmlInit=9", "--",
                          sys.executable, "-m", "gpuaffinity", "check", str(a.pid), str(b.pid), "--json"],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert any("no GPU inventory" in n for n in report["notes"]), report["notes"]
    row = row_of(report, a.pid)
    assert out.returncode == 4 and row["status"] == "no-access", row
    assert "0000:ff:00.0" in row["problems"][0] and "not among the GPUs this check sees" in row["problems"][0]
    assert row_of(report, b.pid)["status"] == "ok" and row_of(report, b.pid)["numa_nodes"] == [1]


def test_nvidia_modeset_is_not_a_gpu(monkeypatch, tmp_path):
    """/dev/nvidia-modeset is the NVIDIA driver's character device 195:254 (nvidia-modprobe), as nvidiactl is
    195:255: a display server holding it was said to hold "/dev/nvidia254, which the driver's GPU list does not
    name", a GPU that does not exist.  The kernel's answer is faked here: this host has no NVIDIA driver."""
    from gpuaffinity import proc

    pid_dir = tmp_path / "4242"
    (pid_dir / "fd").mkdir(parents=True)
    for n, name in enumerate(["nvidia-modeset", "nvidiactl", "nvidia3"]):
        os.symlink(f"/dev/{name}", pid_dir / "fd" / str(n))
    devices = {"nvidia-modeset": 254, "nvidiactl": 255, "nvidia3": 3}
    real_stat = os.stat

    def fake_stat(path, *a, **k):
        target = os.readlink(path) if os.path.islink(path) else ""
        if target.startswith("/dev/nvidia"):
            return _chr(os.makedev(195, devices[target[5:]]))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", fake_stat)
    view = proc.View(4242, "/proc")
    proc._fds(str(pid_dir), view)
    assert view.gpu_minors == [3] and view.nvidia_fds == 3


class _chr:
    def __init__(self, rdev: int) -> None:
        self.st_mode = 0o20666
        self.st_rdev = rdev
