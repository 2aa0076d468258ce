"""Other processes on the simulated machine (``[[running]]``): their /proc, as Linux writes it, and NVML's list of
the processes with a CUDA context, read through the real pynvml and through gpuaffinity.nvml_lite alike."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, run_json
from gpuaffinity.core.cpulist import parse_cpulist, parse_cpumask
from gpuaffinity.sim import TopologyError, load_topology, simulated
from gpuaffinity.sim.render import kernel_bitmap, render_config, render_running
from gpuaffinity.sim.topology import parse_topology

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

MIB = 1 << 20

#: 2 nodes x 4 CPUs, a GPU on each; the processes below are appended to it.
MACHINE = """name = "two"
[[numa_node]]
id = 0
cpus = "0-3"
[[numa_node]]
id = 1
cpus = "4-7"
[[gpu]]
uuid = "GPU-00000000-0000-0000-0000-000000000001"
pci_bus_id = "0000:1b:00.0"
name = "NVIDIA H100 80GB HBM3"
numa_node = 0
[[gpu]]
uuid = "GPU-00000000-0000-0000-0000-000000000002"
pci_bus_id = "0000:9d:00.0"
name = "NVIDIA H100 80GB HBM3"
numa_node = 1
"""

WORKER = """
[[running]]
pid = 10
name = "python3"
cmdline = ["python3", "serve.py", "--port", "8000"]
uid = 1000
environ = { CUDA_VISIBLE_DEVICES = "1", LOCAL_RANK = "1", EMPTY = "" }
cpus = "4-7"
policy = "prefer:1"
contexts = { "0000:9d:00.0" = 2048 }
binding = { pci_bus_id = "0000:9d:00.0", numa_nodes = [1], cpus = "4-7", note = "bound \u00e0 1" }
[[running.thread]]
tid = 11
name = "pt_nccl_watchdg"
cpus = "0-1"
[[running.thread]]
tid = 12
state = "R"
[[running.mapping]]
kind = "heap"
pages = { "1" = 1000, "0" = 24 }
[[running.mapping]]
pages = { "0" = 0, "1" = 500 }
policy = "weighted interleave:0-1"
[[running.mapping]]
file = "/dev/nvidia1"
[[running.mapping]]
file = "/data/model weights=v2.bin"
pages = { "1" = 7 }
[[running.mapping]]
kernelpagesize_kB = 2048
pages = { "1" = 3 }
[[running.mapping]]
kind = "stack"
pages = { "1" = 40 }
"""


def machine_file(tmp_path: Path, extra: str = "", name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(MACHINE + extra)
    return path


def status_of(path: Path) -> list[tuple[str, str]]:
    """(key, value) of each line of a status file, in order."""
    out = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        assert sep, line
        out.append((key, value.lstrip("\t")))
    return out


def is_subsequence(keys: list[str], of: list[str]) -> bool:
    it = iter(of)
    return all(k in it for k in keys)


# ---- the topology file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ("[[running]]\npid = 10\nbogus = 1\n", "running[0].bogus: unknown field"),
    ("[[running]]\npid = 10\n[[running]]\npid = 10\n", "running[1].pid: duplicate pid 10 (also running[0].pid)"),
    ("[[running]]\npid = 0\n", "running[0].pid: must be 1 to 4194303, not 0"),
    ("[[running]]\npid = 4194304\n", "running[0].pid: must be 1 to 4194303, not 4194304"),
    ("[[running]]\nname = \"x\"\n", "running[0].pid: missing"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 20\n[[running]]\npid = 20\n",
     "running[0].thread[0].tid: 20 is the pid of another process (running[1].pid)"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 30\n[[running]]\npid = 20\n[[running.thread]]\ntid = 30\n",
     "running[1].thread[0].tid: duplicate tid 30 (also running[0].thread[0].tid)"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 10\n", "running[0].thread[0].tid: 10 is the process's own pid"),
    ("[[running]]\npid = 10\n[[running.thread]]\nname = \"x\"\n", "running[0].thread[0].tid: missing"),
    ("[[running]]\npid = 10\ncpus = \"0-9\"\n", "running[0].cpus: CPUs 8-9 are not online CPUs of this machine (0-7)"),
    ("[[running]]\npid = 10\ncpus = \"\"\n", "running[0].cpus: a task runs on at least one CPU"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 11\ncpus = \"8\"\n",
     "running[0].thread[0].cpus: CPUs 8 are not online CPUs"),
    ("[[running]]\npid = 10\n[[running.mapping]]\npages = { \"7\" = 1 }\n",
     "running[0].mapping[0].pages: '7' is not a NUMA node of this machine (0-1)"),
    ("[[running]]\npid = 10\n[[running.mapping]]\npages = { \"0\" = -1 }\n",
     "running[0].mapping[0].pages.0: want a number of pages (0 or more), not -1"),
    ("[[running]]\npid = 10\nopens = [\"0000:99:00.0\"]\n", "running[0].opens: no GPU '0000:99:00.0' on this machine"),
    ("[[running]]\npid = 10\ncontexts = { \"0000:99:00.0\" = 1 }\n",
     "running[0].contexts: no GPU '0000:99:00.0' on this machine"),
    ("[[running]]\npid = 10\nopens = [\"0000:1b:00.0\"]\ncontexts = { \"0000:9d:00.0\" = 1 }\n",
     "running[0].opens: a CUDA context holds its GPU's device node open: add 0000:9d:00.0"),
    ("[[running]]\npid = 10\ncontexts = { \"0000:9d:00.0\" = -5 }\n",
     "running[0].contexts.'0000:9d:00.0': want the GPU memory used in MiB (0 or more), or \"n/a\", not -5"),
    ("[[running]]\npid = 10\nname = \"pt_nccl_watchdog\"\n",
     "running[0].name: must be 1 to 15 bytes (the kernel's comm)"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 11\nname = \"" + "\u00e9" * 8 + "\"\n",
     "running[0].thread[0].name: must be 1 to 15 bytes (the kernel's comm), not 16"),
    ("[[running]]\npid = 10\nstate = \"X\"\n", "running[0].state: want one of R, S, D, T, Z, I, not 'X'"),
    ("[[running]]\npid = 10\nstate = \"I\"\n", "running[0].state: I (idle) is a kernel thread's state"),
    ("[[running]]\npid = 10\n[[running.thread]]\ntid = 11\nstate = \"Z\"\n",
     "running[0].thread[0].state: want R, S, D or T"),
    ("[[running]]\npid = 10\npolicy = \"bind\"\n", "running[0].policy: bind needs nodes, e.g. bind:0"),
    ("[[running]]\npid = 10\npolicy = \"prefer:0-1\"\n", "running[0].policy: prefer takes one node"),
    ("[[running]]\npid = 10\npolicy = \"interleave=balancing:0\"\n",
     "running[0].policy: balancing goes with bind and prefer (many) only, not interleave"),
    ("[[running]]\npid = 10\npolicy = \"bind:5\"\n", "running[0].policy: 'bind:5' names nodes without memory"),
    ("[[running]]\npid = 10\npolicy = \"default:0\"\n", "running[0].policy: default takes no nodes"),
    ("[[running]]\npid = 10\npolicy = \"bind=sticky:0\"\n", "running[0].policy: bad flags in 'bind=sticky:0'"),
    ("[[running]]\npid = 10\npolicy = \"preferred:0\"\n", "running[0].policy: unknown mode in 'preferred:0'"),
    ("[[running]]\npid = 10\n[[running.mapping]]\npolicy = \"local:0\"\n",
     "running[0].mapping[0].policy: local takes no"),
    ("[[running]]\npid = 10\nstate = \"Z\"\nenviron = { A = \"1\" }\n",
     "running[0].environ: a zombie has none (its /proc shows none): leave it out"),
    ("[[running]]\npid = 10\nkernel_thread = true\n[[running.thread]]\ntid = 11\n",
     "running[0].thread: a kernel thread has none"),
    ("[[running]]\npid = 10\nkernel_thread = true\nuid = 5\n", "running[0].uid: a kernel thread runs as root"),
    ("[[running]]\npid = 10\nkernel_thread = 1\n", "running[0].kernel_thread: must be true or false, not 1"),
    ("[[running]]\npid = 10\nreadable = \"no\"\n", "running[0].readable: must be true or false, not 'no'"),
    ("[[running]]\npid = 10\n[[running.mapping]]\nkind = \"heap\"\nfile = \"/x\"\n",
     "running[0].mapping[0].kind: the heap is anonymous memory"),
    ("[[running]]\npid = 10\n[[running.mapping]]\nkind = \"text\"\n",
     "running[0].mapping[0].kind: want \"heap\" or \"stack\", not 'text'"),
    ("[[running]]\npid = 10\n[[running.mapping]]\nkind = \"stack\"\n[[running.mapping]]\nkind = \"stack\"\n",
     "running[0].mapping: a process has one stack, not 2"),
    ("[[running]]\npid = 10\n[[running.mapping]]\nkernelpagesize_kB = 8\n",
     "running[0].mapping[0].kernelpagesize_kB: want 4, 2048 or 1048576 (hugetlb), not 8"),
    ("[[running]]\npid = 10\n[[running.mapping]]\nfile = \"relative\"\n",
     "running[0].mapping[0].file: must be an absolute path"),
    ("[[running]]\npid = 10\nbinding = { at = 1979-05-27T07:32:00Z }\n",
     "running[0].binding: cannot be written as JSON"),
    ("[[running]]\npid = 10\nbinding = 3\n", "running[0].binding: must be a table"),
    ("[[running]]\npid = 10\nenviron = { \"A=B\" = \"1\" }\n", "running[0].environ: 'A=B' cannot be a variable's name"),
    ("[[running]]\npid = 10\ncmdline = [\"a\\u0000b\"]\n", "running[0].cmdline: must be a list of strings without NUL"),
    ("[[running]]\npid = 10\nenviron = { " + "V" * 70 + " = 5 }\n",  # a long name: its first 60 characters
     "running[0].environ." + "V" * 60 + ": must be a string without NUL, not 5"),
    ("[[running]]\npid = 10\nmems = \"0-3\"\n", "running[0].mems: must name nodes with memory of this machine (0-1)"),
])
def test_a_bad_running_table_is_one_line_naming_file_field_and_problem(tmp_path, extra, message):
    path = machine_file(tmp_path, extra)
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert message in text, text


def test_a_mig_gpu_takes_contexts_on_its_instances_only(tmp_path):
    mig = load_topology("mig-a100")
    gpu = next(g for g in mig.gpus if g.migs)
    base = 'base = "mig-a100"\nname = "m"\n[[running]]\npid = 10\n'
    path = tmp_path / "m.toml"
    path.write_text(base + f'contexts = {{ "{gpu.pci_bus_id}" = 1 }}\n')
    with pytest.raises(TopologyError, match=r"running\[0\]\.contexts\.'[0-9a-f:.]+': GPU .* is in MIG mode"):
        load_topology(path)
    path.write_text(base + f'contexts = {{ "{gpu.migs[0].uuid}" = 1, "{gpu.migs[1].uuid}" = 2 }}\n')
    with pytest.raises(TopologyError, match="a second context on GPU"):
        load_topology(path)
    path.write_text(base + f'contexts = {{ "{gpu.migs[1].uuid}" = 1 }}\n')
    (p,) = load_topology(path).running
    assert p.contexts[0].mig == 1 and p.opens == (mig.gpus.index(gpu),)  # a context opens its GPU's node


def test_defaults_and_a_derived_file(tmp_path):
    path = machine_file(tmp_path, "[[running]]\npid = 10\n[[running.thread]]\ntid = 11\n"
                                  "[[running]]\npid = 20\nkernel_thread = true\nname = \"kworker/0:1\"\n")
    user, kthread = load_topology(path).running
    assert (user.name, user.cmdline, user.uid, user.gid, user.ppid, user.state, user.readable) == \
        ("python3", ("python3",), 0, 0, 1, "S", True)
    assert user.cpus == frozenset(range(8)) and user.mems == {0, 1} and user.policy == "default"
    assert user.threads[0].cpus == user.cpus and user.threads[0].name == "python3" and user.opens == ()
    assert (kthread.cmdline, kthread.ppid, kthread.state) == ((), 2, "I")
    derived = tmp_path / "d.toml"
    derived.write_text('base = "m.toml"\nname = "d"\n[[running]]\npid = 30\n')
    assert [p.pid for p in load_topology(derived).running] == [30]  # the derived file's processes replace
    derived.write_text('base = "m.toml"\nname = "d"\n')
    assert [p.pid for p in load_topology(derived).running] == [10, 20]  # or the base's stay


def test_policy_nodes_are_printed_in_the_kernels_shortest_form(tmp_path):
    path = machine_file(tmp_path, "[[running]]\npid = 10\npolicy = \"bind=static|balancing:1,0\"\n"
                                  "[[running.mapping]]\npolicy = \"prefer (many)=balancing:0,1\"\n")
    (p,) = load_topology(path).running
    assert p.policy == "bind=static|balancing:0-1" and p.mappings[0].policy == "prefer (many)=balancing:0-1"


# ---- the rendered /proc -----------------------------------------------------------------------------------

#: numa_maps fields after the policy (mm/mempolicy.c show_numa_map), in the order the kernel prints them
NUMA_FIELDS = [r"file=\S+", r"heap|stack", r"huge", r"anon=\d+", r"dirty=\d+", r"mapped=\d+", r"mapmax=\d+",
               r"swapcache=\d+", r"active=\d+", r"writeback=\d+", r"N\d+=\d+", r"kernelpagesize_kB=\d+"]


def parse_numa_maps_line(line: str) -> tuple[int, str, list[str]]:
    """(address, policy, fields) of one numa_maps line; asserts the kernel's grammar and field order.  The
    policy may hold spaces ("weighted interleave:0-1", "prefer (many):0"): it runs to the first field."""
    tokens = line.split(" ")
    assert re.fullmatch(r"[0-9a-f]{8,}", tokens[0]), line

    def rank(tok: str) -> int | None:
        return next((i for i, pat in enumerate(NUMA_FIELDS) if re.fullmatch(pat, tok)), None)

    i = 1
    while i < len(tokens) and rank(tokens[i]) is None:
        i += 1
    policy, fields = " ".join(tokens[1:i]), tokens[i:]
    ranks = [rank(t) for t in fields]
    assert None not in ranks and ranks == sorted(ranks), line
    assert re.fullmatch(r"(default|local|prefer|bind|interleave|weighted interleave|prefer \(many\))"
                        r"(=(static|relative|balancing|static\|balancing|relative\|balancing))?(:[0-9,-]+)?",
                        policy), line
    return int(tokens[0], 16), policy, fields


def pages_of(fields: list[str]) -> dict[int, int]:
    return {int(f[1:].split("=")[0]): int(f.split("=")[1]) for f in fields if re.fullmatch(r"N\d+=\d+", f)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The simulated machine with WORKER, a kernel thread, a zombie and an unreadable process."""
    extra = WORKER + """
[[running]]
pid = 20
name = "kworker/1:2"
kernel_thread = true
cpus = "1"
[[running]]
pid = 30
name = "defunct"
state = "Z"
ppid = 10
[[running]]
pid = 40
name = "other-user"
uid = 1001
readable = false
environ = { SECRET = "x" }
contexts = { "0000:1b:00.0" = "n/a" }
[[running.mapping]]
pages = { "0" = 5 }
[[running]]
pid = 50
kernel_thread = true
readable = false
"""
    path = machine_file(tmp_path_factory.mktemp("worker"), extra)
    with simulated(path, base_env=dict(os.environ)) as machine:
        yield machine


