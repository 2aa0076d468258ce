"""Build the fake libnvidia-ml.so.1 and libcuda.so.1 on first use.

The libraries are compiled with the system C compiler into a per-user cache
folder named after the hash of their sources, so an upgrade rebuilds and
concurrent first uses do not trip over each other (each builds in a private
folder and renames it into place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
LIBRARIES = {"libnvidia-ml.so.1": "nvml.c", "libcuda.so.1": "cuda.c"}
CFLAGS = ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra"]


class SimulatorError(RuntimeError):
    """The simulator cannot run; the message is one line saying why and what to do."""


def cache_root() -> Path:
    env = os.environ.get("GPUAFFINITY_SIM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpuaffinity"


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


def library_dir() -> Path:
    """The folder holding both built libraries, building them if needed."""
    target = cache_root() / f"sim-{source_hash()}"
    if all((target / lib).is_file() for lib in LIBRARIES):
        return target
    cc = find_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        for lib, src in LIBRARIES.items():
            cmd = [cc, *CFLAGS, "-o", str(work / lib), f"-Wl,-soname,{lib}", str(CSRC / src),
                   "-lpthread", "-ldl"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
                raise SimulatorError(f"building the simulated {lib} with {cc} failed: {first[:300]}")
        try:
            work.rename(target)
        except OSError:
            # another process finished first; its libraries are identical
            if not all((target / lib).is_file() for lib in LIBRARIES):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target
