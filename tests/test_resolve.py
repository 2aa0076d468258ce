"""The resolver on simulated machines: strategies, chain, policies, warnings, errors, cache, threads, fork."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import child_env, run_json
from gpuaffinity.sim import read_counters

CHILD = str(Path(__file__).parent / "helpers" / "resolve_child.py")
RAY = "3,6,5,4,0,7,1,2"


def resolve_in(machine, combos, **extra):
    """Resolve in one child process on the machine: combos = [(cvd, order, options), ...]."""
    proc = subprocess.run([sys.executable, CHILD, json.dumps(combos)], env=child_env(machine, **extra),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nvml_indices(rec):
    return [d["nvml_index"] for d in rec["devices"]]


@pytest.mark.parametrize("policy", ["first", "verify", "strict"])
def test_ray_shuffle_on_the_dgx(sim_factory, policy):
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [(RAY, None, {"policy": policy})])
    assert nvml_indices(rec) == [3, 6, 5, 4, 0, 7, 1, 2]
    assert rec["warnings"] == []
    for d, gpu_index in zip(rec["devices"], [3, 6, 5, 4, 0, 7, 1, 2], strict=True):
        gpu = machine.topology.gpus[gpu_index]
        winner = "pci" if policy == "strict" else "cvd"  # strict asks everyone; the highest priority answers
        assert (d["uuid"], d["pci_bus_id"], d["strategy"], d["fallback"]) == (gpu.uuid, gpu.pci_bus_id, winner, False)
    pci_ran = rec["devices"][0]["verdicts"]["pci"][1]
    # ground truth in a child process costs an interpreter and cuInit: only strict pays for it when cvd is sure
    assert pci_ran == (policy == "strict")
    if policy == "strict":
        assert rec["devices"][0]["agreed"] == ["pci", "cvd"]


def test_uuid_prefix_and_mig_forms(sim_factory):
    machine = sim_factory("mig-a100")
    gpus = machine.topology.gpus
    mig = gpus[2].migs[1]
    path = f"MIG-{gpus[0].uuid}/{gpus[0].migs[0].gpu_instance}/{gpus[0].migs[0].compute_instance}"
    by_mig, by_path, by_prefix = resolve_in(machine, [(mig.uuid, None, {}), (path, None, {}),
                                                      (f"{gpus[3].uuid[:10]},{gpus[1].uuid}", None, {})])
    assert [(d["uuid"], d["mig_uuid"]) for d in by_mig["devices"]] == [(gpus[2].uuid, mig.uuid)]
    assert [(d["uuid"], d["mig_uuid"]) for d in by_path["devices"]] == [(gpus[0].uuid, gpus[0].migs[0].uuid)]
    assert nvml_indices(by_prefix) == [3, 1]
    assert by_mig["warnings"] == by_path["warnings"] == by_prefix["warnings"] == []


def test_mixed_models_need_the_driver(sim_factory):
    """FASTEST_FIRST on mixed models: cvd and torch cannot know the order; pci asks the driver in a child."""
    machine = sim_factory("mixed-4gpu")
    default, pci_order, uuids, no_child = resolve_in(machine, [
        ("0,1", None, {}),
        ("0,1", "PCI_BUS_ID", {}),
        (f"{machine.topology.gpus[2].uuid},{machine.topology.gpus[1].uuid}", None, {}),
        ("0,1", None, {"allow_subprocess": False}),
    ])
    assert nvml_indices(default) == [1, 3]  # the A100s come first
    assert default["devices"][0]["strategy"] == "pci" and default["warnings"] == []
    assert default["devices"][0]["verdicts"]["cvd"][2] == (
        "this machine mixes GPU models (NVIDIA A10, NVIDIA A100 80GB PCIe) and CUDA_DEVICE_ORDER is not "
        "PCI_BUS_ID, so CUDA's FASTEST_FIRST numbering cannot be known without asking CUDA; "
        "set CUDA_DEVICE_ORDER=PCI_BUS_ID or list GPUs by UUID")
    assert nvml_indices(pci_order) == [0, 1] and pci_order["devices"][0]["strategy"] == "cvd"
    assert nvml_indices(uuids) == [2, 1] and uuids["devices"][0]["strategy"] == "cvd"
    # nothing can answer: the identity guess, loudly, naming both variables
    assert [d["strategy"] for d in no_child["devices"]] == ["identity", "identity"]
    assert all(d["fallback"] for d in no_child["devices"])
    assert no_child["devices"][0]["verdicts"]["pci"][2] == (
        "CUDA is not initialised here and subprocesses are disabled (allow_subprocess=False or "
        "GPUAFFINITY_NO_SUBPROCESS); gpuaffinity will not cuInit in a process that may fork")
    categories = {c for c, _ in no_child["warnings"]}
    assert categories == {"FallbackWarning"}
    assert all("CUDA_VISIBLE_DEVICES='0,1'" in m and "CUDA_DEVICE_ORDER=None" in m for _, m in no_child["warnings"])


PROBE_MEANWHILE = r"""
import json, time
from gpuaffinity.resolvers import pci
ran = []
table = pci._forked_probe({"CUDA_VISIBLE_DEVICES": "2,0", "CUDA_DEVICE_ORDER": None}, 60,
                          lambda: ran.append(time.monotonic()))
