"""The cluster check: on a running Ray cluster, is every GPU worker bound next to its GPU?

``check()`` (and ``gpuaffinity ray-check``) connects to the cluster and, on every alive node, places one
probe per GPU the way a GPU actor is placed: ``num_gpus=1``, pinned to that node, under a runtime environment
(by default the one-line binding, ``gpuaffinity.ray_worker.setup``), so each probe gets Ray's own
``CUDA_VISIBLE_DEVICES`` and whatever binding the cluster's workers get.  Each probe reports what it sees
(``gpuaffinity._ray_probe``) and this module judges it: one row per GPU, with a status and the problems.
docs/ray.md says what each column means and how to read a failure.

Owns: the `ray-check` report of a cluster.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import re
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gpuaffinity import verdict
from gpuaffinity.core.cpulist import format_cpulist, parse_cpulist
from gpuaffinity.core.errors import GpuAffinityError, UsageError
from gpuaffinity.core.settings import DEFAULT_MEMORY, MEMORY_POLICIES, MODES
from gpuaffinity.text import clean, lay_out

# a row's status, worst first, and which fail the check: shared with `gpuaffinity check`
from gpuaffinity.verdict import PROBLEMS, STATUSES

SETUP_HOOK = "gpuaffinity.ray_worker.setup"
DEFAULT_TIMEOUT = 120.0
MISSING = "; is gpuaffinity installed on this node?"


class Report:
    """Rows, one per GPU (and one per node without GPUs), and what the check ran with."""

    def __init__(self, rows: list[dict[str, Any]], settings: dict[str, Any], seconds: float,
                 ray_messages: str = "") -> None:
        self.rows = rows
        self.settings = settings
        self.seconds = seconds
        #: what Ray printed while the check ran (its raylet's error messages): kept off stdout and out of --json
        self.ray_messages = ray_messages

    @property
    def ok(self) -> bool:
        """No row has a problem (nodes without GPUs are not problems)."""
        return not any(r["status"] in PROBLEMS for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "settings": self.settings, "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def runtime_env_for(mode: str, memory: str) -> dict[str, Any]:
    """The one-line binding's runtime environment, with the mode and memory policy it should apply."""
    return {"worker_process_setup_hook": SETUP_HOOK,
            "env_vars": {"GPUAFFINITY_RAY_MODE": mode, "GPUAFFINITY_RAY_MEMORY": memory}}


