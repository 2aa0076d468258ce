#!/usr/bin/env python3
"""gpuaffinity on a real multi-GPU machine, one run, every case: the end-to-end proof.

Stage ``full`` (the process may open every GPU):

1. the driver's truth: tools/probe_real_driver.py (every recorded
   CUDA_VISIBLE_DEVICES value x both orders, one fresh process each);
2. resolution: every case x every policy (and with torch imported), each in a
   fresh process, compared strategy by strategy with that truth and with
   nvidia-smi, and the GPU list's source (``inventory``) with what it must be;
3. binding: a child per GPU, its CPU affinity and memory policy read back;
4. a Ray-like reorder (3,1,0,2) across the GPUs at once;
5. timings: benchmarks/bench_resolve.py --real, side by side.

Stages ``hidden-absent`` and ``hidden-denied`` (root): the same steps 1-4
inside tools/hide_gpus.py, in a private mount namespace whose read-only /dev
lacks the first half of the GPUs' nodes (at least one: on a one-GPU host, the
only one), or holds them with mode 000 for a process running as nobody: what a
device-cgroup job or a container sees.  With the only GPU hidden, the process
sees none, and every case must give an empty list without an error.  The
driver's truth is probed inside, so every answer is checked against the
driver's view *in that process*; the probe adds cases naming the GPUs the
process cannot open.

Judging is strict: a device list must equal the driver's; where the driver
shows no device, gpuaffinity must return an empty list without an error;
where cuInit fails with CUDA_ERROR_INVALID_DEVICE, it must raise
InvalidVisibleDevicesError with exit status 1.  A crash is always wrong.
Every per-run record is kept, so the counts can be derived again:

    PYTHONPATH=src python3 tools/validate_real.py OUTDIR            # every stage
    PYTHONPATH=src python3 tools/validate_real.py --summarize OUTDIR  # the counts, from the kept records
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
READBACK = ("import json, os, gpuaffinity.numa.bind as b; m, n = b.get_mempolicy();"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), m, sorted(n)]))")
#: the exit status gpuaffinity documents for InvalidVisibleDevicesError (docs/resolving.md)
REFUSAL = ("InvalidVisibleDevicesError", 1)


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
        print(json.dumps({"error": type(e).__name__, "exit_status": e.exit_status, "message": str(e)}))
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
    try:
        rec = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
    except (IndexError, ValueError):
        rec = None
    if rec is None:
        rec = {"error": "crashed", "message": err.strip()[-300:]}
    rec.update(label=case["label"], cvd=case["cvd"], order=case["order"], policy=policy, torch=torch, rc=rc,
               seconds=round(dt, 3), stderr=err.strip()[-500:])
    return rec


def truth_cases(truth: dict) -> dict[tuple[str, str | None], dict]:
    """(label, order) -> the driver's record, with ``truth`` (bus ids or None) and ``truth_error``."""
    out = {}
    for c in truth["cases"]:
        if c["order"] is None or c["label"].startswith("order_"):
            continue
        c = dict(c)
        c["truth"] = [d["pci_bus_id"].lower() for d in c.get("devices", [])] if c.get("cuInit") == 0 else None
        c["truth_error"] = c.get("cuInit")
        out[(c["label"], c["order"])] = c
    return out