print(json.dumps([len(table["devices"]), len(ran)]))
"""


def test_the_parent_does_its_own_work_while_the_forked_probe_waits_for_the_driver(sim_factory):
    """``resolve`` locates every GPU while the forked child runs cuInit (the locality does not depend on the
    answer): the work given to the probe runs once, in the parent, and the probe still answers."""
    assert run_json(sim_factory("dgx-h100"), PROBE_MEANWHILE) == [2, 1]


def test_cvd_says_which_nvml_gpu_each_entry_names(sim_factory):
    (rec,) = resolve_in(sim_factory("dgx-h100"), [(RAY, None, {"policy": "first"})])
    assert [d["verdicts"]["cvd"][2] for d in rec["devices"][:3]] == [
        "entry 0 is NVML 3", "entry 1 is NVML 6", "entry 2 is NVML 5"]


def test_the_drivers_answer_names_the_mig_instance_itself(sim_factory):
    """The pci strategy alone (cvd, torch disabled) still names the MIG instance: the driver's per-instance UUID."""
    machine = sim_factory("mig-a100")
    gpus = machine.topology.gpus
    mig = gpus[2].migs[1]
    (rec,) = resolve_in(machine, [(mig.uuid, None, {"disable": "cvd,torch"})])
    assert [(d["uuid"], d["mig_uuid"], d["strategy"]) for d in rec["devices"]] == [(gpus[2].uuid, mig.uuid, "pci")]


@pytest.mark.parametrize("call", ["cuDeviceGetPCIBusId", "cuDeviceGetUuid"])
def test_a_failed_driver_call_is_named_in_the_pci_abstention(sim_factory, call):
    (rec,) = resolve_in(sim_factory("dgx-h100"), [("0", None, {"policy": "strict", "disable": "cvd,torch"})],
                        GPUAFFINITY_SIM_FAULTS=f"{call}=999")
    assert rec["error"] == "UnresolvedError", rec
    assert f"pci: the CUDA driver's {call}(0) returned CUDA error 999" in rec["message"], rec


def needs_torch_helper():
    torch = pytest.importorskip("torch")
    if not hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip(f"torch {torch.__version__} has no _get_nvml_device_index")


def test_torch_helper_checks_the_answer_when_torch_is_imported(sim_factory):
    needs_torch_helper()
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    ints, uuids = resolve_in(machine, [(RAY, None, {}), (f"{gpus[5].uuid},{gpus[1].uuid[:12]}", None, {})],
                             T_IMPORT_TORCH="1")
    assert nvml_indices(ints) == [3, 6, 5, 4, 0, 7, 1, 2]
    assert all(d["agreed"] == ["torch", "cvd"] and d["strategy"] == "torch" for d in ints["devices"])
    assert nvml_indices(uuids) == [5, 1] and uuids["devices"][1]["agreed"] == ["torch", "cvd"]
    assert ints["warnings"] == uuids["warnings"] == []
    assert ints["devices"][0]["verdicts"]["torch"][2] == "torch.cuda._get_nvml_device_index(0) = 3"


def test_torch_naming_a_whole_gpu_in_mig_mode_is_set_aside_quietly(sim_factory):
    needs_torch_helper()
    machine = sim_factory("mig-a100")
    (rec,) = resolve_in(machine, [("0", "PCI_BUS_ID", {})], T_IMPORT_TORCH="1")
    verdict = rec["devices"][0]["verdicts"]["torch"]
    assert verdict[0] is None
    assert verdict[2] == "torch names NVML 0, a GPU in MIG mode, not the MIG instance that is the device"
    assert rec["devices"][0]["mig_uuid"] == machine.topology.gpus[0].migs[0].uuid
    assert rec["warnings"] == []  # quiet: the MIG instance is the answer, torch only could not name it


def test_torch_helper_errors_become_abstentions(sim_factory):
    needs_torch_helper()
    machine = sim_factory("mig-a100")
    (rec,) = resolve_in(machine, [(machine.topology.gpus[0].migs[1].uuid, None, {})], T_IMPORT_TORCH="1")
    verdict = rec["devices"][0]["verdicts"]["torch"]
    assert verdict[0] is None and verdict[2].startswith("torch raised")
    assert rec["devices"][0]["mig_uuid"] == machine.topology.gpus[0].migs[1].uuid
    # torch, ranked above cvd, could not answer: cvd's (right) answer is a fallback, and says so
    assert rec["devices"][0]["strategy"] == "cvd" and rec["devices"][0]["fallback"]
    [(category, message)] = rec["warnings"]
    assert category == "FallbackWarning" and "torch: torch raised" in message


def test_torch_without_the_helper_falls_back_loudly_and_answers_right(sim_factory):
    """torch 2.0 (tox env torch20): no _get_nvml_device_index; cvd answers, with a FallbackWarning."""
    torch = pytest.importorskip("torch")
    if hasattr(torch.cuda, "_get_nvml_device_index"):
        pytest.skip(f"torch {torch.__version__} has the helper (the torch20 tox env runs this)")
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [(RAY, None, {})], T_IMPORT_TORCH="1")
    assert nvml_indices(rec) == [3, 6, 5, 4, 0, 7, 1, 2]
    assert all(d["strategy"] == "cvd" and d["fallback"] for d in rec["devices"])
    assert {c for c, _ in rec["warnings"]} == {"FallbackWarning"}
    assert all(f"torch {torch.__version__} has no torch.cuda._get_nvml_device_index (it arrived in torch 2.1)" in m
               and "CUDA_VISIBLE_DEVICES" in m for _, m in rec["warnings"])