def check(address: str | None = None, *, mode: str = "node", memory: str = DEFAULT_MEMORY,
          runtime_env: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
          progress: Callable[[int, int], None] | None = None, pages: bool = False,
          min_local: float = verdict.MIN_LOCAL) -> Report:
    """Probe every GPU of the Ray cluster at ``address`` (default: ``RAY_ADDRESS``, else ``"auto"``).

    ``mode`` and ``memory``: the binding the workers should have (as ``gpuaffinity bind``).
    ``runtime_env``: the probes' runtime environment; by default the one-line binding with that mode and
    memory policy.  Pass your jobs' own to check what their workers get.  ``timeout``: seconds for the
    whole check after connecting; probes without an answer by then get a ``timeout`` row.
    ``progress(done, total)`` is called as answers come in.  ``pages``: also read where each probe's resident
    memory is (``numa_maps``); below ``min_local`` on its GPU's node(s) a row is ``remote-memory``
    (docs/check.md).
    """
    verdict.check_min_local(min_local)
    if not isinstance(mode, str) or mode not in MODES:
        raise GpuAffinityError(f"unknown mode {str(mode)[:40]!r}: choose one of {', '.join(MODES)}")
    if not isinstance(memory, str) or memory not in MEMORY_POLICIES:
        raise GpuAffinityError(f"unknown memory policy {str(memory)[:40]!r}: choose one of "
                               f"{', '.join(MEMORY_POLICIES)}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout <= 86400):  # nan too
        raise GpuAffinityError(f"timeout {str(timeout)[:40]!r} s: give a number of seconds above 0, at most a day")
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        raise GpuAffinityError("the cluster check needs Ray in this environment: pip install ray") from None
    env = runtime_env_for(mode, memory) if runtime_env is None else dict(runtime_env)
    if ray.is_initialized():  # the probes' runtime environment is a job's: a job of their own, not the caller's
        raise GpuAffinityError("this process is already connected to Ray: run the check in a process of its own "
                               "(`gpuaffinity ray-check`, or check() before ray.init)")
    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    started = time.perf_counter()
    cluster, found = _resolve(where)
    gcs = _reachable(ray, where, cluster)
    # from here on, a cluster that goes away is one line within seconds, wherever Ray waits (its GCS client waits
    # 40 s for a GCS that is gone, its core worker 60 s)
    watchdog = _Watchdog(gcs, cluster) if gcs is not None else None
    # Ray prints its raylet's error messages (a worker that died, ...) on stdout from a thread of its own: keep them
    # off the caller's stdout (the table, --json); each row says what went wrong in its own words
    caught = io.StringIO()
    try:
        if gcs is not None:
            _authenticate(gcs, cluster, found is not None)
        with contextlib.redirect_stdout(caught):
            report = _check(ray, NodeAffinitySchedulingStrategy, cluster, env, mode, memory, timeout, progress,
                            started, caught, watchdog, pages, min_local)
    finally:
        if watchdog is not None:
            watchdog.stop()
    report.settings["address"] = where
    if cluster != where:
        report.settings["cluster"] = cluster
    if found is not None:
        report.settings["found"] = found
    return report


def _check(ray: Any, node_affinity: Any, where: str, env: dict[str, Any], mode: str, memory: str, timeout: float,
           progress: Callable[[int, int], None] | None, started: float, caught: io.StringIO,
           watchdog: _Watchdog | None, pages: bool = False, min_local: float = verdict.MIN_LOCAL) -> Report:
    from gpuaffinity import _ray_probe

    try:
        # Ray's C++ client logs each failed try on stderr while it connects (20 lines in 20 s where a cluster
        # refuses this process's token): kept off the terminal; what went wrong is said below, in one line
        with _quiet_stderr():
            # a copy: Ray adds to the runtime environment it is given, and the report shows what was asked
            ray.init(address=where, runtime_env=copy.deepcopy(env), log_to_driver=False, logging_level="ERROR",
                     namespace="gpuaffinity-ray-check")
    except (TypeError, ValueError) as e:  # reachable (checked above): what Ray refuses is the runtime environment
        raise UsageError(f"Ray refuses the runtime environment: {str(e).splitlines()[0][:300]}") from None
    except Exception as e:
        if _refused_token(e):
            raise GpuAffinityError(_auth_message(where)) from None
        if not isinstance(e, (ConnectionError, RuntimeError)):
            raise
        raise GpuAffinityError(f"cannot connect to the Ray cluster at {where!r}: {str(e).splitlines()[0][:300]} "
                               "(`ray status` on its head says whether it is up)") from None
    if watchdog is not None:
        watchdog.phase = "waiting for its probes"
    timings = {"connect": time.perf_counter() - started}
    try:
        t = time.perf_counter()
        ray.cloudpickle.register_pickle_by_value(_ray_probe)  # runs on a node without gpuaffinity, and says so
        probe_cls = ray.remote(_ray_probe.Probe)
        rows: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], Any, Any]] = []
        listed = sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: (n["NodeManagerAddress"],
                                                                                  n["NodeID"]))
        for node in listed:
            base = {"node_id": node["NodeID"], "host": node.get("NodeManagerHostname", ""),
                    "ip": node["NodeManagerAddress"]}
            gpus = int(node.get("Resources", {}).get("GPU", 0))
            if not gpus:
                rows.append({**base, "status": "no-gpus", "problems": [],
                             "notes": ["Ray counts no GPU on this node: nothing to check"]})
                continue
            strategy = node_affinity(node["NodeID"], soft=False)
            for _ in range(gpus):
                actor = probe_cls.options(num_gpus=1, num_cpus=0, scheduling_strategy=strategy).remote()
                pending.append((base, actor, actor.report.remote(mode, pages)))
        timings["place"] = time.perf_counter() - t  # listing the nodes, submitting every probe (this process)
        t = time.perf_counter()
        answers = _gather(ray, [ref for _b, _a, ref in pending], t + timeout, progress)
        timings["answers"] = time.perf_counter() - t  # workers starting, probing (on the nodes, in parallel)
        unclear = [i for i, a in enumerate(answers) if a is None or (isinstance(a, str) and a.startswith(PROBE_FAILED))]
        if unclear:
            exits = _hook_exits(ray)
            for i in unclear:
                answers[i] = exits.get(pending[i][0]["node_id"], answers[i])
        t = time.perf_counter()
        for (base, actor, _ref), answer in zip(pending, answers, strict=True):
            rows.append(judge({**base, **(answer or {})} if isinstance(answer, dict) else
                              {**base, "error": answer}, mode, memory, timeout, min_local))
            ray.kill(actor)
        _in_order(rows, [n["NodeID"] for n in listed])
        _duplicates(rows)
        timings["judge"] = time.perf_counter() - t
        # the runtime environment as JSON can show it (a callable setup hook, which Ray accepts, by its repr)
        shown_env = json.loads(json.dumps(env, default=repr))
        return Report(rows, {"address": where, "mode": mode, "memory": memory, "pages": pages,
                             "min_local": min_local, "runtime_env": shown_env,
                             "timeout": timeout, "timings": {k: round(v, 4) for k, v in timings.items()}},
                      time.perf_counter() - started, caught.getvalue())
    finally:
        ray.shutdown()


