#!/usr/bin/env python3
"""Resolver benchmark: import cost, fresh-process resolve vs. the seed's way, warm resolve, resolve_all.

Everything is measured side by side in one run, on one machine, and printed as
a table; ratios come from the same run.  Without a GPU (or with --sim PRESET)
it runs against the simulator; on a GPU host with --real it uses the real driver.

    python3 benchmarks/bench_resolve.py                 # simulated dgx-h100, Ray-shuffled CVD
    python3 benchmarks/bench_resolve.py --real --cvd 3,1,0,2 --json out.json

The seed's way is what projects do today: import torch, call
torch.cuda._get_nvml_device_index, then pynvml to name the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT = r"""
import sys, time
before = set(sys.modules)
t = time.perf_counter()
import gpuaffinity
dt = time.perf_counter() - t
new = sorted(set(sys.modules) - before)
heavy = [m for m in new if m.split('.')[0] in ('torch', 'pynvml', 'cuda', 'ctypes', 'pluggy', 'numpy')]
print(dt, len(new), ','.join(heavy) or '-')
"""
OURS = "import gpuaffinity; d = gpuaffinity.resolve(0); assert d.uuid.startswith('GPU-')"
SEED = ("import torch, pynvml\n"
        "i = torch.cuda._get_nvml_device_index(0)\n"
        "pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(i); u = pynvml.nvmlDeviceGetUUID(h)\n"
        "pynvml.nvmlShutdown()")
FLOOR = "import ctypes; nv = ctypes.CDLL('libnvidia-ml.so.1'); assert nv.nvmlInit_v2() == 0; nv.nvmlShutdown()"
WARM = r"""
import time, warnings, gpuaffinity
warnings.simplefilter("ignore")
gpuaffinity.resolve(0)
n = 200000
t = time.perf_counter()
for _ in range(n):
    gpuaffinity.resolve(0)
