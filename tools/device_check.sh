#!/bin/bash
# gpuaffinity check on a real GPU host (one GPU is enough).  Writes $OUT/check-real.tar.gz and prints a summary.
#   bash tools/device_check.sh        (run from the repository root, as root, on the lent machine)
# Starts three real CUDA processes (torch: 1 GiB on the GPU, 1 GiB pinned, NCCL init + one all-reduce):
#   A bound by `gpuaffinity bind 0 -- python3 worker.py` (exec record), B unbound, C bound in-process.
# Then, from a shell whose CUDA_VISIBLE_DEVICES differs: check --all (table, JSON, timings), --pages,
# nvml_lite's process list against pynvml's, a checker in a mount namespace whose /dev lacks /dev/nvidia0,
# a thread of A moved away and taskset on B, and numa_maps cost per GiB.
set -u
OUT=${OUT:-/tmp/check-out}; W=$(mktemp -d); mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
G="python3 -m gpuaffinity"
{ date -u; nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader; uname -r; nproc
  lscpu | grep -iE 'model name|numa'; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, "nccl", torch.cuda.nccl.version())'
  cat /sys/bus/pci/devices/$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | tr A-Z a-z | sed 's/^0000//;s/^/0000/' | cut -c1-12)/numa_node 2>&1; } > $W/env.txt 2>&1
cat > $W/worker.py <<'EOF'
import os, sys, time
if sys.argv[2] == "inproc":
    import gpuaffinity; gpuaffinity.bind(0)
import torch, torch.distributed as dist
torch.cuda.set_device(0)
x = torch.empty(1 << 28, device="cuda")
h = torch.empty(1 << 28, pin_memory=True); h.fill_(1)
os.environ["MASTER_ADDR"] = "127.0.0.1"; os.environ["MASTER_PORT"] = sys.argv[1]
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.ones(1, device="cuda"); dist.all_reduce(t); torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(900)
EOF
$G bind 0 -- python3 $W/worker.py 29511 exec > $W/a.log 2>&1 & A=$!
python3 $W/worker.py 29512 none > $W/b.log 2>&1 & B=$!
python3 $W/worker.py 29513 inproc > $W/c.log 2>&1 & C=$!
for f in a b c; do for i in $(seq 120); do grep -q ready $W/$f.log && break; sleep 1; done; done
echo "A=$A B=$B C=$C" > $W/pids.txt
export CUDA_VISIBLE_DEVICES=""   # the checker's own view shows no GPU: check must not use it
( time $G check --all ) > $W/check-all.txt 2>&1; echo "rc=$?" >> $W/check-all.txt
( time $G check --all --pages ) > $W/check-pages.txt 2>&1; echo "rc=$?" >> $W/check-pages.txt
$G check --all --pages --json > $W/check-pages.json 2>$W/check-pages.err; echo "rc=$?" >> $W/check-pages.err
unset CUDA_VISIBLE_DEVICES
python3 - > $W/nvml-equal.txt 2>&1 <<EOF
import pynvml
from gpuaffinity.nvml_lite import Session
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
bus = pynvml.nvmlDeviceGetPciInfo(h).busId
bus = bus.decode() if isinstance(bus, bytes) else bus
theirs = sorted((p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h))
with Session() as nv:
    ours = sorted(nv.compute_processes(nv.handle(bus)))
print("pynvml  ", theirs); print("nvml_lite", ours); print("EQUAL" if theirs == ours else "DIFFERENT")
EOF
ls /proc/$A/fd -l 2>/dev/null | grep -c nvidia > $W/fds-a.txt
grep -c . /proc/$A/numa_maps >> $W/fds-a.txt; ls /proc/$A/task | wc -l >> $W/fds-a.txt
# a restricted checker: /dev without nvidia0 (read-only), in its own mount namespace
unshare -m bash -c "mkdir -p $W/dev && mount -t tmpfs none $W/dev && cp -a /dev/null /dev/nvidiactl $W/dev/ 2>/dev/null; mount --bind $W/dev /dev && mount -o remount,ro,bind /dev; ls /dev; $G check --all" > $W/check-restricted.txt 2>&1; echo "rc=$?" >> $W/check-restricted.txt
# drift: one thread of A moved to CPU 1 only; taskset widens nothing on a VM without locality, so narrow B
T=$(ls /proc/$A/task | sed -n 5p); taskset -p -c 1 $T > /dev/null
taskset -p -c 0 $B > /dev/null
$G check $A $B $C > $W/check-drift.txt 2>&1; echo "rc=$?" >> $W/check-drift.txt
$G check $A $B $C --json > $W/check-drift.json 2>&1
# numa_maps cost per GiB
python3 - > $W/numa-cost.txt 2>&1 <<'EOF'
import mmap, os, time, subprocess, sys
sys.path.insert(0, "src")
from gpuaffinity import proc
for gib in (1, 4, 16):
    p = subprocess.Popen([sys.executable, "-c", f"import mmap,time,sys; m=mmap.mmap(-1,{gib}<<30); [m.__setitem__(slice(i,i+1),b'x') for i in range(0,{gib}<<30,4096)]; print('ready',flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t = [];
    for _ in range(5):
        a = time.perf_counter(); proc.look(p.pid, pages=False); b = time.perf_counter(); v = proc.look(p.pid, pages=True); c = time.perf_counter()
        t.append((b - a, c - b))
    p.kill(); p.wait()
    no, yes = sorted(x[0] for x in t)[2], sorted(x[1] for x in t)[2]
    print(f"{gib:3d} GiB  look {no*1e3:7.2f} ms  look+pages {yes*1e3:7.2f} ms  pages per GiB {(yes-no)*1e3/gib:5.2f} ms  counted {v.pages.total/2**30:.2f} GiB")
EOF
kill $A $B $C 2>/dev/null; wait 2>/dev/null
cp $W/a.log $W/b.log $W/c.log "$W/" 2>/dev/null
tar -C $W -czf "$OUT/check-real.tar.gz" --exclude dev .
for f in env.txt pids.txt check-all.txt check-pages.txt nvml-equal.txt fds-a.txt check-restricted.txt check-drift.txt numa-cost.txt; do echo "== $f"; cat $W/$f; done
