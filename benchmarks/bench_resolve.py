#!/usr/bin/env python3
"""Where users call gpuaffinity, against the code it replaces: every row side by side, in one run.

1. serving worker: torch imported and CUDA initialised in the process.  Ours, first call (import included)
   and warm, and with the locality (``plan``), against the seed's in-process way
   (``torch.cuda._get_nvml_device_index`` + a pynvml handle + the memory affinity);
2. torch imported, CUDA not initialised (a launcher that imports torch early): the same two;
3. launcher / CLI, no torch, a fresh process each: ours against the bare NVML way (nvmlInit, handle by
   index, CPU affinity: fast, and wrong under a reordered CUDA_VISIBLE_DEVICES) and the floor (interpreter
   + nvmlInit); ``gpuaffinity bind 0 -- true`` against ``numactl --cpunodebind=N true``;
4. ``import gpuaffinity`` in a clean interpreter (``-I -S``: no site pre-imports): time and modules;
5. ``--policy strict`` against one bare ``cuInit`` in a child process.

Every variant runs in fresh processes (``--repeat`` each, medians); in-process rows time the work after
the setup line.  Without a GPU (or with --sim PRESET) it runs on the simulator; --real uses this host.

    python3 benchmarks/bench_resolve.py                     # simulated dgx-h100, Ray-shuffled CVD
    python3 benchmarks/bench_resolve.py --real --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Setup lines, run before the timer starts.  "cuda up": the process has initialised CUDA (torch.cuda.init on a
# GPU host; on the simulator torch is a CPU build, so the driver is initialised through ctypes, which is what
# gpuaffinity checks for either way).
TORCH = "import torch\n"
CUDA_UP = ("import ctypes\n"
           "try:\n    torch.cuda.init()\nexcept Exception:\n    assert ctypes.CDLL('libcuda.so.1').cuInit(0) == 0\n")

OURS = "import gpuaffinity\nd = gpuaffinity.resolve(0)\n"
OURS_PLAN = "import gpuaffinity\nr = gpuaffinity.plan(0)\n"
SEED = ("import pynvml\n"
        "i = torch.cuda._get_nvml_device_index(0)\n"
        "pynvml.nvmlInit()\n"
        "h = pynvml.nvmlDeviceGetHandleByIndex(i)\n"
        "nodes = pynvml.nvmlDeviceGetMemoryAffinity(h, 16, pynvml.NVML_AFFINITY_SCOPE_NODE)\n")
BARE_NVML = ("import pynvml\npynvml.nvmlInit()\nh = pynvml.nvmlDeviceGetHandleByIndex(0)\n"
             "cpus = pynvml.nvmlDeviceGetCpuAffinity(h, 16)\n")
FLOOR = "import ctypes\nnv = ctypes.CDLL('libnvidia-ml.so.1')\nassert nv.nvmlInit_v2() == 0\nnv.nvmlShutdown()\n"
CUINIT = "import ctypes\nassert ctypes.CDLL('libcuda.so.1').cuInit(0) == 0\n"
# the median of 9 batches of 50,000 calls: one long loop on a shared VM reads the noise of its worst moment
WARM = ("import gpuaffinity, statistics\ngpuaffinity.resolve(0)\nn = 50000\nbatches = []\nfor _ in range(9):\n"
        "    t = time.perf_counter()\n    for _ in range(n):\n        gpuaffinity.resolve(0)\n"
        "    batches.append((time.perf_counter() - t) / n)\nprint('WARM', statistics.median(batches))\n")
IMPORT = ("import sys, time\nsys.path[:0] = {paths!r}\nbefore = set(sys.modules)\nt = time.perf_counter()\n"
          "import gpuaffinity\ndt = time.perf_counter() - t\nnew = sorted(set(sys.modules) - before)\n"
          "print('IMPORT', dt, len(new), ','.join(m for m in new if m.split('.')[0] in "
          "('typing', 're', 'torch', 'pynvml', 'cuda', 'ctypes', 'pluggy', 'dataclasses')) or '-')\n")


def timed_in_process(setup: str, work: str, env: dict[str, str], repeat: int) -> list[float]:
    """Seconds ``work`` took after ``setup``, each in a fresh process."""
    code = f"import time\n{setup}t = time.perf_counter()\n{work}print('TIME', time.perf_counter() - t)\n"
    out = []
    for _ in range(repeat):
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"bench: a variant failed: {p.stderr.strip()[-400:]}")
        out.append(float(p.stdout.split("TIME")[-1]))
    return out


def timed_process(argv: list[str], env: dict[str, str], repeat: int) -> list[float]:
    """Wall seconds of a whole fresh process."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv[:4])} failed: {p.stderr.strip()[-400:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", default="dgx-h100", help="simulated machine (default dgx-h100)")
    ap.add_argument("--real", action="store_true", help="use this host's real NVIDIA driver")
    ap.add_argument("--cvd", default=None, help="CUDA_VISIBLE_DEVICES (default: a shuffled list of every GPU)")
    ap.add_argument("--repeat", type=int, default=7, help="fresh processes per variant (medians)")
    ap.add_argument("--json", help="also write every raw figure here")
    args = ap.parse_args()

    import compileall

    # byte-compiled, as pip leaves an installed package: a variant must not pay for compiling our sources
    # (where PYTHONDONTWRITEBYTECODE is set, nothing else would write them)
    compileall.compile_dir(str(SRC / "gpuaffinity"), quiet=1)
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(SRC)
    have_torch = subprocess.run([sys.executable, "-c", "import torch"], env=env,
                                capture_output=True).returncode == 0
    with contextlib.ExitStack() as stack:
        if not args.real:
            sys.path.insert(0, str(SRC))
            from gpuaffinity.sim import simulated
            machine = stack.enter_context(simulated(args.sim, base_env=env))
            env = dict(machine.env)
            ngpus = len(machine.topology.gpus)
            where = f"simulated {args.sim} ({ngpus} GPUs)"
        else:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip().splitlines()
            ngpus = len(smi)
            where = f"real: {ngpus}x {smi[0]}"
        cvd = args.cvd or ",".join(str(i) for i in [3, 6, 5, 4, 0, 7, 1, 2] if i < ngpus)
        if ngpus < 8 and args.cvd is None:
            cvd = ",".join(str(i) for i in reversed(range(ngpus)))
        env["CUDA_VISIBLE_DEVICES"] = cvd
        n = args.repeat
        raw: dict[str, list[float]] = {}
        if have_torch:
            raw["worker: ours, first call"] = timed_in_process(TORCH + CUDA_UP, OURS, env, n)
            raw["worker: ours, first call with locality (plan)"] = timed_in_process(TORCH + CUDA_UP, OURS_PLAN, env, n)
            raw["worker: the seed's way"] = timed_in_process(TORCH + CUDA_UP, SEED, env, n)
            raw["torch, no CUDA: ours, first call"] = timed_in_process(TORCH, OURS, env, n)
            raw["torch, no CUDA: the seed's way"] = timed_in_process(TORCH, SEED, env, n)
            warm_torch = subprocess.run([sys.executable, "-c", "import time\n" + TORCH + CUDA_UP + WARM], env=env,
                                        capture_output=True, text=True, check=True).stdout
            raw["worker: ours, warm call"] = [float(warm_torch.split("WARM")[-1])]
        python = [sys.executable, "-c"]
        raw["cli: ours, fresh process resolve(0)"] = timed_process(python + [OURS], env, n)
        raw["cli: bare NVML way, fresh process"] = timed_process(python + [BARE_NVML], env, n)
        raw["cli: floor, interpreter + nvmlInit"] = timed_process(python + [FLOOR], env, n)
        raw["cli: bare interpreter (python -c pass)"] = timed_process(python + ["pass"], env, n)
        raw["cli: gpuaffinity resolve --json"] = timed_process(python + ["from gpuaffinity.cli import main; "
                                                                        "raise SystemExit(main())", "resolve",
                                                                        "--json"], env, n)
        bind = python + ["from gpuaffinity.cli import main; raise SystemExit(main())", "bind", "0", "--", "true"]
        raw["cli: gpuaffinity bind 0 -- true"] = timed_process(bind, env, n)
        numactl = shutil.which("numactl")
        if numactl:
            raw["cli: numactl --cpunodebind=0 true"] = timed_process([numactl, "--cpunodebind=0", "true"], env, n)
        warm = subprocess.run(python + ["import time\n" + WARM], env=env, capture_output=True, text=True,
                              check=True).stdout
        raw["no torch: ours, warm call"] = [float(warm.split("WARM")[-1])]
        paths = [str(SRC), *sorted({os.path.dirname(os.path.dirname(__import__("pluggy").__file__))})]
        imports = []
        for _ in range(n):
            p = subprocess.run([sys.executable, "-I", "-S", "-c", IMPORT.format(paths=paths)], capture_output=True,
                               text=True, check=True)
            _, dt, count, heavy = p.stdout.split()
            imports.append(float(dt))
        raw["import gpuaffinity, clean interpreter"] = imports
        raw["strict: gpuaffinity resolve --policy strict --json"] = timed_process(
            python + ["from gpuaffinity.cli import main; raise SystemExit(main())", "resolve", "--policy", "strict",
                      "--json"], env, n)
        raw["strict: one bare cuInit child"] = timed_process(python + [CUINIT], env, n)
        if have_torch:
            raw["old row: fresh process, import torch + the seed's way"] = timed_process(python + [TORCH + SEED],
                                                                                        env, max(3, n // 2))

    med = {k: statistics.median(v) for k, v in raw.items()}

    def ms(k: str) -> str:
        return f"{med[k] * 1e3:.1f} ms" if k in med else "n/a"

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.2f}x" if a in med and b in med else "n/a"

    rows = [
        ("1 serving worker (torch + CUDA up): ours, first call incl. import", ms("worker: ours, first call"),
         f"{ratio('worker: ours, first call', 'worker: the seed' + chr(39) + 's way')} the seed's; target <= 1.0"),
        ("  ours, first call with locality (plan)", ms("worker: ours, first call with locality (plan)"),
         ratio("worker: ours, first call with locality (plan)", "worker: the seed's way") + " the seed's"),
        ("  the seed's way: helper + pynvml handle + memory affinity", ms("worker: the seed's way"), ""),
        ("  ours, warm call", f"{med['worker: ours, warm call'] * 1e6:.2f} us" if "worker: ours, warm call" in med
         else "n/a", "target <= 1 us"),
        ("2 torch imported, CUDA not up: ours, first call", ms("torch, no CUDA: ours, first call"),
         ratio("torch, no CUDA: ours, first call", "torch, no CUDA: the seed's way") + " the seed's"),
        ("  the seed's way", ms("torch, no CUDA: the seed's way"), ""),
        ("3 CLI, no torch: ours, fresh process resolve(0)", ms("cli: ours, fresh process resolve(0)"),
         ratio("cli: ours, fresh process resolve(0)", "cli: floor, interpreter + nvmlInit")
         + " the floor; target <= 1"),
        ("  bare NVML way (wrong under a reordered CVD)", ms("cli: bare NVML way, fresh process"),
         ratio("cli: ours, fresh process resolve(0)", "cli: bare NVML way, fresh process") + " of it is ours"),
        ("  floor: interpreter + nvmlInit", ms("cli: floor, interpreter + nvmlInit"), ""),
        ("  gpuaffinity resolve --json (adds locality)", ms("cli: gpuaffinity resolve --json"), ""),
        ("  gpuaffinity bind 0 -- true", ms("cli: gpuaffinity bind 0 -- true"),
         ratio("cli: gpuaffinity bind 0 -- true", "cli: numactl --cpunodebind=0 true") + " numactl; target <= 1.2"),
        ("  numactl --cpunodebind=0 true", ms("cli: numactl --cpunodebind=0 true"), "" if numactl else
         "numactl not installed here"),
        ("  bare interpreter: python -c pass", ms("cli: bare interpreter (python -c pass)"),
         ratio("cli: bare interpreter (python -c pass)", "cli: numactl --cpunodebind=0 true")
         + " numactl: what any Python command costs before its first line"),
        ("  ours, warm call (no torch)", f"{med['no torch: ours, warm call'] * 1e6:.2f} us", "target <= 1 us"),
        ("4 import gpuaffinity, clean interpreter (-I -S)", ms("import gpuaffinity, clean interpreter"),
         f"{count} modules; heavy ones loaded: {heavy}; target <= 5 ms"),
        ("5 resolve --policy strict --json", ms("strict: gpuaffinity resolve --policy strict --json"),
         ratio("strict: gpuaffinity resolve --policy strict --json", "strict: one bare cuInit child")
         + " one cuInit child; target <= 1.2"),
        ("  one bare cuInit child", ms("strict: one bare cuInit child"), ""),
        ("old row, not the headline: fresh process, import torch + the seed's way",
         ms("old row: fresh process, import torch + the seed's way"),
         ratio("old row: fresh process, import torch + the seed's way", "cli: ours, fresh process resolve(0)")
         + " ours (import torch is most of it)"),
    ]
    print(f"machine: {where}; CUDA_VISIBLE_DEVICES={cvd}; host {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; medians of {n} fresh processes; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    w = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>10}  {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"where": where, "cvd": cvd, "python": platform.python_version(),
                                               "raw_seconds": raw, "median_seconds": med,
                                               "import_modules": [count, heavy]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
