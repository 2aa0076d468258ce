#!/usr/bin/env python3
"""Record how the real NVIDIA driver enumerates GPUs under CUDA_VISIBLE_DEVICES.

Self-contained on purpose (ctypes only, no gpuaffinity import): it runs on a
lent GPU machine where the package may not be installed.  Every case runs in a
fresh child process, because the driver reads CUDA_VISIBLE_DEVICES once, at
cuInit.  Writes JSON files into the folder given as the first argument:

  cvd_cases.json   one record per (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER)
  topology.json    NVML, sysfs and CPU facts of the machine
  torch_cases.json torch.cuda._get_nvml_device_index on every case (if torch)

Reproduce:  python3 tools/probe_real_driver.py OUTDIR
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import glob
import json
import os
import subprocess
import sys
import time

CHILD = r'''
import ctypes, json, os, sys
out = {"env_cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
       "env_order": os.environ.get("CUDA_DEVICE_ORDER")}
cu = ctypes.CDLL("libcuda.so.1")
def call(name, *args):
    return int(getattr(cu, name)(*args))
out["cuInit"] = call("cuInit", 0)
n = ctypes.c_int(-1)
out["cuDeviceGetCount"] = call("cuDeviceGetCount", ctypes.byref(n))
out["count"] = n.value
devs = []
for i in range(max(n.value, 0)):
    d = ctypes.c_int(-1)
    rc = call("cuDeviceGet", ctypes.byref(d), i)
    buf = ctypes.create_string_buffer(64)
    rc2 = call("cuDeviceGetPCIBusId", buf, 64, d)
    u = (ctypes.c_ubyte * 16)()
    fn = "cuDeviceGetUuid_v2" if hasattr(cu, "cuDeviceGetUuid_v2") else "cuDeviceGetUuid"
    rc3 = call(fn, u, d)
    h = bytes(u).hex()
    name = ctypes.create_string_buffer(256)
    call("cuDeviceGetName", name, 256, d)
    devs.append({"ordinal": i, "rc_get": rc, "rc_bus": rc2, "pci_bus_id": buf.value.decode(),
                 "uuid": "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]),
                 "rc_uuid": rc3, "name": name.value.decode()})
out["devices"] = devs
d = ctypes.c_int(-1)
out["cuDeviceGet_past_end"] = call("cuDeviceGet", ctypes.byref(d), max(n.value, 0))
by_bus = {}
for bus in json.loads(sys.argv[1]):
    d = ctypes.c_int(-1)
    rc = call("cuDeviceGetByPCIBusId", ctypes.byref(d), bus.encode())
    by_bus[bus] = [rc, d.value]
out["cuDeviceGetByPCIBusId"] = by_bus
print(json.dumps(out))
'''

TORCH_CHILD = r'''
import json, os
out = {"env_cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "env_order": os.environ.get("CUDA_DEVICE_ORDER")}
import torch
out["torch"] = torch.__version__
out["has_helper"] = hasattr(torch.cuda, "_get_nvml_device_index")
try:
    out["device_count"] = torch.cuda.device_count()
except Exception as e:
    out["device_count"] = repr(e)
res = []
for i in range(5):
    try:
        res.append(torch.cuda._get_nvml_device_index(i))
    except Exception as e:
        res.append("%s: %s" % (type(e).__name__, e))
out["helper"] = res
try:
    out["parse"] = torch.cuda._parse_visible_devices()
except Exception as e:
    out["parse"] = repr(e)
print(json.dumps(out))
'''


def nvml_topology() -> dict:
    nv = ctypes.CDLL("libnvidia-ml.so.1")
    topo: dict = {}
    assert nv.nvmlInit_v2() == 0
    buf = ctypes.create_string_buffer(96)
    nv.nvmlSystemGetDriverVersion(buf, 96)
    topo["driver_version"] = buf.value.decode()
    nv.nvmlSystemGetNVMLVersion(buf, 96)
    topo["nvml_version"] = buf.value.decode()
    v = ctypes.c_int()
    nv.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(v))
    topo["cuda_driver_version"] = v.value
    cnt = ctypes.c_uint()
    nv.nvmlDeviceGetCount_v2(ctypes.byref(cnt))
    gpus = []
    for i in range(cnt.value):
        h = ctypes.c_void_p()
        nv.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h))
        g: dict = {"nvml_index": i}
        nv.nvmlDeviceGetUUID(h, buf, 96)
        g["uuid"] = buf.value.decode()
        nv.nvmlDeviceGetName(h, buf, 96)
        g["name"] = buf.value.decode()

        class Pci(ctypes.Structure):
            _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint),
                        ("bus", ctypes.c_uint), ("device", ctypes.c_uint),
                        ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                        ("busId", ctypes.c_char * 32)]
        p = Pci()
        g["rc_pci_v3"] = nv.nvmlDeviceGetPciInfo_v3(h, ctypes.byref(p))
        g["busId"] = p.busId.decode()
        g["busIdLegacy"] = p.busIdLegacy.decode()
        g["pci"] = [p.domain, p.bus, p.device, hex(p.pciDeviceId), hex(p.pciSubSystemId)]
        for scope in (0, 1):
            arr = (ctypes.c_ulong * 4)()
            rc = nv.nvmlDeviceGetMemoryAffinity(h, 4, arr, scope)
            g[f"memory_affinity_scope{scope}"] = [rc, [hex(x) for x in arr]]
            arr = (ctypes.c_ulong * 4)()
            rc = nv.nvmlDeviceGetCpuAffinityWithinScope(h, 4, arr, scope)
            g[f"cpu_affinity_scope{scope}"] = [rc, [hex(x) for x in arr]]
        arr = (ctypes.c_ulong * 4)()
        g["cpu_affinity"] = [nv.nvmlDeviceGetCpuAffinity(h, 4, arr), [hex(x) for x in arr]]
        node = ctypes.c_uint(12345)
        g["numa_node_id"] = [nv.nvmlDeviceGetNumaNodeId(h, ctypes.byref(node)), node.value]
        cur, pend = ctypes.c_uint(), ctypes.c_uint()
        g["mig_mode"] = [nv.nvmlDeviceGetMigMode(h, ctypes.byref(cur), ctypes.byref(pend)),
                         cur.value, pend.value]
        ism = ctypes.c_uint(7)
        g["is_mig"] = [nv.nvmlDeviceIsMigDeviceHandle(h, ctypes.byref(ism)), ism.value]
        bus = g["busId"]
        lookups = {}
        forms = {bus, bus.lower(), bus[4:], bus[4:].lower(), bus[9:], bus[9:].lower(),
                 g["busIdLegacy"], g["busIdLegacy"].lower(), bus[:-2]}
        for form in sorted(forms):
            h2 = ctypes.c_void_p()
            rc = nv.nvmlDeviceGetHandleByPciBusId_v2(form.encode(), ctypes.byref(h2))
            lookups[form] = [rc, rc == 0 and h2.value == h.value]
        g["by_pci_bus_id"] = lookups
        u = g["uuid"]
        ulook = {}
        for form in {u, u.lower(), u.upper(), u[4:], u[:12], "MIG-" + u, u + "x"}:
            h2 = ctypes.c_void_p()
            rc = nv.nvmlDeviceGetHandleByUUID(form.encode(), ctypes.byref(h2))
            ulook[form] = [rc, rc == 0 and h2.value == h.value]
        g["by_uuid"] = ulook
        gpus.append(g)
    topo["gpus"] = gpus
    h = ctypes.c_void_p()
    topo["handle_by_index_past_end"] = nv.nvmlDeviceGetHandleByIndex_v2(cnt.value, ctypes.byref(h))
    nv.nvmlErrorString.restype = ctypes.c_char_p
    topo["error_strings"] = {c: nv.nvmlErrorString(c).decode() for c in
                             (0, 1, 2, 3, 4, 5, 6, 9, 12, 13, 15, 17, 19, 999)}
    topo["shutdown"] = [nv.nvmlShutdown(), nv.nvmlShutdown()]
    return topo


def sysfs_facts(bus_ids: list[str]) -> dict:
    def rd(p: str) -> str | None:
        try:
            with open(p) as f:
                return f.read().strip()
        except OSError as e:
            return f"<{e.__class__.__name__}>"
    facts: dict = {"pci": {}, "nodes": {}, "cpus": {}}
    for b in bus_ids:
        base = f"/sys/bus/pci/devices/{b}"
        facts["pci"][b] = {k: rd(f"{base}/{k}") for k in
                           ("numa_node", "local_cpulist", "local_cpus", "vendor", "device", "class")}
    for n in sorted(glob.glob("/sys/devices/system/node/node[0-9]*")):
        facts["nodes"][os.path.basename(n)] = {"cpulist": rd(f"{n}/cpulist"),
                                                "distance": rd(f"{n}/distance")}
    for c in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*"), key=lambda s: int(s.rsplit("u", 1)[1])):
        t = f"{c}/topology"
        facts["cpus"][os.path.basename(c)] = [rd(f"{t}/physical_package_id"), rd(f"{t}/core_id"),
                                              rd(f"{t}/thread_siblings_list")]
    facts["online"] = rd("/sys/devices/system/cpu/online")
    facts["sched_getaffinity"] = sorted(os.sched_getaffinity(0))
    with open("/proc/self/status") as f:
        facts["status"] = [ln.strip() for ln in f if ln.startswith(("Cpus_allowed_list", "Mems_allowed_list"))]
    facts["uname"] = list(os.uname())
    return facts


def cuda_attributes() -> dict:
    cu = ctypes.CDLL("libcuda.so.1")
    res = {"cuInit": cu.cuInit(0)}
    v = ctypes.c_int()
    cu.cuDriverGetVersion(ctypes.byref(v))
    res["cuDriverGetVersion"] = v.value
    n = ctypes.c_int()
    cu.cuDeviceGetCount(ctypes.byref(n))
    devs = []
    for i in range(n.value):
        attrs = {}
        for a in range(1, 160):
            val = ctypes.c_int(-999)
            rc = cu.cuDeviceGetAttribute(ctypes.byref(val), a, i)
            attrs[a] = [rc, val.value]
        devs.append(attrs)
    res["attributes"] = devs
    names = {}
    cu.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    cu.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    for code in (0, 1, 3, 100, 101, 200, 201, 999, 12345):
        s, nm = ctypes.c_char_p(), ctypes.c_char_p()
        r1 = cu.cuGetErrorString(code, ctypes.byref(s))
        r2 = cu.cuGetErrorName(code, ctypes.byref(nm))
        names[code] = [r1, s.value.decode() if s.value else None, r2, nm.value.decode() if nm.value else None]
    res["errors"] = names
    return res


def shortest_unique_prefix(u: str, others: list[str]) -> str:
    for k in range(5, len(u) + 1):
        if not any(o.startswith(u[:k]) for o in others):
            return u[:k]
    return u


def case_values(uuids: list[str], hidden: list[str] = ()) -> list[tuple[str, str | None]]:
    """The recorded values, on any number of GPUs (``u[i]`` wraps around), plus values naming ``hidden``
    GPUs: ones the driver's /proc lists but this process cannot open."""
    # where this process can open no GPU (the only one hidden), the UUID cases name the host's GPUs it cannot open
    known = list(uuids) or list(hidden) or ["GPU-00000000-0000-0000-0000-000000000000"]
    u = [known[i % len(known)] for i in range(4)]
    p0 = shortest_unique_prefix(u[0], [x for x in [*uuids, *hidden] if x != u[0]])
    vals: list[tuple[str, str | None]] = [
        ("unset", None), ("empty", ""), ("all", "0,1,2,3"), ("reverse", "3,2,1,0"),
        ("ray_reorder", "3,1,0,2"), ("single", "2"), ("subset", "1,3"),
        ("negative", "-1"), ("negative_mid", "0,-1,1"), ("out_of_range", "4"),
        ("out_of_range_mid", "0,4,1"), ("out_of_range_big", "0,99"),
        ("overflow_2_32", "4294967296"), ("overflow_2_32_plus_1", "4294967297"),
        ("non_numeric", "a"), ("non_numeric_mid", "0,a,1"), ("empty_mid", "0,,1"),
        ("empty_lead", ",0"), ("trailing_comma", "0,"), ("trailing_chars", "1gpu"),
        ("trailing_chars_mid", "0,1x,2"), ("hex", "0x1"), ("decimal_point", "1.5"),
        ("plus_sign", "+1"), ("plus_sign_mid", "0,+2"), ("leading_zero", "01"),
        ("leading_zeros_mid", "00,002"), ("space_lead", " 1"), ("space_trail", "1 "),
        ("space_after_comma", "0, 1"), ("space_before_comma", "0 ,1"),
        ("space_everywhere", " 0 , 1 "), ("tab_lead", "\t1"), ("newline_trail", "1\n"),
        ("space_only", " "), ("space_inside", "1 2"), ("dup", "0,0"), ("dup_later", "1,0,1"),
        ("dup_leading_zero", "1,01"),
        ("uuid", u[0]), ("uuid_two", f"{u[2]},{u[0]}"), ("uuid_all_reordered", ",".join([u[3], u[1], u[0], u[2]])),
        ("uuid_prefix", p0), ("uuid_prefix_long", u[0][:13]), ("uuid_prefix_ambiguous", "GPU-"),
        ("uuid_prefix_then_full_same", f"{p0},{u[0]}"), ("uuid_full_then_prefix_same", f"{u[0]},{p0}"),
        ("uuid_dup", f"{u[1]},{u[1]}"), ("uuid_lower_prefix", "gpu-" + u[0][4:]),
        ("uuid_upper_hex", "GPU-" + u[0][4:].upper()), ("uuid_no_prefix", u[0][4:]),
        ("uuid_no_prefix_short", u[0][4:12]), ("uuid_unknown", "GPU-00000000-0000-0000-0000-000000000000"),
        ("uuid_trailing_junk", u[0] + "x"), ("uuid_space_lead", " " + u[0]),
        ("uuid_after_valid_junk", f"{u[1]},junk,{u[2]}"),
        ("int_then_uuid", f"0,{u[1]}"), ("uuid_then_int", f"{u[1]},0"),
        ("uuid_then_same_int", f"{u[1]},1"), ("int_then_same_uuid", f"1,{u[1]}"),
        ("mig_on_non_mig_gpu", f"MIG-{u[0]}/0/0"), ("mig_unknown", "MIG-00000000-0000-0000-0000-000000000000"),
        ("int_then_mig", f"0,MIG-{u[0]}/0/0"),
        # second round (2026-11-27, after the first run): what the first left unmeasured
        ("dup_after_stop", "0,9,0"), ("dup_uuid_after_stop", f"{u[1]},junk,{u[1]}"),
        ("uuid_no_dashes", "GPU-" + u[0][4:].replace("-", "")), ("uuid_trailing_space", u[0] + " "),
        ("uuid_comma_space", f"{u[0]}, {u[1]}"), ("negative_wrap", "-4294967295"),
        ("huge", "18446744073709551617"), ("mixed_case_tag", "Gpu-" + u[0][4:]), ("uuid_trailing_comma", u[0] + ","),
        ("uuid_dup_other_case", f"{u[0]},GPU-{u[0][4:].upper()}"), ("comma_then_uuid", "," + u[0]),
        ("mig_path_nonmig_gi1", f"MIG-{u[0]}/1/0"), ("uuid_prefix_dash_end", u[0][:9]),
        # fourth round (2026-12-06, a one-GPU host, where every prefix is unique): the empty prefix, in every
        # form, and one GPU named twice through prefixes of two lengths
        ("uuid_prefix_then_empty", f"{p0},GPU-"), ("empty_prefix_then_uuid", f"GPU-,{u[0]}"),
        ("int_then_empty_prefix", "0,GPU-"), ("uuid_then_empty_mid", f"{u[0]},GPU-,{u[1]}"),
        ("empty_prefix_dash", "GPU--"), ("empty_prefix_dashes", "GPU-----"), ("tag_only", "GPU"),
        ("tag_letter", "G"), ("mig_empty", "MIG-"), ("mig_empty_dash", "MIG--"), ("mig_gpu_empty", "MIG-GPU-"),
        ("uuid_prefix_two_lengths", f"{p0},{u[0][:len(p0) + 1]}"),
        ("uuid_prefix_long_then_short", f"{u[0][:len(p0) + 1]},{p0}"),
        ("uuid_full_no_dashes_then_prefix", "GPU-" + u[0][4:].replace("-", "") + "," + p0),
        # fifth round (2026-12-06, after the fourth showed `MIG--` naming the GPU of a host without MIG): is a MIG-
        # prefix that names no MIG instance read as a GPU's UUID prefix?
        ("mig_tag_gpu_prefix", "MIG-" + p0[4:]), ("mig_tag_gpu_uuid", "MIG-" + u[0][4:]),
        ("mig_tag_gpu_prefix_then_gpu", f"MIG-{p0[4:]},{u[0]}"), ("mig_dashes_then_gpu", f"MIG--,{u[0]}"),
        ("gpu_dashes_then_prefix", f"GPU--,{p0}"), ("mig_tag_gpu_no_path", f"MIG-{u[0]}"),
        ("mig_tag_gpu_prefix_then_int", f"MIG-{p0[4:]},0"), ("mig_tag_unknown_short", "MIG-f"),
    ]
    for k, h in enumerate(hidden[:2]):  # third round (2026-11-27): GPUs this process cannot open
        vals += [(f"hidden{k}_uuid", h), (f"hidden{k}_then_visible", f"{h},{u[0]}"),
                 (f"visible_then_hidden{k}", f"{u[0]},{h}"), (f"hidden{k}_prefix", h[:13])]
    return vals


