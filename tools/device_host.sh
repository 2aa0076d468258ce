#!/usr/bin/env bash
# One call on a lent GPU host (issue 23): one Host a command on real GPUs.
#  1. benchmarks/bench_resolve.py --real: plan(0) in a serving worker (torch + CUDA up) beside the seed's way;
#  2. NVML sessions per call, counted at gpuaffinity's only door to NVML (nvml_lite.Session.__enter__), with the
#     GPU list from the driver's files and from NVML (GPUAFFINITY_INVENTORY=nvml), and the answer checked against
#     nvidia-smi; with NVML held open while the pci strategy's forked probe initialises CUDA (cvd and torch
#     disabled, so that the driver is asked);
#  3. tools/validate_real.py --no-bench: every view, every case, against the driver's truth.
# Results go to $OUT.  Run from the repository root:  bash tools/device_host.sh
set -u
. tools/device_setup.sh
t0=$(date +%s)
timeout 260 python3 benchmarks/bench_resolve.py --real --repeat 7 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/bench.txt"
COUNT='
import json, os, subprocess, sys
from gpuaffinity import nvml_lite
starts = []
real = nvml_lite.Session.__enter__
def counted(self):
    starts.append(1)
    return real(self)
nvml_lite.Session.__enter__ = counted
import gpuaffinity
what = sys.argv[1]
if what == "plan":
    r = gpuaffinity.plan(0)
    got = r.pci_bus_id
else:
    from gpuaffinity.cli import main
    import contextlib, io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["resolve", "--json", *sys.argv[2:]])
    rows = json.loads(out.getvalue())
    got = rows[0]["pci_bus_id"] + " by " + rows[0]["strategy"] + " " + str(rows[0].get("agreed"))
smi = subprocess.run(["nvidia-smi", "--query-gpu=pci.bus_id", "--format=csv,noheader"], capture_output=True, text=True).stdout.split()[0]
print(json.dumps({"call": sys.argv[1:], "inventory": os.environ.get("GPUAFFINITY_INVENTORY"), "nvml_sessions": len(starts), "answer": got, "nvidia_smi": smi}))
'
{
  for inv in "" nvml; do
    GPUAFFINITY_INVENTORY=$inv python3 -c "$COUNT" plan
    GPUAFFINITY_INVENTORY=$inv python3 -c "$COUNT" resolve
    GPUAFFINITY_INVENTORY=$inv python3 -c "$COUNT" resolve --disable cvd,torch
  done
} > "$OUT/sessions.jsonl" 2>&1
echo "sessions rc=$?" >> "$OUT/sessions.jsonl"
t0=$(date +%s)
timeout 250 python3 tools/validate_real.py /tmp/val --no-bench > "$OUT/validation.txt" 2>&1
echo "validation rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/validation.txt"
tar czf "$OUT/records.tar.gz" -C /tmp val 2>/dev/null
ls -la "$OUT"