def _resolve(where: str) -> tuple[str, str | None]:
    """The address to connect to, and for ``"auto"`` where it was found.

    Ray's ``"auto"`` takes the address the last ``ray start`` on this machine wrote in its temp folder
    (``/tmp/ray/ray_current_cluster``), whoever ran it, and without one any GCS process it sees in ``ps``: on a
    shared machine that is another user's cluster.  Here ``"auto"`` takes only that file, and only where this
    user owns it; any other cluster is checked only when its address is given."""
    if where == "local":  # Ray: start a cluster of this process's own; and its address lookup takes any GCS in ps
        raise GpuAffinityError("--address local would start a Ray cluster of the check's own, with no GPU worker "
                               "to check: pass your cluster's HOST:PORT")
    if where != "auto":
        return where, None
    try:
        from ray._common.utils import get_ray_address_file

        record = get_ray_address_file(None)
    except ImportError:  # a Ray without this private helper: its default place
        temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        record = os.path.join(temp, "ray", "ray_current_cluster")
    # Ray's folder is writable by everyone (no sticky bit): what is judged must be what is read.  One descriptor,
    # no link followed, no blocking open (a FIFO), a regular file owned by this user, a bounded read.
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise GpuAffinityError(f"no Ray cluster of yours recorded on this machine ({clean(record)} does not "
                                   "exist): pass --address HOST:PORT (set RAY_ADDRESS), as `ray status` on the "
                                   "cluster's head prints it") from None
        raise GpuAffinityError(f"{clean(record)} cannot be read as Ray's record of a cluster ({e.strerror or e}; "
                               "a link is not followed): pass --address HOST:PORT") from None
    try:
        st = os.fstat(fd)
        found = os.read(fd, 4096).decode("utf-8", "replace").strip() if stat.S_ISREG(st.st_mode) else ""
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise GpuAffinityError(f"{clean(record)} is not a regular file, so it is no record of Ray's: pass --address "
                               "HOST:PORT") from None
    if st.st_uid != os.getuid():
        raise GpuAffinityError(f"\"auto\" found the Ray cluster at {clean(found[:100])} in {clean(record)}, "
                               f"started by {_user(st.st_uid)}, not by you: pass --address {clean(found[:100])} to "
                               "check it anyway, or the address of your own cluster") from None
    if not _HOST_PORT.fullmatch(found):
        raise GpuAffinityError(f"{clean(record)} names no Ray cluster (it holds {clean(found[:60])!r}, not "
                               "HOST:PORT): pass --address HOST:PORT") from None
    return found, f"{clean(record)} (yours)"


