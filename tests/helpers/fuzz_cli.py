"""Fuzz the command line and the API in one process on a simulated machine (run by tests/test_fuzz.py).

    gpuaffinity sim run dgx-h100 -- python tests/helpers/fuzz_cli.py EXAMPLES [SEED]

Run it with TMPDIR set to an empty folder of its own: anything new there afterwards was left behind.
Generates argument vectors and environment values, valid and hostile, runs
``gpuaffinity.cli.main`` in this process (``bind`` never execs: the harness
replaces ``os.execvp``), and checks: the exit status is a documented one;
stderr holds one line per problem, each starting with ``gpuaffinity``, no
traceback and no "unexpected" error; nothing is left behind in the temporary
folder.  Then the API with hostile arguments: only documented exceptions.
Prints one JSON line: the examples run and the first failure, if any.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import gpuaffinity
from gpuaffinity import cli
from gpuaffinity.numa.bind import _restore_mempolicy, set_mempolicy
from gpuaffinity.sim.topology import load_topology

AFFINITY = os.sched_getaffinity(0)

TOPO = load_topology(os.environ.get("GPUAFFINITY_SIM_TOPOLOGY", "dgx-h100"))
UUIDS = [g.uuid for g in TOPO.gpus]
BUSES = [g.pci_bus_id for g in TOPO.gpus]
EXIT_STATUSES = {0, 1, 2, 3}
VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPUAFFINITY_POLICY", "GPUAFFINITY_DISABLE",
        "GPUAFFINITY_ON_FAILURE", "GPUAFFINITY_NO_SUBPROCESS")


class Exec(BaseException):
    """bind reached exec: the harness stops there (a BaseException, as exec leaves no Python behind)."""



def _restore(saved: dict) -> None:
    """The variables as they were before an example, and no answer cached under the example's values."""
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    gpuaffinity.clear_cache()

def _execvp(file, args):  # stands in for os.execvp
    raise Exec(file)


os.execvp = _execvp
os.environ["GPUAFFINITY_NO_SUBPROCESS"] = "1"  # a child per example would make 100,000 examples a day's work

nasty = st.sampled_from(["", " ", "\t", "\n", "\x00", "\x7f", "\u0663", "\u00b2", "\udcff", "-", "--", ",", ",,",
                         "GPU-", "MIG-", "MIG-GPU-", "/", "0x1", "-1", "+1", "9" * 30, "1" * 5000, "x" * 3000])
ids = st.one_of(st.integers(-3, 20).map(str), st.sampled_from(UUIDS + BUSES), st.sampled_from(UUIDS).map(
    lambda u: u[:9]), st.sampled_from(BUSES).map(lambda b: b[5:]), nasty, st.text(max_size=40))
