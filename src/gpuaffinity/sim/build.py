"""Build the fake libnvidia-ml.so.1 and libcuda.so.1 on first use, into a cache only this user controls.

The libraries are compiled with the system C compiler into a per-user cache
folder named after the hash of their sources, so an upgrade rebuilds.  Every
program run under ``gpuaffinity sim run`` loads them, possibly as root, so the
cache is trusted only when nobody else could have put them there:

* the cache root, and each folder and library in it, must be owned by this
  user and not writable by group or others, and must not be a symbolic link
  (checked with lstat, not followed); otherwise SimulatorError, one line;
* folders are created 0700;
* a build happens in a private folder (mkdtemp, 0700) that is renamed into
  place whole, so a concurrent first use, or a failed build, leaves nothing
  half-built, and a library is never rewritten where a reader may load it;
* the path is absolute, so LD_LIBRARY_PATH never names a folder relative to
  whatever directory the program runs in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from gpuaffinity.core.errors import SimulatorError
from gpuaffinity.core.settings import SIM_CACHE_VAR as CACHE_VAR

CSRC = Path(__file__).with_name("csrc")
LIBRARIES = {"libnvidia-ml.so.1": "nvml.c", "libcuda.so.1": "cuda.c"}
COMMON = "sim_common.c"  # compiled once, linked into both libraries (each keeps its own copy of the state)
CFLAGS = ["-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]

__all__ = ["SimulatorError", "cache_root", "check_owned", "library_dir"]


def cache_root() -> Path:
    """The cache folder: $GPUAFFINITY_SIM_CACHE, else $XDG_CACHE_HOME/gpuaffinity, else ~/.cache/gpuaffinity;
    always absolute."""
    env = os.environ.get(CACHE_VAR)
    if env:
        return Path(os.path.abspath(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(base)) / "gpuaffinity"


def find_compiler() -> str:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand:
            path = shutil.which(cand)
            if path:
                return path
    raise SimulatorError(
        "no C compiler found (tried $CC, cc, gcc, clang): the simulator builds its fake NVIDIA "
        "libraries from C on first use; install one (e.g. `apt-get install gcc`) or set CC")


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(CSRC.iterdir()):
        if p.suffix in (".c", ".h"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def check_owned(path: Path, kind: str) -> None:
    """SimulatorError unless ``path`` is a ``kind`` ("folder" or "file", no symbolic link) owned by this user
    and not writable by group or others."""
    st = os.lstat(path)
    fix = f"remove it, or set {CACHE_VAR} to a folder of your own"
    if stat.S_ISLNK(st.st_mode):
        raise SimulatorError(f"refusing the simulator cache: {path} is a symbolic link; {fix}")
    if not (stat.S_ISDIR(st.st_mode) if kind == "folder" else stat.S_ISREG(st.st_mode)):
        raise SimulatorError(f"refusing the simulator cache: {path} is not a {kind}; {fix}")
    if st.st_uid != os.geteuid():
        raise SimulatorError(f"refusing the simulator cache: {path} belongs to uid {st.st_uid}, not to you "
                             f"(uid {os.geteuid()}); {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SimulatorError(f"refusing the simulator cache: {path} is writable by group or others "
                             f"(mode {stat.S_IMODE(st.st_mode):o}); {fix}")


def _root() -> Path:
    """The cache root, created 0700 if missing, checked either way."""
    root = cache_root()
    try:
        os.makedirs(root.parent, exist_ok=True)
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SimulatorError(f"cannot create the simulator cache {root}: {e.strerror or e}; "
                             f"set {CACHE_VAR} to a folder you may write") from None
    check_owned(root, "folder")
    return root


def _built(target: Path) -> bool:
    """Whether ``target`` holds both libraries; SimulatorError if it exists but cannot be trusted."""
    try:
        check_owned(target, "folder")
    except FileNotFoundError:
        return False
    for lib in LIBRARIES:
        try:
            check_owned(target / lib, "file")
        except FileNotFoundError:
            raise SimulatorError(f"the simulator cache {target} lacks {lib}; remove the folder and run again") \
                from None
    return True


def _compile(cc: str, args: list[str], what: str) -> None:
    proc = subprocess.run([cc, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
        raise SimulatorError(f"building the simulated {what} with {cc} failed: {first[:300]}")


def library_dir() -> Path:
    """The folder holding both built libraries, building them if needed."""
    root = _root()
    target = root / f"sim-{source_hash()}"
    if _built(target):
        return target
    cc = find_compiler()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))  # 0700, ours
    try:
        common = work / "sim_common.o"
        _compile(cc, [*CFLAGS, "-c", "-o", str(common), str(CSRC / COMMON)], COMMON)
        for lib, src in LIBRARIES.items():
            _compile(cc, [*CFLAGS, "-shared", "-o", str(work / lib), f"-Wl,-soname,{lib}", str(CSRC / src),
                          str(common), "-lpthread", "-ldl"], lib)
            os.chmod(work / lib, 0o755)
        common.unlink()
        try:
            work.rename(target)  # atomic: the whole folder appears at once
        except OSError:
            if not _built(target):  # another process finished first; its libraries are identical
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target
