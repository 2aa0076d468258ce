"""The NUMA stage: locality, partition modes, and real binding of this machine's CPUs and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import child_env, run_json
from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.sim import simulated

RAY = "3,6,5,4,0,7,1,2"

PLAN = r"""
import json, sys, gpuaffinity
out = []
for i in range(len(gpuaffinity.resolve_all())):
    row = {}
    for mode in ("node", "socket", "exclusive", "llc"):
        r = gpuaffinity.plan(i, mode=mode)
        row[mode] = [sorted(r.bind_cpus), list(r.memory_nodes), r.pci_bus_id, r.memory, r.failures, r.notes]
    out.append(row)
print(json.dumps(out))
"""


def test_every_mode_on_the_shuffled_dgx(sim_factory):
    machine = sim_factory("dgx-h100")
    topo = machine.topology
    rows = run_json(machine, PLAN, cvd=RAY)
    physical = [3, 6, 5, 4, 0, 7, 1, 2]
    exclusive: dict[int, list[set[int]]] = {0: [], 1: []}
    for logical, row in enumerate(rows):
        gpu = topo.gpus[physical[logical]]
        node = topo.node(gpu.numa_node)
        cpus, nodes, bus, memory, failures, _ = row["node"]
        assert (bus, nodes, memory, failures) == (gpu.pci_bus_id, [gpu.numa_node], "preferred", [])  # the default
        assert set(cpus) == node.cpus
        assert set(row["socket"][0]) == node.cpus  # one node a socket on this machine
        assert set(row["llc"][0]) == node.cpus  # no cache files in the fake sysfs: the node, with a note
        excl = set(row["exclusive"][0])
        assert len(excl) == 28  # 56 cores / 4 GPUs = 14 cores, 2 threads each
        for cpu in excl:  # hyperthread siblings stay together
            sibling = cpu + 112 if cpu < 112 else cpu - 112
            assert sibling in excl
        exclusive[gpu.numa_node].append(excl)
    for node_id, shares in exclusive.items():
        assert len(shares) == 4
        assert set().union(*shares) == topo.node(node_id).cpus
        assert sum(len(s) for s in shares) == len(topo.node(node_id).cpus)  # disjoint
    # the split is a function of the machine and the GPU, not of CUDA_VISIBLE_DEVICES
    again = run_json(machine, PLAN, cvd="0,1,2,3,4,5,6,7")
    assert sorted(map(tuple, (r["exclusive"][0] for r in again))) == sorted(
        map(tuple, (r["exclusive"][0] for r in rows)))


def test_vm_gpu_has_no_preference_and_mig_takes_its_parent(sim_factory):
    vm = run_json(sim_factory("vm-4gpu"), PLAN, cvd="2")
    cpus, nodes, _bus, memory, failures, notes = vm[0]["node"]
    assert (nodes, memory, failures) == ([], "none", []) and format_cpulist(cpus) == "0-31"
    # one note on the missing node: a host of one node, where NVML is not asked (it could name no other node), and
    # nothing contradicting it
    said = [n for n in notes if "numa_node = -1" in n or "NVML" in n]
    assert said == ["the firmware gives no NUMA node for this GPU (numa_node = -1, common in VMs) and this host has "
                    "one NUMA node (NVML was not asked: it can name no other): no preference"], notes
    mig = sim_factory("mig-a100")
    rows = run_json(mig, PLAN, cvd=mig.topology.gpus[2].migs[0].uuid)
    assert rows[0]["node"][1] == [1] and format_cpulist(rows[0]["node"][0]) == "16-31"


def test_cpuset_limits_and_empty_intersection(tmp_path):
    with simulated("dgx-h100", cpuset="0-7,112-119") as machine:
        env = child_env(machine, cvd="0,4")
        rows = json.loads(subprocess.run([sys.executable, "-c", PLAN], env=env, capture_output=True, text=True,
                                         check=True).stdout)
        assert format_cpulist(rows[0]["node"][0]) == "0-7,112-119"
        assert rows[1]["node"][0] == [] and rows[1]["node"][4][0].startswith("no CPU to bind to")
        out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--json", "1"], env=env,
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)[0]["cpus"] == ""
        for policy, status in (("warn", 5), ("error", 1)):
            r = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "1", "--on-failure", policy, "--",
                                sys.executable, "-c", "import sys; sys.exit(5)"], env=env, capture_output=True,
                               text=True)
            assert r.returncode == status, r.stderr
            assert "no CPU to bind to" in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1


# ---- real system calls on this machine -------------------------------------------------------------

CPUS = sorted(os.sched_getaffinity(0))


def local_machine(tmp_path, split: bool):
    """A topology file of this very machine's CPUs, so binds are real: one node, or one node per CPU."""
    cpus = CPUS[:2]
    if split:
        nodes = "".join(f'[[numa_node]]\nid = {i}\ncpus = "{c}"\n' for i, c in enumerate(cpus))
        gpus = "".join(f'[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-00000000000{i}"\n'
                       f'pci_bus_id = "0000:0{i + 1}:00.0"\nname = "NVIDIA H100"\nnuma_node = {i}\n'
                       for i in range(len(cpus)))
    else:
        nodes = f'[[numa_node]]\nid = 0\ncpus = "{format_cpulist(cpus)}"\n'
        gpus = '[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-000000000000"\npci_bus_id = "0000:01:00.0"\n' \
               'name = "NVIDIA H100"\nnuma_node = 0\n'
    path = tmp_path / "here.toml"
    path.write_text(f'name = "here"\n{nodes}{gpus}')
    return path