def test_torch_is_set_aside_quietly_where_the_variable_changed_before_its_helper_is_asked(sim_factory):
    """The variable changes between the resolution's reading and the torch strategy's turn: torch's helper would
    read the new value, so it is not asked; quietly, saying why, and the reading's answer stands."""
    needs_torch_helper()
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [("3", None, {})], T_IMPORT_TORCH="1", T_FLIP_IN_TORCH="5",
                        T_FLIP_AT="torch_helper.py:answer")
    [dev] = rec["devices"]
    assert dev["verdicts"]["torch"] == [None, True, "CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER changed while "
                                                    "resolving: torch's helper would read other values than this "
                                                    "resolution"], dev
    assert (dev["nvml_index"], dev["strategy"], dev["fallback"]) == (3, "cvd", False), dev
    assert rec["warnings"] == [], rec


def test_a_torch_without_the_helper_is_named_with_its_version(sim_factory):
    """torch 2.0 without _get_nvml_device_index, modelled on the installed torch by taking the helper away (the
    test above runs the real torch 2.0 in the torch20 tox env): the torch strategy abstains naming the torch
    version it found, and cvd's answer is a fallback that says so."""
    torch = pytest.importorskip("torch")
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [(RAY, None, {})], T_IMPORT_TORCH="1", T_TORCH_WITHOUT_HELPER="1")
    assert nvml_indices(rec) == [3, 6, 5, 4, 0, 7, 1, 2]
    why = f"torch {torch.__version__} has no torch.cuda._get_nvml_device_index (it arrived in torch 2.1)"
    assert all(d["strategy"] == "cvd" and d["fallback"] and d["verdicts"]["torch"] == [None, True, why]
               for d in rec["devices"]), rec["devices"][0]
    assert {c for c, _ in rec["warnings"]} == {"FallbackWarning"} and all(why in m for _, m in rec["warnings"])


def test_errors_a_user_can_act_on(sim_factory):
    machine = sim_factory("dgx-h100")
    dup, bad_order, empty = resolve_in(machine, [("0,0", None, {}), ("0", "pci_bus_id", {}), ("", None, {})])
    assert dup["error"] == "InvalidVisibleDevicesError" and "named twice" in dup["message"]
    assert bad_order["error"] == "InvalidVisibleDevicesError" and "'pci_bus_id'" in bad_order["message"]
    assert empty["devices"] == []
    code = ("import gpuaffinity\ntry:\n    gpuaffinity.resolve(2)\nexcept gpuaffinity.DeviceNotVisibleError as e:\n"
            "    import json; print(json.dumps([str(e), isinstance(e, IndexError)]))")
    message, is_index_error = run_json(machine, code, cvd="5,1")
    assert message == ("CUDA device 2 is not visible: this process sees 2 device(s) (0-1) with "
                       "CUDA_VISIBLE_DEVICES '5,1'")
    assert is_index_error


@pytest.mark.parametrize(("bad", "kind"), [(1.0, "float"), (True, "bool"), (None, "NoneType"),
                                           (b"GPU-8932f937", "bytes")])
def test_a_logical_id_of_another_type_is_refused_by_name(bad, kind):
    """Refused before anything is resolved: True is no device 1, nor bytes a selector."""
    import gpuaffinity

    with pytest.raises(TypeError, match=rf"^logical_id must be an int or a selector string, not {kind}$"):
        gpuaffinity.resolve(bad)


def gpuaffinity_cli(machine, *args, **extra):
    return subprocess.run([sys.executable, "-m", "gpuaffinity", *args], env=child_env(machine, **extra),
                          capture_output=True, text=True, timeout=300)


def test_cli_resolve_json_and_table(sim_factory):
    machine = sim_factory("dgx-h100")
    out = gpuaffinity_cli(machine, "resolve", "--json", cvd=RAY)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["nvml_index"] for r in rows] == [3, 6, 5, 4, 0, 7, 1, 2]
    first = rows[0]
    assert set(first) >= {"logical_id", "nvml_index", "uuid", "pci_bus_id", "mig_uuid", "strategy", "agreed",
                          "disagreed", "fallback", "numa_nodes", "cpus"}
    assert first["numa_nodes"] == [0] and first["cpus"] == "0-55,112-167"
    assert rows[1]["numa_nodes"] == [1] and rows[1]["cpus"] == "56-111,168-223"
    one = gpuaffinity_cli(machine, "resolve", "4", cvd=RAY)
    assert one.returncode == 0
    assert one.stdout.splitlines()[1].split()[:3] == ["4", "0", machine.topology.gpus[0].pci_bus_id]