def judge(rec: dict, case: dict, smi: list[str], expect_inventory: str) -> tuple[bool, list[tuple[str, bool]]]:
    """Whether one run matches the driver; and (strategy, right) for every strategy's answer."""
    smi_bus = [line.split(", ")[2].lower()[4:] for line in smi]  # 00000000:3B:00.0 -> 0000:3b:00.0
    smi_uuid = [line.split(", ")[1] for line in smi]
    answers: list[tuple[str, bool]] = []
    if case["truth"] is None:
        if case["truth_error"] == 101:  # cuInit refuses the variables: the documented error, its status
            return (rec.get("error"), rec.get("exit_status")) == REFUSAL, answers
        return rec.get("devices") == [] and "error" not in rec, answers  # no device: an empty list, no error
    if "devices" not in rec:
        return False, answers
    devices = rec["devices"]
    ok = [d["pci_bus_id"] for d in devices] == case["truth"]
    # a fallback is allowed only with its warning (torch raising on a list it cannot read, say)
    ok = ok and (not any(d["fallback"] for d in devices) or bool(rec.get("warnings")))
    for d, bus in zip(devices, case["truth"], strict=False):
        ok = ok and d["nvml_index"] < len(smi_bus) and smi_bus[d["nvml_index"]] == d["pci_bus_id"]
        ok = ok and d.get("inventory") == expect_inventory
        want = smi_uuid[smi_bus.index(bus)] if bus in smi_bus else None
        for strategy, answer in d.get("verdicts", {}).items():
            if answer is not None:
                answers.append((strategy, answer == want))
                ok = ok and answer == want
    return ok, answers


def tally(recs: list[dict], cases: dict, smi: list[str], expect_inventory: str) -> dict:
    bad, strategies, fallbacks = [], {}, 0
    for r in recs:
        ok, answers = judge(r, cases[(r["label"], r["order"])], smi, expect_inventory)
        r["ok"] = ok
        fallbacks += sum(d["fallback"] for d in r.get("devices", []))
        for strategy, right in answers:
            t = strategies.setdefault(strategy, [0, 0])
            t[0] += 1
            t[1] += not right
        if not ok:
            bad.append(r)
    seconds: dict[str, list[float]] = {}
    for r in recs:
        seconds.setdefault(r["policy"] + ("+torch" if r["torch"] else ""), []).append(r["seconds"])
    return {"runs": len(recs), "wrong": len(bad), "strategies": strategies, "fallbacks": fallbacks,
            "distinct_values": len({r["cvd"] for r in recs}),
            "median_seconds": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
            "wrong_runs": [{k: r.get(k) for k in ("label", "order", "policy", "torch", "error", "message", "stderr")}
                           | {"got": [d["pci_bus_id"] for d in r.get("devices", [])]} for r in bad[:40]]}


def nvidia_smi() -> list[str]:
    query = ["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id,name,driver_version", "--format=csv,noheader"]
    try:  # one line a GPU; nvidia-smi's "No devices were found" (a process that can open none) is no GPU
        out = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()
        return [line for line in out if ", GPU-" in line]
    except FileNotFoundError:  # a dry run on the simulator: NVML's own list stands in for nvidia-smi
        import pynvml
        pynvml.nvmlInit()
        return [f"{i}, {pynvml.nvmlDeviceGetUUID(h)}, {pynvml.nvmlDeviceGetPciInfo(h).busId}, x, y" for i, h in
                ((i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount()))]


