from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuaffinity.sim import SimMachine, simulated

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(__file__).with_name("data") / "real-h200x4-2026-11-27"
CUDA_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


def load_tool(name: str):
    """tools/NAME.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_probe():
    """tools/probe_real_driver.py: the same child script runs on real and simulated machines."""
    return load_tool("probe_real_driver")


def child_env(machine: SimMachine, cvd: str | None = None, order: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in machine.env.items() if k not in CUDA_VARS}
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    if order is not None:
        env["CUDA_DEVICE_ORDER"] = order
    env.update(extra)
    return env


def run_json(machine: SimMachine, code: str, *args: str, cvd: str | None = None, order: str | None = None,
             timeout: float = 120, **extra: str) -> dict:
    """Run Python code in a child on the simulated machine; return the JSON of its last stdout line."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=child_env(machine, cvd, order, **extra),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: every machine sim_factory opened, whose environment outlives the test that opened it
_SHARED: list[SimMachine] = []


@pytest.fixture(scope="session")
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Open simulated machines by preset or path, shared by the whole session."""
    opened: dict[str, SimMachine] = {}
    stack = []

    def get(topology: str) -> SimMachine:
        if topology not in opened:
            cm = simulated(topology, base_env=dict(os.environ))
            opened[topology] = cm.__enter__()
            _SHARED.append(opened[topology])
            stack.append(cm)
        return opened[topology]

    yield get
    _SHARED.clear()
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _shared_machines_name_this_test() -> None:
    """A shared machine's environment is the test process's as it was when the machine opened: its
    PYTEST_CURRENT_TEST named the test that opened it, and every child run from it (or a forked child that takes
    it) named that test too, so tools/mutation_sample.py credited that test with what the child called and ran
    the wrong tests against its mutants.  Each test's children name that test."""
    now = os.environ.get("PYTEST_CURRENT_TEST")
    for machine in _SHARED:
        if now is None:
            machine.env.pop("PYTEST_CURRENT_TEST", None)
        else:
            machine.env["PYTEST_CURRENT_TEST"] = now


#: This host's first two CPUs: the two NUMA nodes of ``host8``, so that a bind there is a real system call.
CPUS = sorted(os.sched_getaffinity(0))[:2]


@pytest.fixture(scope="module")
def host8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated 8-GPU, 2-node machine whose nodes are ``CPUS`` (GPUs 0-3 on node 0, 4-7 on node 1)."""
    path = tmp_path_factory.mktemp("topo") / "host8.toml"
    text = 'name = "host8"\n' + "".join(f'[[numa_node]]\nid = {n}\ncpus = "{c}"\n' for n, c in enumerate(CPUS))
    for i in range(8):
        text += (f'[[gpu]]\nuuid = "GPU-{i:08x}-0000-0000-0000-000000000000"\n'
                 f'pci_bus_id = "0000:{16 * i + 16:02x}:00.0"\nname = "NVIDIA H100 80GB HBM3"\nnuma_node = {i // 4}\n')
    path.write_text(text)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts (with ``start``), killed and reaped when it ends."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def start(procs: list[subprocess.Popen], machine: SimMachine, argv: list[str], cvd: str | None = None,
          **env: str) -> tuple[subprocess.Popen, list[str]]:
    """Start ``argv`` on the simulated machine and wait for its first line, ``ready [WORD ...]``; the process and
    those words."""
    p = subprocess.Popen(argv, env=child_env(machine, cvd, **env), stdout=subprocess.PIPE, text=True)
    procs.append(p)
    line = p.stdout.readline()
    assert line.startswith("ready"), line
    return p, line.split()[1:]
