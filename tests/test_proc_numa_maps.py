"""gpuaffinity.proc reads a process's memory policy without walking its memory.

The kernel prints /proc/PID/numa_maps mapping by mapping, walking the resident pages of each one it prints, and
one read makes it print until it has the bytes asked for (up to a page of text).  A 64 KiB read for the first
line's policy walked the first few dozen mappings, where a process's largest often are: benchmarks/bench_check.py
measured ``look(pid, pages=False)`` at 17.5, 32.4 and 39.5 ms for a process of 1, 2 and 4 GiB (its mapping the
seventh line), as much as reading every page; the policy is now read in 64-byte pieces up to the end of the first
line (0.3-0.5 ms at every size).  Nothing here is timed: the reads themselves are checked.
"""

from __future__ import annotations

import os

from gpuaffinity import proc


def first_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/numa_maps", "rb") as f:
        return f.readline().rstrip(b"\n")


def test_the_policy_is_the_first_lines_and_no_page_is_counted():
    view = proc.look(os.getpid(), pages=False)
    assert view.policy is not None and view.pages is None
    assert view.policy == proc.parse_numa_maps_line(first_line(os.getpid()))[0]
    paged = proc.look(os.getpid(), pages=True)
    assert paged.policy == view.policy and paged.pages is not None and paged.pages.total > 0


def test_the_policy_alone_is_read_in_small_pieces_up_to_the_first_lines_end(monkeypatch):
    reads: list[tuple[int, int]] = []
    real = os.read

    def read(fd: int, n: int) -> bytes:
        out = real(fd, n)
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/numa_maps"):
                reads.append((n, len(out)))
        except OSError:
            pass
        return out

    monkeypatch.setattr(proc.os, "read", read)
    line = first_line(os.getpid())
    assert proc.look(os.getpid(), pages=False).policy is not None
    assert reads and all(asked <= 64 for asked, _got in reads), reads
    # it stops at the first line's end: no read after the one that brought the newline
    assert sum(got for _asked, got in reads) < len(line) + 1 + 64, (reads, len(line))
    reads.clear()
    proc.look(os.getpid(), pages=True)  # every page wanted: large reads, to the end
    assert reads[0][0] == 1 << 16 and reads[-1][1] == 0, reads
