"""How ``gpuaffinity ray-check`` connects: a cluster that wants a token, a cluster that dies while the check
connects or waits, and what ``"auto"`` may attach to.  Real Ray clusters on this machine (one node each, on
simulated machines), real processes killed; nothing stubbed.

Each was found as written in issue 19, item 9, and each test failed on the code before the change:
- a token the cluster refuses gave Ray's 20 log lines in 21 s, then "cannot connect ... start one with
  `ray start --head`" while the cluster was up;
- a GCS killed while the check connected took 60 s, and the last line was Ray's;
- ``"auto"`` took whatever cluster the last ``ray start`` on the machine recorded, another user's included, and
  without a record any GCS process in ``ps`` (so did ``--address local``);
- docs/ray.md had no recipe for Ray on the simulator: its test runs the page's commands as written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CPUS

pytest.importorskip("ray")
# every test here starts real Ray processes, or waits on one: slow, left out of the README's quick subset
pytestmark = [pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs"), pytest.mark.slow]
TOKEN = "gpuaffinity-test-token-5f0c2a9e7b1d4c3a8e6f"


def one_gpu(path):
    """A one-GPU machine whose NUMA nodes are this host's first two CPUs (binds are real)."""
    path.write_text(f'name = "one"\n[[numa_node]]\nid = 0\ncpus = "{CPUS[0]}"\n[[numa_node]]\nid = 1\n'
                    f'cpus = "{CPUS[1]}"\n[[gpu]]\nuuid = "GPU-0a000000-0000-0000-0000-000000000000"\n'
                    'pci_bus_id = "0000:10:00.0"\nname = "NVIDIA H100 80GB HBM3"\nnuma_node = 0\n')
    return path


def clean_env(tmp_path, **extra):
    """The environment of a user with no Ray settings: no address, no auth mode, and a home without a token
    (``~/.ray/auth_token`` is shared by everyone running Ray as this user)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), **extra}


def ray_check(env, *args, timeout=60):
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "ray-check", "--memory", "none", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    return proc, time.monotonic() - t


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """One node with Ray's token authentication on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN)."""
    from gpuaffinity.sim.raycluster import RayCluster

    topo = one_gpu(tmp_path_factory.mktemp("token") / "one.toml")
    with RayCluster() as c:
        c.add_node(topo, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
        yield c


@pytest.mark.parametrize("auth", ["none", "wrong", "missing"])
def test_a_cluster_that_wants_a_token_is_one_line_naming_the_fix(token_cluster, tmp_path, auth):
    env = clean_env(tmp_path, **{"none": {}, "wrong": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-it"},
                                 "missing": {"RAY_AUTH_MODE": "token"}}[auth])
    proc, took = ray_check(env, "--address", token_cluster.address)
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # not Ray's log of every try
    assert took < 10, took  # Ray's own connect tries for 20 s
    line = proc.stderr
    assert "start one with" not in line  # the cluster is up: it refuses this process
    assert "RAY_AUTH_TOKEN" in line and "~/.ray/auth_token" in line  # where the token goes
    if auth == "none":
        assert line.startswith(f"gpuaffinity: the Ray cluster at {token_cluster.address} requires token "
                               "authentication: run with RAY_AUTH_MODE=token, and set RAY_AUTH_TOKEN")
    elif auth == "wrong":
        assert line.startswith(f"gpuaffinity: the Ray cluster at {token_cluster.address} refuses this process's "
                               "token (from RAY_AUTH_TOKEN): ")
    else:
        assert line.startswith("gpuaffinity: RAY_AUTH_MODE=token, but this process has no token for the Ray "
                               f"cluster at {token_cluster.address}: ")


def test_with_the_token_the_same_cluster_is_checked(token_cluster, tmp_path):
    """The fix the line names works: the cluster was up all along."""
    proc, _took = ray_check(clean_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN), "--json",
                            "--address", token_cluster.address)
    assert proc.returncode == 0, proc.stderr
    assert '"status": "ok"' in proc.stdout


def gcs_of(cluster):
    from gpuaffinity.sim.raycluster import _members

    (pid,) = [p for p in _members({n.pid for n in cluster.nodes}, living=True)
              if b"gcs_server" in open(f"/proc/{p}/cmdline", "rb").read()]
    return pid


def connected(pid, port):
    """Whether process ``pid`` holds an established TCP connection to ``port`` (/proc/PID/net/tcp, its fds)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01" and f[9] in inodes:  # 01: ESTABLISHED
                return True
    return False


SLOW_HOOK = """
import pathlib
import time


def setup():
    pathlib.Path({marker!r}).touch()  # the probe's worker is starting: the check waits for its answer
    time.sleep(60)