READBACK = ("import json, os, gpuaffinity.numa.bind as b; mode, nodes = b.get_mempolicy();"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), mode, sorted(nodes)]))")


def bind_cli(topology, *args, env=None):
    return subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topology), "--",
                           sys.executable, "-m", "gpuaffinity", "bind", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_bind_each_cpu_in_turn_and_read_back_from_the_kernel(tmp_path):
    topo = local_machine(tmp_path, split=True)
    for gpu, cpu in enumerate(CPUS[:2]):
        out = bind_cli(topo, str(gpu), "--memory", "none", "--", sys.executable, "-c", READBACK)
        assert out.returncode == 0, out.stderr
        affinity, mode, _nodes = json.loads(out.stdout)
        assert affinity == [cpu] and mode == 0  # MPOL_DEFAULT: memory left alone


def test_memory_policy_set_and_read_back(tmp_path):
    topo = local_machine(tmp_path, split=False)
    for memory, want in (("bind", 2), ("preferred", 1)):  # MPOL_BIND, MPOL_PREFERRED
        out = bind_cli(topo, "0", "--memory", memory, "--", sys.executable, "-c", READBACK)
        assert out.returncode == 0, out.stderr
        affinity, mode, nodes = json.loads(out.stdout)
        assert (affinity, mode, nodes) == (CPUS[:2], want, [0])


def test_exit_status_is_the_commands_and_missing_command_is_127(tmp_path):
    topo = local_machine(tmp_path, split=False)
    assert bind_cli(topo, "0", "--", sys.executable, "-c", "import sys; sys.exit(7)").returncode == 7
    missing = bind_cli(topo, "0", "--", "/no/such/cmd")
    assert missing.returncode == 127 and "command not found: /no/such/cmd" in missing.stderr
    assert bind_cli(topo, "0").returncode == 2