#: what Ray's record holds: a host name, IPv4 or bracketed IPv6 address, and a port
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _reachable(ray: Any, where: str, cluster: str) -> str | None:
    """The GCS's ``host:port``, refusing at once, in one line, where nothing listens: ray.init would retry for
    minutes, logging from C++.  None for Ray Client (``ray://``), which makes its own connection and errors."""
    if cluster.startswith("ray://"):
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        address = canonicalize_bootstrap_address_or_die(cluster)
    except ImportError:  # a Ray without this private helper: let ray.init find the cluster
        return None
    except (ConnectionError, ValueError) as e:
        raise GpuAffinityError(f"no Ray cluster found for address {where!r}: {str(e).splitlines()[0][:200]} "
                               "(start one with `ray start --head`, or pass --address HOST:PORT)") from None
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise GpuAffinityError(f"no Ray cluster answers at {address} (from {where!r}): {e} (is it running? "
                               "`ray status` says; or pass --address HOST:PORT)") from None
    return address


def _authenticate(gcs: str, shown: str, auto: bool) -> None:
    """Refuse at once, in one line naming the fix, a cluster that wants a token this process lacks or has wrong.

    Ray's own ray.init tries 20 times, a second apart, logging each try, then says it cannot connect.  One GCS
    client says at once: Ray raises ``AuthenticationError`` on its first refused call."""
    try:
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, GcsClient, get_authentication_mode
    except ImportError:  # a Ray without token authentication
        return
    box: list[BaseException | None] = []

    def ask() -> None:  # in a thread of its own: a port that accepts but never answers as Ray would hang here
        try:
            if auto:  # as ray.init does for "auto": a token on this machine turns token authentication on
                with contextlib.suppress(ImportError):
                    from ray._private.authentication.authentication_token_setup import (
                        maybe_enable_token_auth_if_token_available,
                    )

                    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            if get_authentication_mode() == AuthenticationMode.TOKEN and \
                    not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
                # Ray's GCS client aborts the process, with a C++ stack, when it has no token to send
                box.append(GpuAffinityError(f"RAY_AUTH_MODE=token, but this process has no token for the Ray "
                                            f"cluster at {shown}: {_TOKEN_FIX}"))
                return
            GcsClient(address=gcs, cluster_id=None)
            box.append(None)
        except BaseException as e:  # handed to the caller below
            box.append(e)

    worker = threading.Thread(target=ask, name="gpuaffinity-ray-connect", daemon=True)
    with _quiet_stderr():  # fd 2 comes back here, whether or not the thread ever returns
        worker.start()
        worker.join(ANSWER_WITHIN)
    if not box:
        # the thread is still inside Ray and logs from C++ when it gives up: fd 2 to /dev/null from now on, while
        # Python's own stderr (this error's line) keeps the terminal
        sys.stderr.flush()
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        raise GpuAffinityError(f"{shown} accepts connections but does not answer as a Ray cluster's GCS within "
                               f"{ANSWER_WITHIN:g} s (not a Ray port, or its head is stopped or overloaded): pass "
                               "the address `ray status` prints on the head")
    e = box[0]
    if isinstance(e, GpuAffinityError):
        raise e
    if e is not None and _refused_token(e):
        if "cannot be opened" in str(e):  # Ray's loader: the token file, not the token
            raise GpuAffinityError(f"the token file {clean(os.environ.get('RAY_AUTH_TOKEN_PATH', '~/.ray/auth_token'))}"
                                   f" cannot be read or is empty: {_TOKEN_FIX}") from None
        raise GpuAffinityError(_auth_message(shown)) from None
    # anything else: ray.init tries again, and says what it finds


#: seconds the cluster's GCS has to answer one client before the check says, in one line, that it does not
ANSWER_WITHIN = 10.0


_TOKEN_FIX = ("set RAY_AUTH_TOKEN to the cluster's token, or put it in the file RAY_AUTH_TOKEN_PATH names "
              "(default ~/.ray/auth_token); `ray get-auth-token` on the head prints it")


def _refused_token(e: BaseException) -> bool:
    return type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e)


