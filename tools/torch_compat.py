#!/usr/bin/env python3
"""torch.cuda._get_nvml_device_index on every recorded CUDA_VISIBLE_DEVICES case, on the simulator.

For the torch installed in this environment: does the helper exist, and what
does it answer for logical devices 0-4 on each case recorded from the real
driver (tests/data/real-*/cvd_cases.json), replayed on that machine's captured
topology?  Writes JSON for tools/compat_table.py, which builds docs/compat.md.

    python3 tools/torch_compat.py OUT.json
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, sys
try:
    import torch
except ImportError:
    print(json.dumps({"torch": None})); sys.exit(0)
fn = getattr(torch.cuda, "_get_nvml_device_index", None)
out = {"torch": torch.__version__, "has_helper": fn is not None, "answers": []}
for i in range(5):
    if fn is None:
        break
    try:
        out["answers"].append(fn(i))
    except Exception as e:
        out["answers"].append(type(e).__name__)
print(json.dumps(out))
"""


def main() -> int:
    from gpuaffinity.sim import simulated
    from test_sim_cuda import captured_topology

    out_path = sys.argv[1]
    folder = ROOT / "tests" / "data" / "real-h200x4-2026-11-27b"  # the widest recorded table
    data = json.loads((folder / "cvd_cases.json").read_text())
    cases = [c for c in data["cases"] if c["order"] == "PCI_BUS_ID"]
    rows = []
    with simulated(captured_topology(folder)) as machine:
        def one(case: dict) -> dict:
            env = {k: v for k, v in machine.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
            if case["cvd"] is not None:
                env["CUDA_VISIBLE_DEVICES"] = case["cvd"]
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
            got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-300:]}
            truth = ([data["bus_ids"].index(d["pci_bus_id"]) for d in case["devices"]] if case["cuInit"] == 0
                     else f"cuInit {case['cuInit']}")
            return {"label": case["label"], "cvd": case["cvd"], "driver": truth, **got}
        with cf.ThreadPoolExecutor(os.cpu_count() or 2) as ex:
            rows = list(ex.map(one, cases))
    version = next((r.get("torch") for r in rows if "torch" in r), None)
    result = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0], "torch": version,
              "has_helper": next((r.get("has_helper") for r in rows if "has_helper" in r), None),
              "dataset": folder.name, "cases": rows}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1))
    wrong = sum(1 for r in rows if r.get("has_helper") and not agrees(r))
    print(f"torch {version}: helper {'present' if result['has_helper'] else 'absent'}; "
          f"{len(rows)} cases, {wrong} where the helper disagrees with the driver")
    return 0


def agrees(row: dict) -> bool:
    """The helper's answers for the visible devices equal the driver's, and it refuses past them."""
    truth = row["driver"]
    answers = row.get("answers", [])
    if isinstance(truth, str):  # the driver refuses the variable
        return all(isinstance(a, str) for a in answers)
    return answers[: len(truth)] == truth and all(isinstance(a, str) for a in answers[len(truth):])


if __name__ == "__main__":
    raise SystemExit(main())
