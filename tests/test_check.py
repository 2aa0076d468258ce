"""`gpuaffinity check` on real processes of this host, bound on a simulated machine whose two NUMA nodes are this
host's first two CPUs (``host8``: GPUs 0-3 on node 0 = CPUS[0], 4-7 on node 1 = CPUS[1]).

Every binding here is a real ``sched_setaffinity``; every fact check reads comes from the real /proc of a real
process.  The truth is the topology: which physical GPU a process's own CUDA_VISIBLE_DEVICES names, and that
GPU's node.  The checker always runs with a *different* CUDA_VISIBLE_DEVICES than the process it checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import CPUS, child_env, start

pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")

SLEEPER = "import sys, time; print('ready', flush=True); time.sleep(120)"


def bus(i: int) -> str:
    return f"0000:{16 * i + 16:02x}:00.0"


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def machine(host8, sim_factory):
    return sim_factory(str(host8))


def bound(procs, machine, gpu, cvd=None, code=SLEEPER, *opts):
    return start(procs, machine, [sys.executable, "-m", "gpuaffinity", "bind", str(gpu), *opts, "--",
                                  sys.executable, "-c", code], cvd)


def check(machine, *args, cvd="7", json_out=True):
    """Run the check as a user does, from a shell whose CUDA_VISIBLE_DEVICES is not the worker's."""
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", *map(str, args),
                           *(["--json"] if json_out else [])], env=child_env(machine, cvd), capture_output=True,
                          text=True, timeout=120)
    if not json_out:
        return proc.returncode, proc.stdout, proc.stderr
    assert proc.returncode in (0, 4), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def row_of(report, pid):
    (row,) = [r for r in report["rows"] if r["pid"] == pid]
    return row


def test_a_bound_process_is_ok_from_a_shell_with_another_cuda_visible_devices(machine, procs):
    # device 0 of ITS list is physical GPU 6, on node 1 (which has no memory on this host: --memory none)
    p, _ = bound(procs, machine, 0, "6,2", SLEEPER, "--memory", "none")
    rc, report = check(machine, p.pid, cvd="0")  # the checker's device 0 would be GPU 0, on node 0
    row = row_of(report, p.pid)
    assert rc == 0 and report["ok"] is True, row
    assert (row["status"], row["pci_bus_id"], row["uuid"], row["source"]) == ("ok", bus(6), uuid(6), "binding")
    assert row["numa_nodes"] == [1] and row["bind_cpus"] == str(CPUS[1]) and row["affinity"] == [CPUS[1]]
    assert row["binding"]["how"] == "exec" and row["binding"]["pid"] == p.pid
    assert row["threads"] == {"count": 1, "off": []}
    # the table says the same
    rc, out, _ = check(machine, p.pid, json_out=False)
    line = out.splitlines()[1].split()
    assert rc == 0 and line[0] == str(p.pid) and line[2] == bus(6) and line[-1] == "ok"


def test_a_memory_policy_that_could_not_be_applied_is_unbound_with_the_kernels_reason(machine, procs):
    p, _ = bound(procs, machine, 6)  # preferred on node 1: this host's kernel has no node 1
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 4 and row["status"] == "unbound" and row["affinity"] == [CPUS[1]], row
    assert row["memory"]["policy"] == "default"
    assert "memory policy is the default, not preferred to its GPU's node 1: set_mempolicy(preferred, node(s) 1) " \
           "failed: EINVAL" in row["problems"][0]


def test_a_process_widened_by_taskset_fails_with_exit_4(machine, procs):
    p, _ = bound(procs, machine, 1)
    assert check(machine, p.pid)[0] == 0
    os.sched_setaffinity(p.pid, set(CPUS))  # what `taskset -p` does: the main thread only
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 4 and row["status"] == "unbound", row
    assert row["affinity"] == sorted(CPUS) and row["pci_bus_id"] == bus(1)
    assert "something moved it since" in row["problems"][0]


DRIFTER = """
import ctypes, os, sys, threading, time
def run():
    ctypes.CDLL(None).prctl(15, b"drifter", 0, 0, 0)  # PR_SET_NAME: the thread's comm
    os.sched_setaffinity(0, {OTHER})
    print("ready", threading.get_native_id(), flush=True)
    time.sleep(120)
threading.Thread(target=run, daemon=True).start()
time.sleep(120)
"""