def proc(machine) -> Path:
    return Path(machine.env["GPUAFFINITY_PROCFS_ROOT"])


def test_the_rendered_layout(worker):
    root = proc(worker)
    d = root / "10"
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert files == [".memfd", ".memfd/memfd:gpuaffinity-binding (deleted)", "cmdline", "comm", "environ", "fd",
                     "fd/0", "fd/1", "fd/2", "fd/3", "fd/4", "fd/5", "fd/6", "numa_maps", "status", "task",
                     "task/10", "task/10/comm", "task/10/status", "task/11", "task/11/comm", "task/11/status",
                     "task/12", "task/12/comm", "task/12/status"]
    assert (root / "driver" / "nvidia" / "gpus").is_dir()  # beside the driver's files, as in /proc
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["10", "20", "30", "40", "50"]
    assert (d / "cmdline").read_bytes() == b"".join(a + b"\0" for a in (b"python3", b"serve.py", b"--port", b"8000"))
    assert (d / "environ").read_bytes() == b"CUDA_VISIBLE_DEVICES=1\0LOCAL_RANK=1\0EMPTY=\0"
    assert (d / "comm").read_bytes() == b"python3\n" and (d / "task" / "11" / "comm").read_text() == "pt_nccl_watchdg\n"


def real_thread_status() -> list[tuple[str, str]]:
    """/proc/self/task/<tid>/status of a second thread of this very process."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(30)

    t = threading.Thread(target=run)
    t.start()
    try:
        ready.wait(30)
        return status_of(Path(f"/proc/self/task/{tid[0]}/status"))
    finally:
        done.set()
        t.join()


def test_status_has_the_kernels_lines_in_the_kernels_order(worker):
    real = real_thread_status()
    real_keys = [k for k, _ in real]
    d = proc(worker) / "10"
    for path in (d / "status", d / "task" / "10" / "status", d / "task" / "11" / "status"):
        ours = status_of(path)
        keys = [k for k, _ in ours]
        assert is_subsequence(keys, real_keys), (keys, real_keys)
        for key in ("Name", "State", "Tgid", "Pid", "PPid", "Uid", "Gid", "NSpid", "Threads", "VmSize", "VmRSS",
                    "Cpus_allowed", "Cpus_allowed_list", "Mems_allowed_list"):
            assert key in keys, key
        real_values = dict(real)
        for key, value in ours:  # each value has the shape the kernel gives it
            if key in ("Uid", "Gid"):
                assert re.fullmatch(r"\d+\t\d+\t\d+\t\d+", value) and re.fullmatch(r"\d+\t\d+\t\d+\t\d+",
                                                                                  real_values[key])
            if key.startswith(("Vm", "Rss", "Huge")):
                assert re.fullmatch(r" *\d+ kB", value) and len(value) >= 11, (key, value)
    thread = dict(status_of(d / "task" / "11" / "status"))
    assert (thread["Name"], thread["Pid"], thread["Tgid"], thread["NSpid"], thread["Threads"]) == \
        ("pt_nccl_watchdg", "11", "10", "11", "3")
    assert thread["Cpus_allowed_list"] == "0-1" and thread["State"] == "S (sleeping)"
    assert dict(status_of(d / "task" / "12" / "status"))["State"] == "R (running)"
    main = dict(status_of(d / "status"))
    assert (main["Uid"], main["PPid"], main["Cpus_allowed_list"], main["Mems_allowed_list"]) == \
        ("1000\t1000\t1000\t1000", "1", "4-7", "0-1")
    assert (d / "status").read_text() == (d / "task" / "10" / "status").read_text()


def test_cpus_allowed_is_the_kernels_hex_of_the_list(worker):
    for path in (proc(worker) / "10" / "status", proc(worker) / "10" / "task" / "11" / "status"):
        st = dict(status_of(path))
        assert parse_cpumask(st["Cpus_allowed"]) == parse_cpulist(st["Cpus_allowed_list"])
        assert st["Cpus_allowed"] in ("f0", "03")  # 8 CPUs: nr_cpu_ids 8, one group of 2 digits
        assert parse_cpumask(st["Mems_allowed"]) == parse_cpulist(st["Mems_allowed_list"])
        assert len(st["Mems_allowed"].split(",")) == 32  # MAX_NUMNODES 1024, as on this kernel


def test_kernel_bitmap_writes_what_this_kernel_writes():
    st = dict(status_of(Path("/proc/self/status")))
    nr_cpu_ids = max(parse_cpulist(Path("/sys/devices/system/cpu/possible").read_text())) + 1
    assert kernel_bitmap(set(os.sched_getaffinity(0)), nr_cpu_ids) == st["Cpus_allowed"]
    mems = st["Mems_allowed"]
    assert kernel_bitmap(set(parse_cpulist(st["Mems_allowed_list"])), 32 * len(mems.split(","))) == mems
    assert kernel_bitmap({0, 1}, 2) == "3" and kernel_bitmap({0, 35}, 36) == "8,00000001"
    assert kernel_bitmap({0, 40}, 224) == "00000000,00000000,00000000,00000000,00000000,00000100,00000001"


def test_numa_maps_is_the_kernels_grammar(worker):
    for line in Path("/proc/self/numa_maps").read_text().splitlines():  # the parser takes the real thing
        parse_numa_maps_line(line)
    lines = (proc(worker) / "10" / "numa_maps").read_text().splitlines()
    parsed = [parse_numa_maps_line(line) for line in lines]
    addrs = [a for a, _, _ in parsed]
    assert addrs == sorted(set(addrs))
    assert [(p, f) for _, p, f in parsed] == [
        ("prefer:1", ["file=/usr/bin/python3", "mapped=64", "N1=64", "kernelpagesize_kB=4"]),  # text: task policy
        ("prefer:1", ["heap", "anon=1024", "dirty=1024", "N0=24", "N1=1000", "kernelpagesize_kB=4"]),
        ("weighted interleave:0-1", ["anon=500", "dirty=500", "N1=500", "kernelpagesize_kB=4"]),  # own; no N0=0
        ("prefer:1", ["file=/dev/nvidia1"]),  # a mapping without pages ends there, as the kernel's do
        ("prefer:1", [r"file=/data/model\040weights\075v2.bin", "mapped=7", "N1=7", "kernelpagesize_kB=4"]),
        ("prefer:1", [r"file=/anon_hugepage\040(deleted)", "huge", "anon=3", "dirty=3", "N1=3",
                      "kernelpagesize_kB=2048"]),
        ("prefer:1", ["stack", "anon=40", "dirty=40", "N1=40", "kernelpagesize_kB=4"]),
    ]
    huge = parsed[5][0]
    assert huge % (2 << 20) == 0  # a hugetlb mapping starts on its page size


def test_vmrss_is_the_resident_base_pages_of_numa_maps(worker):
    rss = 0
    huge = 0
    for line in (proc(worker) / "10" / "numa_maps").read_text().splitlines():
        _, _, fields = parse_numa_maps_line(line)
        size = int(fields[-1].split("=")[1]) if fields and fields[-1].startswith("kernelpage") else 4
        n = sum(pages_of(fields).values()) * size
        if "huge" in fields:
            huge += n
        else:
            rss += n
    st = dict(status_of(proc(worker) / "10" / "status"))
    assert int(st["VmRSS"].split()[0]) == rss == 4 * (64 + 1024 + 500 + 7 + 40)
    assert int(st["RssAnon"].split()[0]) + int(st["RssFile"].split()[0]) == rss
    assert int(st["HugetlbPages"].split()[0]) == huge == 3 * 2048  # hugetlb pages count there, not in VmRSS
    assert int(st["VmSize"].split()[0]) >= rss + huge


def test_vmpte_is_a_page_table_page_per_2_mib_resident_rounded_up(worker):
    st = dict(status_of(proc(worker) / "10" / "status"))
    rss = int(st["VmRSS"].split()[0])
    assert rss == 6540  # 3.19 times 2 MiB: 4 page-table pages of 4 kB
    assert st["VmPTE"] == f"{4 * 4:8d} kB"


def test_fd_links_name_the_device_nodes_and_the_binding_record(worker):
    fd = proc(worker) / "10" / "fd"
    dev = worker.env["GPUAFFINITY_DEV_ROOT"]
    links = {int(n): os.readlink(fd / n) for n in os.listdir(fd)}
    memfd = links.pop(3)
    assert links == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null", 4: f"{dev}/nvidiactl", 5: f"{dev}/nvidia-uvm",
                     6: f"{dev}/nvidia1"}
    assert all(os.path.exists(t) for t in links.values())  # the simulated /dev has each node
    assert os.path.basename(memfd).startswith("memfd:gpuaffinity-binding") and memfd.endswith(" (deleted)")
    with open(fd / "3", encoding="utf-8") as f:  # read through the fd, as `check` will
        assert json.load(f) == {"pci_bus_id": "0000:9d:00.0", "numa_nodes": [1], "cpus": "4-7",
                                "note": "bound \u00e0 1"}
    st = dict(status_of(proc(worker) / "10" / "status"))
    assert st["FDSize"] == "64"


def test_an_unreadable_process_refuses_environ_numa_maps_and_fd(worker):
    d = proc(worker) / "40"
    for name in ("environ", "numa_maps"):
        with pytest.raises(PermissionError):
            (d / name).read_bytes()
    with pytest.raises(NotADirectoryError):
        os.listdir(d / "fd")
    with pytest.raises(NotADirectoryError):
        os.readlink(d / "fd" / "0")
    assert dict(status_of(d / "status"))["Uid"] == "1001\t1001\t1001\t1001"  # status and cmdline still read
    assert (d / "cmdline").read_bytes() == b"other-user\0"
    assert (d / "task" / "40" / "comm").read_text() == "other-user\n"


def test_a_kernel_thread_and_a_zombie(worker):
    kt = proc(worker) / "20"
    st = status_of(kt / "status")
    keys = [k for k, _ in st]
    assert not any(k.startswith(("Vm", "Rss")) for k in keys)
    assert dict(st)["PPid"] == "2" and dict(st)["Kthread"] == "1" and dict(st)["State"] == "I (idle)"
    assert dict(st)["NSpgid"] == "0" and dict(st)["Cpus_allowed_list"] == "1"
    for name in ("cmdline", "environ", "numa_maps"):
        assert (kt / name).read_bytes() == b""
    assert os.listdir(kt / "fd") == []
    z = proc(worker) / "30"
    st = dict(status_of(z / "status"))
    assert st["State"] == "Z (zombie)" and "VmRSS" not in st and "Umask" not in st and st["FDSize"] == "0"
    assert st["PPid"] == "10" and st["Threads"] == "1" and os.listdir(z / "task") == ["30"]
    for name in ("cmdline", "environ", "numa_maps"):
        assert (z / name).read_bytes() == b""
    assert os.listdir(z / "fd") == []
    unreadable_kt = proc(worker) / "50"  # no address space to guard: environ and numa_maps read empty, fd/ not
    assert (unreadable_kt / "environ").read_bytes() == b"" and (unreadable_kt / "numa_maps").read_bytes() == b""
    with pytest.raises(NotADirectoryError):
        os.listdir(unreadable_kt / "fd")


def test_a_real_zombie_and_kernel_thread_have_the_lines_we_render(worker):
    """The kernel's own zombie (a child not waited for) and kernel thread: our keys are theirs, in order."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(200):
            real = status_of(Path(f"/proc/{pid}/status"))
            if dict(real)["State"].startswith("Z"):
                break
            threading.Event().wait(0.01)
        ours = [k for k, _ in status_of(proc(worker) / "30" / "status")]
        assert is_subsequence(ours, [k for k, _ in real]), (ours, real)
        assert ("Umask" in dict(real)) == ("Umask" in ours) and ("VmRSS" in dict(real)) == ("VmRSS" in ours)
    finally:
        os.waitpid(pid, 0)
    kthreadd = Path("/proc/2/status")
    if kthreadd.exists() and dict(status_of(kthreadd)).get("Kthread") == "1":
        ours = [k for k, _ in status_of(proc(worker) / "20" / "status")]
        assert is_subsequence(ours, [k for k, _ in status_of(kthreadd)])


