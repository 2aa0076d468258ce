"""Safe by construction: no foreign code, no planted libraries, one clear line for every bad input.

Each test reproduces one reported hole or traceback and asserts it is closed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, child_env, run_json

BIN = Path(sys.executable).parent
GPUAFFINITY = str(BIN / "gpuaffinity")  # the console script, as a user runs it (not python -m, which adds the cwd)
HOSTILE = {
    "json.py": "open({marker!r}, 'a').write('json imported\\n')\nraise SystemExit(99)\n",
    "ctypes.py": "open({marker!r}, 'a').write('ctypes imported\\n')\nraise SystemExit(99)\n",
    "cuda/__init__.py": "open({marker!r}, 'a').write('cuda imported\\n')\nraise SystemExit(99)\n",
    "pynvml.py": "open({marker!r}, 'a').write('pynvml imported\\n')\nraise SystemExit(99)\n",
    "gpuaffinity/__init__.py": "open({marker!r}, 'a').write('gpuaffinity imported\\n')\nraise SystemExit(99)\n",
}


def hostile_dir(tmp_path: Path) -> tuple[Path, Path]:
    where, marker = tmp_path / "hostile", tmp_path / "marker"
    for rel, text in HOSTILE.items():
        p = where / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text.format(marker=str(marker)))
    return where, marker


def test_no_child_of_ours_imports_from_the_callers_directory(sim_factory, tmp_path):
    where, marker = hostile_dir(tmp_path)
    machine = sim_factory("mixed-4gpu")  # FASTEST_FIRST on mixed models: only the pci child can answer
    env = child_env(machine, "1,0", PYTHONPATH="")
    for args in (["resolve", "--policy", "strict"], ["resolve"], ["doctor"], ["bind", "0", "--dry-run"]):
        out = subprocess.run([GPUAFFINITY, *args], cwd=where, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (args, out.stderr)
        assert "in a child process" in subprocess.run([GPUAFFINITY, "doctor"], cwd=where, env=env,
                                                      capture_output=True, text=True).stdout
    # the launcher's bound command: gpuaffinity bind in an isolated interpreter, then the user's command
    code = ("import subprocess, sys, gpuaffinity.launch as l; "
            "sys.exit(subprocess.run(l.bound_command(0, ['true'])).returncode)")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=where, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # a process with another thread asks through a new interpreter, not a fork: that one is isolated too
    code = ("import threading, time, json, gpuaffinity\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "d = gpuaffinity.resolve(0, policy='strict')\n"
            "print(d.verdicts[0].result.detail)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=where, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "in a child process (a new isolated interpreter)" in out.stdout
    assert not marker.exists(), marker.read_text()


def build_in(cache: Path, **extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GPUAFFINITY_SIM_CACHE=str(cache), **extra)
    return subprocess.run([GPUAFFINITY, "sim", "run", "dgx-h100", "--", sys.executable, "-c",
                           "import os; print(os.environ['LD_LIBRARY_PATH'].split(':')[0])"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_compile_cache_refuses_what_another_user_could_have_planted(tmp_path):
    fresh = build_in(tmp_path / "cache")
    assert fresh.returncode == 0, fresh.stderr
    libdir = Path(fresh.stdout.strip())
    assert (os.stat(tmp_path / "cache").st_mode & 0o777) == 0o700  # created for this user only
    assert (os.stat(libdir).st_mode & 0o077) == 0
    # group- or world-writable: anyone could have replaced the libraries
    os.chmod(libdir / "libcuda.so.1", 0o777)
    bad = build_in(tmp_path / "cache")
    assert bad.returncode == 1 and "writable by group or others" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    os.chmod(libdir / "libcuda.so.1", 0o755)
    # owned by someone else (root can chown; elsewhere the check is the same code path)
    if os.geteuid() == 0:
        os.chown(libdir, 65534, 65534)
        bad = build_in(tmp_path / "cache")
        assert bad.returncode == 1 and "belongs to uid 65534, not to you" in bad.stderr
        os.chown(libdir, 0, 0)
    # a symbolic link planted where the folder would be
    planted = tmp_path / "planted"
    shutil.copytree(libdir, planted)
    shutil.rmtree(libdir)
    libdir.symlink_to(planted)
    bad = build_in(tmp_path / "cache")
    assert bad.returncode == 1 and "is a symbolic link" in bad.stderr
    # the cache root itself: a shared folder another user made
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    bad = build_in(shared)
    assert bad.returncode == 1 and "writable by group or others" in bad.stderr


def test_a_relative_cache_is_never_a_relative_library_path(tmp_path):
    out = subprocess.run([GPUAFFINITY, "sim", "run", "dgx-h100", "--", sys.executable, "-c",
                          "import os; print(os.environ['LD_LIBRARY_PATH'].split(':')[0])"],
                         env=dict(os.environ, GPUAFFINITY_SIM_CACHE="relcache"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(tmp_path / "relcache") + "/")


def test_a_control_character_in_a_topology_string_is_refused(tmp_path):
    base = (ROOT / "src" / "gpuaffinity" / "sim" / "presets" / "vm-4gpu.toml").read_text()
    files = {
        "gpu-name": base.replace('name = "NVIDIA H100 PCIe"', 'name = "H100\\ngpu GPU-x 0000:ff:00.0"', 1),
        "driver-version": 'driver_version = "580\\rnvml_version 1"\n' + base,
        "description-of-a-shape": 'base = "vm-4gpu"\ndescription = "a\\u0000b"\n',
    }
    for field, text in files.items():
        f = tmp_path / f"{field}.toml"
        f.write_text(text)
        for args in (["sim", "check", str(f)], ["sim", "run", str(f), "--", "true"]):
            out = subprocess.run([GPUAFFINITY, *args], capture_output=True, text=True)
            assert out.returncode == 1, (field, out.stdout)
            assert "must not hold control characters" in out.stderr
            assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("content", "text"), [
    ("name = 'x'\n" + "a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("name = 'x'\n[[numa_node]]\nid = 0\ncpus = '0-999999999'\n", "past the limit of 1023"),
    ("name = 'x'\n[[numa_node]]\nid = 99999999999\ncpus = '0'\n", "must be 0 to 1023"),
    ("name = 'x'\n[[numa_node]]\nid = 1024\ncpus = '0'\n", "must be 0 to 1023"),
    ("name = 'x'\n[[numa_node]]\nid = 0\ncpus = '1024'\n", "past the limit of 1023"),
])
def test_topology_limits_are_checked_where_sim_check_checks(tmp_path, content, text):
    f = tmp_path / "t.toml"
    f.write_text(content)
    for args in (["sim", "check", str(f)], ["sim", "run", str(f), "--", "true"]):
        out = subprocess.run([GPUAFFINITY, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and text in out.stderr and str(f) in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_simulator_variables_outside_the_simulator_are_shown_and_warned(sim_factory, tmp_path):
    machine = sim_factory("dgx-h100")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUAFFINITY_")}
    env.update(GPUAFFINITY_PROCFS_ROOT=machine.env["GPUAFFINITY_PROCFS_ROOT"],
               GPUAFFINITY_SIM_ALLOWED_CPUS="0-223", LD_LIBRARY_PATH=machine.env["LD_LIBRARY_PATH"],
               GPUAFFINITY_SIM_CONFIG=machine.env["GPUAFFINITY_SIM_CONFIG"])
    env["GPUAFFINITY_PROCFS_ROOT"] = str(tmp_path / "proc")  # another folder than the simulator's own
    shutil.copytree(machine.env["GPUAFFINITY_PROCFS_ROOT"], tmp_path / "proc")
    out = subprocess.run([GPUAFFINITY, "resolve", "--json"], env=env, capture_output=True, text=True)
    assert "GPUAFFINITY_PROCFS_ROOT=" in out.stderr and "is set outside `gpuaffinity sim run`" in out.stderr
    doctor = subprocess.run([GPUAFFINITY, "doctor"], env=env, capture_output=True, text=True).stdout
    assert "GPUAFFINITY_PROCFS_ROOT" in doctor and "GPUAFFINITY_SIM_ALLOWED_CPUS" in doctor
    inside = subprocess.run([GPUAFFINITY, "resolve"], env=child_env(machine), capture_output=True, text=True)
    assert "outside" not in inside.stderr  # the simulator's own variables are no surprise there


def test_disable_takes_any_iterable_once_a_string_and_warns_on_unknown_names(sim_factory):
    code = r"""
