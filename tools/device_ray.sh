#!/usr/bin/env bash
# One call on a lent GPU host: Ray on a real node, the one-line binding and `gpuaffinity ray-check`, compared
# with nvidia-smi and sysfs (tools/ray_check_vs_smi.py).  Ray is not in the image: carry a Python 3.12 build of
# it as .device/ray312.tar.xz (docs/ray.md says how it was made).  Results go to $OUT (or ./device-out):
#     bash tools/device_ray.sh
set -u
OUT=${OUT:-device-out}
mkdir -p "$OUT" /tmp/raypkgs
tar xJf .device/ray312.tar.xz -C /tmp/raypkgs
export PYTHONPATH=$PWD/src:/tmp/raypkgs RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{ date -u; nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id,uuid --format=csv,noheader
  nvidia-smi topo -m; python3 -c 'import ray, sys; print("python", sys.version.split()[0], "ray", ray.__version__)'
lscpu | grep -i numa; } > "$OUT/env.txt" 2>&1
n=$(nvidia-smi -L | wc -l)
shuffled=$(python3 -c "import sys; n=int(sys.argv[1]); print(','.join(str(i) for i in reversed(range(n))))" "$n")
for cvd in "" "$shuffled"; do
  tag=${cvd:+shuffled}; tag=${tag:-unset}
  python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1
  if [ -n "$cvd" ]; then export CUDA_VISIBLE_DEVICES=$cvd; else unset CUDA_VISIBLE_DEVICES; fi
  timeout 120 python3 -m ray.scripts.scripts start --head --num-cpus=4 --include-dashboard=false \
    --disable-usage-stats > "$OUT/ray-start-$tag.txt" 2>&1
  unset CUDA_VISIBLE_DEVICES
  t0=$(date +%s%N)
  timeout 180 python3 -m gpuaffinity ray-check --json > "$OUT/ray-check-$tag.json" 2> "$OUT/ray-check-$tag.err"
  echo "ray-check rc=$? in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >> "$OUT/ray-check-$tag.err"
  timeout 180 python3 -m gpuaffinity ray-check > "$OUT/ray-check-$tag.txt" 2>&1
  timeout 180 python3 -m gpuaffinity ray-check --runtime-env '{}' > "$OUT/ray-check-$tag-nohook.txt" 2>&1
  python3 tools/ray_check_vs_smi.py "$OUT/ray-check-$tag.json" "$cvd" > "$OUT/vs-smi-$tag.txt" 2>&1
  echo "vs-smi rc=$?" >> "$OUT/vs-smi-$tag.txt"
done
python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1
# one archive: the lent machine returns only so many files
tar czf /tmp/ray-records.tar.gz -C "$OUT" . && mv /tmp/ray-records.tar.gz "$OUT/ray-records.tar.gz"
ls -la "$OUT"