def simulated_driver() -> str | None:
    """Why this is the gpuaffinity simulator, not a real driver (None: a real one)."""
    if os.environ.get("GPUAFFINITY_SIM_CONFIG"):
        return "GPUAFFINITY_SIM_CONFIG is set"
    try:
        nv = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if hasattr(nv, "gpuaffinitySimCallCount"):
        return "libnvidia-ml.so.1 is gpuaffinity's simulated library"
    return None


def host_uuids() -> list[str]:
    """Every GPU UUID the driver's /proc lists (the host's, whatever this process may open)."""
    out = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        with open(info, errors="replace") as f:
            for line in f:
                if line.startswith("GPU UUID:"):
                    out.append(line.split(":", 1)[1].strip())
    return out


def run_case(args: tuple[str, str | None, str | None, list[str], str]) -> dict:
    label, cvd, order, buses, script = args
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("CUDA_DEVICE_ORDER", None)
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    if order is not None:
        env["CUDA_DEVICE_ORDER"] = order
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", script, json.dumps(buses)], env=env,
                       capture_output=True, text=True, timeout=240)
    rec: dict = {"label": label, "cvd": cvd, "order": order, "rc": p.returncode,
                 "seconds": round(time.perf_counter() - t0, 3)}
    try:
        rec.update(json.loads(p.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        rec["stdout"] = p.stdout[-2000:]
        rec["stderr"] = p.stderr[-2000:]
    return rec


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    why = simulated_driver()
    if why:
        print(f"probe_real_driver: refusing to record: {why}; this tool records a real driver only",
              file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    topo = nvml_topology()
    buses = [g["busIdLegacy"] for g in topo["gpus"]]
    topo["sysfs"] = sysfs_facts([b.lower() for b in buses])
    topo["cuda"] = cuda_attributes()
    for cmd, key in ((["nvidia-smi", "-q"], "nvidia_smi_q"), (["nvidia-smi", "topo", "-m"], "nvidia_smi_topo"),
                     (["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id,name,driver_version",
                       "--format=csv"], "nvidia_smi_csv"), (["lscpu"], "lscpu")):
        try:
            topo[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            topo[key] = repr(e)
    topo["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with open(os.path.join(out, "topology.json"), "w") as f:
        json.dump(topo, f, indent=1)
    print("driver", topo["driver_version"], "gpus", [(g["name"], g["busId"]) for g in topo["gpus"]], flush=True)

    uuids = [g["uuid"] for g in topo["gpus"]]
    hidden = [h for h in host_uuids() if h not in uuids]
    topo["hidden_uuids"] = hidden
    cases = case_values(uuids, hidden)
    orders = [None, "FASTEST_FIRST", "PCI_BUS_ID"]
    jobs = [(label, cvd, order, buses, CHILD) for label, cvd in cases for order in orders]
    jobs.append(("order_bogus", "0,1", "BOGUS", buses, CHILD))
    jobs.append(("order_lowercase", "0,1", "pci_bus_id", buses, CHILD))
    with cf.ThreadPoolExecutor(8) as ex:
        recs = list(ex.map(run_case, jobs))
    with open(os.path.join(out, "cvd_cases.json"), "w") as f:
        json.dump({"driver_version": topo["driver_version"], "date": topo["date"],
                   "uuids": uuids, "bus_ids": buses, "hidden_uuids": hidden, "cases": recs}, f, indent=1)
    for r in recs:
        got = [buses.index(d["pci_bus_id"]) if d.get("pci_bus_id") in buses else d.get("pci_bus_id")
               for d in r.get("devices", [])]
        print(f"{r['label']:28s} {str(r['order']):14s} init={r.get('cuInit')} n={r.get('count')} -> {got}")
    print("cases done", round(time.time() - t0, 1), "s", flush=True)

    try:
        import importlib.util
        if importlib.util.find_spec("torch") is not None:
            tjobs = [(label, cvd, "PCI_BUS_ID", buses, TORCH_CHILD) for label, cvd in cases]
            with cf.ThreadPoolExecutor(8) as ex:
                trecs = list(ex.map(run_case, tjobs))
            with open(os.path.join(out, "torch_cases.json"), "w") as f:
                json.dump(trecs, f, indent=1)
            print("torch cases done", round(time.time() - t0, 1), "s")
    except Exception as e:
        print("torch pass failed:", e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
