#!/usr/bin/env python3
"""Where a first call's time goes, before anything is changed: one fresh process per state.

For each process state (a serving worker with torch imported and CUDA up; torch imported; no torch) it
prints the time of each step of ``import gpuaffinity`` and the first ``resolve(0)`` (imports, plugin
collection, inventory, grammar, each strategy), the slowest imports (``-X importtime``), and the seed's way
step by step.  Writes OUTDIR/profile.json.

    PYTHONPATH=src python3 tools/profile_first_call.py OUTDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

STEPS = r"""
import json, sys, time
marks = []
def mark(what):
    marks.append([what, time.perf_counter()])
mark("start")
if "torch" in sys.argv[1]:
    import torch
    mark("import torch")
if "cuda" in sys.argv[1]:
    import ctypes
    try:
        torch.cuda.init()
    except Exception:
        ctypes.CDLL("libcuda.so.1").cuInit(0)
    mark("CUDA initialised")
t0 = time.perf_counter()
import gpuaffinity
mark("import gpuaffinity")
import gpuaffinity.api as api
mark("import gpuaffinity.api")
from gpuaffinity.core.settings import Settings, make_key
from gpuaffinity.core.plugins import build_manager, collect_strategies
from gpuaffinity.resolvers import builtin_plugins
from gpuaffinity.inventory import read_inventory
from gpuaffinity.core.cvd import read_cvd
mark("import the rest of the resolution")
st = Settings.from_key(make_key(None, None, True))
pm, plugins = build_manager(builtin_plugins(), st.disabled)
mark("build_manager (entry points)")
strategies = collect_strategies(pm, st.disabled, plugins, builtin_plugins())
mark("collect_strategies")
inv = read_inventory(st.inventory_env)
mark(f"read_inventory ({inv.source})")
g = read_cvd(st.cvd, inv.gpus, None, st.device_order, inv.hidden, inv.host_complete, inv.doubt)
mark("read_cvd")
from gpuaffinity.core.hookspec import ResolveContext
ctx = ResolveContext(inv, st.cvd, st.device_order, len(g.devices), {"allow_subprocess": True, "timeout": 120},
                     grammar=g, settings=st)
for s in strategies:
    c = s.cost(ctx)
    mark(f"{s.name}.cost = {c}")
    if c == "cheap":
        r = s.answer(ctx, 0)
        mark(f"{s.name}.answer(0): {type(r).__name__}")
api.clear_cache()
mark("-")
d = gpuaffinity.resolve(0)
mark(f"resolve(0) whole, again in this process ({d.strategy}, agreed {list(d.agreed)})")
r = gpuaffinity.plan(0)
mark("plan(0) after resolve (locality)")
print(json.dumps([[w, round((t - marks[0][1]) * 1e3, 3)] for w, t in marks]))
"""

SEED = r"""
import json, sys, time
marks = []
def mark(what):
    marks.append([what, time.perf_counter()])
import torch
if "cuda" in sys.argv[1]:
    import ctypes
    try:
        torch.cuda.init()
    except Exception:
        ctypes.CDLL("libcuda.so.1").cuInit(0)
mark("start")
i = torch.cuda._get_nvml_device_index(0)
mark("torch.cuda._get_nvml_device_index(0)")
import pynvml
mark("import pynvml")
pynvml.nvmlInit()
mark("nvmlInit")
h = pynvml.nvmlDeviceGetHandleByIndex(i)
mark("handle by index")
pynvml.nvmlDeviceGetMemoryAffinity(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)
mark("memory affinity")
print(json.dumps([[w, round((t - marks[0][1]) * 1e3, 3)] for w, t in marks]))
"""


def run(code: str, *args: str, flags: tuple[str, ...] = ()) -> tuple[object, str]:
    p = subprocess.run([sys.executable, *flags, "-c", code, *args], capture_output=True, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr
    except (IndexError, ValueError):
        return {"error": p.stderr[-2000:]}, p.stderr


def main() -> int:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    report: dict = {}
    for state in ("torch+cuda", "torch", "none"):
        steps, _ = run(STEPS, state)
        report[f"ours:{state}"] = steps
        if state != "none":
            report[f"seed:{state}"] = run(SEED, state)[0]
        _, err = run("import gpuaffinity; gpuaffinity.resolve(0)", flags=("-X", "importtime"))
        lines = [ln for ln in err.splitlines() if ln.startswith("import time:")]
        rows = []
        for ln in lines[1:]:
            parts = [x.strip() for x in ln[len("import time:"):].split("|")]
            rows.append((int(parts[1]), parts[2]))
        report["importtime_top"] = sorted(rows, reverse=True)[:25]
    for key, value in report.items():
        print(f"== {key}")
        if isinstance(value, list):
            last = 0.0
            for what, at in value:
                if isinstance(at, float | int):
                    print(f"  {at:9.2f} ms  (+{at - last:8.2f})  {what}")
                    last = at
                else:
                    print(f"  {what} {at}")
        else:
            print(f"  {value}")
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
