"""Threads and fork: the cache never holds an answer for the wrong environment, and a forked child never hangs."""

from __future__ import annotations

import json
import os
import threading

import pytest

from conftest import run_json
from test_deployments import driver_truth

RACE = r"""
import json, os, random, sys, threading, time, gpuaffinity
from gpuaffinity import api
from gpuaffinity.core.settings import Settings
values, truth = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.setswitchinterval(1e-5)  # threads switch every 10 us, not 5 ms: a wrong answer needs a switch at the wrong line
stop = threading.Event()
wrong, seen = [], set()
def flipper():
    rnd = random.Random(1)
    while not stop.is_set():
        os.environ["CUDA_VISIBLE_DEVICES"] = rnd.choice(values)
        time.sleep(0)  # let the others run: a flipper that kept the GIL for its whole switch interval made each
                       # resolution wait at every point it released the GIL (minutes in all on a loaded machine)
errors = []
def resolver(seed):
    try:
        resolve_and_look(seed)
    except BaseException as e:  # a thread's exception is only printed: the test must see it
        errors.append(f"{type(e).__name__}: {e}")
def resolve_and_look(seed):
    rnd = random.Random(seed)
    for _ in range(60):
        if rnd.random() < 0.3:
            gpuaffinity.clear_cache()
        gpuaffinity.resolve_all()
        # every answer cached now, with the CUDA_VISIBLE_DEVICES it is filed under (a wrong one may be cleared
        # before the end: it is looked for after each call)
        for k, v in list(api._cache.items()):
            cvd, buses = Settings.from_key(k).cvd, [d.pci_bus_id for d in v]
            seen.add(cvd)
            if buses != truth.get(cvd):
                wrong.append([cvd, buses])
os.environ["CUDA_VISIBLE_DEVICES"] = values[0]  # set before any thread resolves: every key holds one of values
flip = threading.Thread(target=flipper)
flip.start()
workers = [threading.Thread(target=resolver, args=(i,)) for i in range(6)]
[w.start() for w in workers]
[w.join() for w in workers]
stop.set(); flip.join()
print(json.dumps({"wrong": wrong[:5], "seen": sorted(seen), "errors": errors[:5]}))
"""


@pytest.mark.slow
def test_changing_the_variable_while_threads_resolve_leaves_no_wrong_answer(sim_factory):
    """Six threads resolve (clearing the cache now and then) while a seventh changes CUDA_VISIBLE_DEVICES: no
    answer is ever cached under a value it is not the answer for. (A resolution that read the variable again
    after computing its key was caught in 5 runs of 5 on this 2-core machine, with the switch interval of 5 ms
    too; when only the cache left at the end was looked at, in 0 of 5.)"""
    machine = sim_factory("dgx-h100")
    values = ["0", "1,0", "3,6,5", "7", "2,4,6"]
    truth = {v: [b for b, _ in t["devices"]] for v, t in zip(values, driver_truth(machine, [(v, None) for v in values]),
                                                                strict=True)}
    out = run_json(machine, RACE, json.dumps(values), json.dumps(truth), GPUAFFINITY_INVENTORY="nvml", timeout=600)
    assert out["wrong"] == [] and out["errors"] == [], out
    assert len(out["seen"]) >= 3, out  # the threads did resolve under several values


FORK = r"""
import json, os, signal, sys, threading, time, gpuaffinity
stop = threading.Event()
def busy():
    while not stop.is_set():
        gpuaffinity.clear_cache()
        gpuaffinity.resolve_all()
t = threading.Thread(target=busy)
t.start()
results = []
for i in range(8):
    time.sleep(0.003 * i)
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a hang shows as death by SIGALRM
        try:
            n = len(gpuaffinity.resolve_all(policy="first"))
            import pynvml
            pynvml.nvmlInit(); pynvml.nvmlShutdown()  # pynvml's own lock is usable too
            os._exit(0 if n == 8 else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    results.append(os.waitstatus_to_exitcode(status))
stop.set(); t.join()
print(json.dumps(results))
"""