@pytest.mark.parametrize(("args", "env", "status", "text"), [
    (["resolve", "9"], {"cvd": "1,2"}, 1, "CUDA device 9 is not visible: this process sees 2 device(s)"),
    (["resolve", "x"], {}, 2, "'x' is not a device: give a logical CUDA id (0)"),
    (["resolve"], {"cvd": "1,1"}, 1, "refuses CUDA_VISIBLE_DEVICES='1,1'"),
    (["resolve", "--policy", "bogus"], {}, 2, "invalid choice"),
    (["resolve"], {"GPUAFFINITY_POLICY": "bogus"}, 1, "unknown GPUAFFINITY_POLICY 'bogus'"),
    (["resolve"], {"GPUAFFINITY_SIM_FAULTS": "nvmlInit=9", "GPUAFFINITY_INVENTORY": "nvml"}, 1,
     "NVML could not start"),
    (["resolve"], {"GPUAFFINITY_SIM_FAULTS": "nvmlInit=9", "GPUAFFINITY_PROCFS_ROOT": "/nonexistent"}, 1,
     "NVML could not start"),
])
def test_cli_errors_are_one_line(sim_factory, args, env, status, text):
    machine = sim_factory("dgx-h100")
    out = gpuaffinity_cli(machine, *args, **env)
    assert out.returncode == status, out.stderr
    assert text in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_no_driver_at_all_is_one_line():
    import ctypes.util
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real NVML is installed here")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve"], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("gpuaffinity: no NVIDIA driver here: libnvidia-ml.so.1 was not found")
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_probe_by_hand_without_libcuda_says_it_cannot_be_loaded():
    """`python -m gpuaffinity.resolvers.pci` where no libcuda is: rc -1, why, and no devices."""
    import ctypes.util
    if ctypes.util.find_library("cuda"):
        pytest.skip("a real libcuda is installed here")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH" and not k.startswith("GPUAFFINITY_SIM")}
    out = subprocess.run([sys.executable, "-m", "gpuaffinity.resolvers.pci"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"rc", "error", "devices"}, answer
    assert (answer["rc"], answer["devices"]) == (-1, []), answer
    assert answer["error"].startswith("libcuda.so.1 not loadable: "), answer


def test_doctor_explains(sim_factory):
    machine = sim_factory("mixed-4gpu")
    out = gpuaffinity_cli(machine, "doctor", cvd="1,0")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("Environment", "CUDA_VISIBLE_DEVICES         '1,0'",
                   "GPUs this process can use (NVML order = PCI order): 4",
                   "listed from the driver's /proc files (4 GPUs), checked against the device nodes",
                   "Strategies (priority order; equal priorities by name; policy verify)",
                   "Devices: this process sees 2",
                   "cuda 0 -> nvml 3", "cuda 1 -> nvml 1", "in a child process", "mixes GPU models",
                   "torch is not imported", "No warnings."):
        assert needle in text, needle
    fallback = gpuaffinity_cli(machine, "doctor", "--no-subprocess", cvd="1,0")
    assert "Warnings and errors" in fallback.stdout and "guessing NVML index 0" in fallback.stdout


COUNT = r"""
import ctypes, json, threading, gpuaffinity
first = gpuaffinity.resolve_all()
again = gpuaffinity.resolve_all()
nv = ctypes.CDLL("libnvidia-ml.so.1")
counts = [nv.gpuaffinitySimCallCount(b"nvmlInit_v2"), nv.gpuaffinitySimCallCount(b"nvmlShutdown")]
import os
os.environ["CUDA_VISIBLE_DEVICES"] = "2"
changed = gpuaffinity.resolve_all()
counts.append(nv.gpuaffinitySimCallCount(b"nvmlInit_v2"))
del os.environ["CUDA_VISIBLE_DEVICES"]
gpuaffinity.clear_cache()
results = []
def work():
    results.append([d.uuid for d in gpuaffinity.resolve_all()])
threads = [threading.Thread(target=work) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
counts.append(nv.gpuaffinitySimCallCount(b"nvmlInit_v2"))
print(json.dumps({"same_object": all(a is b for a, b in zip(first, again)), "counts": counts,
                  "changed": [d.nvml_index for d in changed], "threads": len({tuple(r) for r in results}),
                  "n": len(results), "warm": gpuaffinity.resolve(0) is gpuaffinity.resolve(0)}))
"""


def test_cache_threads_and_balanced_nvml(sim_factory):
    out = run_json(sim_factory("dgx-h100"), COUNT, GPUAFFINITY_INVENTORY="nvml")
    assert out["same_object"] and out["warm"]
    assert out["counts"][:2] == [1, 1]  # one init, one shutdown for two calls
    assert out["changed"] == [2] and out["counts"][2] == 2  # a new CUDA_VISIBLE_DEVICES resolves afresh
    assert out["n"] == 16 and out["threads"] == 1 and out["counts"][3] == 3  # 16 threads, one resolution


FORK = r"""
import json, os, gpuaffinity
devs = gpuaffinity.resolve_all()
print(json.dumps({"pid": os.getpid(), "devs": [d.nvml_index for d in devs],
                  "where": [d.verdicts[0].result.detail for d in devs]}))
"""


THREAD = "import threading; threading.Thread(target=__import__('time').sleep, args=(30,), daemon=True).start()\n"


@pytest.mark.parametrize("shape", ["single-threaded", "threaded", "cuda-up", "cuda-up-without-ctypes"])
def test_never_initialises_cuda_in_a_process_that_may_fork(sim_factory, tmp_path, shape):
    """A process that initialised CUDA is answered in itself; any other asks a child. (cuda-up-without-ctypes: a
    program whose C extension initialised CUDA, modelled by dropping the ctypes module it used from sys.modules:
    libcuda is mapped, so the driver is asked, though ctypes is not loaded.)"""
    machine = sim_factory("mixed-4gpu")
    extra = {"GPUAFFINITY_SIM_COUNTERS": str(tmp_path)}
    cuda_up = shape.startswith("cuda-up")
    if cuda_up:
        extra["T_CUINIT"] = "1"
        code = "import ctypes; ctypes.CDLL('libcuda.so.1').cuInit(0)\n"
        if shape == "cuda-up-without-ctypes":
            code += "import sys\nfor m in [m for m in sys.modules if m == 'ctypes' or m.startswith('ctypes.')]:\n" \
                    "    del sys.modules[m]\n"
        code += FORK
    else:
        code = (THREAD if shape == "threaded" else "") + FORK
    out = run_json(machine, code, cvd="0,1", **extra)
    assert out["devs"] == [1, 3]
    cuda = {pid: c for (pid, lib), c in read_counters(tmp_path).items() if lib == "cuda"}
    if cuda_up:
        assert list(cuda) == [out["pid"]]  # answered in-process, no child
        assert cuda[out["pid"]]["cuInit"] == 1
        assert all("in this process" in w for w in out["where"])
    else:
        assert cuda.get(out["pid"], {}).get("cuInit", 0) == 0  # the resolving process never called cuInit
        children = [c for pid, c in cuda.items() if pid != out["pid"]]
        assert [c["cuInit"] for c in children] == [1]  # one child probe served both devices
        # one thread: a fork of this process, no interpreter to start; another thread might hold a lock the
        # fork would copy, so then a new isolated interpreter
        how = "(a new isolated interpreter)" if shape == "threaded" else "(a fork of this one)"
        assert all(f"in a child process {how}" in w for w in out["where"])


def test_a_forked_probe_that_hangs_is_killed_and_says_so(monkeypatch):
    from gpuaffinity.resolvers import pci

    monkeypatch.setattr(pci, "query_driver", lambda init: __import__("time").sleep(60))
    t0 = time.monotonic()
    table = pci._forked_probe({"CUDA_VISIBLE_DEVICES": "0"}, 0.5)
    assert time.monotonic() - t0 < 10
    assert table == {"rc": None, "devices": [], "error": "the CUDA probe took over 0.5 s (cuInit did not return in "
                     "time; nvidia-smi shows whether the driver is healthy)"}


def test_a_forked_probe_that_dies_says_so(monkeypatch):
    from gpuaffinity.resolvers import pci

    monkeypatch.setattr(pci, "query_driver", lambda init: 1 / 0)
    table = pci._forked_probe({}, 30)
    assert table["error"] == "the CUDA probe (a forked copy) died before it answered: exit status 1"


def test_a_child_that_closes_the_pipe_and_lingers_is_killed_at_the_deadline(monkeypatch):
    """EOF without an answer, the child still alive (stuck in a driver's teardown, say): the wait ends at the
    deadline, not when the child pleases."""
    from gpuaffinity.resolvers import pci

    def linger(init):
        os.closerange(3, 4096)
        time.sleep(30)

    monkeypatch.setattr(pci, "query_driver", linger)
    t0 = time.monotonic()
    table = pci._forked_probe({}, 1.0)
    assert time.monotonic() - t0 < 10
    assert table["error"] == "the CUDA probe (a forked copy) died before it answered: killed by signal 9"


TICKS = r"""
import json, os, signal, time
from gpuaffinity.resolvers import pci
pci.query_driver = lambda init: time.sleep(0.05) or {"rc": 0, "devices": []}
class Tick(Exception):
    pass
def tick(*_):
    raise Tick
fds = len(os.listdir("/proc/self/fd"))
signal.signal(signal.SIGALRM, tick)
cut = 0
for _ in range(20):
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        pci._forked_probe({}, 5)
    except Tick:
        cut += 1
    while True:  # a tick may land here too
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            time.sleep(0.001)
            break
        except Tick:
            pass
signal.signal(signal.SIGALRM, signal.SIG_IGN)
assert pci._forked_probe({}, 5) == {"rc": 0, "devices": []}  # this probe also finishes what others left
time.sleep(0.01)
try:
    os.waitpid(-1, os.WNOHANG)
    left = True
except ChildProcessError:
    left = False
print(json.dumps({"cut": cut, "fds": len(os.listdir("/proc/self/fd")) - fds, "children_left": left}))
"""


def test_a_signal_handler_that_raises_cannot_leave_the_child_running():
    """A handler that raises lands anywhere, in the fork and the clean-up too: those run with signals held
    (once, 5 children of 5 were left running).  One raising again as the clean-up begins can still cut it short;
    the next probe kills, reaps and closes what was left, so after the storm nothing remains."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    proc = subprocess.run([sys.executable, "-c", TICKS], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cut"] > 0  # the handler did cut probes short
    assert (out["fds"], out["children_left"]) == (0, False)


HOSTILE_PARENT = r"""
import ctypes, json, os, signal, sys
shape = sys.argv[1]
if shape == "sigchld-ignored":  # children reaped by the kernel: waitpid finds none
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
if shape == "fd-above-1023":  # select() cannot watch a descriptor this high; poll can
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
if shape == "fork-refused":
    def refuse():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    os.fork = refuse
import gpuaffinity
def answer():
    devs = gpuaffinity.resolve_all(policy="strict")
    return {"devs": [d.nvml_index for d in devs],
            "where": [getattr(v.result, "detail", None) or repr(v.result) for d in devs for v in d.verdicts]}
if shape == "forked-worker-of-cuda-parent":
    # the parent initialised CUDA, then forked a worker: in the worker CUDA is mapped but not usable, and a
    # fork of the worker could not initialise it either
    assert ctypes.CDLL("libcuda.so.1").cuInit(0) == 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, json.dumps(answer()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 100000)
    os.waitpid(pid, 0)
    print(data.decode())
else:
    print(json.dumps(answer()))
"""


@pytest.mark.parametrize("shape", ["sigchld-ignored", "fd-above-1023", "fork-refused",
                                   "forked-worker-of-cuda-parent"])
def test_the_probe_answers_in_a_hostile_parent(sim_factory, shape):
    """Each shape once made the strict policy refuse (the probe raised or its cuInit failed) where the driver
    answers: now the driver's answer, from the child that can give it."""
    out = run_json(sim_factory("mixed-4gpu"), HOSTILE_PARENT, shape, cvd="0,1")
    assert out["devs"] == [1, 3]
    pci = [w for w in out["where"] if "cuDeviceGetPCIBusId" in w]
    assert len(pci) == 2
    how = "(a fork of this one)" if shape in ("sigchld-ignored", "fd-above-1023") else "(a new isolated interpreter)"
    assert all(how in w for w in pci), pci


def test_the_command_line_asks_locality_while_the_probe_runs(sim_factory, tmp_path):
    """strict through the CLI: the same rows as the default policy's, NVML asked in the resolving process, and
    the CUDA driver only in its child."""
    machine = sim_factory("dgx-h100")
    rows = {}
    for policy in ("verify", "strict"):
        counters = tmp_path / policy
        counters.mkdir()
        env = child_env(machine, "3,6,5,4,0,7,1,2", GPUAFFINITY_SIM_COUNTERS=str(counters))
        out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--policy", policy, "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows[policy] = [(r["uuid"], r["numa_nodes"], r["cpus"]) for r in json.loads(out.stdout)]
        calls = read_counters(counters)
        if policy == "strict":
            cuda_pids = {pid for pid, lib in calls if lib == "cuda"}
            nvml_pids = {pid for pid, lib in calls if lib == "nvml"}
            assert len(cuda_pids) == 1 and nvml_pids and not cuda_pids & nvml_pids
            assert all(c.get("cuInit", 0) == 0 for (pid, lib), c in calls.items() if pid in nvml_pids)
    assert rows["strict"] == rows["verify"] and len(rows["strict"]) == 8


INVENTORIES = r"""
import json, os
from gpuaffinity.inventory import ProcListing, read_inventory, read_inventory_nvml
a, listing, used = read_inventory_nvml(), ProcListing.read(os.environ), read_inventory()
rows = lambda gpus: [[g.nvml_index, g.uuid, g.pci_bus_id, g.name] for g in gpus]
print(json.dumps([rows(a.gpus), rows(listing.gpus), listing.why_not_nvml_equal(os.environ), used.source]))
"""


@pytest.mark.parametrize("preset", ["dgx-h100", "vm-4gpu", "mixed-4gpu", "h200x4-vm", "mig-a100"])
def test_driver_files_and_nvml_list_the_same_gpus(sim_factory, preset):
    machine = sim_factory(preset)
    nvml, procfs, why, used = run_json(machine, INVENTORIES)
    assert procfs == nvml  # the same GPUs, order, UUIDs, buses and models
    if preset == "mig-a100":
        assert (why, used) == ("MIG instances exist, and only NVML knows their UUIDs", "nvml")
    else:
        assert (why, used) == (None, "procfs")


def test_resolving_from_the_driver_files_needs_no_nvml(sim_factory, tmp_path):
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [(RAY, None, {})], GPUAFFINITY_SIM_COUNTERS=str(tmp_path),
                        GPUAFFINITY_SIM_FAULTS="nvmlInit=9")
    assert nvml_indices(rec) == [3, 6, 5, 4, 0, 7, 1, 2] and rec["warnings"] == []
    nvml_calls = [c for (_pid, lib), c in read_counters(tmp_path).items() if lib == "nvml"]
    assert nvml_calls == []  # not one NVML call, so a broken NVML does not matter


