"""A multi-node Ray cluster on this machine, each node on a simulated machine of its own.

Each node is ``ray start --block`` run under ``gpuaffinity sim run TOPOLOGY``: its raylet and every worker it
starts load that machine's fake NVIDIA libraries and sysfs, so Ray counts that machine's GPUs, sets
``CUDA_VISIBLE_DEVICES`` from them, and gpuaffinity in those workers resolves and binds against that machine.
Tests and ``benchmarks/bench_ray_check.py`` use it; so can you, to try ``gpuaffinity ray-check`` without a
cluster::

    with RayCluster() as cluster:
        cluster.add_node("dgx-h100")
        cluster.add_node("slurm-2of8", env={"CUDA_VISIBLE_DEVICES": "0,1"})
        subprocess.run(["gpuaffinity", "ray-check", "--address", cluster.address])

Binds in those workers are real system calls: use topologies whose CPUs are this host's (the bundled presets'
224 CPUs are not, unless the host has them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuaffinity.core.errors import SimulatorError


class RayCluster:
    """Ray nodes started one by one (the first is the head); ``close()`` (or leaving ``with``) stops them all."""

    def __init__(self, num_cpus: int = 1, start_timeout: float = 120.0) -> None:
        self.num_cpus = num_cpus
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        # short: Ray's socket paths live under the head's temp folder and must stay under 108 bytes, which a
        # long $TMPDIR (Slurm's, macOS's) would pass
        short = "/tmp" if os.access("/tmp", os.W_OK) else None
        self._logs = Path(tempfile.mkdtemp(prefix="gpa-rc-", dir=short))

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_node(self, topology: str | os.PathLike, env: dict[str, str] | None = None,
                 sim_args: list[str] | None = None, ray_args: list[str] | None = None) -> None:
        """Start one node on ``topology`` (a preset or a file), with ``env`` added to the node's environment
        (``ray start`` and every process it starts, workers included, inherit it: ``CUDA_VISIBLE_DEVICES``,
        ``PYTHONPATH``...; ``sim run`` itself runs without it) and ``sim_args`` given to ``sim run``
        (``--gpus 2,5 --others denied``...) and ``ray_args`` to ``ray start`` (``--num-gpus=0``...).  Returns once
        the node has joined; a node that does not start stops the whole cluster and raises SimulatorError."""
        head = not self.nodes
        # the head's own temp folder: Ray writes the cluster's address there, not in /tmp/ray, where a later
        # ray.init() would find it and try to join this cluster after it is gone
        where = [f"--address={self.address}"]
        if head:
            where = ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self._logs}"]
        cmd = [sys.executable, "-m", "gpuaffinity", "sim", "run", *(sim_args or []), str(topology), "--",
               "env", *(f"{k}={v}" for k, v in (env or {}).items()),
               sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--num-cpus={self.num_cpus}",
               "--disable-usage-stats", *where, *(ray_args or [])]
        full = dict(os.environ, RAY_AUTH_MODE="disabled")
        log = self._logs / f"node{len(self.nodes)}.log"
        with open(log, "wb") as out:
            # its own process group: close() ends the node with every process it started
            proc = subprocess.Popen(cmd, env=full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.nodes.append(proc)
        deadline = time.monotonic() + self.start_timeout
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_bytes()[-2000:].decode(errors="replace")
                self.close()
                raise SimulatorError(f"the Ray node on {topology} did not start: {tail}")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop every node: every process of its session is killed (Ray puts its raylet, GCS and agents in
        process groups of their own, but they stay in the session the node was started in)."""
        sessions = {proc.pid for proc in self.nodes}
        runners = set(sessions)  # each node's `sim run`: it removes its simulated machine once its command ends
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every one is gone (or a zombie its reaper has yet to collect)
            left = [pid for pid in _members(sessions, living=True) if pid not in runners]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for proc in self.nodes:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # `sim run` did not finish: end it too (its folder may stay)
                proc.kill()
                proc.wait()
        self.nodes.clear()
        shutil.rmtree(self._logs, ignore_errors=True)


def _members(sessions: set[int], living: bool = False) -> list[int]:
    """The processes whose session id is one of ``sessions`` (field 6 of /proc/PID/stat); ``living``: not
    zombies."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) in sessions and not (living and fields[0] == b"Z"):
            out.append(int(entry))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