warm = (time.perf_counter() - t) / n
out = {"warm_us": warm * 1e6}
for policy in ("first", "verify", "strict"):
    runs = []
    for _ in range(7):
        gpuaffinity.clear_cache()
        t = time.perf_counter()
        devs = gpuaffinity.resolve_all(policy=policy)
        runs.append(time.perf_counter() - t)
    out[policy] = sorted(runs)[len(runs) // 2] * 1e3
    out["devices"] = len(devs)
import json; print(json.dumps(out))
"""
# CUDA already initialised here (as in a serving process): the pci strategy runs in-process and is cheap,
# so the consensus of every strategy costs only what the extra strategies cost.
CONSENSUS = r"""
import ctypes, json, sys, time, warnings
warnings.simplefilter("ignore")
assert ctypes.CDLL("libcuda.so.1").cuInit(0) == 0
try:
    import torch  # noqa: F401 - torch imported too, so its strategy takes part
except ImportError:
    pass
import gpuaffinity
out = {"torch": "torch" in sys.modules}
for policy in ("first", "verify", "strict"):
    runs = []
    for _ in range(31):
        gpuaffinity.clear_cache()
        t = time.perf_counter()
        devs = gpuaffinity.resolve_all(policy=policy)
        runs.append(time.perf_counter() - t)
    out[policy] = sorted(runs)[len(runs) // 2] * 1e3
out["agreed"] = list(devs[0].agreed)
print(json.dumps(out))
"""


def timed(code: str, env: dict[str, str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", default="dgx-h100", help="simulated machine (default dgx-h100)")
    ap.add_argument("--real", action="store_true", help="use this host's real NVIDIA driver")
    ap.add_argument("--cvd", default=None, help="CUDA_VISIBLE_DEVICES (default: a shuffled list of every GPU)")
    ap.add_argument("--repeat", type=int, default=15, help="fresh processes per variant (median reported)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT / "src")
    with contextlib.ExitStack() as stack:
        if not args.real:
            sys.path.insert(0, str(ROOT / "src"))
            from gpuaffinity.sim import simulated
            machine = stack.enter_context(simulated(args.sim, base_env=env))
            env = machine.env
            ngpus = len(machine.topology.gpus)
            where = f"simulated {args.sim} ({ngpus} GPUs)"
        else:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout.strip().splitlines()
            except FileNotFoundError:
                out = []
            if not out:  # no nvidia-smi: count through gpuaffinity
                probe = "import gpuaffinity.inventory as i; print(len(i.read_inventory().gpus))"
                out = ["?"] * int(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                                 text=True, check=True).stdout)
            ngpus = len(out)
            where = f"real: {ngpus}x {out[0]}"
        cvd = args.cvd or ",".join(str(i) for i in [3, 6, 5, 4, 0, 7, 1, 2] if i < ngpus) or "0"
        if ngpus < 8 and args.cvd is None:
            cvd = ",".join(str(i) for i in reversed(range(ngpus)))
        env["CUDA_VISIBLE_DEVICES"] = cvd

        imports = []
        for _ in range(args.repeat):
            r = subprocess.run([sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, check=True)
            dt, n, heavy = r.stdout.split()
            imports.append(float(dt))
        ours = timed(OURS, env, args.repeat)
        floor = timed(FLOOR, env, args.repeat)
        have_torch = subprocess.run([sys.executable, "-c", "import torch"], env=env).returncode == 0
        seed = timed(SEED, env, max(3, args.repeat // 3)) if have_torch else []
        warm = json.loads(subprocess.run([sys.executable, "-c", WARM], env=env, capture_output=True, text=True,
                                         check=True).stdout)
        consensus = json.loads(subprocess.run([sys.executable, "-c", CONSENSUS], env=env, capture_output=True,
                                              text=True, check=True).stdout)

    med = statistics.median
    rows = [
        ("import gpuaffinity", f"{med(imports) * 1e3:.1f} ms", f"{n} modules; torch/NVML/CUDA/ctypes/pluggy: {heavy}"),
        ("fresh process: gpuaffinity.resolve(0)", f"{med(ours) * 1e3:.0f} ms", "interpreter start included"),
        ("fresh process: seed (torch + helper + pynvml)",
         f"{med(seed) * 1e3:.0f} ms" if seed else "n/a", "torch not installed" if not seed else ""),
        ("fresh process: floor (interpreter + nvmlInit)", f"{med(floor) * 1e3:.0f} ms", ""),
        ("ratio seed / gpuaffinity", f"{med(seed) / med(ours):.1f}x" if seed else "n/a",
         "target >= 8x sim, >= 20x GPU"),
        ("ratio gpuaffinity / floor", f"{med(ours) / med(floor):.2f}x", ""),
        ("warm resolve(0), per call", f"{warm['warm_us']:.2f} us", "target <= 2 us"),
    ]
    for policy in ("first", "verify", "strict"):
        rows.append((f"resolve_all ({warm['devices']} GPUs), policy {policy}", f"{warm[policy]:.1f} ms",
                     "cache cleared; strict asks the driver in a child" if policy == "strict" else "cache cleared"))
    extra = consensus["strict"] - consensus["first"]
    rows.append((f"CUDA up here: resolve_all, first ({', '.join(consensus['agreed'][:1])} only)",
                 f"{consensus['first']:.2f} ms", "pci runs in-process: cheap"))
    rows.append((f"CUDA up here: resolve_all, strict ({' + '.join(consensus['agreed'])})",
                 f"{consensus['strict']:.2f} ms", f"consensus costs {extra:+.2f} ms; target <= 2 ms"))
    print(f"machine: {where}; CUDA_VISIBLE_DEVICES={cvd}; host {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; medians of {args.repeat} runs")
    w = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>10}  {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"where": where, "cvd": cvd, "import_ms": med(imports) * 1e3,
                                               "ours_ms": med(ours) * 1e3, "seed_ms": med(seed) * 1e3 if seed else None,
                                               "floor_ms": med(floor) * 1e3, **warm,
                                               "cuda_up": consensus}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