SELECT = r"""
import json, sys, gpuaffinity
out = []
for sel in sys.argv[1:]:
    try:
        d = gpuaffinity.resolve(sel)
        out.append([d.logical_id, d.nvml_index, d.mig_uuid, d.strategy])
    except (gpuaffinity.GpuAffinityError, ValueError) as e:
        out.append(type(e).__name__)
print(json.dumps(out))
"""


def test_physical_selectors(sim_factory):
    """A worker told its GPU another way (Ray's NOSET mode, a launcher) names it by UUID or PCI bus id."""
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    out = run_json(machine, SELECT, gpus[6].uuid, gpus[6].uuid[:10].upper(), gpus[6].pci_bus_id,
                   gpus[6].pci_bus_id[5:], gpus[1].pci_bus_id, "3", "GPU-", "nonsense", "0000:ff:00.0", cvd="6,1")
    assert out[:6] == [[0, 6, None, "selector"]] * 4 + [[1, 1, None, "selector"], "DeviceNotVisibleError"]
    assert out[6:] == ["ValueError", "ValueError", "DeviceNotVisibleError"]  # a bare tag, junk, no such bus
    hidden = run_json(machine, SELECT, gpus[4].uuid, cvd="6,1")
    assert hidden == [[-1, 4, None, "selector"]]  # a GPU this process does not see: logical id -1
    mig = sim_factory("mig-a100")
    m = mig.topology.gpus[2].migs[1]
    assert run_json(mig, SELECT, m.uuid) == [[-1, 2, m.uuid, "selector"]]