def test_drop_caches_refuses_reading_even_to_root():
    """What readable = false leans on: a write-only sysctl, which open() for reading refuses with EACCES."""
    with pytest.raises(PermissionError):
        open("/proc/sys/vm/drop_caches", "rb").close()


def test_without_the_driver_no_process_holds_a_device_node(tmp_path):
    path = machine_file(tmp_path, WORKER)
    with simulated(path, faults=["nvmlInit=9"], base_env=dict(os.environ)) as machine:
        fd = proc(machine) / "10" / "fd"
        assert sorted(os.readlink(fd / n) for n in os.listdir(fd))[:3] == ["/dev/null"] * 3
        assert len(os.listdir(fd)) == 4  # and the binding record
        assert not (proc(machine) / "driver").exists()


def test_the_busy_dgx_preset_shows_its_four_cases():
    topo = load_topology("busy-dgx")
    node_cpus = {n.id: n.cpus for n in topo.nodes}
    with simulated(topo, base_env=dict(os.environ)) as machine:
        root = proc(machine)

        def cpus(pid: int, tid: int) -> frozenset[int]:
            return parse_cpulist(dict(status_of(root / str(pid) / "task" / str(tid) / "status"))["Cpus_allowed_list"])

        def anon(pid: int) -> dict[int, int]:
            total: dict[int, int] = {}
            for line in (root / str(pid) / "numa_maps").read_text().splitlines():
                _, _, fields = parse_numa_maps_line(line)
                if any(f.startswith("anon=") for f in fields):
                    for node, n in pages_of(fields).items():
                        total[node] = total.get(node, 0) + n
            return total

        # 1. well bound: GPU on node 0, every thread there, pages there, a binding record naming the GPU
        assert all(cpus(4101, t) <= node_cpus[0] for t in (4101, 4102, 4103)) and set(anon(4101)) == {0}
        fd = root / "4101" / "fd"
        record = next(fd / n for n in os.listdir(fd) if os.path.basename(os.readlink(fd / n)).startswith(
            "memfd:gpuaffinity-binding"))
        assert json.loads(record.read_text())["pci_bus_id"] == "0000:52:00.0"
        # 2. main thread on node 1, its watchdog on node 0
        assert cpus(4201, 4201) <= node_cpus[1] and cpus(4201, 4202) <= node_cpus[0]
        # 3. 40% of the anonymous pages on the remote node
        pages = anon(4301)
        assert pages[0] / (pages[0] + pages[1]) == pytest.approx(0.4)
        # 4. not readable
        with pytest.raises(PermissionError):
            (root / "4401" / "environ").read_bytes()