cvd_entry = st.one_of(st.integers(-2, 10).map(str), st.sampled_from(UUIDS), st.sampled_from(UUIDS).map(
    lambda u: u[: len(u) // 2]), nasty, st.text(max_size=12))
cvd = st.one_of(st.none(), st.lists(cvd_entry, max_size=6).map(",".join), st.text(max_size=60))
env_values = st.fixed_dictionaries({
    "CUDA_VISIBLE_DEVICES": cvd,
    "CUDA_DEVICE_ORDER": st.one_of(st.none(), st.sampled_from(["PCI_BUS_ID", "FASTEST_FIRST", "pci_bus_id", ""]),
                                   st.text(max_size=20)),
    "GPUAFFINITY_POLICY": st.one_of(st.none(), st.sampled_from(["first", "verify", "strict", "STRICT"]), nasty),
    "GPUAFFINITY_DISABLE": st.one_of(st.none(), st.sampled_from(["cvd", "torch", "pci,cvd", "nope", ",", "cvd,,"]),
                                     nasty),
    "GPUAFFINITY_ON_FAILURE": st.one_of(st.none(), st.sampled_from(["warn", "error", "x"])),
    "GPUAFFINITY_NO_SUBPROCESS": st.just("1"),
})
option = st.one_of(
    st.tuples(st.just("--policy"), st.sampled_from(["first", "verify", "strict", "bogus", ""])),
    st.tuples(st.just("--disable"), st.one_of(st.sampled_from(["cvd", "torch", "pci", "x"]), nasty)),
    st.tuples(st.sampled_from(["--json", "--no-subprocess", "--dry-run", "--help", "-h", "--bogus"])),
    st.tuples(st.just("--mode"), st.sampled_from(["node", "socket", "exclusive", "llc", "bad"])),
    st.tuples(st.just("--memory"), st.sampled_from(["bind", "preferred", "none", "bad"])),
    st.tuples(st.just("--on-failure"), st.sampled_from(["warn", "error", "bad"])),
    st.tuples(nasty),
)


@st.composite
def argvs(draw):
    command = draw(st.sampled_from(["resolve", "doctor", "bind", "sim", "", "bogus"]))
    argv = [command] if command else []
    if command == "sim":
        argv.append(draw(st.sampled_from(["list", "check", "bogus"])))
        if argv[-1] == "check":
            argv.append(draw(st.one_of(st.sampled_from(["dgx-h100", "mig-a100", "slurm-2of8", "nope", "/nonexist",
                                                        "x.toml", ""]), nasty)))
        return argv
    if command in ("resolve", "bind"):
        argv += draw(st.lists(ids, max_size=3 if command == "resolve" else 1))
    for opt in draw(st.lists(option, max_size=3)):
        argv += list(opt)
    if command == "bind" and draw(st.booleans()):
        argv += ["--", draw(st.sampled_from(["true", "", "no-such-command"]))]
    return argv


FAILURES: list[dict] = []
COUNT = [0]


def run_main(argv: list[str], env: dict) -> tuple[int, str, str]:
    saved = {v: os.environ.get(v) for v in VARS}
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            try:
                os.environ[var] = value
            except ValueError:  # an embedded NUL: no process can hold it either
                os.environ.pop(var, None)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CLI prints its warnings itself; the API's go nowhere here
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse --help
                rc = e.code if isinstance(e.code, int) else 0
            except Exec:
                rc = 0
    finally:
        _restore(saved)
        os.sched_setaffinity(0, AFFINITY)  # bind applied itself to this process: undo it
        set_mempolicy("none", ())
        _restore_mempolicy(0, frozenset())
    return rc, out.getvalue(), err.getvalue()


def check(argv: list[str], env: dict, rc: int, stdout: str, stderr: str, leftovers: list[str]) -> str | None:
    if rc not in EXIT_STATUSES:
        return f"exit status {rc}"
    if "Traceback" in stderr or "gpuaffinity: unexpected" in stderr:
        return "traceback or unexpected error"
    for line in stderr.splitlines():
        if line and not line.startswith("gpuaffinity"):
            return f"a stderr line not ours: {line[:200]!r}"
    if rc == 2 and len(stderr.strip().splitlines()) != 1 and not (not stderr and "usage:" in stdout):
        return "a usage error is not one line"  # (no command at all prints the help, exit 2)
    if leftovers:
        return f"left behind: {leftovers}"
    return None


TMP = tempfile.gettempdir()
BEFORE = set(os.listdir(TMP))


@given(argv=argvs(), env=env_values)
def fuzz_cli(argv, env):
    COUNT[0] += 1
    rc, out, err = run_main(argv, env)
    left = sorted(set(os.listdir(TMP)) - BEFORE)
    problem = check(argv, env, rc, out, err, left)
    if problem:
        FAILURES.append({"problem": problem, "argv": [a[:200] for a in argv], "env": {k: v[:200] if v else v for k, v
                         in env.items()}, "rc": rc, "stderr": err[-1500:]})
        raise AssertionError(problem)


API_ERRORS = (gpuaffinity.GpuAffinityError, ValueError, TypeError)


@given(logical=st.one_of(st.integers(-5, 50), st.text(max_size=40), ids, st.none(), st.floats(), st.booleans(),
                         st.lists(st.integers())),
       policy=st.one_of(st.none(), st.sampled_from(["first", "verify", "strict", "x"])),
       disable=st.one_of(st.none(), st.text(max_size=10), st.lists(st.text(max_size=8), max_size=3),
                         st.lists(st.integers(), max_size=2)),
       env=env_values)
def fuzz_api(logical, policy, disable, env):
    COUNT[0] += 1
    saved = {v: os.environ.get(v) for v in VARS}
    try:
        for var, value in env.items():
            if value is not None and "\x00" not in value:
                os.environ[var] = value
            else:
                os.environ.pop(var, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                gpuaffinity.resolve(logical, policy=policy, disable=disable)
            except API_ERRORS:
                pass
            except Exception as e:
                FAILURES.append({"problem": f"API raised {type(e).__name__}: {e}"[:300], "logical": repr(logical),
                                 "policy": policy, "disable": repr(disable), "env": env})
                raise
    finally:
        _restore(saved)


def main() -> int:
    examples = int(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else None
    opts = dict(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    for target in (fuzz_cli, fuzz_api):
        test = settings(**opts)(target)
        if seed is not None:
            from hypothesis import seed as with_seed
            test = with_seed(seed)(test)
        try:
            test()
        except AssertionError:
            break
        except Exception as e:  # a failure hypothesis re-raised from a target
            if not FAILURES:
                FAILURES.append({"problem": f"{type(e).__name__}: {e}"[:500]})
            break
    print(json.dumps({"examples": COUNT[0], "failure": FAILURES[0] if FAILURES else None}))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