"""


@pytest.mark.parametrize("when", ["connecting", "probing"])
def test_a_cluster_that_dies_during_the_check_is_one_line_within_10_s(tmp_path, when):
    """The head's GCS is killed once the check holds a connection to it (connecting), or once its probe's
    worker runs (probing: a setup hook that waits, so the check is surely waiting for the answer).  Ray's own
    client waits 60 s, then ends the process with a line of its own."""
    from gpuaffinity.sim.raycluster import RayCluster

    marker = tmp_path / "probe-started"
    (tmp_path / "slowhook.py").write_text(SLOW_HOOK.format(marker=str(marker)))
    with RayCluster() as c:
        c.add_node(one_gpu(tmp_path / "one.toml"),
                   env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
        gcs = gcs_of(c)
        port = int(c.address.rpartition(":")[2])
        proc = subprocess.Popen([sys.executable, "-m", "gpuaffinity", "ray-check", "--memory", "none",
                                 "--address", c.address, "--runtime-env",
                                 '{"worker_process_setup_hook": "slowhook.setup"}'],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path))
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if connected(proc.pid, port) if when == "connecting" else marker.exists():
                    break
                time.sleep(0.002)
            assert proc.poll() is None, proc.communicate()
            os.kill(gcs, signal.SIGKILL)
            killed = time.monotonic()
            out, err = proc.communicate(timeout=30)  # Ray's own: 60 s
            took = time.monotonic() - killed
        finally:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (1, ""), err
    assert took < 10, (took, err)
    phase = {"connecting": "connecting to it", "probing": "waiting for its probes"}[when]
    assert err.startswith(f"gpuaffinity: the Ray cluster at {c.address} went away while ray-check was {phase}: "
                          "nothing has answered at its GCS port for 4 s (") and err.count("\n") == 1, err


@pytest.fixture
def recorded(tmp_path):
    """A Ray temp folder (RAY_TMPDIR) where ``ray start`` recorded a cluster, as /tmp/ray is on a machine."""
    (tmp_path / "raytmp" / "ray").mkdir(parents=True)
    return tmp_path / "raytmp" / "ray" / "ray_current_cluster"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_auto_refuses_a_cluster_another_user_started(token_cluster, tmp_path, recorded):
    """The cluster is live and answers; the record of it belongs to another user: "auto" must not take it."""
    recorded.write_text(token_cluster.address)
    os.chown(recorded, 4242, 4242)
    env = clean_env(tmp_path, RAY_TMPDIR=str(recorded.parent.parent), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    proc, took = ray_check(env)
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert proc.stderr == (f'gpuaffinity: "auto" found the Ray cluster at {token_cluster.address} in {recorded}, '
                           f"started by uid 4242, not by you: pass --address {token_cluster.address} to check it "
                           "anyway, or the address of your own cluster\n")
    # given explicitly, the same cluster is checked
    proc, _took = ray_check(env, "--address", token_cluster.address)
    assert proc.returncode == 0, proc.stderr


def test_auto_takes_your_own_recorded_cluster_and_says_which(token_cluster, tmp_path, recorded):
    recorded.write_text(token_cluster.address)
    env = clean_env(tmp_path, RAY_TMPDIR=str(recorded.parent.parent), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    proc, _took = ray_check(env, "--json")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    assert (settings["address"], settings["cluster"], settings["found"]) == ("auto", token_cluster.address,
                                                                            f"{recorded} (yours)")
    assert proc.stderr == (f'gpuaffinity ray-check: "auto" is the Ray cluster at {token_cluster.address}, '
                           f"recorded in {recorded} (yours)\n")


@pytest.mark.parametrize("tmpdir", [None, "elsewhere"])
def test_auto_with_no_recorded_cluster_is_one_line(tmp_path, recorded, tmpdir):
    """Ray's "auto" would go on to any GCS process in `ps`, whoever runs it; the check asks for an address.
    RAY_TMPDIR names Ray's temp folder whatever TMPDIR says."""
    extra = {} if tmpdir is None else {"TMPDIR": str(tmp_path / tmpdir)}
    proc, took = ray_check(clean_env(tmp_path, RAY_TMPDIR=str(recorded.parent.parent), **extra))
    assert (proc.returncode, proc.stdout) == (1, "") and took < 10
    assert proc.stderr == (f"gpuaffinity: no Ray cluster of yours recorded on this machine ({recorded} does not "
                           "exist): pass --address HOST:PORT (set RAY_ADDRESS), as `ray status` on the cluster's "
                           "head prints it\n")