_values = st.recursive(st.one_of(st.integers(-5, 1 << 33), st.text(max_size=12), st.booleans(), st.floats()),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                       max_leaves=6)
_POLICIES = ["default", "local", "prefer:1", "prefer:0-1", "bind:0-1", "bind=static|balancing:1", "interleave:0,1",
             "weighted interleave:0-1", "prefer (many)=balancing:0", "bind", "local:0", "interleave=balancing:0"]
_FIELDS = {
    "name": st.one_of(st.just("w"), st.text(max_size=18)),
    "cmdline": st.one_of(st.lists(st.text(max_size=8), max_size=3), _values),
    "uid": st.integers(-1, 1 << 32),
    "ppid": st.integers(-1, 5_000_000),
    "state": st.sampled_from(["R", "S", "D", "T", "Z", "I", "X"]),
    "kernel_thread": st.one_of(st.booleans(), _values),
    "readable": st.booleans(),
    "environ": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), _values),
    "cpus": st.one_of(st.sampled_from(["0-3", "4-7", "0,7", "8", ""]), st.text(max_size=6)),
    "mems": st.sampled_from(["0", "1", "0-1", "2", ""]),
    "policy": st.one_of(st.sampled_from(_POLICIES), st.text(max_size=10)),
    "exe": st.sampled_from(["/opt/a b", "rel"]),
    "opens": st.one_of(st.just(["0000:1b:00.0"]), st.lists(st.one_of(st.integers(-1, 3), st.text(max_size=12)),
                                                           max_size=2), _values),
    "contexts": st.one_of(st.just({"0000:9d:00.0": 5}), _values,
                          st.dictionaries(st.sampled_from(["0000:1b:00.0", "0000:9d:00.0", "1", "x"]),
                                          st.one_of(st.integers(-1, 10), st.just("n/a"), st.text(max_size=3)),
                                          max_size=2)),
    "binding": st.one_of(st.just({"a": [1, "\u00e9"]}), _values),
}
_MAPPING = st.fixed_dictionaries({}, optional={
    "policy": st.sampled_from(_POLICIES), "file": st.sampled_from(["/dev/nvidia0", "/a b=c", "x"]),
    "kind": st.sampled_from(["heap", "stack", "text"]), "kernelpagesize_kB": st.sampled_from([4, 2048, 8]),
    "pages": st.one_of(st.dictionaries(st.sampled_from(["0", "1", "2", "x"]), st.integers(-1, 1 << 20),
                                       max_size=2), _values)})