WHERE = r"""
import json, os, warnings, gpuaffinity
def where(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gpuaffinity.clear_cache()
        fn()
    return [[os.path.basename(x.filename), x.lineno] for x in w][:1]
bus = gpuaffinity.resolve(1).pci_bus_id
print(json.dumps([where(lambda: gpuaffinity.resolve_all()),  # line 10
                  where(lambda: gpuaffinity.resolve(0)),  # line 11
                  where(lambda: gpuaffinity.resolve(bus))]))  # line 12
"""


def test_warnings_point_at_the_callers_line(sim_factory):
    """A FallbackWarning names the user's own line, for resolve_all, resolve(int) and resolve(selector)."""
    got = run_json(sim_factory("mixed-4gpu"), WHERE, cvd="0,1", GPUAFFINITY_NO_SUBPROCESS="1")
    assert got == [[["<string>", 10]], [["<string>", 11]], [["<string>", 12]]]


ENV_SHORTCUT = r"""
import json, os
from gpuaffinity.core.settings import ENV_VARS, Settings, make_key
os.environ["CUDA_VISIBLE_DEVICES"] = "3,\u00e9,GPU-\udcff"  # a surrogate-escaped byte, as os.environ holds it
os.environ["GPUAFFINITY_POLICY"] = "first"
os.environ.pop("CUDA_DEVICE_ORDER", None)
st = Settings.from_key(make_key(None, None, True))
fields = [st.cvd, st.device_order, st.policy_env, st.disable_env, st.no_subprocess_env, st.procfs_root, st.dev_root,
          st.sysfs_root, st.inventory_source]
print(json.dumps([fields == [os.environ.get(v) for v in ENV_VARS], len(ENV_VARS) == len(fields)]))
"""