@pytest.mark.parametrize("source", ["procfs", "nvml"])
def test_a_child_forked_while_another_thread_resolves_does_not_hang(sim_factory, source):
    extra = {"GPUAFFINITY_INVENTORY": "nvml"} if source == "nvml" else {}
    results = run_json(sim_factory("dgx-h100"), FORK, **extra)
    assert results == [0] * 8


def in_forked_child(check) -> int:
    """Exit status of a fork of this test process that runs ``check()``: 0 true, 3 false, 1 raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 3
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_forked_while_its_thread_holds_the_lock_starts_with_one_any_thread_can_take():
    from gpuaffinity import _state

    def another_thread_takes_it():
        got = []

        def take():
            got.append(_state.lock.acquire(timeout=2))
            if got[0]:
                _state.lock.release()

        t = threading.Thread(target=take)
        t.start()
        t.join()
        return got == [True]

    with _state.lock:  # as in a strategy that forks while it resolves
        assert in_forked_child(another_thread_takes_it) == 0
    assert another_thread_takes_it()  # and the parent's fork held the lock only while it forked


def test_a_child_forked_while_a_parent_thread_holds_pynvml_s_library_lock_gets_a_free_one():
    import pynvml

    import gpuaffinity._state  # noqa: F401  the fork hooks

    original = pynvml.libLoadLock
    taken, done = threading.Event(), threading.Event()

    def hold():
        with original:
            taken.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(5)
    try:
        code = in_forked_child(lambda: pynvml.libLoadLock.acquire(timeout=2))
    finally:
        done.set()
        t.join()
    assert code == 0
    assert pynvml.libLoadLock is original  # the parent keeps its own lock


SCOPE_FORK = r"""
import json, os, sys
import gpuaffinity
from gpuaffinity import host
from gpuaffinity.nvml_lite import Session

starts = []
enter = Session.__enter__
Session.__enter__ = lambda self: (starts.append(os.getpid()), enter(self))[1]
with host.scope() as h:
    h.nvml()  # the command's NVML session is up when it forks (a launcher, a probe)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        outside = host._current is None
        bus = gpuaffinity.plan(0).pci_bus_id  # a Host of the child's own: its own NVML session, shut down after
        os.write(w, json.dumps([outside, bus, starts.count(os.getpid()), host._current is None]).encode())
        os._exit(0)
    os.close(w)
    child = json.loads(os.read(r, 4096))
    os.waitpid(pid, 0)
    mine = gpuaffinity.plan(0).pci_bus_id  # still the parent's scope: no second start
    print(json.dumps([child, mine, starts.count(os.getpid()), h._nv is not None]))
"""


def test_a_child_forked_inside_a_command_starts_outside_its_scope_with_nvml_of_its_own(sim_factory):
    """A fork inside a command (gpuaffinity.host.scope): the child is not in the parent's scope (whose NVML session
    is the parent's), so its own call opens and shuts down a session of its own; the parent's scope goes on with
    its one session."""
    (outside, bus, child_starts, closed_after), mine, parent_starts, still_open = run_json(sim_factory("slurm-2of8"),
                                                                                          SCOPE_FORK)
    assert outside and closed_after  # the child began outside any scope, and left none open
    assert child_starts == 1  # its own session (the parent's is not its to use)
    assert bus == mine  # the same GPU either way
    assert parent_starts == 1 and still_open  # the parent's scope: one session, still open until the scope ends


def test_a_child_forked_inside_a_scope_leaves_the_block_cleanly():
    """The child of a fork inside ``host.scope()`` starts outside it with a lock of its own; leaving the block there
    neither releases a lock it never took (RuntimeError) nor shuts down the parent's session.  (Found by an
    attack.)"""
    from gpuaffinity import _state, host

    parent = os.getpid()
    code = 1
    try:
        with host.scope():
            pid = os.fork()
        if pid == 0:  # the child, out of the block
            code = 0 if host._current is None and _state.lock.acquire(timeout=2) else 3
    finally:
        if os.getpid() != parent:
            os._exit(code)  # the child never returns into pytest, whatever happened
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert host._current is None and _state.lock.acquire(timeout=2)
    _state.lock.release()
