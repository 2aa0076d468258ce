"""benchmarks/bench_check.py runs in a tiny configuration: every case of its table and its JSON, with times.

Nothing here is timed against a target: the figures live in docs/performance.md, never in a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_check.py"
CASES = ["check_pids_inprocess", "check_pids_cli", "check_all_inprocess", "check_all_cli", "check_pids_pages_inprocess",
         "check_pids_pages_cli"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the simulated machine's nodes need two CPUs")
def test_the_benchmark_runs_every_case_and_leaves_no_process(tmp_path):
    raw = tmp_path / "bench.json"
    out = subprocess.run([sys.executable, str(BENCH), "--workers", "2", "--threads", "5", "--gib", "0,0.05",
                          "--repeat", "2", "--json", str(raw)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    assert table.startswith("machine: ") and " CPUs (" in table and "Linux " in table, table
    assert "GPUs: simulated 8-GPU machine (examples/ray-sim-8gpu.toml" in table
    assert "workers: 2 x 5 sleeping threads" in table
    record = json.loads(raw.read_text())
    assert list(record["cases"]) == CASES
    for key, case in record["cases"].items():
        assert len(case["seconds"]) == 2 and all(s > 0 for s in case["seconds"]), key
        assert 0 < case["min"] <= case["median"] <= case["max"], key
        assert case["worker_statuses"] == ["ok"] and case["rows"] >= 2, (key, case)
        assert case["label"] in table
        if key.endswith("_cli"):  # the report's own time, inside the fresh process's wall time
            assert all(0 < own < wall for own, wall in zip(case["own_seconds"], case["seconds"], strict=True)), key
    assert record["cases"]["check_pids_inprocess"]["rows"] == 2
    assert [x["gib"] for x in record["numa_maps"]] == [0, 0.05]
    for x in record["numa_maps"]:
        assert all(s > 0 for s in x["look_seconds"] + x["pages_seconds"]) and x["counted_bytes"] > 0, x
    small, bigger = record["numa_maps"]
    assert bigger["bytes"] > 0.049 * (1 << 30)
    assert bigger["counted_bytes"] - small["counted_bytes"] >= 0.95 * bigger["bytes"]  # resident, and counted
    assert record["machine"]["kernel"] and record["machine"]["cpus"] >= 2
    # every worker, the checker and each memory process it started is gone
    started = record["started_pids"]
    assert len(started) == 2 + 1 + 2  # workers, the checker, one memory process a size
    assert [p for p in started if os.path.exists(f"/proc/{p}")] == []

def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the simulated machine's nodes need two CPUs")
def test_ctrl_c_stops_every_process_it_started():
    """SIGINT to the benchmark alone (not to its process group, as a terminal's Ctrl-C would): its workers and
    checker, started before, are all gone when it exits."""
    # as from a terminal: a runner that started this suite in the background (`cmd &` in a script) left SIGINT
    # ignored, which the benchmark would inherit and Python then keeps
    bench = subprocess.Popen([sys.executable, str(BENCH), "--workers", "2", "--threads", "5", "--gib", "0",
                              "--repeat", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        for line in bench.stderr:
            if "round 1/1000" in line or time.monotonic() > deadline:
                break
        started = children_of(bench.pid)
        assert len(started) >= 3, started  # two workers and the checker (and maybe a fresh `check` command)
        bench.send_signal(signal.SIGINT)
        rest = bench.stderr.read()
        assert bench.wait(timeout=60) == 130, rest
        assert "interrupted; every process it started is stopped" in rest
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    alive = [p for p in started if os.path.exists(f"/proc/{p}")]
    assert alive == [], alive