def test_one_thread_moved_off_the_node_fails_naming_its_tid(machine, procs):
    p, (tid,) = bound(procs, machine, 0, None, DRIFTER.replace("OTHER", str(CPUS[1])))
    rc, report = check(machine, p.pid)
    row = row_of(report, p.pid)
    assert rc == 4 and row["status"] == "threads-drifted", row
    assert row["affinity"] == [CPUS[0]]  # the main thread is where it should be
    assert row["threads"]["count"] == 2
    assert row["threads"]["off"] == [{"tid": int(tid), "name": "drifter", "cpus": str(CPUS[1])}]
    assert f"{tid} (drifter) on CPUs {CPUS[1]}" in row["problems"][0]
    rc, out, _ = check(machine, p.pid, json_out=False)
    assert "THREADS-DRIFTED" in out and f"{tid} (drifter)" in out and out.splitlines()[1].split()[8] == "1/2"


IN_PROCESS = """
import os, signal, threading, time, warnings
import gpuaffinity
warnings.simplefilter("ignore")  # the simulated node 1 has no real memory: set_mempolicy may fail there
gpuaffinity.bind(0, memory="none")
os.environ["CUDA_VISIBLE_DEVICES"] = "3"  # too late for /proc/PID/environ: check must not read it
signal.signal(signal.SIGUSR1, lambda *a: (gpuaffinity.rebind(), print("rebound", flush=True)))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_an_in_process_binding_is_read_from_its_memfd_and_rebind_puts_it_right(machine, procs):
    p, _ = start(procs, machine, [sys.executable, "-c", IN_PROCESS], "5")  # GPU 5, node 1
    pid = p.pid
    links = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    assert links.count("/memfd:gpuaffinity-binding (deleted)") == 1, links
    assert "GPUAFFINITY_BOUND" not in open(f"/proc/{pid}/environ", "rb").read().decode()
    rc, report = check(machine, pid, "--memory", "none", cvd="0")
    row = row_of(report, pid)
    assert rc == 0 and row["status"] == "ok" and row["pci_bus_id"] == bus(5), row
    assert row["binding"]["how"] == "in-process" and row["binding"]["memory"] == "none"
    assert row["env"] == {"CUDA_VISIBLE_DEVICES": "5"}  # what it started with
    for tid in os.listdir(f"/proc/{pid}/task"):  # `taskset -a`: every thread
        os.sched_setaffinity(int(tid), set(CPUS))
    assert check(machine, pid)[0] == 4
    p.send_signal(signal.SIGUSR1)
    assert p.stdout.readline().strip() == "rebound"
    rc, report = check(machine, pid)
    assert rc == 0 and row_of(report, pid)["affinity"] == [CPUS[1]]


def test_a_second_binding_replaces_the_first_record(machine, procs):
    code = ("import gpuaffinity, os, time, warnings; warnings.simplefilter('ignore'); gpuaffinity.bind(0, "
            "memory='none'); gpuaffinity.bind(1, memory='none'); print('ready', flush=True); time.sleep(120)")
    p, _ = start(procs, machine, [sys.executable, "-c", code], "2,3")
    links = [os.readlink(f"/proc/{p.pid}/fd/{n}") for n in os.listdir(f"/proc/{p.pid}/fd")]
    assert sum(x.startswith("/memfd:gpuaffinity-binding") for x in links) == 1
    rc, report = check(machine, p.pid)
    assert rc == 0 and row_of(report, p.pid)["pci_bus_id"] == bus(3)


TOUCH = "import time; b = b'x' * (160 << 20); print('ready', flush=True); time.sleep(120)"


def test_pages_on_the_gpus_node_are_local_and_elsewhere_fail(machine, procs):
    # this host's memory is all on its node 0, which is the simulated node 0: GPU 0's; GPU 4 is on node 1
    near, _ = bound(procs, machine, 0, None, TOUCH, "--memory", "none")
    far, _ = bound(procs, machine, 4, None, TOUCH, "--memory", "none")
    rc, report = check(machine, near.pid, far.pid, "--pages")
    a, b = row_of(report, near.pid), row_of(report, far.pid)
    assert rc == 4
    assert a["status"] == "ok" and a["pages"]["local"] == 1.0 and a["pages"]["nodes"]["0"] >= 160 << 20, a
    assert b["status"] == "remote-memory" and b["pages"]["local"] == 0.0, b
    assert b["pages"]["nodes"]["0"] >= 160 << 20 and "off its GPU's node(s) 1" in b["problems"][0]
    assert set(b["pages"]["nodes"]) == {"0"} and b["pages"]["total"] == b["pages"]["nodes"]["0"]
    # the threshold is the user's; without --pages nothing is read and nothing fails on memory
    assert check(machine, far.pid, "--pages", "--min-local", "0")[0] == 0
    rc, report = check(machine, far.pid)
    assert rc == 0 and row_of(report, far.pid)["pages"] is None


def test_an_exited_pid_a_zombie_and_a_kernel_thread_each_get_a_row(machine):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while open(f"/proc/{zombie.pid}/status").read().find("State:\tZ") < 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        kthreads = [int(n) for n in os.listdir("/proc") if n.isdigit() and _is_kthread(int(n))]
        pids = [4194303, zombie.pid, *kthreads[:1]]
        rc, report = check(machine, *pids)
        assert rc == 4
        gone = row_of(report, 4194303)
        assert gone["status"] == "gone" and "does not exist in this pid namespace" in gone["problems"][0]
        z = row_of(report, zombie.pid)
        assert z["status"] == "gone" and "zombie" in z["problems"][0]
        if kthreads:
            assert row_of(report, kthreads[0])["status"] == "no-gpu"
            assert check(machine, kthreads[0])[0] == 0
    finally:
        zombie.wait()


def _is_kthread(pid: int) -> bool:
    try:
        return "\nKthread:\t1" in open(f"/proc/{pid}/status").read()
    except OSError:
        return False


def test_all_finds_every_bound_process_and_skips_the_rest(machine, procs):
    a, _ = bound(procs, machine, 2)
    b, _ = start(procs, machine, [sys.executable, "-c", IN_PROCESS], "7")
    plain, _ = start(procs, machine, [sys.executable, "-c", SLEEPER])
    rc, report = check(machine, "--all")
    pids = {r["pid"] for r in report["rows"]}
    assert {a.pid, b.pid} <= pids and plain.pid not in pids
    assert report["settings"]["all"] is True
    assert row_of(report, a.pid)["pci_bus_id"] == bus(2) and row_of(report, b.pid)["pci_bus_id"] == bus(7)
    # no PID at all is --all
    rc, report = check(machine)
    assert {a.pid, b.pid} <= {r["pid"] for r in report["rows"]}


@pytest.mark.parametrize("args, text", [
    (["abc"], "'abc' is not a process id"),
    (["0"], "'0' is not a process id"),
    (["-5"], "'-5' is not a process id"),
    (["4194304"], "is not a process id"),
    (["1", "--min-local", "1.5"], "--min-local 1.5"),
    (["1", "--min-local", "nan"], "--min-local nan"),
    (["1", "--mode", "rack"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(machine, args, text):
    rc, out, err = check(machine, *args, json_out=False)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and text in err, err


def test_forged_or_damaged_records_are_notes_never_a_crash(machine, procs):
    for value in ['{"v":1,"pci_bus_id":"0000:10:00.0"', "x" * 100_000,
                  '{"v":1,"how":"exec","pid":1,"pci_bus_id":"\\u001b[2J","mode":"node","memory":"none",'
                  '"bind_cpus":"0","memory_nodes":[],"numa_nodes":[],"applied":true,"failures":[]}']:
        p, _ = start(procs, machine, [sys.executable, "-c", SLEEPER], None, GPUAFFINITY_BOUND=value)
        rc, out, err = check(machine, p.pid, json_out=False)
        assert rc == 0 and err == "", err
        assert f"{p.pid} (python3): note: its exec binding record cannot be read" in out
        assert "\x1b" not in out
        p.kill()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_users_process_is_no_access_never_a_traceback(machine, procs):
    p, _ = bound(procs, machine, 0)
    import gpuaffinity

    env = child_env(machine, "1", PYTHONPATH=os.path.dirname(os.path.dirname(gpuaffinity.__file__)))
    proc = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-m",
                           "gpuaffinity", "check", str(p.pid), "--json"], env=env, capture_output=True, text=True,
                          timeout=120, cwd="/")
    if proc.returncode not in (0, 4):
        pytest.skip(f"gpuaffinity cannot run as nobody here: {proc.stderr.strip()[-200:]}")
    row = row_of(json.loads(proc.stdout), p.pid)
    assert proc.returncode == 4 and row["status"] == "no-access", row
    assert "environ: Permission denied" in row["problems"][0] and row["name"] == "python3"


def test_processes_exiting_while_checked_give_rows_not_tracebacks(machine):
    for _ in range(5):
        kids = [subprocess.Popen([sys.executable, "-m", "gpuaffinity", "bind", str(i % 4), "--", "sleep",
                                  f"0.{i}"], env=child_env(machine)) for i in range(1, 9)]
        time.sleep(0.4)
        proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "check", *(str(k.pid) for k in kids), "--json"],
                              env=child_env(machine), capture_output=True, text=True, timeout=120)
        for k in kids:
            k.wait(timeout=30)
        assert proc.returncode in (0, 4) and "Traceback" not in proc.stderr, proc.stderr
        statuses = {r["status"] for r in json.loads(proc.stdout)["rows"]}
        assert statuses <= {"ok", "gone", "no-gpu"}, statuses


def test_the_python_api_returns_the_same_rows(machine, procs):
    p, _ = bound(procs, machine, 3)
    code = (f"import gpuaffinity, json; r = gpuaffinity.check([{p.pid}]); "
            "print(json.dumps({'ok': r.ok, 'rows': r.rows}))")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(machine, "0"), capture_output=True, text=True,
                         timeout=120)
    got = json.loads(out.stdout)
    assert got["ok"] is True and got["rows"][0]["pci_bus_id"] == bus(3), out.stderr
    with pytest.raises(Exception, match="not a process id"):
        import gpuaffinity

        gpuaffinity.check([True])


def test_a_bad_pid_given_to_the_python_api_is_named_cut_to_40_characters():
    """As the CLI's one-line errors: whatever the caller passed, the message quotes at most 40 characters of it."""
    from gpuaffinity import GpuAffinityError, check

    with pytest.raises(GpuAffinityError) as e:
        check(["4" * 30 + "x" * 70])
    assert str(e.value) == f"not a process id: {'4' * 30 + 'x' * 10!r} (a number from 1 to 4194303)"


