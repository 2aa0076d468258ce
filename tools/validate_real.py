#!/usr/bin/env python3
"""gpuaffinity on a real multi-GPU machine: resolution against the driver, binding, a concurrent reorder.

Runs from the repository root with the package importable (PYTHONPATH=src).
Each case runs in a fresh process, as a worker would.  Writes JSON files into
the folder given as the first argument and prints a short table last.

    PYTHONPATH=src python3 tools/validate_real.py OUTDIR [cvd_cases.json]

The optional second argument is tools/probe_real_driver.py's output from the
same machine: its per-case driver truth is what resolution is compared with.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

READBACK = ("import json, os, gpuaffinity.numa.bind as b; m, n = b.get_mempolicy();"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), m, sorted(n)]))")


def run(args: list[str], env_over: dict[str, str | None], timeout: float = 300) -> tuple[int, str, str, float]:
    env = dict(os.environ)
    for k, v in env_over.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    t = time.perf_counter()
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t


def resolve_case(case: dict, policy: str, torch: bool) -> dict:
    env = {"CUDA_VISIBLE_DEVICES": case["cvd"], "CUDA_DEVICE_ORDER": case["order"]}
    if torch:
        code = ("import json, sys, warnings, torch, gpuaffinity\nwarnings.simplefilter('always')\n"
                "with warnings.catch_warnings(record=True) as w:\n"
                "    try:\n"
                f"        d = [x.to_dict() for x in gpuaffinity.resolve_all(policy={policy!r})]\n"
                "    except gpuaffinity.GpuAffinityError as e:\n"
                "        print(json.dumps({'error': type(e).__name__})); sys.exit(0)\n"
                "print(json.dumps({'devices': d, 'warnings': [str(x.message) for x in w]}))")
        rc, out, err, dt = run([sys.executable, "-c", code], env)
    else:
        rc, out, err, dt = run([sys.executable, "-m", "gpuaffinity", "resolve", "--json", "--policy", policy], env)
        out = json.dumps({"devices": json.loads(out)}) if rc == 0 else json.dumps({"error": err.strip()})
    rec = json.loads(out) if out.strip() else {"error": err.strip()[-300:]}
    rec.update(label=case["label"], cvd=case["cvd"], order=case["order"], policy=policy, torch=torch, rc=rc,
               seconds=round(dt, 3), stderr=err.strip()[-500:])
    return rec


def main() -> int:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    truth_file = sys.argv[2] if len(sys.argv) > 2 else None
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    query = ["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id,name,driver_version", "--format=csv,noheader"]
    try:
        smi = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()
    except FileNotFoundError:  # a dry run on the simulator: NVML's own list stands in for nvidia-smi
        import pynvml
        pynvml.nvmlInit()
        smi = [f"{i}, {pynvml.nvmlDeviceGetUUID(h)}, {pynvml.nvmlDeviceGetPciInfo(h).busId}, x, y" for i, h in
               ((i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount()))]
    results["nvidia_smi"] = smi
    smi_bus = [line.split(", ")[2].lower()[4:] for line in smi]  # 00000000:3B:00.0 -> 0000:3b:00.0

    # 1. resolution: every driver case, each policy, in a fresh process, against the driver's own answer
    cases = []
    if truth_file:
        data = json.load(open(truth_file))
        for c in data["cases"]:
            if c["order"] is None or c["label"].startswith("order_"):
                continue
            c = dict(c)
            c["truth"] = [d["pci_bus_id"].lower() for d in c.get("devices", [])] if c.get("cuInit") == 0 else None
            c["truth_error"] = c.get("cuInit")
            cases.append(c)
    jobs = [(c, p, False) for c in cases for p in ("first", "verify", "strict")]
    jobs += [(c, "verify", True) for c in cases if c["order"] == "PCI_BUS_ID"]
    with cf.ThreadPoolExecutor(8) as ex:
        recs = list(ex.map(lambda j: resolve_case(*j), jobs))
    by_case = {(c["label"], c["order"]): c for c in cases}
    bad = []
    for r in recs:
        c = by_case[(r["label"], r["order"])]
        if c["truth"] is None:
            ok = "devices" not in r or r["devices"] == []
            if c["truth_error"] == 101:
                ok = "devices" not in r
        else:
            got = [d["pci_bus_id"] for d in r.get("devices", [])]
            ok = got == c["truth"] and not any(d["fallback"] for d in r.get("devices", []))
            for d in r.get("devices", []):  # nvidia-smi's index is NVML's: it must name the same GPU
                ok = ok and smi_bus[d["nvml_index"]] == d["pci_bus_id"]
        r["ok"] = ok
        if not ok:
            bad.append(r)
    results["resolve"] = {"cases": len(recs), "wrong": len(bad), "wrong_cases": bad[:40]}
    json.dump(recs, open(os.path.join(out, "resolve_cases.json"), "w"), indent=1)

    # 2. bind each GPU's process and read back affinity and memory policy from the kernel
    binds = []
    for i in range(len(smi)):
        for mode in ("node", "exclusive"):
            rc, o, e, dt = run([sys.executable, "-m", "gpuaffinity", "bind", str(i), "--mode", mode, "--",
                                sys.executable, "-c", READBACK], {"CUDA_VISIBLE_DEVICES": None})
            plan_rc, plan, _, _ = run([sys.executable, "-m", "gpuaffinity", "bind", str(i), "--mode", mode,
                                       "--dry-run"], {"CUDA_VISIBLE_DEVICES": None})
            binds.append({"gpu": i, "mode": mode, "rc": rc, "readback": json.loads(o) if rc == 0 else None,
                          "stderr": e.strip()[-400:], "plan": plan})
    results["bind"] = binds

    # 3. a Ray-like reorder, 4 processes at once, each told its own logical device 0
    order = [3, 1, 0, 2][: len(smi)]
    cvd = ",".join(map(str, order))
    procs = []
    for worker in range(len(order)):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=cvd)
        code = (f"import json, os, gpuaffinity as g; d = g.resolve({worker}); "
                "print(json.dumps([d.nvml_index, d.pci_bus_id, sorted(os.sched_getaffinity(0))]))")
        procs.append(subprocess.Popen([sys.executable, "-m", "gpuaffinity", "bind", str(worker), "--", sys.executable,
                                       "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ray = []
    for worker, p in enumerate(procs):
        o, e = p.communicate(timeout=300)
        got = json.loads(o) if p.returncode == 0 else None
        ray.append({"worker": worker, "rc": p.returncode, "got": got, "want_nvml": order[worker], "stderr": e[-300:]})
    results["ray_reorder"] = {"cvd": cvd, "workers": ray,
                              "ok": all(r["got"] and r["got"][0] == r["want_nvml"] for r in ray)}
    json.dump(results, open(os.path.join(out, "validation.json"), "w"), indent=1)

    print(f"resolution: {len(recs) - len(bad)}/{len(recs)} runs match the driver (cases x policies, + torch)")
    for r in bad[:10]:
        print("  WRONG", r["label"], r["order"], r["policy"], r["torch"], r.get("error") or
              [d["pci_bus_id"] for d in r.get("devices", [])], r["stderr"][-200:])
    for b in binds:
        rb = b["readback"]
        print(f"bind gpu {b['gpu']} {b['mode']:<9} rc={b['rc']} cpus={len(rb[0]) if rb else '-'} "
              f"mempolicy={rb[1] if rb else '-'} nodes={rb[2] if rb else '-'}")
    print(f"ray-like reorder {cvd}: {'ok' if results['ray_reorder']['ok'] else 'WRONG'} "
          f"{[r['got'][0] if r['got'] else None for r in ray]}")
    return 0 if not bad and results["ray_reorder"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