def test_the_environment_shortcut_reads_what_os_environ_holds(sim_factory):
    """The warm path reads os.environ's encoded mapping; the snapshot it makes equals the public API's view."""
    assert run_json(sim_factory("dgx-h100"), ENV_SHORTCUT) == [True, True]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1.0, "5", True, None, 86400.5, 2_200_000,
                                 10 ** 400])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_up_front(bad):
    """inf once reached poll() as an OverflowError, nan as a ValueError, and 2,200,000 s (past poll()'s range)
    made the probe give up, from deep inside it."""
    from gpuaffinity.api import run_resolution

    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds above 0 and at most 86400 \(a day\), "
                       r"not "):
        run_resolution(timeout=bad)


def test_the_longest_timeout_still_gets_the_drivers_answer(sim_factory):
    code = ("import json\nfrom gpuaffinity.api import run_resolution\n"
            "res = run_resolution(policy='strict', timeout=86400)\n"
            "print(json.dumps([d.nvml_index for d in res.devices]))")
    assert run_json(sim_factory("mixed-4gpu"), code, cvd="0,1") == [1, 3]


def test_the_timeout_given_is_the_cuda_probe_s_limit(sim_factory):
    """A microsecond is shorter than any probe: pci gives up and says after how long, where the default two
    minutes would have let it answer (mixed models: only the driver can tell CUDA's order)."""
    code = ("import json, warnings\nfrom gpuaffinity.api import run_resolution\nwarnings.simplefilter('ignore')\n"
            "res = run_resolution(policy='verify', timeout=1e-6, strict_errors=False)\n"
            "print(json.dumps([str(w[1]) for w in res.warnings]))")
    warned = run_json(sim_factory("mixed-4gpu"), code, cvd="0,1")
    assert any("the CUDA probe took over 1e-06 s (cuInit did not return in time" in w for w in warned), warned


UNRESOLVED = r"""
import json, warnings, gpuaffinity
out = {}
for policy in ("verify", "strict"):
    gpuaffinity.clear_cache()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            d = gpuaffinity.resolve(1, policy=policy)
            out[policy] = {"nvml": d.nvml_index, "by": d.strategy, "fallback": d.fallback,
                           "warned": [type(x.message).__name__ for x in w]}
        except gpuaffinity.UnresolvedError as e:
            out[policy] = {"error": str(e), "status": e.exit_status, "guess": e.device.nvml_index,
                           "verdicts": [v.strategy for v in e.device.verdicts]}
print(json.dumps(out))
"""