THREADS = r"""
import json, os, threading, time, warnings
import gpuaffinity
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
[t.start() for t in threads]
rec = gpuaffinity.bind(0, memory="none")
seen = {}
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/status") as f:
        seen[tid] = next(l.split(":")[1].strip() for l in f if l.startswith("Cpus_allowed_list"))
stop.set()
print(json.dumps({"threads": rec.threads, "seen": seen, "ok": rec.ok, "applied": rec.cpus_applied}))
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_every_thread_is_bound(tmp_path):
    with simulated(local_machine(tmp_path, split=True)) as machine:
        out = run_json(machine, THREADS)
    assert out["ok"] and out["applied"] and out["threads"] == 4
    assert set(out["seen"].values()) == {str(CPUS[0])}


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_node_the_kernel_does_not_have_is_einval_under_each_policy(tmp_path):
    # the simulated machine claims node 1; this kernel has only node 0
    if os.path.exists("/sys/devices/system/node/node1"):
        pytest.skip("this kernel has a node 1")
    topo = local_machine(tmp_path, split=True)
    warn = bind_cli(topo, "1", "--on-failure", "warn", "--", sys.executable, "-c", READBACK)
    assert warn.returncode == 0, warn.stderr
    affinity, mode, _ = json.loads(warn.stdout)
    assert affinity == [CPUS[1]] and mode == 0  # CPUs applied, memory not
    assert "EINVAL" in warn.stderr and "bound only in part" in warn.stderr
    error = bind_cli(topo, "1", "--on-failure", "error", "--", sys.executable, "-c", READBACK)
    assert error.returncode == 1 and error.stdout == ""
    assert "EINVAL: the kernel has no such NUMA node" in error.stderr and "nothing was left applied" in error.stderr


SECCOMP = r"""
import ctypes, os, platform, sys
nr = {"x86_64": 238, "aarch64": 237}[platform.machine()]
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
prog = (F * 4)(F(0x20, 0, 0, 0), F(0x15, 0, 1, nr), F(0x06, 0, 0, 0x00050000 | 1), F(0x06, 0, 0, 0x7fff0000))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(P(4, prog)), 0, 0):
    sys.exit(99)  # no seccomp here
os.execvp(sys.argv[1], sys.argv[1:])
"""


def test_seccomp_denial_is_eperm_naming_cap_sys_nice(tmp_path):
    """Docker's default seccomp profile refuses set_mempolicy without CAP_SYS_NICE: the same filter, for real."""
    topo = local_machine(tmp_path, split=False)
    cmd = [sys.executable, "-c", SECCOMP, sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--",
           sys.executable, "-m", "gpuaffinity", "bind", "0"]
    for policy, status in (("warn", 0), ("error", 1)):
        out = subprocess.run([*cmd, "--on-failure", policy, "--", sys.executable, "-c", READBACK],
                             capture_output=True, text=True, timeout=120)
        if out.returncode == 99:
            pytest.skip("seccomp filters are not available here")
        assert out.returncode == status, out.stderr
        assert "EPERM" in out.stderr and "CAP_SYS_NICE" in out.stderr
        if policy == "warn":
            affinity, mode, _ = json.loads(out.stdout)
            assert affinity == CPUS[:2] and mode == 0


