#!/usr/bin/env python3
"""What the real driver shows a process that can open only some GPUs: facts for the simulator.

For each shape (every GPU; some device nodes absent; some present but refused),
a fresh process inside ``tools/hide_gpus.py`` reports, with ctypes only:

* which ``/dev/nvidia*`` nodes it sees and whether each opens (and how long an
  open takes);
* NVML: ``nvmlInit`` (and its time), the count, each device's UUID, bus id and
  minor number, and the return code of a handle lookup by PCI bus id and by
  UUID for every GPU of the host (so a hidden GPU's code is recorded);
* CUDA: ``cuInit`` and each device's bus id, under a few CUDA_VISIBLE_DEVICES.

Needs root.  Writes OUTDIR/restricted_facts.json.

    python3 tools/restricted_facts.py OUTDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

NVML_CHILD = r'''
import ctypes, errno, json, os, re, sys, time
host = json.loads(sys.argv[1])
out = {"uid": os.getuid()}
nodes = sorted(n for n in os.listdir("/dev") if re.fullmatch(r"nvidia(\d+|ctl)", n))
opens = {}
for n in nodes:
    t = time.perf_counter()
    try:
        fd = os.open("/dev/" + n, os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        res = "ok"
    except OSError as e:
        res = errno.errorcode.get(e.errno, str(e.errno))
    opens[n] = [res, round((time.perf_counter() - t) * 1e6, 1)]
out["dev_nodes"] = opens
nv = ctypes.CDLL("libnvidia-ml.so.1")
t = time.perf_counter()
out["nvmlInit"] = nv.nvmlInit_v2()
out["nvmlInit_ms"] = round((time.perf_counter() - t) * 1e3, 2)
n = ctypes.c_uint(0)
out["count_rc"] = nv.nvmlDeviceGetCount_v2(ctypes.byref(n))
buf = ctypes.create_string_buffer(96)
devs = []
for i in range(n.value):
    h = ctypes.c_void_p()
    rc = nv.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h))
    nv.nvmlDeviceGetUUID(h, buf, 96)
    uuid = buf.value.decode()
    class Pci(ctypes.Structure):
        _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                    ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                    ("busId", ctypes.c_char * 32)]
    p = Pci()
    nv.nvmlDeviceGetPciInfo_v3(h, ctypes.byref(p))
    minor = ctypes.c_uint(999)
    rc_minor = nv.nvmlDeviceGetMinorNumber(h, ctypes.byref(minor))
    cur, pend = ctypes.c_uint(9), ctypes.c_uint(9)
    rc_mig = nv.nvmlDeviceGetMigMode(h, ctypes.byref(cur), ctypes.byref(pend))
    devs.append({"index": i, "rc": rc, "uuid": uuid, "bus": p.busId.decode(), "minor": [rc_minor, minor.value],
                 "mig_mode": [rc_mig, cur.value, pend.value]})
out["devices"] = devs
lookups = {}
for g in host:
    h = ctypes.c_void_p()
    by_bus = nv.nvmlDeviceGetHandleByPciBusId_v2(g["bus"].encode(), ctypes.byref(h))
    h2 = ctypes.c_void_p()
    by_uuid = nv.nvmlDeviceGetHandleByUUID(g["uuid"].encode(), ctypes.byref(h2))
    idx = ctypes.c_uint(999)
    rc_idx = nv.nvmlDeviceGetIndex(h, ctypes.byref(idx)) if by_bus == 0 else None
    lookups[g["bus"]] = {"by_bus": by_bus, "by_uuid": by_uuid, "index": [rc_idx, idx.value]}
out["lookups"] = lookups
h = ctypes.c_void_p()
out["by_index_past_end"] = nv.nvmlDeviceGetHandleByIndex_v2(n.value, ctypes.byref(h))
out["nvmlShutdown"] = nv.nvmlShutdown()
print(json.dumps(out))
'''

CUDA_CHILD = r'''
import ctypes, json, os
cu = ctypes.CDLL("libcuda.so.1")
out = {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuInit": cu.cuInit(0)}
n = ctypes.c_int(-1)
out["count_rc"] = cu.cuDeviceGetCount(ctypes.byref(n))
buses = []
for i in range(max(n.value, 0)):
    b = ctypes.create_string_buffer(64)
    cu.cuDeviceGetPCIBusId(b, 64, i)
    buses.append(b.value.decode())
out["buses"] = buses
print(json.dumps(out))
'''


def host_gpus() -> list[dict]:
    gpus = []
    base = "/proc/driver/nvidia/gpus"
    for entry in sorted(os.listdir(base)):
        info = {}
        with open(os.path.join(base, entry, "information")) as f:
            for line in f:
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
        gpus.append({"bus": entry, "uuid": info.get("GPU UUID"), "minor": int(info.get("Device Minor", -1)),
                     "information": info})
    return gpus


def in_shape(shape: dict, argv: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "hide_gpus.py"), "--absent", shape["absent"], "--denied",
           shape["denied"], *(["--as-nobody"] if shape.get("nobody") else []), "--", *argv]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    rec = {"rc": p.returncode, "seconds": round(time.perf_counter() - t, 3), "stderr": p.stderr[-1500:]}
    try:
        rec["out"] = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        rec["stdout"] = p.stdout[-3000:]
    return rec


def main() -> int:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    host = host_gpus()
    facts: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": host}
    for key, cmd in (("smi", ["nvidia-smi", "--query-gpu=index,pci.bus_id,uuid,persistence_mode,driver_version",
                              "--format=csv"]),
                     ("ls_dev", ["sh", "-c", "ls -l /dev/nvidia* /dev/nvidia-caps 2>&1"]),
                     ("cgroup", ["sh", "-c", "cat /proc/self/cgroup; stat -fc %T /sys/fs/cgroup"]),
                     ("caps", ["sh", "-c", "ls -R /proc/driver/nvidia/capabilities 2>&1 | head -40"])):
        try:
            facts[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        except OSError as e:
            facts[key] = repr(e)
    minors = sorted(g["minor"] for g in host)
    half = ",".join(map(str, minors[: max(1, len(minors) // 2)]))  # the first half of the GPUs, at least one
    last = str(minors[-1])
    shapes = [
        {"name": "all", "absent": "", "denied": ""},
        {"name": f"absent_{half}", "absent": half, "denied": ""},
        {"name": f"absent_{last}", "absent": last, "denied": ""},
        {"name": "all_as_nobody", "absent": "", "denied": "", "nobody": True},
        {"name": f"denied_{half}", "absent": "", "denied": half},
    ]
    hostarg = json.dumps([{"bus": g["bus"], "uuid": g["uuid"]} for g in host])
    cvds = [None, "0", "1,0", "2", "3", host[0]["uuid"], host[-1]["uuid"]]
    facts["shapes"] = []
    for shape in shapes:
        rec = dict(shape)
        rec["nvml"] = in_shape(shape, [sys.executable, "-c", NVML_CHILD, hostarg])
        rec["cuda"] = []
        for cvd in cvds:
            env = dict(os.environ)
            env.pop("CUDA_VISIBLE_DEVICES", None)
            if cvd is not None:
                env["CUDA_VISIBLE_DEVICES"] = cvd
            rec["cuda"].append(in_shape(shape, [sys.executable, "-c", CUDA_CHILD], env))
        # what gpuaffinity said (the code as sent), in the same shape
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        code = ("import json, subprocess, sys; r = [subprocess.run([sys.executable, '-m', 'gpuaffinity', 'resolve',"
                " '--json', *a], capture_output=True, text=True) for a in ([], ['--policy', 'strict'])];"
                " print(json.dumps([[x.returncode, x.stdout[-4000:], x.stderr[-800:]] for x in r]))")
        rec["gpuaffinity"] = in_shape(shape, [sys.executable, "-c", code], env)
        facts["shapes"].append(rec)
        nv = rec["nvml"].get("out", {})
        print(f"{shape['name']:<16} nvml={[d['bus'] for d in nv.get('devices', [])]} "
              f"init={nv.get('nvmlInit')} {nv.get('nvmlInit_ms')} ms  opens={nv.get('dev_nodes')}")
        for c in rec["cuda"]:
            o = c.get("out", {})
            print(f"    cvd={o.get('cvd')!s:<44} cuInit={o.get('cuInit')} {o.get('buses')}")
        print("    lookups", nv.get("lookups"))
    with open(os.path.join(out, "restricted_facts.json"), "w") as f:
        json.dump(facts, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