@st.composite
def running_tables(draw):
    """[[running]] tables, mostly well formed, with a field or two broken."""
    procs = []
    for i in range(draw(st.integers(1, 3))):
        proc = {"pid": draw(st.one_of(st.just(100 + i), st.integers(-1, 5_000_000)))}
        for key in draw(st.lists(st.sampled_from(sorted(_FIELDS)), unique=True, max_size=6)):
            proc[key] = draw(_FIELDS[key])
        proc["thread"] = [{"tid": draw(st.one_of(st.just(200 + 10 * i + j), st.integers(99, 102))),
                           **({"cpus": draw(_FIELDS["cpus"])} if draw(st.booleans()) else {})}
                          for j in range(draw(st.integers(0, 2)))]
        proc["mapping"] = draw(st.lists(_MAPPING, max_size=4))
        procs.append(proc)
    return procs


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(procs=running_tables())
def test_any_running_table_is_one_error_line_or_a_consistent_proc(procs):
    """Either one TopologyError line naming the field, or a /proc whose files agree with each other."""
    data = tomllib.loads(MACHINE)
    data["running"] = procs
    try:
        topo = parse_topology(data, "fuzz.toml")
    except TopologyError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.toml: running"), str(e)
        return
    config = render_config(topo).splitlines()
    assert sum(line.startswith("proc ") for line in config) == sum(len(p.contexts) for p in topo.running)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proc"
        render_running(topo, root, Path(tmp) / "dev")
        for p in topo.running:
            d = root / str(p.pid)
            st_ = dict(status_of(d / "status"))
            assert parse_cpumask(st_["Cpus_allowed"]) == parse_cpulist(st_["Cpus_allowed_list"]) == p.cpus
            assert st_["Threads"] == str(1 + len(p.threads)) == str(len(os.listdir(d / "task")))
            if not p.has_mm:
                assert "VmRSS" not in st_ and (d / "numa_maps").read_bytes() == b""
                continue
            if not p.readable:
                with pytest.raises(PermissionError):
                    (d / "numa_maps").read_bytes()
                continue
            rss = 0
            for line in (d / "numa_maps").read_text().splitlines():
                _, policy, fields = parse_numa_maps_line(line)
                size = int(fields[-1].split("=")[1]) if fields and fields[-1].startswith("kernelpage") else 4
                rss += 0 if "huge" in fields else sum(pages_of(fields).values()) * size
            assert int(st_["VmRSS"].split()[0]) == rss