def test_launcher_api_binds_spawned_workers_and_subprocesses(tmp_path):
    topo = local_machine(tmp_path, split=len(CPUS) >= 2)
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys
        import gpuaffinity.launch as launch

        def where():
            import gpuaffinity.numa.bind as b
            return [sorted(os.sched_getaffinity(0)), b.get_mempolicy()[0]]

        def recorded_mode():
            from gpuaffinity import intent
            rec = intent.current()
            return [rec.mode, rec.memory]

        def worker(q, tag="positional only"):
            q.put([*where(), tag])

        if __name__ == "__main__":
            import multiprocessing
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            last = {len(CPUS[:2]) - 1}
            p = launch.spawn_process(last, worker, (q,), {{"tag": "by keyword"}})
            p.start(); spawned = q.get(timeout=120); p.join()
            child = launch.popen(0, [sys.executable, "-c", {READBACK!r}], stdout=subprocess.PIPE, text=True)
            sub = json.loads(child.communicate()[0])
            with ctx.Pool(1, initializer=launch.initializer, initargs=(last,)) as pool:  # the defaults
                pooled = pool.apply_async(where).get(timeout=60)
                pooled_mode = pool.apply_async(recorded_mode).get(timeout=60)
            with ctx.Pool(1, initializer=launch.initializer, initargs=(last, "exclusive", "none")) as pool:
                moded = pool.apply_async(recorded_mode).get(timeout=60) + [where()[1]]
            print(json.dumps({{"spawned": spawned, "sub": sub, "exit": p.exitcode, "pooled": pooled,
                               "pooled_mode": pooled_mode, "moded": moded,
                               "parent": sorted(os.sched_getaffinity(0))}}))
    """))
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", sys.executable,
                          str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    last_cpu = CPUS[:2][-1]
    assert res["spawned"][0] == ([last_cpu] if len(CPUS) >= 2 else CPUS[:1])
    assert res["spawned"][2] == "by keyword"  # the keyword arguments reach the target
    assert res["pooled"] == res["spawned"][:2]  # a pool worker bound by the defaults, as spawn_process's worker
    assert res["pooled_mode"] == ["node", "preferred"]
    assert res["moded"] == ["exclusive", "none", 0]  # the mode and memory given in initargs (no policy: default)
    assert res["sub"][0] == CPUS[:1]
    assert res["parent"] == CPUS  # the parent itself stays unbound
    assert res["exit"] == 0


def test_parse_of_cpulist_in_status_matches():
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("Cpus_allowed_list"))
    assert parse_cpulist(line.split(":")[1]) == frozenset(os.sched_getaffinity(0))


def test_a_gpu_spanning_nodes_reports_all_and_disagreement_is_noted(tmp_path, monkeypatch):
    """NVML's node mask may name several nodes (a GPU between sockets); sysfs names one of them."""
    from gpuaffinity.numa.query import gpu_locality
    from gpuaffinity.sim.render import render_sysfs
    from gpuaffinity.sim.topology import load_topology

    topo = load_topology("dgx-h100")
    render_sysfs(topo, tmp_path)
    monkeypatch.setenv("GPUAFFINITY_SYSFS_ROOT", str(tmp_path))
    bus = topo.gpus[0].pci_bus_id  # sysfs: node 0
    every = topo.cpus
    span = gpu_locality(bus, every, (frozenset({0, 1}), every))
    assert span.numa_nodes == (0, 1) and span.cpus == every
    assert any("spans NUMA nodes 0-1" in n for n in span.notes)
    other = gpu_locality(bus, every, (frozenset({1}), every))
    assert other.numa_nodes == (0,) and any("but sysfs says 0: using sysfs" in n for n in other.notes)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_memory_outside_mems_allowed_is_left_out_not_einval(tmp_path):
    """A node outside the cgroup's Mems_allowed is not bound to (it would be EINVAL): CPUs bound, memory left
    alone, and said so.  Mems_allowed_list is this very process's, read by the kernel's rules from procfs."""
    if os.path.exists("/sys/devices/system/node/node1"):
        pytest.skip("this kernel has a node 1")
    with open("/proc/self/status") as f:
        status = f.read()
    assert "Mems_allowed_list:\t0\n" in status  # this machine's only node
    with simulated(local_machine(tmp_path, split=True)) as machine:
        fake = machine.folder / "proc" / "self" / "status"
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(status)
        env = child_env(machine)
        run = [sys.executable, "-m", "gpuaffinity", "bind", "1"]
        out = subprocess.run([*run, "--on-failure", "error", "--", sys.executable, "-c", READBACK], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        affinity, mode, _ = json.loads(out.stdout)
        assert affinity == [CPUS[1]] and mode == 0  # CPUs applied, memory policy left at its default
        assert "memory on node(s) 1 is not allowed to this process (Mems_allowed_list 0" in out.stderr
        dry = subprocess.run([*run, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
        assert "memory none" in dry.stdout and "would fail" not in dry.stdout


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_spawn_process_applies_the_childs_env_before_it_binds(host8, tmp_path):
    """spawn_process(0, f, env={"CUDA_VISIBLE_DEVICES": "4"}): device 0 of the CHILD's list is GPU 4, on node 1
    (CPUS[1]); the parent's device 0 is GPU 0, on node 0.  The worker must be bound for its own device 0."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import gpuaffinity.launch as launch

        def worker(q):
            import gpuaffinity
            q.put([sorted(os.sched_getaffinity(0)), gpuaffinity.resolve(0).pci_bus_id])

        if __name__ == "__main__":
            import multiprocessing
            q = multiprocessing.get_context("spawn").Queue()
            p = launch.spawn_process(0, worker, (q,), env={"CUDA_VISIBLE_DEVICES": "4"}, memory="none")
            p.start(); got = q.get(timeout=120); p.join()
            print(json.dumps({"child": got, "exit": p.exitcode, "parent_cvd": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    """))
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable,
                          str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["child"] == [[CPUS[1]], "0000:50:00.0"] and res["exit"] == 0 and res["parent_cvd"] is None, res
