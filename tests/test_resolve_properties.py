"""Property: on random machines and random CUDA_VISIBLE_DEVICES, no strategy is wrong and the chain
never returns a wrong device without a warning."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid as uuidlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CUDA_VARS
from gpuaffinity.sim import simulated
from gpuaffinity.sim.topology import parse_topology
from test_resolve import CHILD

# (model, speed rank): FASTEST_FIRST puts lower ranks first, PCI order among equals
MODELS = [("NVIDIA H100 80GB HBM3", 0), ("NVIDIA A100-SXM4-80GB", 1), ("NVIDIA A10", 2)]


@st.composite
def machines(draw):
    n = draw(st.integers(1, 16))
    mixed = draw(st.booleans())
    models = [draw(st.sampled_from(MODELS)) if mixed else MODELS[0] for _ in range(n)]
    nodes = draw(st.integers(1, 3))
    order = sorted(range(n), key=lambda i: (models[i][1], i))
    shared = draw(st.booleans())  # a shared UUID prefix makes short prefixes ambiguous
    gpus = []
    for i in range(n):
        u = str(uuidlib.UUID(int=draw(st.integers(0, 2**120 - 1)) * 256 + i))
        if shared:
            u = "8932f937-d72c" + u[13:]
        gpu = {"uuid": f"GPU-{u}", "pci_bus_id": f"0000:{16 * i + 1:02x}:00.0", "name": models[i][0],
               "numa_node": draw(st.integers(-1, nodes - 1)), "cuda_order": order.index(i)}
        if draw(st.integers(0, 6)) == 0:
            gpu["mig"] = [{"uuid": f"MIG-{uuidlib.UUID(int=draw(st.integers(0, 2**120 - 1)) * 256 + 16 * i + k)}",
                           "gpu_instance": k + 1, "compute_instance": 0} for k in range(draw(st.integers(1, 2)))]
        gpus.append(gpu)
    return parse_topology({"name": "random", "gpu": gpus,
                           "numa_node": [{"id": k, "cpus": f"{2 * k}-{2 * k + 1}"} for k in range(nodes)]})


def cvd_values(topo):
    n = len(topo.gpus)
    uuids = [g.uuid for g in topo.gpus]
    migs = [m.uuid for g in topo.gpus for m in g.migs]
    entry = st.one_of(
        st.integers(0, n).map(str),
        st.tuples(st.sampled_from(uuids), st.integers(5, 40)).map(lambda t: t[0][: t[1]]),
        st.sampled_from(migs or uuids),
        st.sampled_from(["-1", "x", "", " 1", "1gpu"]),
    )
    return st.one_of(st.none(), st.lists(entry, max_size=5).map(",".join),
                     st.permutations(list(range(n))).map(lambda p: ",".join(map(str, p))))


# The truth comes from the simulated CUDA driver itself, asked through cuda.bindings, one fresh process per
# environment (the driver reads the variables once, in cuInit): a child that never initialises CUDA forks one
# grandchild per combination.  Nothing here uses gpuaffinity's own grammar.
TRUTH = r"""
import json, os, sys
from cuda.bindings import driver as d
out = []
for cvd, order in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for var, value in (("CUDA_VISIBLE_DEVICES", cvd), ("CUDA_DEVICE_ORDER", order)):
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        (rc,) = d.cuInit(0)
        devices = []
        if rc == d.CUresult.CUDA_SUCCESS:
            _, n = d.cuDeviceGetCount()
            for i in range(n):
                _, bus = d.cuDeviceGetPCIBusId(32, i)
                _, own = getattr(d, "cuDeviceGetUuid_v2", d.cuDeviceGetUuid)(i)
                devices.append([bus.split(b"\0", 1)[0].decode().lower(), bytes(own.bytes).hex()])
        os.write(w, json.dumps([int(rc), devices]).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    out.append(json.loads(data))
print(json.dumps(out))
"""


def driver_truth(env, combos):
    """[(cuInit's result, [(physical GPU UUID, MIG UUID or None), ...]), ...] from the simulated driver."""
    proc = subprocess.run([sys.executable, "-c", TRUTH, json.dumps(combos)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def named(topo, bus, own_hex):
    """The physical GPU at ``bus`` and, when the driver's UUID is not that GPU's, the MIG instance it names."""
    gpu = next(g for g in topo.gpus if g.pci_bus_id == bus)
    if gpu.uuid[4:].replace("-", "") == own_hex:
        return gpu.uuid, None
    mig = next(m for m in gpu.migs if m.uuid[4:].replace("-", "") == own_hex)
    return gpu.uuid, mig.uuid


def check(topo, combos, torch=False):
    extra = {"T_IMPORT_TORCH": "1"} if torch else {}
    with simulated(topo) as machine:
        env = {k: v for k, v in machine.env.items() if k not in CUDA_VARS}
        truths = driver_truth(env, combos)
        env.update(extra)
        proc = subprocess.run([sys.executable, CHILD, json.dumps([[c, o, {}] for c, o in combos])], env=env,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (cvd, order), rec, (rc, devices) in zip(combos, results, truths, strict=True):
        where = f"CUDA_VISIBLE_DEVICES={cvd!r} CUDA_DEVICE_ORDER={order!r}: {rec}"
        if rc == 101:  # CUDA_ERROR_INVALID_DEVICE: the driver refuses the variables
            assert rec.get("error") == "InvalidVisibleDevicesError", where
            continue
        assert "error" not in rec, where
        assert len(rec["devices"]) == len(devices), where
        for dev, (bus, own_hex) in zip(rec["devices"], devices, strict=True):
            want_uuid, want_mig = named(topo, bus, own_hex)
            for name, (answer, _ran, _why) in dev["verdicts"].items():
                assert answer is None or answer == want_uuid, f"strategy {name} is wrong: {where}"
            if dev["uuid"] != want_uuid:
                assert dev["fallback"] and rec["warnings"], f"wrong device without a warning: {where}"
            if want_mig is not None and dev["strategy"] != "identity":
                assert dev["mig_uuid"] == want_mig, where


ORDERS = st.sampled_from([None, "FASTEST_FIRST", "PCI_BUS_ID"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
@pytest.mark.slow
def test_chain_is_right_or_loud(data):
    topo = data.draw(machines())
    combos = data.draw(st.lists(st.tuples(cvd_values(topo), ORDERS), min_size=1, max_size=8))
    check(topo, combos)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
@pytest.mark.slow
def test_chain_is_right_or_loud_with_torch_imported(data):
    pytest.importorskip("torch")
    topo = data.draw(machines())
    combos = data.draw(st.lists(st.tuples(cvd_values(topo), ORDERS), min_size=4, max_size=10))
    check(topo, combos, torch=True)