def test_sim_check_prints_the_processes():
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "check", "busy-dgx"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    running = [line for line in out.stdout.splitlines() if line.startswith("  running: ")]
    assert running[0] == ("  running: pid 4101 python3  uid 1000  state S  threads 3  cpus 0-55,112-167  "
                          "GPUs 0000:52:00.0")
    assert running[3].endswith("GPUs 0000:9d:00.0  (not readable)") and len(running) == 4


# ---- NVML's running-process list --------------------------------------------------------------------------

BOTH_WAYS = r"""
import json, pynvml
from gpuaffinity.nvml_lite import Session
pynvml.nvmlInit()
theirs, ours = [], []
with Session() as nv:
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        theirs.append([[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId]
                       for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)])
        ours.append([list(x) for x in nv.compute_processes(nv.handle_by_index(i))])
        assert pynvml.nvmlDeviceGetGraphicsRunningProcesses(h) == []
print(json.dumps({"pynvml": theirs, "lite": ours}))
"""


def many(n: int, gpu: str = "0000:1b:00.0") -> str:
    return "".join(f'[[running]]\npid = {1000 + k}\ncontexts = {{ "{gpu}" = {k} }}\n' for k in range(n))


@pytest.mark.parametrize(("extra", "want"), [
    ("", [[], []]),
    (WORKER, [[], [[10, 2048 * MIB]]]),
    (many(100) + WORKER + '[[running]]\npid = 7\ncontexts = { "0000:1b:00.0" = "n/a", "0000:9d:00.0" = 0 }\n',
     [[[1000 + k, k * MIB] for k in range(100)] + [[7, None]], [[10, 2048 * MIB], [7, 0]]]),
])
def test_pynvml_and_nvml_lite_list_the_same_processes(tmp_path, extra, want):
    with simulated(machine_file(tmp_path, extra), base_env=dict(os.environ)) as machine:
        out = run_json(machine, BOTH_WAYS)
    assert out["lite"] == want
    assert [[p[:2] for p in gpu] for gpu in out["pynvml"]] == want
    assert all(p[2:] == [0xFFFFFFFF, 0xFFFFFFFF] for gpu in out["pynvml"] for p in gpu)  # not MIG