def stage(out: str, expect_inventory: str, bench: bool, truth_file: str | None = None) -> dict:
    """Steps 1-4 (and 5 with ``bench``) in this process's view of the GPUs; writes OUT/*.json."""
    os.makedirs(out, exist_ok=True)
    if truth_file is None:
        probe = subprocess.run([sys.executable, os.path.join(HERE, "probe_real_driver.py"), os.path.join(out, "probe")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if probe.returncode:
            raise SystemExit(f"validate_real: the probe failed: {probe.stderr.strip()[-400:]}")
        truth_file = os.path.join(out, "probe", "cvd_cases.json")
    with open(truth_file) as f:
        truth = json.load(f)
    kept = os.path.join(out, "probe", "cvd_cases.json")
    if os.path.abspath(truth_file) != os.path.abspath(kept):  # the records stay self-contained
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        with open(kept, "w") as f:
            json.dump(truth, f, indent=1)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "uid": os.getuid(),
                     "expect_inventory": expect_inventory, "hidden_uuids": truth.get("hidden_uuids", [])}
    smi = results["nvidia_smi"] = nvidia_smi()
    cases = truth_cases(truth)
    jobs = [(c, p, False) for c in cases.values() for p in ("first", "verify", "strict")]
    if importlib.util.find_spec("torch") is not None:
        jobs += [(c, "verify", True) for c in cases.values() if c["order"] == "PCI_BUS_ID"]
    else:
        print("validate_real: torch is not importable here: the runs with torch imported are left out")
    with cf.ThreadPoolExecutor(8) as ex:
        recs = list(ex.map(lambda j: resolve_case(*j), jobs))
    results["resolve"] = tally(recs, cases, smi, expect_inventory)
    with open(os.path.join(out, "resolve_cases.json"), "w") as f:
        json.dump(recs, f, indent=1)

    # 3. bind each GPU's process and read back affinity and memory policy from the kernel
    binds = []
    for i in range(len(smi)):
        for mode in ("node", "exclusive"):
            rc, o, e, _ = run([sys.executable, "-m", "gpuaffinity", "bind", str(i), "--mode", mode, "--",
                               sys.executable, "-c", READBACK], {"CUDA_VISIBLE_DEVICES": None})
            _, plan, _, _ = run([sys.executable, "-m", "gpuaffinity", "bind", str(i), "--mode", mode, "--dry-run"],
                                {"CUDA_VISIBLE_DEVICES": None})
            binds.append({"gpu": i, "mode": mode, "rc": rc, "readback": json.loads(o) if rc == 0 else None,
                          "stderr": e.strip()[-400:], "plan": plan})
    results["bind"] = binds

    # 4. a Ray-like reorder, every GPU's process at once, each told its own logical device
    order = [x for x in (3, 1, 0, 2) if x < len(smi)] + list(range(4, len(smi)))
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
    # 5. the locality stage's ctypes NVML calls against pynvml's, in this view
    lite = subprocess.run([sys.executable, os.path.join(HERE, "nvml_lite_check.py")], capture_output=True, text=True)
    try:
        results["nvml_lite"] = json.loads(lite.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        results["nvml_lite"] = {"equal": False, "error": lite.stderr.strip()[-400:]}
    if bench:
        bench_json = os.path.join(out, "bench.json")
        b = subprocess.run([sys.executable, os.path.join(HERE, "..", "benchmarks", "bench_resolve.py"), "--real",
                            "--repeat", "7", "--json", bench_json], capture_output=True, text=True)
        results["bench_table"] = b.stdout.strip() or b.stderr.strip()[-2000:]
    with open(os.path.join(out, "validation.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def report(name: str, results: dict) -> bool:
    r = results["resolve"]
    print(f"[{name}] {len(results['nvidia_smi'])} GPU(s) visible, uid {results['uid']}, "
          f"list expected from {results['expect_inventory']}; hidden UUIDs {len(results['hidden_uuids'])}")
    print(f"[{name}] resolution: {r['runs'] - r['wrong']}/{r['runs']} runs match the driver "
          f"({r['distinct_values']} distinct values x orders x policies, + torch); medians {r['median_seconds']}")
    for strategy, (n, wrong) in sorted(r["strategies"].items()):
        print(f"[{name}]   strategy {strategy:<8} answered {n} times, wrong {wrong}")
    print(f"[{name}]   fallback answers (each right, each with its warning): {r['fallbacks']}")
    for w in r["wrong_runs"][:10]:
        print(f"[{name}]   WRONG {w['label']} {w['order']} {w['policy']} torch={w['torch']} "
              f"{w.get('error') or w['got']} {(w.get('message') or w.get('stderr') or '')[-160:]}")
    for b in results.get("bind", []):
        rb = b["readback"]
        print(f"[{name}] bind gpu {b['gpu']} {b['mode']:<9} rc={b['rc']} cpus={len(rb[0]) if rb else '-'} "
              f"mempolicy={rb[1] if rb else '-'} nodes={rb[2] if rb else '-'} {b['stderr'][-120:]}")
    ray = results["ray_reorder"]
    print(f"[{name}] ray-like reorder {ray['cvd']}: {'ok' if ray['ok'] else 'WRONG'} "
          f"{[w['got'][0] if w['got'] else None for w in ray['workers']]}")
    lite = results.get("nvml_lite")
    if lite is not None:
        print(f"[{name}] nvml_lite against pynvml: {'equal' if lite.get('equal') else 'DIFFERENT'} on "
              f"{len(lite.get('buses', []))} GPU(s) {lite.get('error', '')}")
    if results.get("bench_table"):
        print(results["bench_table"])
    return r["wrong"] == 0 and ray["ok"] and all(b["rc"] == 0 for b in results.get("bind", [])) and \
        (lite is None or bool(lite.get("equal")))


def summarize(folder: str) -> int:
    """The counts again, from the kept records of each stage (OUT/<stage>/{probe/cvd_cases,resolve_cases,
    validation}.json)."""
    good = True
    for name in sorted(os.listdir(folder)):
        base = os.path.join(folder, name)
        try:
            with open(os.path.join(base, "validation.json")) as f:
                results = json.load(f)
            with open(os.path.join(base, "resolve_cases.json")) as f:
                recs = json.load(f)
            with open(os.path.join(base, "probe", "cvd_cases.json")) as f:
                cases = truth_cases(json.load(f))
        except (OSError, ValueError):
            continue
        results["resolve"] = tally(recs, cases, results["nvidia_smi"], results["expect_inventory"])
        good = report(name, results) and good
    return 0 if good else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for the results")
    ap.add_argument("--summarize", action="store_true", help="re-derive the counts from OUT's kept records")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # one stage, in this process's view
    ap.add_argument("--expect-inventory", default="procfs+device-nodes", help=argparse.SUPPRESS)
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    ap.add_argument("--no-hidden", action="store_true", help="skip the stages with hidden GPUs")
    ap.add_argument("--truth", help="a cvd_cases.json from this machine: skip the probe of the full stage")
    args = ap.parse_args(argv)
    if args.summarize:
        return summarize(args.out)
    if args.stage:  # run by hide_gpus.py inside the namespace
        results = stage(os.path.join(args.out, args.stage), args.expect_inventory, bench=False)
        return 0 if report(args.stage, results) else 1
    os.makedirs(args.out, exist_ok=True)
    ngpus = len(nvidia_smi())
    hidden: list[tuple[str, subprocess.Popen]] = []
    if args.no_hidden or os.geteuid() != 0 or ngpus < 1:
        print(f"hidden stages skipped ({'asked' if args.no_hidden else 'needs root and a GPU'})")
    else:  # both hidden stages run beside the full one, each in its own namespace; the benchmark runs alone, last
        from glob import glob

        listed = []
        for info in glob("/proc/driver/nvidia/gpus/*/information"):
            with open(info, errors="replace") as f:
                listed += [int(x.split(":", 1)[1]) for x in f if x.startswith("Device Minor:")]
        minors = ",".join(str(m) for m in sorted(listed)[: max(1, ngpus // 2)])  # the first half, by device minor
        for mode in ("absent", "denied"):
            scratch = tempfile.mkdtemp(prefix=f"gpuaffinity-{mode}-", dir="/tmp")
            os.chmod(scratch, 0o777)  # the denied stage runs as nobody, who may not reach OUT
            cmd = [sys.executable, os.path.join(HERE, "hide_gpus.py"), f"--{mode}", minors, "--",
                   sys.executable, os.path.abspath(__file__), scratch, "--stage", f"hidden-{mode}",
                   "--expect-inventory", "nvml"]
            log = open(os.path.join(scratch, "log.txt"), "w")
            hidden.append((scratch, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    good = report("full", stage(os.path.join(args.out, "full"), "procfs+device-nodes", False, args.truth))
    for scratch, proc in hidden:
        rc = proc.wait()
        shutil.copytree(scratch, args.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("log.txt"))
        with open(os.path.join(scratch, "log.txt")) as f:
            print(f.read().strip())
        good = good and rc == 0
    if not args.no_bench:
        b = subprocess.run([sys.executable, os.path.join(HERE, "..", "benchmarks", "bench_resolve.py"), "--real",
                            "--repeat", "7", "--json", os.path.join(args.out, "full", "bench.json")],
                           capture_output=True, text=True)
        print(b.stdout.strip() or b.stderr.strip()[-2000:])
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
