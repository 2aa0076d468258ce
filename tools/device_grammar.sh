#!/usr/bin/env bash
# One call on a lent GPU host (issue 21; written for a one-GPU host, works on more): the driver's reading of
# CUDA_VISIBLE_DEVICES in every view (every GPU; the first half, at least one, of the GPUs' device nodes absent;
# present but refused), recorded as datasets for tests/data, then the whole validation in every view.
# Results go to $OUT (or ./device-out).  Run from the repository root:
#     bash tools/device_grammar.sh
set -u
. tools/device_setup.sh   # $OUT, PYTHONPATH, compiled, $OUT/env.txt
minors=$(grep -h "Device Minor" /proc/driver/nvidia/gpus/*/information | awk '{print $3}' | sort -n)
n=$(echo "$minors" | wc -l)
half=$(echo "$minors" | head -n $(( n / 2 > 0 ? n / 2 : 1 )) | paste -sd, -)
t0=$(date +%s)
timeout 170 python3 tools/probe_real_driver.py "$OUT/real" > "$OUT/probe-full.txt" 2>&1
echo "probe rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/probe-full.txt"
for mode in absent denied; do
  t0=$(date +%s)
  d=$(mktemp -d "/tmp/gpuaffinity-rec-$mode-XXXX"); chmod 777 "$d"   # the denied probe runs as nobody
  timeout 90 python3 tools/hide_gpus.py "--$mode" "$half" -- python3 tools/probe_real_driver.py "$d/rec" \
    > "$OUT/probe-$mode.txt" 2>&1
  echo "probe ($mode: minors $half) rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/probe-$mode.txt"
  cp -r "$d/rec" "$OUT/restricted-$mode" 2>/dev/null
done
t0=$(date +%s)
timeout 250 python3 tools/validate_real.py /tmp/gpuaffinity-val --no-bench --truth "$OUT/real/cvd_cases.json" \
  > "$OUT/validation.txt" 2>&1
echo "validation rc=$? in $(( $(date +%s) - t0 )) s" >> "$OUT/validation.txt"
tar czf "$OUT/records.tar.gz" -C /tmp gpuaffinity-val 2>/dev/null
tar czf "$OUT/datasets.tar.gz" -C "$OUT" real restricted-absent restricted-denied   # every file, in one
ls -la "$OUT"
