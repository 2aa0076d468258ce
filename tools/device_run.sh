#!/usr/bin/env bash
# One call on a lent GPU host: the real-GPU validation (every view), the benchmark, the first-call profile in a
# restricted view, each under its own time limit so that what finished still comes back.
# Results go to $OUT (or ./device-out).  Run from the repository root:
#     bash tools/device_run.sh
set -u
. tools/device_setup.sh   # $OUT, PYTHONPATH, compiled, $OUT/env.txt
t0=$(date +%s)
timeout 250 python3 tools/validate_real.py /tmp/val --no-bench > "$OUT/validation.txt" 2>&1
echo "validation rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/validation.txt"
t0=$(date +%s)
timeout 230 python3 benchmarks/bench_resolve.py --real --repeat 5 --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/bench.txt"
{
  minor=$(grep -h "Device Minor" /proc/driver/nvidia/gpus/*/information | head -1 | awk '{print $3}')
  echo "== the same with GPU minor $minor absent from a read-only /dev"
  timeout 45 python3 tools/hide_gpus.py --absent "$minor" -- python3 tools/profile_first_call.py /tmp/prof-hidden
} > "$OUT/profile.txt" 2>&1
tar czf "$OUT/records.tar.gz" -C /tmp val prof-hidden 2>/dev/null
ls -la "$OUT"