import json, warnings, gpuaffinity
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = gpuaffinity.resolve_all(disable=iter(["cvd"]), policy="first")
    gpuaffinity.clear_cache()
    b = gpuaffinity.resolve_all(disable="cvd,torch", policy="first")
    gpuaffinity.clear_cache()
    c = gpuaffinity.resolve_all(disable=["cvdd"], policy="first")
print(json.dumps([[d.strategy for d in a], [d.strategy for d in b], [d.strategy for d in c],
                  [str(x.message) for x in w]]))
"""
    a, b, c, warned = run_json(sim_factory("dgx-h100"), code, cvd="1,0")
    assert a == b == ["pci", "pci"] and c == ["cvd", "cvd"]
    assert any("nothing is named 'cvdd' to disable (from the disable argument)" in m for m in warned)


BAD_INPUTS = [
    (["bind", "0", "--", ""], 2, "the command after `--` is empty"),
    # only bind runs a command: anything after `--` elsewhere is refused, never silently dropped
    (["resolve", "--", "3"], 2, "gpuaffinity resolve: unexpected arguments after `--`: 3"),
    (["doctor", "--", "-v"], 2, "gpuaffinity doctor: unexpected arguments after `--`: -v"),
    (["check", "--", "1"], 2, "gpuaffinity check: unexpected arguments after `--`: 1"),
    (["resolve", "\u0663"], 2, "is not a device"),
    (["resolve", "\u00b2"], 2, "is not a device"),
    (["resolve", "9" * 5000], 2, "(5000 characters) is not a device"),
    (["sim", "run", "dgx-h100", *[a for i in range(33) for a in ("--fault", f"cuInit={i}")], "--", "true"], 2,
     "33 faults: the simulator holds at most 32"),
    (["sim", "run", "dgx-h100", "--fault", "nvmlBogus=3", "--", "true"], 2, "unknown fault name 'nvmlBogus'"),
    (["sim", "run", "dgx-h100", "--fault", "cuInit=" + "9" * 5000, "--", "true"], 2, "bad fault"),
]


@pytest.mark.parametrize(("args", "status", "text"), BAD_INPUTS)
def test_bad_input_is_one_line(sim_factory, args, status, text):
    out = subprocess.run([GPUAFFINITY, *args], env=child_env(sim_factory("dgx-h100")), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == status, out.stderr
    assert text in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_probe_child_reports_the_drivers_error(sim_factory):
    out = subprocess.run([GPUAFFINITY, "resolve", "--policy", "strict", "--json"],
                         env=child_env(sim_factory("dgx-h100"), GPUAFFINITY_SIM_FAULTS="cuDeviceGetPCIBusId=999"),
                         capture_output=True, text=True)
    assert out.returncode == 0
    assert "pci: the CUDA driver's cuDeviceGetPCIBusId(0) returned CUDA error 999" in out.stderr
    assert "Traceback" not in out.stderr and "NoneType" not in out.stderr


def test_counters_on_a_file_and_a_bad_simulated_cpuset(sim_factory, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    out = subprocess.run([GPUAFFINITY, "sim", "run", "dgx-h100", "--counters", str(f), "--", "true"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "cannot use it as a folder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    for args in (["doctor"], ["resolve", "0"], ["bind", "0", "--dry-run"]):
        out = subprocess.run([GPUAFFINITY, *args], env=child_env(sim_factory("dgx-h100"),
                                                                  GPUAFFINITY_SIM_ALLOWED_CPUS="zz"),
                             capture_output=True, text=True)
        assert out.returncode == 1 and "GPUAFFINITY_SIM_ALLOWED_CPUS (the simulator's cpuset) is not a CPU list" \
            in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_a_binary_information_file_is_not_a_traceback(sim_factory, tmp_path):
    machine = sim_factory("dgx-h100")
    proc = tmp_path / "proc"
    shutil.copytree(machine.env["GPUAFFINITY_PROCFS_ROOT"], proc)
    info = next(proc.glob("driver/nvidia/gpus/*/information"))
    info.write_bytes(b"\xff\xfe\x00binary\x80")
    out = subprocess.run([GPUAFFINITY, "doctor"], env=child_env(machine, GPUAFFINITY_PROCFS_ROOT=str(proc)),
                         capture_output=True, text=True)
    assert out.returncode == 0 and f"listed from NVML: {info} is not text" in out.stdout


def test_a_long_value_is_read_whole_by_the_simulator_and_echoed_short(sim_factory):
    from test_deployments import driver_truth

    machine = sim_factory("dgx-h100")
    for value in ("3," + "1" * 10000 + ",2", "3,5," + "x" * 9000, ",".join(["3"] + ["4"] * 3000)):
        truth = driver_truth(machine, [(value, None)])[0]  # past the 8 KB the simulated libcuda once kept
        out = subprocess.run([GPUAFFINITY, "resolve", "--json"], env=child_env(machine, value), capture_output=True,
                             text=True)
        if truth["cuInit"] == 101:
            assert out.returncode == 1 and len(out.stderr) < 700 and "characters)" in out.stderr
        else:
            assert [d["pci_bus_id"] for d in json.loads(out.stdout)] == [b for b, _ in truth["devices"]]


def sim_run_job(tmp_path, body: str) -> tuple[subprocess.Popen, Path]:
    """`sim run` in a session of its own, running a child that records the signals it gets."""
    log = tmp_path / "log"
    child = (f"import os, signal, sys, time\nlog = open({str(log)!r}, 'a', buffering=1)\n"
             "log.write(f'start {os.getpid()} ' + os.environ['GPUAFFINITY_PROCFS_ROOT'] + '\\n')\n" + body)
    p = subprocess.Popen([GPUAFFINITY, "sim", "run", "dgx-h100", "--", sys.executable, "-c", child],
                         start_new_session=True, stdin=subprocess.DEVNULL)
    for _ in range(300):
        if log.exists() and log.read_text().startswith("start"):
            break
        time.sleep(0.05)
    return p, log


def test_sim_run_passes_a_group_signal_on_once_and_cleans_up_after_any(tmp_path):
    hup = ("n = []\nsignal.signal(signal.SIGHUP, lambda s, f: n.append(s))\n"
           "signal.signal(signal.SIGTERM, lambda s, f: (log.write(f'hups {len(n)}\\n'), sys.exit(0)))\n"
           "while True: time.sleep(0.05)\n")
    p, log = sim_run_job(tmp_path, hup)
    os.killpg(p.pid, signal.SIGHUP)  # the whole group, as a closing terminal or a job manager does
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    assert "hups 1" in log.read_text()
    for sig in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        sub = tmp_path / sig.name
        sub.mkdir()
        p, log = sim_run_job(sub, "while True: time.sleep(0.05)\n")
        _, pid, procfs = log.read_text().split()[:3]
        os.kill(p.pid, sig)
        assert p.wait(timeout=30) == 128 + sig
        time.sleep(0.2)
        assert not os.path.exists(os.path.dirname(procfs)), f"{sig.name} left the simulated machine behind"
        assert not os.path.exists(f"/proc/{pid}"), f"{sig.name} left the command running"


def test_a_simulated_cpuset_never_widens_the_real_affinity_mask(sim_factory):
    """taskset -c 1 gpuaffinity sim run … bind 0 -- CMD: CMD stays on CPU 1, inside the real restriction."""
    real = sorted(os.sched_getaffinity(0))
    keep = real[-1:]
    out = subprocess.run([GPUAFFINITY, "bind", "0", "--", sys.executable, "-c",
                          "import os; print(sorted(os.sched_getaffinity(0)))"],
                         env=child_env(sim_factory("dgx-h100")), capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, keep))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == keep