def test_the_config_lines(tmp_path):
    text = render_config(load_topology(machine_file(tmp_path, WORKER + '[[running]]\npid = 7\n'
                                                   'contexts = { "0000:1b:00.0" = "n/a" }\n')))
    lines = text.splitlines()
    assert "proc 7 n/a" in lines and f"proc 10 {2048 * MIB}" in lines
    assert lines.index("proc 7 n/a") < next(i for i, line in enumerate(lines) if "0000:9d:00.0" in line) < \
        lines.index(f"proc 10 {2048 * MIB}")  # each after its own gpu line


RAW = r"""
import ctypes, json, sys
lib = ctypes.CDLL("libnvidia-ml.so.1")
assert lib.nvmlInit_v2() == 0
class Info(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("used", ctypes.c_ulonglong), ("gi", ctypes.c_uint), ("ci", ctypes.c_uint)]
class Info1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("used", ctypes.c_ulonglong)]
h = ctypes.c_void_p()
assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == 0
out = {}
n = ctypes.c_uint(0)
out["count"] = [lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), None), n.value]
small = (Info * 2)()
for s in small:
    s.pid = 0xDEAD
n = ctypes.c_uint(2)
out["small"] = [lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), small), n.value,
                [s.pid for s in small]]
n = ctypes.c_uint(5)
out["null"] = [lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), None), n.value]
out["nocount"] = lib.nvmlDeviceGetComputeRunningProcesses_v3(h, None, small)
big = (Info * 5)()
n = ctypes.c_uint(5)
out["fits"] = [lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), big), n.value,
               [[x.pid, x.used, x.gi, x.ci] for x in big[:n.value]]]
n = ctypes.c_uint(5)
out["v2"] = [lib.nvmlDeviceGetComputeRunningProcesses_v2(h, ctypes.byref(n), big), n.value]
v1 = (Info1 * 5)()
n = ctypes.c_uint(5)
out["v1"] = [lib.nvmlDeviceGetComputeRunningProcesses(h, ctypes.byref(n), v1), [[x.pid, x.used] for x in v1[:n.value]]]
n = ctypes.c_uint(0)
out["graphics"] = [lib.nvmlDeviceGetGraphicsRunningProcesses_v3(h, ctypes.byref(n), None), n.value]
out["bad_handle"] = lib.nvmlDeviceGetComputeRunningProcesses_v3(ctypes.c_void_p(8), ctypes.byref(n), None)
lib.nvmlShutdown()
n = ctypes.c_uint(0)
out["uninit"] = lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(n), None)
print(json.dumps(out))
"""


def test_the_buffer_protocol(tmp_path):
    extra = many(3) + '[[running]]\npid = 7\ncontexts = { "0000:1b:00.0" = "n/a" }\n'
    with simulated(machine_file(tmp_path, extra), base_env=dict(os.environ)) as machine:
        out = run_json(machine, RAW)
    assert out["count"] == [7, 4]  # INSUFFICIENT_SIZE with the count needed
    assert out["small"] == [7, 4, [0xDEAD, 0xDEAD]]  # too small: the count, and the array left alone
    assert out["null"] == [2, 5] and out["nocount"] == 2  # INVALID_ARGUMENT
    listed = [[1000, 0, 0xFFFFFFFF, 0xFFFFFFFF], [1001, MIB, 0xFFFFFFFF, 0xFFFFFFFF],
              [1002, 2 * MIB, 0xFFFFFFFF, 0xFFFFFFFF], [7, (1 << 64) - 1, 0xFFFFFFFF, 0xFFFFFFFF]]
    assert out["fits"] == [0, 4, listed] and out["v2"] == [0, 4]
    assert out["v1"] == [0, [p[:2] for p in listed]]  # the legacy element: pid and memory only
    assert out["graphics"] == [0, 0] and out["bad_handle"] == 2 and out["uninit"] == 1


def test_none_running_is_success_with_no_array(tmp_path):
    with simulated(machine_file(tmp_path), base_env=dict(os.environ)) as machine:
        assert run_json(machine, RAW.split('small = ')[0] + "print(json.dumps(out))")["count"] == [0, 0]


MIG_LISTS = r"""
import json, pynvml
from gpuaffinity.nvml_lite import Session
pynvml.nvmlInit()
out = {}
with Session() as nv:
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        row = {"gpu": [[p.pid, p.gpuInstanceId, p.computeInstanceId] for p in
                       pynvml.nvmlDeviceGetComputeRunningProcesses(h)],
               "lite": [pid for pid, _ in nv.compute_processes(nv.handle_by_index(i))]}
        if pynvml.nvmlDeviceGetMigMode(h)[0]:
            row["migs"] = []
            for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                except pynvml.NVMLError:
                    continue
                row["migs"].append([p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(m)])
        out[i] = row
print(json.dumps(out))
"""


