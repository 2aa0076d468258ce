#!/usr/bin/env python3
"""Run a command in a process that can open only some of the host's GPUs, as a restricted job does.

A device cgroup (Slurm's ConstrainDevices), a container given some
``/dev/nvidiaN`` nodes, or a private ``/dev``: the driver's ``/proc`` still
lists every GPU of the host, but CUDA and NVML enumerate only the GPUs this
process can open.  This tool builds that situation on a real GPU host:

* a private mount namespace (``unshare -m``), so nothing changes outside it;
* a copy of ``/dev`` on a tmpfs, without the device nodes of the GPUs named by
  ``--absent``, and with the nodes named by ``--denied`` present but mode 000
  (the command then runs as ``nobody``, so the open is refused: EACCES, where a
  device cgroup gives EPERM);
* that copy mounted over ``/dev`` read-only, so the driver cannot re-create
  the missing nodes (with a writable ``/dev`` it does, and sees every GPU).

Needs root, ``unshare`` and ``mount`` (util-linux).  Changes no GPU setting.

    tools/hide_gpus.py --absent 0,1 -- python3 -c 'import pynvml; ...'
    tools/hide_gpus.py --denied 2 -- python3 -m gpuaffinity resolve --json

GPUs are named by their device minor number (``/dev/nvidia<minor>``, the
``Device Minor`` line of ``/proc/driver/nvidia/gpus/*/information``).
The command's exit status is returned.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile

NOBODY = 65534
#: mounts under /dev that a program may need, bound into the copy
SUBMOUNTS = ("pts", "shm", "mqueue", "hugepages")


def minors(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def copy_dev(src: str, dst: str, skip: set[str]) -> None:
    """Copy the device nodes, links and folders of ``src`` into ``dst`` (no file contents)."""
    for name in os.listdir(src):
        if name in skip:
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        st = os.lstat(s)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(d, stat.S_IMODE(st.st_mode))
            if name not in SUBMOUNTS:
                copy_dev(s, d, set())
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(d, st.st_mode, st.st_rdev)
            os.chmod(d, stat.S_IMODE(st.st_mode))
        # sockets, fifos and plain files in /dev are not needed by the driver: left out


def inside(args: argparse.Namespace) -> int:
    absent, denied = set(minors(args.absent)), set(minors(args.denied))
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    new = tempfile.mkdtemp(prefix="gpuaffinity-dev-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", new], check=True)
    copy_dev("/dev", new, {f"nvidia{m}" for m in absent})
    for m in denied:
        os.chmod(os.path.join(new, f"nvidia{m}"), 0)
    for sub in SUBMOUNTS:
        if os.path.ismount(f"/dev/{sub}") and os.path.isdir(os.path.join(new, sub)):
            subprocess.run(["mount", "--rbind", f"/dev/{sub}", os.path.join(new, sub)], check=True)
    subprocess.run(["mount", "--bind", new, "/dev"], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", "/dev"], check=True)
    cmd = args.cmd

    def drop() -> None:
        if denied or args.as_nobody:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return subprocess.run(cmd, preexec_fn=drop).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("hide_gpus: give the command after `--`", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="hide_gpus")
    p.add_argument("--absent", default="", help="minors whose /dev/nvidiaN is left out (comma-separated)")
    p.add_argument("--denied", default="", help="minors whose node stays but cannot be opened (runs as nobody)")
    p.add_argument("--as-nobody", action="store_true", help="run the command as nobody even with no --denied")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv[:i])
    args.cmd = argv[i + 1:]
    if not args.cmd:
        print("hide_gpus: no command after `--`", file=sys.stderr)
        return 2
    if args.inside:
        return inside(args)
    if os.geteuid() != 0:
        print("hide_gpus: needs root (a private mount namespace and mknod)", file=sys.stderr)
        return 1
    unshare = shutil.which("unshare")
    if unshare is None:
        print("hide_gpus: `unshare` (util-linux) is not installed", file=sys.stderr)
        return 1
    own = [sys.executable, os.path.abspath(__file__), "--inside", "--absent", args.absent, "--denied", args.denied]
    if args.as_nobody:
        own.append("--as-nobody")
    return subprocess.run([unshare, "-m", *own, "--", *args.cmd]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
