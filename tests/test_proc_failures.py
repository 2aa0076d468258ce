"""gpuaffinity.proc where reading a process fails part way: a thread refused or ended while listed, a numa_maps
read refused after its open, a process gone before or while it is read.  Each process is modelled as the
simulator models one, a /proc folder of its own read through ``look(pid, root=...)``; a refusal is a real one
from the kernel (a link to a write-only sysctl, as the simulator's ``readable = false``) or a file system's
(a folder where a file is read)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gpuaffinity import proc
from gpuaffinity.sim.render import UNREADABLE  # refuses a read with EACCES, even to root

PID = 4242


def modelled(root: Path, pid: int = PID, tids: tuple[int, ...] = ()) -> Path:
    """``root/pid``: a sleeping process of threads ``pid`` and ``tids``, on CPUs 0-1, its memory bound to node 1."""
    d = root / str(pid)

    def status(tid: int) -> str:
        return (f"Name:\tworker\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{tid}\nUid:\t1000\t1000\t1000\t1000\n"
                "VmSize:\t10000 kB\nVmRSS:\t2000 kB\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0-1\n")

    for tid in (pid, *tids):
        (d / "task" / str(tid)).mkdir(parents=True)
        (d / "task" / str(tid) / "status").write_text(status(tid))
    (d / "status").write_text(status(pid))
    (d / "cmdline").write_bytes(b"worker\0--fast\0")
    (d / "environ").write_bytes(b"A=1\0B=2\0")
    (d / "numa_maps").write_bytes(b"00400000 bind:1 file=/usr/bin/worker mapped=2 N1=2 kernelpagesize_kB=4\n"
                                  b"7f000000 bind:1 anon=3 dirty=3 N1=3 kernelpagesize_kB=4\n")
    (d / "fd").mkdir()
    return d


def test_the_modelled_process_reads_whole(tmp_path):
    """The model the tests below break: every part of it is read."""
    modelled(tmp_path, tids=(4243,))
    view = proc.look(PID, root=str(tmp_path), pages=True)
    assert (view.name, view.uid, view.cmdline, view.environ) == ("worker", 1000, ["worker", "--fast"],
                                                                  {"A": "1", "B": "2"})
    assert [t.tid for t in view.threads] == [PID, 4243] and view.policy.text == "bind:1"
    assert view.pages.nodes == {1: 3 * 4096} and view.pages.file_nodes == {1: 2 * 4096} and view.denied == []


def test_a_thread_refused_or_ended_while_listed_is_left_out_and_the_threads_after_it_are_read(tmp_path):
    """``task/`` lists the threads, then each one's status is read: one refused is named in ``denied``, one that
    ended meanwhile (its folder without a status) is left out silently, and neither ends the list."""
    d = modelled(tmp_path, tids=(4243, 4244, 4245, 4246))
    (d / "task" / "4243" / "status").unlink()
    (d / "task" / "4243" / "status").symlink_to(UNREADABLE)
    (d / "task" / "4245" / "status").unlink()
    view = proc.look(PID, root=str(tmp_path))
    assert [t.tid for t in view.threads] == [PID, 4244, 4246]
    assert view.denied == ["task 4243: Permission denied"]
    assert view.environ == {"A": "1", "B": "2"} and view.policy.text == "bind:1"  # the rest still read


@pytest.mark.parametrize("pages", [False, True])
def test_a_numa_maps_read_refused_after_its_open_leaves_no_policy_nor_pages_and_says_why(tmp_path, pages):
    """numa_maps opened, then its read refused (here a folder: it opens, and refuses the read with EISDIR): the
    reason is in ``denied``, neither a policy nor a count of part of the pages is given, the rest is read."""
    d = modelled(tmp_path)
    (d / "numa_maps").unlink()
    (d / "numa_maps").mkdir()
    view = proc.look(PID, root=str(tmp_path), pages=pages)
    assert view.denied == ["numa_maps: Is a directory"]
    assert view.policy is None and view.pages is None
    assert view.environ == {"A": "1", "B": "2"} and [t.tid for t in view.threads] == [PID]


def test_a_process_whose_status_goes_while_it_is_read_is_gone(tmp_path):
    """What was read stands for a process that no longer runs: where its status is gone once the rest is read,
    ``look`` raises Gone, saying so.  The simulator removes a machine's folders as it stops, each process's
    files before its folder; here the status goes while ``environ`` (a FIFO) is read."""
    d = modelled(tmp_path)
    (d / "environ").unlink()
    os.mkfifo(d / "environ")

    def exit_meanwhile() -> None:
        with open(d / "environ", "wb") as w:  # opens once look opens environ to read it
            (d / "status").unlink()
            w.write(b"A=1\0")

    t = threading.Thread(target=exit_meanwhile, daemon=True)
    t.start()
    with pytest.raises(proc.Gone) as e:
        proc.look(PID, root=str(tmp_path))
    t.join(10)
    assert (e.value.pid, e.value.why) == (PID, "exited while it was read")
    assert str(e.value) == f"process {PID} exited while it was read"
    assert os.path.isdir(d)  # its folder is still there: its status says it is gone


def test_each_way_a_process_is_gone_says_why(tmp_path):
    """``Gone.why``: not there at all (in this pid namespace, for /proc), or its status refused."""
    with pytest.raises(proc.Gone) as e:
        proc.look(4194303, root="/proc")
    assert (e.value.pid, e.value.why) == (4194303, "does not exist in this pid namespace")
    with pytest.raises(proc.Gone) as e:
        proc.look(PID, root=str(tmp_path))  # a simulator's folder: no pid namespace to speak of
    assert e.value.why == "does not exist"
    d = modelled(tmp_path)
    (d / "status").unlink()
    (d / "status").symlink_to(UNREADABLE)
    with pytest.raises(proc.Gone) as e:
        proc.look(PID, root=str(tmp_path))
    assert e.value.why == "cannot be read: Permission denied"
