# Sourced by the tools/device_*.sh scripts, from the repository root: $OUT made, this tree's package first on the
# path and compiled (as an installed package has it), and the host written down in $OUT/env.txt.
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
python3 -m compileall -q src/gpuaffinity
{
  date -u; nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id --format=csv,noheader
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
  nproc; uname -r; command -v numactl || echo "numactl: not installed"
} > "$OUT/env.txt" 2>&1
