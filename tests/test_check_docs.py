"""docs/check.md's table comes from the command this test runs: the same four workers, the same statuses, the same
columns, and the problems worded as the docs show them (pids and timings aside)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import CPUS, ROOT

pytestmark = pytest.mark.skipif(CPUS != [0, 1], reason="the example machine's nodes are CPUs 0 and 1")

SCRIPT = r"""
G="$PY -m gpuaffinity"; R=$(mktemp -d)
$G bind 1 -- $PY -c 'import sys, time; b=b"x"*(100<<20); open(sys.argv[1], "w").close(); time.sleep(60)' $R/a & A=$!
W='import sys, time; b=b"x"*(300<<20); open(sys.argv[1], "w").close(); time.sleep(60)'
$G bind 5 --memory none -- $PY -c "$W" $R/b & B=$!
$G bind 2 -- $PY -c '
import ctypes, os, sys, threading, time
def run():
    ctypes.CDLL(None).prctl(15, b"pt_nccl_watchdg", 0, 0, 0); os.sched_setaffinity(0, {1})
    open(sys.argv[1], "w").close(); time.sleep(60)
threading.Thread(target=run, daemon=True).start(); time.sleep(60)' $R/c & C=$!
$G bind 3 -- sleep 60 & D=$!
for i in $(seq 600); do [ -e $R/a ] && [ -e $R/b ] && [ -e $R/c ] && [ "$(cat /proc/$D/comm)" = sleep ] && break
  sleep 0.1; done
taskset -p 3 $D >/dev/null
CUDA_VISIBLE_DEVICES=0 $G check --pages $A $B $C $D; echo "exit status $?"; kill $A $B $C $D; rm -rf $R
"""


def _shape(line: str) -> str:
    line = re.sub(r"\b\d{2,7}\b(?= )", "PID", line, count=1) if re.match(r"^\d+ ", line) else line
    line = re.sub(r"\d+ \((\w+)\)", r"PID (\1)", line)
    line = re.sub(r"\d+\.\d+ (MiB|s)", r"N \1", line)
    return re.sub(r"\s+", " ", line).strip()


def test_the_documented_table_is_what_the_command_prints():
    doc = (ROOT / "docs" / "check.md").read_text()
    block = doc.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    sim = [sys.executable, "-m", "gpuaffinity", "sim", "run", str(ROOT / "examples" / "ray-sim-8gpu.toml"), "--",
           "bash", "-c", SCRIPT]
    proc = subprocess.run(sim, env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=300)
    out = proc.stdout.splitlines()
    assert out[-1] == "exit status 4", proc.stdout + proc.stderr
    got = [_shape(x) for x in out[:-1] if not x.startswith("note: NVML")]
    want = [_shape(x) for x in block]
    assert got == want, "\n".join(got)
