#!/usr/bin/env python3
"""gpuaffinity on a real multi-GPU machine, one run, every case: the end-to-end proof.

1. the driver's truth: tools/probe_real_driver.py (every recorded
   CUDA_VISIBLE_DEVICES value x both orders, one fresh process each);
2. resolution: every case x every policy (and with torch imported), each in a
   fresh process, compared strategy by strategy with that truth and with
   nvidia-smi;
3. binding: a child per GPU, its CPU affinity and memory policy read back;
4. a Ray-like reorder (3,1,0,2) across 4 processes at once;
5. timings: benchmarks/bench_resolve.py --real, side by side.

Runs from the repository root with the package importable (PYTHONPATH=src),
writes JSON files into OUTDIR and prints a short table last.

    PYTHONPATH=src python3 tools/validate_real.py OUTDIR [cvd_cases.json]

With a cvd_cases.json from the same machine, step 1 is skipped.
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


RESOLVE = r"""
import json, sys, warnings
if sys.argv[2] == "torch":
    import torch  # noqa: F401
import gpuaffinity
from gpuaffinity.core.model import Answer
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    try:
        devs = gpuaffinity.resolve_all(policy=sys.argv[1])
    except gpuaffinity.GpuAffinityError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        sys.exit(0)
rows = []
for d in devs:
    row = d.to_dict()
    row["verdicts"] = {v.strategy: v.result.uuid if isinstance(v.result, Answer) else None for v in d.verdicts}
    rows.append(row)
print(json.dumps({"devices": rows, "warnings": [str(x.message) for x in w]}))
"""


def resolve_case(case: dict, policy: str, torch: bool) -> dict:
    env = {"CUDA_VISIBLE_DEVICES": case["cvd"], "CUDA_DEVICE_ORDER": case["order"]}
    rc, out, err, dt = run([sys.executable, "-c", RESOLVE, policy, "torch" if torch else "-"], env)
    rec = json.loads(out) if rc == 0 and out.strip() else {"error": "crashed", "message": err.strip()[-300:]}
    rec.update(label=case["label"], cvd=case["cvd"], order=case["order"], policy=policy, torch=torch, rc=rc,
               seconds=round(dt, 3), stderr=err.strip()[-500:])
    return rec


def main() -> int:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    truth_file = sys.argv[2] if len(sys.argv) > 2 else None
    if truth_file is None:
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "probe_real_driver.py"),
                        os.path.join(out, "probe")], check=True, stdout=subprocess.DEVNULL)
        truth_file = os.path.join(out, "probe", "cvd_cases.json")
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
    smi_uuid = [line.split(", ")[1] for line in smi]
    bad = []
    strategy_answers: dict[str, list[int]] = {}  # strategy -> [answers, wrong answers]
    for r in recs:
        c = by_case[(r["label"], r["order"])]
        if c["truth"] is None:
            ok = "devices" not in r or r["devices"] == []
            if c["truth_error"] == 101:
                ok = r.get("error") == "InvalidVisibleDevicesError"
        else:
            got = [d["pci_bus_id"] for d in r.get("devices", [])]
            ok = got == c["truth"]
            # a fallback is allowed only with its warning (torch raising on a list it cannot read, say)
            fallbacks = sum(d["fallback"] for d in r.get("devices", []))
            ok = ok and (not fallbacks or bool(r.get("warnings")))
            results.setdefault("fallbacks", 0)
            results["fallbacks"] += fallbacks
            for d, bus in zip(r.get("devices", []), c["truth"], strict=False):
                ok = ok and smi_bus[d["nvml_index"]] == d["pci_bus_id"]  # nvidia-smi's index is NVML's
                want = smi_uuid[smi_bus.index(bus)] if bus in smi_bus else None
                for strategy, answer in d.get("verdicts", {}).items():
                    if answer is not None:
                        tally = strategy_answers.setdefault(strategy, [0, 0])
                        tally[0] += 1
                        tally[1] += answer != want
                        ok = ok and answer == want
        r["ok"] = ok
        if not ok:
            bad.append(r)
    results["resolve"] = {"cases": len(recs), "wrong": len(bad), "wrong_cases": bad[:40],
                          "strategies": strategy_answers}
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

    bench = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                                         "bench_resolve.py"), "--real", "--repeat", "15", "--json",
                            os.path.join(out, "bench.json")], capture_output=True, text=True)
    print(bench.stdout.strip() or bench.stderr.strip()[-2000:])
    print(f"resolution: {len(recs) - len(bad)}/{len(recs)} runs match the driver (cases x policies, + torch)")
    for strategy, (n, wrong) in sorted(strategy_answers.items()):
        print(f"  strategy {strategy:<8} answered {n} times, wrong {wrong}")
    print(f"  fallback answers (each right, each with its warning): {results.get('fallbacks', 0)}")
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