def doc_blocks(title):
    """The fenced blocks of docs/ray.md's section ``title``, as (language, text)."""

    text = (Path(__file__).parent.parent / "docs" / "ray.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)


def shown(text):
    """Output lines without what changes from run to run: the node's id and host, the seconds."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if words and re.fullmatch(r"[0-9a-f]{8}", words[0]):
            words = words[3:]  # NODE, and HOST as name and IP
        line = re.sub(r"probed in [0-9.]+ s", "probed in S s", " ".join(words))
        out.append(re.sub(r"(?<= )\d+/\d+(?= )", "T/T", line))  # THREADS: Ray's worker threads vary
    return out


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="the recipe's machine is CPUs 0 and 1")
def test_the_simulator_recipe_runs_as_written(tmp_path):
    """docs/ray.md's "Ray on the simulator": its commands, run by bash as written (on a free port and a temp
    folder of this test's own), print what the page shows, and leave no process behind."""
    from gpuaffinity.sim.raycluster import _free_port

    (lang, script), (_lang, output) = doc_blocks("Ray on the simulator")[:2]
    assert lang == "sh" and "gpuaffinity ray-check --address 127.0.0.1:6390" in script
    # short, as /tmp/ray-sim: Ray's socket paths under it must stay within 107 bytes, which pytest's tmp_path passes
    temp = tempfile.mkdtemp(prefix="gpa-rs-", dir="/tmp") + "/ray-sim"
    port = str(_free_port())
    script = script.replace("6390", port).replace("/tmp/ray-sim", temp)
    bin_dir = tmp_path / "bin"  # `gpuaffinity` is this checkout's, as the workers' (PYTHONPATH) is
    bin_dir.mkdir()
    (bin_dir / "gpuaffinity").write_text(f'#!/bin/sh\nexec {sys.executable} -m gpuaffinity "$@"\n')
    (bin_dir / "gpuaffinity").chmod(0o755)
    env = clean_env(tmp_path, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=root, timeout=240)
    finally:
        left = subprocess.run(["pgrep", "-f", temp], capture_output=True, text=True).stdout.split()
        for pid in left:  # only what this test started: the temp folder is in each of their command lines
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(os.path.dirname(temp), ignore_errors=True)
    assert left == [], "the recipe left Ray processes behind"
    assert shown(proc.stdout) == shown(output), proc.stdout


def test_local_is_refused_not_any_cluster_in_ps(tmp_path):
    """--address local: Ray's address lookup for it goes on to any GCS process in `ps`, whoever runs it."""
    proc, took = ray_check(clean_env(tmp_path), "--address", "local")
    assert (proc.returncode, proc.stdout) == (1, "") and took < 10
    assert proc.stderr == ("gpuaffinity: --address local would start a Ray cluster of the check's own, with no GPU "
                           "worker to check: pass your cluster's HOST:PORT\n")


# --- found by attacking the change: each of these failed on the code before (a hang of minutes, a record read
# through a link or from another file than the one judged, a record that says `local`)

@pytest.mark.parametrize("shape", ["link", "fifo", "local", "junk"])
def test_auto_reads_only_a_regular_file_of_yours_holding_host_port(tmp_path, recorded, shape):
    """Ray's folder is writable by everyone: a link (to /proc/self/environ, to another user's record), a FIFO (a
    silent hang), or a record holding `local` (Ray would look for any GCS in `ps`) is refused in one line."""
    if shape == "link":
        os.symlink("/proc/self/environ", recorded)
        why = "cannot be read as Ray's record of a cluster (Too many levels of symbolic links; a link is not followed)"
    elif shape == "fifo":
        os.mkfifo(recorded)
        why = "is not a regular file, so it is no record of Ray's"
    else:
        junk = "not an address, " * 5 + "end"  # 83 characters: the line shows its first 60
        recorded.write_text("local\n" if shape == "local" else junk + "\n")
        why = f"names no Ray cluster (it holds {'local' if shape == 'local' else junk[:60]!r}, not HOST:PORT)"
    proc, took = ray_check(clean_env(tmp_path, RAY_TMPDIR=str(recorded.parent.parent)), timeout=30)
    assert (proc.returncode, proc.stdout) == (1, "") and took < 10
    assert proc.stderr == f"gpuaffinity: {recorded} {why}: pass --address HOST:PORT\n"


def test_a_port_that_is_not_ray_is_one_line_within_the_answer_time(tmp_path):
    """Something that accepts connections and never answers as Ray (a web server, a stopped head): one line after
    10 s, where the check hung for minutes without a word."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accepted, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        proc, took = ray_check(clean_env(tmp_path), "--address", f"127.0.0.1:{port}", timeout=60)
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        server.close()
    assert (proc.returncode, proc.stdout) == (1, "") and took < 20, proc.stderr
    assert proc.stderr == (f"gpuaffinity: 127.0.0.1:{port} accepts connections but does not answer as a Ray "
                           "cluster's GCS within 10 s (not a Ray port, or its head is stopped or overloaded): pass the "
                           "address `ray status` prints on the head\n")


def test_a_token_file_that_cannot_be_read_is_one_line_not_a_bug(token_cluster, tmp_path):
    """Found by attacking the change: Ray's token loader raised outside the check's handling, and the command
    called it a bug in gpuaffinity."""
    env = clean_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-such-token"))
    proc, took = ray_check(env, "--address", token_cluster.address)
    assert (proc.returncode, proc.stdout) == (1, "") and took < 15, proc.stderr
    assert proc.stderr.startswith(f"gpuaffinity: the token file {tmp_path / 'no-such-token'} cannot be read or is "
                                  "empty: set RAY_AUTH_TOKEN"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "a bug in gpuaffinity" not in proc.stderr