def test_a_mig_instance_lists_its_own_processes_and_the_gpu_all(tmp_path):
    mig = load_topology("mig-a100")
    g = mig.gpus[0]
    extra = "".join(f'[[running]]\npid = {100 + j}\ncontexts = {{ "{m.uuid}" = 10 }}\n' for j, m in enumerate(g.migs))
    extra += f'[[running]]\npid = 200\ncontexts = {{ "{g.migs[1].uuid}" = 10 }}\n'
    path = tmp_path / "m.toml"
    path.write_text(f'base = "mig-a100"\nname = "m"\n{extra}')
    with simulated(path, base_env=dict(os.environ)) as machine:
        out = run_json(machine, MIG_LISTS)
    gpu = out["0"]
    assert gpu["gpu"] == [[100 + j, m.gpu_instance, m.compute_instance] for j, m in enumerate(g.migs)] + \
        [[200, g.migs[1].gpu_instance, g.migs[1].compute_instance]]
    assert gpu["lite"] == [p[0] for p in gpu["gpu"]]
    assert gpu["migs"] == [[100], [101, 200], [102]]
    assert all(row["gpu"] == [] for i, row in out.items() if i != "0")


FAULTED = r"""
import ctypes, json, pynvml
from gpuaffinity.nvml_lite import NvmlLiteError, Session
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
out = {}
try:
    pynvml.nvmlDeviceGetComputeRunningProcesses(h)
except pynvml.NVMLError as e:
    out["pynvml"] = e.value
with Session() as nv:
    try:
        nv.compute_processes(nv.handle_by_index(0))
    except NvmlLiteError as e:
        out["lite"] = [e.call, e.code, str(e)]
    out["again"] = nv.compute_processes(nv.handle_by_index(0))
out["calls"] = ctypes.CDLL("libnvidia-ml.so.1").gpuaffinitySimCallCount(b"nvmlDeviceGetComputeRunningProcesses_v3")
print(json.dumps(out))
"""


def test_a_fault_reaches_pynvml_and_nvml_lite_alike(tmp_path):
    extra = '[[running]]\npid = 10\ncontexts = { "0000:1b:00.0" = 2048 }\n'
    with simulated(machine_file(tmp_path, extra), faults=["nvmlDeviceGetComputeRunningProcesses=999:2"],
                   base_env=dict(os.environ)) as machine:
        out = run_json(machine, FAULTED)
    assert out["pynvml"] == 999
    assert out["lite"] == ["nvmlDeviceGetComputeRunningProcesses_v3", 999,
                           "nvmlDeviceGetComputeRunningProcesses_v3 returned NVML error 999 (Unknown Error)"]
    assert out["again"] == [[10, 2048 * MIB]]  # the fault passed: the count query, then the list
    assert out["calls"] == 4


GROWING_C = r"""
/* An NVML whose process list grows between the count query and the fetch (a busy GPU): by GROW once, or
 * with EVERY, to twice its size and more at every call.  One GPU. */
typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } info_t;
static int gpu;
static unsigned n = 1, calls;
#define API __attribute__((visibility("default")))
API int nvmlInit_v2(void) { return 0; }
API int nvmlShutdown(void) { return 0; }
API int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) { if (i) return 2; *h = &gpu; return 0; }
API unsigned listCalls(void) { return calls; }
#ifndef NO_LIST
API int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned *count, info_t *infos) {
    (void)h;
    calls++;
#ifdef EVERY
    if (calls > 1) n = 2 * n + 10;
#else
    if (calls == 2) n += GROW;
#endif
    if (*count < n) { *count = n; return 7; }
    for (unsigned i = 0; i < n; i++) {
        infos[i].pid = 100 + i; infos[i].used = i; infos[i].gi = infos[i].ci = 0xFFFFFFFFu;
    }
    *count = n;
    return 0;
}
#endif
"""

GROWING_PY = r"""
import ctypes, json
from gpuaffinity.nvml_lite import NvmlLiteError, PROCESS_LIST_TRIES, Session
with Session() as nv:
    try:
        out = {"list": nv.compute_processes(nv.handle_by_index(0))}
    except NvmlLiteError as e:
        out = {"error": [e.call, e.code]}
lib = ctypes.CDLL("libnvidia-ml.so.1")
out["calls"] = lib.listCalls() if hasattr(lib, "listCalls") else None
out["tries"] = PROCESS_LIST_TRIES
print(json.dumps(out))
"""


def run_growing(tmp_path: Path, *flags: str) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    folder = tmp_path / "_".join(flags).replace("-", "").replace("=", "")
    folder.mkdir()
    src = folder / "grow.c"
    src.write_text(GROWING_C)
    subprocess.run([cc, "-shared", "-fPIC", "-fvisibility=hidden", *flags, "-o", str(folder / "libnvidia-ml.so.1"),
                    str(src)], check=True)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(folder), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", GROWING_PY], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_nvml_lite_asks_again_when_the_list_grows(tmp_path):
    out = run_growing(tmp_path, "-DGROW=7")  # 1 at the count, 8 at the fetch: more than the room left for growth
    assert out["list"] == [[100 + i, i] for i in range(8)] and out["calls"] == 3  # count, too small, then fits
    out = run_growing(tmp_path, "-DGROW=2")  # growth the spare room absorbs: one fetch
    assert out["list"] == [[100 + i, i] for i in range(3)] and out["calls"] == 2


def test_nvml_lite_gives_up_on_a_list_that_always_outgrows_it(tmp_path):
    out = run_growing(tmp_path, "-DGROW=0", "-DEVERY")
    assert out["error"] == ["nvmlDeviceGetComputeRunningProcesses_v3", 7]  # INSUFFICIENT_SIZE
    assert out["calls"] == 1 + out["tries"]  # the count, then the bounded fetches


def test_a_driver_without_the_call_is_function_not_found(tmp_path):
    out = run_growing(tmp_path, "-DGROW=0", "-DNO_LIST")
    assert out["error"] == ["nvmlDeviceGetComputeRunningProcesses_v3", 13]