def test_rebind_without_a_binding_is_one_clear_error(machine):
    code = "import gpuaffinity\ntry:\n    gpuaffinity.rebind()\nexcept gpuaffinity.BindError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=child_env(machine), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("nothing to rebind: this process records no binding"), out.stderr


def test_a_child_of_a_bound_command_inherits_the_record_and_says_whose(machine, procs):
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print('ready', c.pid, flush=True); c.wait()")
    p, (child,) = bound(procs, machine, 1, None, code)
    rc, report = check(machine, int(child))
    row = row_of(report, int(child))
    assert rc == 0 and row["pci_bus_id"] == bus(1) and row["binding"]["pid"] == p.pid, row
    assert f"its binding was made in pid {p.pid} (exec)" in row["notes"][0]
    os.kill(int(child), signal.SIGKILL)


def test_a_fifo_named_like_a_record_does_not_stall_the_check(machine, procs, tmp_path):
    """A hostile process holds open a FIFO (or a file) named memfd:gpuaffinity-binding: the check must neither
    block on it nor take it as a binding."""
    fifo = tmp_path / "memfd:gpuaffinity-binding (deleted)"
    os.mkfifo(fifo)
    plain = tmp_path / "x" / "memfd:gpuaffinity-binding"
    plain.parent.mkdir()
    plain.write_text('{"v":1,"how":"in-process","pid":1,"pci_bus_id":"0000:10:00.0","mode":"node","memory":"none",'
                     '"bind_cpus":"0","memory_nodes":[],"numa_nodes":[0],"applied":true,"failures":[]}')
    code = (f"import os, time; a = os.open({str(fifo)!r}, os.O_RDWR); b = os.open({str(plain)!r}, os.O_RDONLY); "
            "print('ready', flush=True); time.sleep(120)")
    p, _ = start(procs, machine, [sys.executable, "-c", code])
    t = time.monotonic()
    rc, report = check(machine, p.pid)
    assert time.monotonic() - t < 60
    row = row_of(report, p.pid)
    assert rc == 0 and row["status"] == "no-gpu" and row["binding"] is None, row