def _auth_message(where: str) -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the Ray cluster at {where} requires token authentication: run with RAY_AUTH_MODE=token, and "
                f"{_TOKEN_FIX}")
    source = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else \
        (os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    return f"the Ray cluster at {where} refuses this process's token (from {source}): {_TOKEN_FIX}"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to a scratch file: what Ray's C++ logs there while it connects stays off the
    terminal (Python's sys.stderr is the same descriptor, flushed first)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class _Watchdog(threading.Thread):
    """Says, in one line, that the cluster went away while the check connects or waits, and ends the process.

    Ray's own client waits 60 s for a GCS that is gone, then ends the process itself with a line of its own
    (``Failed to connect to GCS within 60 seconds``).  This thread connects to the GCS's port every half second;
    when nothing has answered there for ``LOST_AFTER`` seconds it writes its line on the real stderr (even where
    Ray's is sent elsewhere) and ends the process with status 1, what the CLI gives a check that cannot run."""

    LOST_AFTER = 4.0

    def __init__(self, gcs: str, where: str) -> None:
        super().__init__(name="gpuaffinity-ray-watchdog", daemon=True)
        host, _, port = gcs.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.gcs = gcs
        self.where = where
        self.phase = "connecting to it"
        self._done = threading.Event()
        self._stderr = os.dup(2)  # the terminal's, taken before Ray's connection is kept off it
        self.start()

    def run(self) -> None:
        answered = time.monotonic()
        while not self._done.wait(0.5):
            try:
                socket.create_connection(self.target, timeout=1.0).close()
                answered = time.monotonic()
            except OSError as e:
                if time.monotonic() - answered >= self.LOST_AFTER and not self._done.is_set():
                    line = (f"gpuaffinity: the Ray cluster at {self.where} went away while ray-check was {self.phase}: "
                            f"nothing has answered at its GCS port for {self.LOST_AFTER:g} s ({e}); `ray status` on "
                            "its head says whether it is up\n")
                    os.write(self._stderr, clean(line[:-1]).encode() + b"\n")
                    os._exit(1)

    def stop(self) -> None:
        self._done.set()
        self.join()
        os.close(self._stderr)


def _gather(ray: Any, refs: list, deadline: float, progress: Callable[[int, int], None] | None) -> list:
    """Each probe's answer (a dict), an error text, or None where none came by the deadline."""
    out: dict[Any, Any] = {}
    waiting = list(refs)
    while waiting:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=min(left, 1.0))
        for ref in ready:
            try:
                out[ref] = ray.get(ref)
            except Exception as e:  # the worker died or could not start: its row says why
                out[ref] = _why(e)
        if progress and ready:
            progress(len(out), len(refs))
    return [out.get(ref) for ref in refs]


PROBE_FAILED = "the probe failed: "


def _hook_exits(ray: Any) -> dict[str, str]:
    """Per node, why a worker of this check died in Ray's worker_process_setup_hook, from the GCS's worker table.

    A probe whose worker dies in the hook is not always told so: where Ray notices the dead worker by its closed
    connection before it reads the worker's own exit message, the actor's error is a bare "worker died", and
    where the actor is placed again after each death, the probe gets no answer at all.  The GCS's worker table
    keeps each dead worker's own exit detail (written by its raylet), so a row with an unclear error or no answer
    is judged by that.  Only workers of this check's job are read.  The table names no probe, only the node: a
    row of that node without an answer of its own is given the node's hook failure, which every worker of this
    check there meets (one Python environment, one hook), whatever else may also have happened to it.  The table
    is Ray's internal interface: where it is missing or different, nothing is found and the rows keep their own
    error."""
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        job = ray.get_runtime_context().get_job_id()
        found: dict[str, str] = {}
        for raw in state._connect_and_get_accessor().get_worker_table():
            w = gcs_pb2.WorkerTableData.FromString(raw)
            if w.is_alive or w.job_id.hex() != job or "setup hook" not in w.exit_detail:
                continue
            found.setdefault(w.worker_address.node_id.hex(), _why_text(w.exit_detail))
        return found
    except Exception:  # an internal interface: never a crash of the check
        return {}


def _why(e: Exception) -> str:
    text = str(e)
    if "setup hook" in text:
        return _why_text(text)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{PROBE_FAILED}{type(e).__name__}: {first[:300]}"


def _why_text(text: str) -> str:
    """The row's error for a worker that died in the setup hook, from Ray's text of it (with the traceback)."""
    # the hook's own exception is the last "SomethingError: ..." line of the traceback Ray passes on
    raised = [line.strip() for line in text.splitlines() if re.match(r"\w+(Error|Exception): ", line.strip())]
    what = raised[-1][:300] if raised else "see the worker's log"
    if re.fullmatch(r"ModuleNotFoundError: No module named '(gpuaffinity)'", what):
        return f"the worker could not start: Ray's worker_process_setup_hook failed ({what}){MISSING}"
    return f"the worker could not start: Ray's worker_process_setup_hook failed ({what})"


def judge(row: dict[str, Any], mode: str, memory: str, timeout: float,
          min_local: float = verdict.MIN_LOCAL) -> dict[str, Any]:
    """The row's ``status`` and ``problems``, from what its probe reported (gpuaffinity.verdict: the code
    `gpuaffinity check` judges a process with)."""
    problems: list[tuple[str, str]] = []
    row.setdefault("notes", [])
    if "pid" not in row and row.get("error") is None:
        problems.append(("timeout", f"no answer in {timeout:g} s: the probe was not placed (every GPU of this node "
                                    "held by other tasks or actors?) or hangs; free a GPU or raise --timeout"))
    elif row.get("error") is not None:
        problems.append(("not-installed" if row.get("status") == "not-installed" or row["error"].endswith(MISSING)
                         else "error", row["error"]))
    else:
        gpu = row["gpu"]
        if gpu.get("problem"):
            problems.append(("disagree", gpu["problem"]))
        row["pci_bus_id"] = gpu["driver_pci_bus_id"]
        row["uuid"] = gpu.get("driver_uuid") or gpu.get("uuid")
        _binding(row, problems, mode, memory)
        listed = row.pop("thread_list", None)
        if listed is not None:
            verdict.threads(row, problems, [(t, n, parse_cpulist(c)) for t, n, c in listed], row["pid"])
        verdict.pages(row, problems, min_local)
    row["status"] = verdict.status_of(problems)
    row["problems"] = [t for _k, t in problems]
    return row


def _binding(row: dict[str, Any], problems: list[tuple[str, str]], mode: str, memory: str) -> None:
    hook = row["hook"]
    bus = row["gpu"]["driver_pci_bus_id"]
    if hook["pci_bus_id"] is not None and bus not in hook["pci_bus_id"].split(","):
        row["notes"].append(f"the binding was planned for GPU {hook['pci_bus_id']}, but the CUDA driver says this "
                            f"worker's GPU is {bus}")
    verdict.binding(row, problems, mode, memory, set_up=hook["set_up"],
                    why="; ".join(hook["failures"] + hook["said"]),
                    memory_why="; ".join(f for f in hook["failures"] if "set_mempolicy" in f),
                    missing="the setup hook did not run in this worker")


def _in_order(rows: list[dict[str, Any]], nodes: list[str] | None = None) -> None:
    """Rows a node at a time, in the order ``nodes`` lists them (the order the nodes were listed in: by address,
    then id), and a node's rows by Ray's GPU ids (numbers as numbers).  Ray gives each probe whichever GPU is free
    when it starts, so the order the answers came in is not the GPUs'.  A row without ids (a probe that failed, a
    node without GPUs) comes after its node's others.  A probe's answer is taken as it came (it names its own
    node), so an id or a node of any shape or size is ordered, never a crash: a node not listed comes last."""
    rank = {n: i for i, n in enumerate(nodes or [])}

    def node_of(row: dict[str, Any]) -> tuple[int, str]:
        node = row.get("node_id")
        return (rank[node], "") if isinstance(node, str) and node in rank else (len(rank), repr(node))

    def one(i: object) -> tuple[int, int, str]:
        text = str(i)
        if text.isdecimal() and text.isascii():  # by length, then digits: a number of any size, never int()
            digits = text.lstrip("0") or "0"
            return 0, len(digits), digits
        return 1, 0, text

    def key(row: dict[str, Any]) -> tuple:
        ids = row.get("ray_gpu_ids")
        if not ids or not isinstance(ids, (list, tuple)):
            return node_of(row), 1, ()
        return node_of(row), 0, tuple(map(one, ids))

    rows.sort(key=key)


def _duplicates(rows: list[dict[str, Any]]) -> None:
    """Two probes of one node on one physical GPU: Ray's GPU ids or the node's variable are wrong."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        gpu = row.get("gpu")
        if not gpu or row["status"] in ("error", "not-installed", "timeout"):
            continue
        key = (row["node_id"], gpu["driver_pci_bus_id"])
        if key in seen:
            for r in (seen[key], row):
                text = (f"two workers of this node resolve to GPU {key[1]} (Ray ids {seen[key]['ray_gpu_ids']} "
                        f"and {row['ray_gpu_ids']}): Ray's GPU ids and CUDA_VISIBLE_DEVICES do not match")
                if text not in r["problems"]:
                    r["problems"].append(text)
                if STATUSES.index("duplicate") < STATUSES.index(r["status"]):
                    r["status"] = "duplicate"
        else:
            seen[key] = row


def _ids(ids: object) -> str:
    """Ray's GPU ids as the table shows them (a probe's answer of another shape shown, not a crash)."""
    if not ids:
        return "-"
    return ",".join(map(str, ids)) if isinstance(ids, (list, tuple)) else str(ids)


def table(report: Report) -> list[tuple[str, ...]]:
    """The rows a person reads: one a GPU, problems marked (``render`` joins them)."""
    out = [("NODE", "HOST", "RAY", "CVD", "GPU", "UUID", "NUMA", "GPU CPUS", "AFFINITY", "THREADS", "MEMORY",
            "LOCAL", "BY", "STATUS")]
    for r in report.rows:
        gpu = r.get("gpu") or {}
        mem = r.get("memory")
        by = gpu.get("strategy", "-")
        if gpu.get("agreed"):
            by = "=".join(gpu["agreed"])
        elif gpu and not gpu.get("disagreed"):
            by += " alone"
        if gpu.get("disagreed"):  # both sides, where the driver's answer stood over a plugin's
            by += f" vs {','.join(gpu['disagreed'])}"
        out.append((str(r["node_id"])[:8], f"{r.get('host') or '-'} {r.get('ip') or ''}".strip(),
                    _ids(r.get("ray_gpu_ids")),
                    (r.get("env") or {}).get("CUDA_VISIBLE_DEVICES", "-"),
                    gpu.get("driver_pci_bus_id", "-"), _short(gpu.get("driver_uuid") or gpu.get("uuid")),
                    ",".join(map(str, r.get("numa_nodes", []))) or "-", r.get("bind_cpus") or "-",
                    format_cpulist(r["affinity"]) if "affinity" in r else "-", verdict.threads_cell(r),
                    f"{mem['policy']} {format_cpulist(mem['nodes'])}".strip() if mem else "-",
                    verdict.local_cell(r), by,
                    verdict.shown(r["status"])))
    return out


def _short(uuid: str | None) -> str:
    return "-" if not uuid else uuid[:12]


def render(report: Report) -> str:
    """The table, then one line for each problem and note, then the verdict."""
    lines = lay_out(table(report))
    for r in report.rows:
        gpu = (r.get("gpu") or {}).get("driver_pci_bus_id", "")
        who = f"{r['node_id'][:8]} {gpu}".strip()
        lines += [clean(f"{who}: {'PROBLEM' if r['status'] in PROBLEMS else 'note'}: {t}") for t in r["problems"]]
        lines += [clean(f"{who}: note: {t}") for t in r.get("notes", []) + r.get("warnings", [])]
    gpus = sum(1 for r in report.rows if r["status"] != "no-gpus")
    nodes = len({r["node_id"] for r in report.rows})
    bad = sum(1 for r in report.rows if r["status"] in PROBLEMS)
    lines.append(f"{nodes} node(s), {gpus} GPU worker(s) probed in {report.seconds:.1f} s: "
                 + ("every worker bound next to its GPU" if not bad else f"{bad} with a problem"))
    return "\n".join(lines)
