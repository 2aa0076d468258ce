"""The kernel's /proc formats as gpuaffinity.proc reads them, in this process: status lines, numa_maps policies and
lines as mm/mempolicy.c and fs/proc/task_mmu.c print them, environments, and this process's own view."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from gpuaffinity import proc
from gpuaffinity.core.settings import PROCFS_VAR


def test_status_lines_are_keys_and_stripped_values():
    text = "Name:\tpython3\nState:\tS (sleeping)\nCpus_allowed_list:\t0-3,8\nno colon here\nVmRSS:\t   1234 kB\n"
    assert proc.parse_status(text) == {"Name": "python3", "State": "S (sleeping)", "Cpus_allowed_list": "0-3,8",
                                       "VmRSS": "1234 kB"}
    assert proc.parse_status("Key:a:b\n") == {"Key": "a:b"}


@pytest.mark.parametrize(("text", "want"), [
    ("default file=/usr/bin/python3", ("default", "MPOL_DEFAULT", frozenset(), "default")),
    ("local", ("local", "MPOL_LOCAL", frozenset(), "local")),
    ("prefer:1 anon=3", ("preferred", "MPOL_PREFERRED", frozenset({1}), "prefer:1")),
    ("prefer (many):0-1 heap", ("preferred", "MPOL_PREFERRED_MANY", frozenset({0, 1}), "prefer (many):0-1")),
    ("bind:0,2", ("bind", "MPOL_BIND", frozenset({0, 2}), "bind:0,2")),
    ("interleave=static:0-3", ("interleave", "MPOL_INTERLEAVE|MPOL_F_STATIC_NODES", frozenset({0, 1, 2, 3}),
                               "interleave=static:0-3")),
    ("bind=relative:1", ("bind", "MPOL_BIND|MPOL_F_RELATIVE_NODES", frozenset({1}), "bind=relative:1")),
    ("bind=static|balancing:1", ("bind", "MPOL_BIND|MPOL_F_STATIC_NODES|MPOL_F_NUMA_BALANCING", frozenset({1}),
                                 "bind=static|balancing:1")),
    ("weighted interleave:0-1", ("weighted-interleave", "MPOL_WEIGHTED_INTERLEAVE", frozenset({0, 1}),
                                 "weighted interleave:0-1")),
    ("bind=odd:1", ("bind", "MPOL_BIND|MPOL_F_ODD", frozenset({1}), "bind=odd:1")),
])
def test_each_policy_as_numa_maps_prints_it(text, want):
    p = proc.parse_policy(text)
    assert (p.policy, p.kernel, p.nodes, p.text) == want


@pytest.mark.parametrize("text", ["", "preferred:1", "bindx:1", "bind:x", "bind:1-", "defaultfile=x", "  default"])
def test_anything_else_is_no_policy(text):
    assert proc.parse_policy(text) is None


def test_a_numa_maps_line_gives_its_policy_kind_page_size_and_pages():
    pol, ordinary, size, pages = proc.parse_numa_maps_line(
        b"7f00 bind:1 file=/usr/lib/libc.so.6 mapped=3 N0=2 N1=5 kernelpagesize_kB=4")
    assert (pol.policy, ordinary, size, pages) == ("bind", True, 4096, {0: 2, 1: 5})
    for line, counted in ((b"7f00 default anon=3 N1=3 kernelpagesize_kB=4", True),
                          (b"7f00 default file=/dev/nvidia0 N0=1 kernelpagesize_kB=4", True),
                          (b"7f00 default file=/anon_hugepage\\040(deleted) huge N0=1 kernelpagesize_kB=2048", True),
                          (b"7f00 default file=/SYSV00000000\\040(deleted) N0=1 kernelpagesize_kB=4", True),
                          (b"7f00 default file=/memfd:x\\040(deleted) N0=1 kernelpagesize_kB=4", True),
                          (b"7f00 default file=/home/u/dev/x N0=1 kernelpagesize_kB=4", False)):
        assert proc.parse_numa_maps_line(line)[1] is not counted, line
    assert proc.parse_numa_maps_line(b"7f00 default N0=1 kernelpagesize_kB=2048")[2] == 2048 * 1024
    assert proc.parse_numa_maps_line(b"7f00 default N0=1 kernelpagesize_kB=x")[2] == 4096
    assert proc.parse_numa_maps_line(b"7f00 default N0=1")[2:] == (4096, {0: 1})


def test_pages_count_bytes_per_node_apart_from_files_and_give_shares():
    pages = proc.Pages()
    for line in (b"1 default heap anon=2 N0=2 N1=1 kernelpagesize_kB=4",
                 b"2 default file=/usr/bin/python3 mapped=5 N1=5 kernelpagesize_kB=4",
                 b"3 default file=/anon_hugepage\\040(deleted) huge N1=1 kernelpagesize_kB=2048"):
        proc._count(pages, line)
    assert pages.nodes == {0: 8192, 1: 4096 + (2 << 20)} and pages.file_nodes == {1: 5 * 4096}
    assert pages.mappings == 3 and pages.total == 8192 + 4096 + (2 << 20)
    assert pages.share_on((0,)) == 8192 / pages.total and proc.Pages().share_on((0,)) is None


def test_an_environment_is_its_items_and_a_cut_read_drops_its_last():
    raw = b"A=1\0B=x=y\0=nokey\0NOEQ\0A=2\0C=\xff\0"
    assert proc._environ(raw) == {"A": "1", "B": "x=y", "C": "\ufffd"}
    assert proc._environ(b"A=1\0B=cut", whole=False) == {"A": "1"}
    assert proc.read_environ("/proc/self") == proc._environ(open("/proc/self/environ", "rb").read())


def test_an_environment_of_many_reads_past_one_mib_is_read_whole_to_its_last_variable():
    """exec takes up to 6 MiB of environment, read 64 KiB at a time; `gpuaffinity bind` puts GPUAFFINITY_BOUND
    last.  1.2 MB here: every variable comes back as the process was started with it, the last one included."""
    env = {f"FILL{i}": chr(ord("a") + i) * 120_000 for i in range(10)}
    env["LAST"] = "found"
    # it says when it runs: Popen returns as the exec starts, before the kernel has the new environment's place
    p = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                         env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert proc.look(p.pid, root="/proc").environ == env
    finally:
        p.kill()
        p.wait()


def test_a_thread_id_names_its_process_init_included(tmp_path, monkeypatch):
    """``thread_group``: the process a thread id is a thread of (`gpuaffinity check TID` checks that process).  In
    a container the program is often pid 1: its threads' Tgid is 1, a process like any other."""
    tids, started, stop = [], threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), started.set(), stop.wait(10)))
    t.start()
    try:
        assert started.wait(10)
        assert tids[0] != os.getpid() and proc.thread_group(tids[0]) == os.getpid()
    finally:
        stop.set()
        t.join()
    monkeypatch.setenv(PROCFS_VAR, str(tmp_path))  # a container's processes, modelled
    for pid, tgid in ((1, "1"), (57, "1"), (58, "0"), (59, "x"), (60, "")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(f"Name:\ttrain\nTgid:\t{tgid}\nPid:\t{pid}\n")
    assert [proc.thread_group(p) for p in (1, 57, 58, 59, 60)] == [1, 1, None, None, None]


def test_under_the_real_proc_only_a_memfd_is_a_record(tmp_path, monkeypatch):
    """A record is a memfd, its link ``/memfd:gpuaffinity-binding (deleted)``; under the simulator, a file in its
    /proc folder.  A link is the path in the process's own mount namespace, where a folder of /proc may be any
    file system: a file of that name whose link reads as under /proc is no record of the real /proc's."""
    record = '{"v":1,"how":"in-process","pid":4242}'
    (tmp_path / "memfd:gpuaffinity-binding").write_text(record)
    monkeypatch.chdir(tmp_path)
    pid_dir = tmp_path / "4242"
    (pid_dir / "fd").mkdir(parents=True)
    os.symlink("/proc/self/cwd/memfd:gpuaffinity-binding", pid_dir / "fd" / "3")  # opens: the file above
    view = proc.View(4242, "/proc")
    proc._fds(str(pid_dir), view)
    assert view.binding_text is None and view.denied == []
    os.symlink(tmp_path / "memfd:gpuaffinity-binding", pid_dir / "fd" / "4")
    view = proc.View(4242, str(tmp_path))  # the simulator's folder: its file is the record
    proc._fds(str(pid_dir), view)
    assert view.binding_text == record


def test_this_process_as_the_check_sees_it():
    view = proc.look(os.getpid(), root="/proc")
    assert view.pid == os.getpid() and view.source == "/proc" and view.uid == os.getuid()
    assert view.cpus == frozenset(os.sched_getaffinity(0)) and not view.zombie and not view.kernel_thread
    assert os.getpid() in [t.tid for t in view.threads] and view.pages is None and view.denied == []
    assert proc.thread_group(os.getpid()) == os.getpid()
    with pytest.raises(ValueError, match="not a process id"):
        proc.look(0)
    with pytest.raises(ValueError, match="not a process id"):
        proc.look(True)
    with pytest.raises(proc.Gone, match="does not exist in this pid namespace"):
        proc.look(4194303, root="/proc")
    assert os.getpid() in proc.pids()


def test_a_kernel_thread_is_told_by_its_kthread_line_even_as_a_zombie(tmp_path):
    """Linux 6.x prints ``Kthread``; an older kernel does not, and a kernel thread is then the task without
    ``VmSize`` that is no zombie (a zombie has lost its memory too). A kernel thread caught exiting (state Z,
    ``Kthread: 1``, modelled: the simulator refuses that state for one) is a kernel thread still."""
    cases = {11: "State:\tZ (zombie)\nKthread:\t1\n", 12: "State:\tZ (zombie)\nKthread:\t0\n",
             13: "State:\tS (sleeping)\n", 15: "State:\tZ (zombie)\n"}
    for pid, lines in cases.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(f"Name:\tt{pid}\nTgid:\t{pid}\nPid:\t{pid}\n{lines}")
        (tmp_path / str(pid) / "cmdline").write_bytes(b"")  # as a kernel thread's and a zombie's are
    got = {pid: proc.look(pid, root=str(tmp_path)) for pid in cases}
    assert {pid: (v.kernel_thread, v.zombie) for pid, v in got.items()} == {
        11: (True, True), 12: (False, True), 13: (True, False), 15: (False, True)}


def test_a_simulated_proc_that_cannot_be_listed_leaves_the_real_processes(tmp_path, monkeypatch):
    """``pids`` lists the simulator's modelled processes and the real ones: a modelled folder that cannot be
    listed (gone, or not a folder) leaves the real ones listed, this process among them."""
    monkeypatch.setenv(PROCFS_VAR, str(tmp_path / "gone"))
    assert os.getpid() in proc.pids()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(PROCFS_VAR, str(tmp_path / "file"))
    assert os.getpid() in proc.pids()
    (tmp_path / "sim" / "4101").mkdir(parents=True)
    monkeypatch.setenv(PROCFS_VAR, str(tmp_path / "sim"))
    assert {4101, os.getpid()} <= set(proc.pids())