def test_strict_does_not_guess(sim_factory):
    """Mixed models under FASTEST_FIRST with integers and no child allowed: no strategy can answer.  verify
    guesses NVML index = CUDA index, loudly; strict refuses, with the guess and every verdict on the error."""
    machine = sim_factory("mixed-4gpu")
    out = run_json(machine, UNRESOLVED, cvd="0,1", GPUAFFINITY_NO_SUBPROCESS="1")
    assert out["verify"] == {"nvml": 1, "by": "identity", "fallback": True,
                             "warned": ["FallbackWarning", "FallbackWarning"]}  # one a device
    strict = out["strict"]
    assert strict["status"] == 3 and strict["guess"] == 0 and set(strict["verdicts"]) >= {"cvd", "pci"}
    assert strict["error"].startswith("gpuaffinity: no strategy could resolve CUDA device 0 ")
    assert "the strict policy does not guess (use --policy verify to take NVML index 0 with a warning)." in \
        strict["error"]
    cli = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--policy", "strict", "--no-subprocess"],
                         env=child_env(machine, "0,1"), capture_output=True, text=True, timeout=120)
    assert cli.returncode == 3 and cli.stdout == ""
    assert len(cli.stderr.splitlines()) == 1 and "the strict policy does not guess" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_a_probe_process_that_cannot_start_says_what_to_free(monkeypatch):
    """No fork (other threads) and the interpreter cannot be started (here: it does not exist; in the field, no
    process or descriptor left): one line saying so, and what to free."""
    from gpuaffinity.core.model import Inventory
    from gpuaffinity.core.strategy import ResolveContext
    from gpuaffinity.resolvers import pci

    monkeypatch.setattr(pci, "_single_threaded", lambda: False)
    monkeypatch.setattr(pci, "child_command", lambda: ["/nonexistent/python3", "-I", "-c", "pass"])
    ctx = ResolveContext(Inventory(()), "0", None, 1, {"allow_subprocess": True, "timeout": 5})
    table = pci.PciStrategy()._probe_child(ctx)
    assert table["devices"] == [] and table["error"].startswith("the CUDA probe process could not start (")
    assert table["error"].endswith("); free processes or file descriptors (ulimit -u, ulimit -n) and try again")


CVD_PAST_ITS_LIST = r"""
import json
from gpuaffinity.core.cvd import read_cvd
from gpuaffinity.core.strategy import ResolveContext
from gpuaffinity.inventory import read_inventory
from gpuaffinity.resolvers.cvd import CvdStrategy
inv = read_inventory()
grammar = read_cvd("3,1", inv.gpus)
# the driver counted 3 devices where the grammar reads 2 (the chain then takes the driver's count as visible)
ctx = ResolveContext(inv, "3,1", None, 3, grammar=grammar)
got = [CvdStrategy().answer(ctx, i) for i in range(3)]
print(json.dumps([[type(a).__name__, getattr(a, "uuid", None), getattr(a, "reason", None)] for a in got]))
"""


def test_the_cvd_strategy_abstains_on_a_device_past_its_reading(sim_factory):
    """Where the driver counts more devices than the grammar reads (an unsure reading the driver corrects), the
    cvd strategy answers the devices it read and abstains on the rest, saying how many it read: it never indexes
    past its list or abstains without a reason."""
    machine = sim_factory("dgx-h100")
    uuids = [g.uuid for g in machine.topology.gpus]
    out = run_json(machine, CVD_PAST_ITS_LIST)
    assert out == [["Answer", uuids[3], None], ["Answer", uuids[1], None],
                   ["Abstain", None, "CUDA_VISIBLE_DEVICES shows 2 devices"]], out


def test_torch_is_set_aside_quietly_where_the_variable_changes_while_its_helper_runs(sim_factory):
    """Another thread sets CUDA_VISIBLE_DEVICES while torch's helper maps device 0: torch's answer may be for
    either value, so the torch strategy abstains, quietly and saying why, and the answer is the reading of the
    value the resolution started with."""
    needs_torch_helper()
    machine = sim_factory("dgx-h100")
    (rec,) = resolve_in(machine, [("3", None, {})], T_IMPORT_TORCH="1", T_FLIP_IN_TORCH="5")
    [dev] = rec["devices"]
    assert dev["verdicts"]["torch"] == [None, True, "CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER changed while "
                                                    "torch's helper ran"], dev
    assert (dev["nvml_index"], dev["strategy"], dev["fallback"]) == (3, "cvd", False), dev
    assert rec["warnings"] == [], rec


SELECTORS = r"""
import json, sys, warnings, gpuaffinity
warnings.simplefilter("ignore")
print(json.dumps([[gpuaffinity.resolve(b).logical_id, gpuaffinity.resolve(b).strategy] for b in sys.argv[1:]]))
"""


def test_a_selector_asks_the_driver_for_its_logical_id_where_only_the_driver_knows(sim_factory):
    """A GPU named by bus id on mixed-4gpu under FASTEST_FIRST (CUDA_VISIBLE_DEVICES=0,1: the two A100s): its
    logical id is CUDA's numbering, which only the driver knows, so the selector asks it (in a child); an A10 is
    no device of this process (-1), however NVML numbers it."""
    machine = sim_factory("mixed-4gpu")
    buses = [g.pci_bus_id for g in machine.topology.gpus]  # A10, A100, A10, A100 in PCI order
    assert run_json(machine, SELECTORS, *buses, cvd="0,1") == [[-1, "selector"], [0, "selector"], [-1, "selector"],
                                                               [1, "selector"]]