def test_the_documented_python_call_and_cli_defaults_are_the_codes():
    """docs/check.md's gpuaffinity.check(...) line names every parameter with the code's default, and the CLI's
    --memory default is the function's."""
    import inspect
    import re

    from conftest import ROOT
    from gpuaffinity import live
    from gpuaffinity.cli import build_parser

    doc = (ROOT / "docs" / "check.md").read_text()
    call = re.search(r"`gpuaffinity\.check\((.*?)\)`", doc, re.S).group(1)
    documented = dict(re.findall(r"(\w+)=([^,\s]+)", call))
    params = {n: p.default for n, p in inspect.signature(live.check).parameters.items()
              if p.default is not inspect.Parameter.empty and n != "progress"}
    assert {n: repr(v).replace("'", '"') for n, v in params.items()} == documented
    args = build_parser().parse_args(["check"])
    assert (args.memory, args.mode, args.min_local) == (params["memory"], params["mode"], params["min_local"])


def test_check_help_says_it_reads_each_process_s_own_view_never_this_shell_s():
    """The user's first question: does check judge a worker by the CUDA_VISIBLE_DEVICES of the shell it runs in?
    Its --help says no, and what it checks."""
    from gpuaffinity.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["check"]
    text = " ".join(sub.format_help().split())
    assert ("the GPU each holds or was bound for (read in *its* view: its recorded binding, NVML's process list, its "
            "open device nodes and its own CUDA_VISIBLE_DEVICES; never this shell's), that GPU's NUMA node(s) and "
            "CPUs, the CPU mask of every thread, the memory policy, and with --pages where its resident memory "
            "is.") in text
