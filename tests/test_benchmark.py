"""The benchmark runs on the simulator in CI: every row of issue 14 present and its variants correct.

Nothing here is timed: speed targets live in the benchmark's table (docs/performance.md), never in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_resolve.py"
ROWS = ["1 serving worker (torch + CUDA up): ours, first call incl. import", "ours, first call with locality (plan)",
        "the seed's way: helper + pynvml handle + memory affinity", "ours, warm call",
        "2 torch imported, CUDA not up: ours, first call", "3 CLI, no torch: ours, fresh process resolve(0)",
        "bare NVML way (wrong under a reordered CVD)", "floor: interpreter + nvmlInit",
        "gpuaffinity resolve --json (adds locality)", "gpuaffinity bind 0 -- true", "numactl --cpunodebind=0 true",
        "bare interpreter: python -c pass",
        "4 import gpuaffinity, clean interpreter (-I -S)", "5 resolve --policy strict --json",
        "one bare cuInit child", "old row, not the headline"]


@pytest.mark.slow
def test_the_benchmark_has_every_row_on_the_simulator(tmp_path):
    raw = tmp_path / "bench.json"
    out = subprocess.run([sys.executable, str(BENCH), "--repeat", "1", "--json", str(raw)], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout
    assert table.startswith("machine: simulated dgx-h100 (8 GPUs); CUDA_VISIBLE_DEVICES=3,6,5,4,0,7,1,2")
    for row in ROWS:
        assert row in table, row
    record = json.loads(raw.read_text())
    assert record["cvd"] == "3,6,5,4,0,7,1,2"
    med = record["median_seconds"]
    assert all(v > 0 for v in med.values())
    # the clean import loads nothing heavy (the one structural claim the table makes about itself)
    count, heavy = record["import_modules"]
    assert heavy == "-" and int(count) < 20

