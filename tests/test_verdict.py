"""The judging rules `gpuaffinity check` and `ray-check` share (gpuaffinity.verdict), each row built by hand here and
every text asserted whole: which status, which words, which notes."""

from __future__ import annotations

import pytest

from gpuaffinity import verdict
from gpuaffinity.core.errors import GpuAffinityError

BUS = "0000:1b:00.0"


def row(**changes):
    base = {"pci_bus_id": BUS, "numa_nodes": [0], "memory_nodes": [0], "bind_cpus": "0-3", "worker_cpus": "0-7",
            "affinity": [0, 1, 2, 3], "memory": {"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"},
            "notes": []}
    base.update(changes)
    return base


def judged(r, mode="node", memory="preferred", set_up=True, why="", memory_why="", missing="nothing recorded"):
    problems: verdict.Problems = []
    verdict.binding(r, problems, mode, memory, set_up=set_up, why=why, memory_why=memory_why, missing=missing)
    return problems


def test_a_worker_on_its_gpus_cpus_with_its_policy_is_fine():
    r = row()
    assert judged(r) == [] and r["notes"] == []
    assert judged(row(affinity=[2])) == []  # a subset of the node is within it


@pytest.mark.parametrize(("changes", "kw", "want"), [
    ({"affinity": list(range(8))}, {}, ("unbound", "runs on CPUs 0-7, not bound to its GPU's node 0 (CPUs 0-3): "
                                                   "no binding was applied")),
    ({"affinity": list(range(8))}, {"why": "EPERM"}, ("unbound", "runs on CPUs 0-7, not bound to its GPU's node 0 "
                                                                 "(CPUs 0-3): EPERM")),
    ({"affinity": [4, 5]}, {"set_up": False}, ("unbound", "runs on CPUs 4-5, not bound to its GPU's node 0 (CPUs 0-3)"
                                                          ": nothing recorded")),
    ({"affinity": [3, 4]}, {}, ("unbound", "runs on CPUs 3-4, not bound to its GPU's node 0 (CPUs 0-3): no binding "
                                           "was applied")),
    ({"affinity": [4, 5]}, {}, ("off-node", "bound to CPUs 4-5, off its GPU's node 0 (CPUs 0-3)")),
    ({"affinity": [4, 5]}, {"mode": "socket"}, ("off-node", "bound to CPUs 4-5, off its GPU's socket of node 0 "
                                                            "(CPUs 0-3)")),
    ({"affinity": [4, 5]}, {"mode": "exclusive"}, ("off-node", "bound to CPUs 4-5, off its GPU's share of node 0 "
                                                               "(CPUs 0-3)")),
    ({"affinity": [4, 5]}, {"mode": "llc"}, ("off-node", "bound to CPUs 4-5, off its GPU's cache group in node 0 "
                                                         "(CPUs 0-3)")),
])
def test_where_the_main_thread_runs(changes, kw, want):
    kw = dict(kw)  # the parameter itself stays as it was, for a second run
    mode = kw.pop("mode", "node")
    assert judged(row(**changes), mode=mode, **kw) == [want]


def test_no_node_and_no_cpu_near():
    r = row(numa_nodes=[], affinity=list(range(8)))
    assert judged(r) == [] and r["notes"] == ["the GPU has no NUMA node (its locality notes say why): nothing to bind "
                                              "to, the worker keeps all its CPUs"]
    assert judged(row(bind_cpus="")) == [("unbound", f"none of the worker's CPUs (0-7) is near GPU {BUS}: nothing to "
                                                     "bind to (the node's cpuset excludes them)")]


@pytest.mark.parametrize(("memory", "mem", "kw", "want"), [
    ("preferred", {"policy": "default", "nodes": [], "kernel": "MPOL_DEFAULT"}, {},
     [("unbound", "memory policy is the default, not preferred to its GPU's node 0")]),
    ("bind", {"policy": "default", "nodes": []}, {"memory_why": "set_mempolicy EINVAL"},
     [("unbound", "memory policy is the default, not bind to its GPU's node 0: set_mempolicy EINVAL")]),
    ("bind", {"policy": "default", "nodes": []}, {"set_up": False},
     [("unbound", "memory policy is the default, not bind to its GPU's node 0: nothing recorded")]),
    ("any", {"policy": "default", "nodes": []}, {},
     [("unbound", "memory policy is the default: nothing keeps its memory on its GPU's node 0")]),
    ("bind", {"policy": "preferred", "nodes": [0, 1]}, {},
     [("unbound", "memory policy is preferred (node(s) 0-1), not bind"),
      ("off-node", "memory preferred to node(s) 0-1, off its GPU's node 0")]),
    ("any", {"policy": "bind", "nodes": [0]}, {}, []),
    ("any", {"policy": "interleave", "nodes": [1]}, {}, [("off-node", "memory interleave to node(s) 1, off its GPU's "
                                                                     "node 0")]),
    ("any", {"policy": "local", "nodes": []}, {}, []),
    ("none", {"policy": "bind", "nodes": [5]}, {}, []),
    ("preferred", None, {}, []),
])
def test_the_memory_policy(memory, mem, kw, want):
    assert judged(row(memory=mem), memory=memory, **kw) == want


def test_socket_mode_names_the_sockets_nodes_and_the_preferred_fallback_is_a_note():
    r = row(memory_nodes=[0, 1], memory={"policy": "bind", "nodes": [2], "kernel": "MPOL_BIND"})
    assert judged(r, mode="socket", memory="bind") == [("off-node", "memory bind to node(s) 2, off its GPU's socket, "
                                                                    "node(s) 0-1")]
    r = row(memory_nodes=[0, 1], memory={"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"})
    assert judged(r) == [] and r["notes"] == [
        "memory prefers node(s) 0 alone (MPOL_PREFERRED), not all of 0-1: this kernel has no MPOL_PREFERRED_MANY "
        "(Linux 5.15 added it); it still spills to the other nodes"]
    r = row(memory={"policy": "preferred", "nodes": [0], "kernel": "MPOL_PREFERRED"})
    assert judged(r) == [] and r["notes"] == []  # one node: nothing to fall back from


def test_threads_off_the_cpus_are_named_and_drift_only_when_the_main_thread_is_right():
    listed = [(10, "main", frozenset({0})), (11, "a", frozenset({4})), (12, "b", frozenset({0, 4}))] + \
        [(20 + i, f"w{i}", frozenset({5})) for i in range(6)]
    r, problems = row(affinity=[0]), []
    verdict.threads(r, problems, listed, 10)
    assert r["threads"]["count"] == 9 and [t["tid"] for t in r["threads"]["off"]] == [11, 12, 20, 21, 22, 23, 24, 25]
    assert r["threads"]["off"][1] == {"tid": 12, "name": "b", "cpus": "0,4"}
    assert problems == [("threads-drifted", "8 of 9 threads may run off its GPU's CPUs 0-3: 11 (a) on CPUs 4, 12 (b) "
                                            "on CPUs 0,4, 20 (w0) on CPUs 5, 21 (w1) on CPUs 5, 22 (w2) on CPUs 5 and "
                                            "3 more")]
    r, problems = row(affinity=[4]), []
    verdict.threads(r, problems, [(10, "main", frozenset({4})), (11, "a", frozenset({4}))], 10)
    assert problems == [] and len(r["threads"]["off"]) == 2  # the main thread's own problem says it
    r, problems = row(numa_nodes=[]), []
    verdict.threads(r, problems, [(10, "main", frozenset({4}))], 10)
    assert r["threads"] == {"count": 1, "off": []} and problems == []
    assert verdict.threads_cell(row()) == "-"
    assert verdict.threads_cell({"threads": {"count": 9, "off": [1, 2]}}) == "7/9"


def test_pages_give_the_local_share_and_fail_below_it_with_enough_elsewhere():
    gib = 1 << 30
    r, problems = row(pages={"nodes": {"0": gib, "1": 3 * gib, "2": 0}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert (r["pages"]["total"], r["pages"]["local"]) == (4 * gib, 0.25)
    assert problems == [("remote-memory", "75% of its memory (3.0 GiB of 4.0 GiB) is off its GPU's node(s) 0: node 1 "
                                          "3.0 GiB")]
    assert verdict.local_cell(r) == "25%"
    for pages, min_local in (({"0": 100 << 20, "1": 10 << 20}, 0.8), ({"0": 1 << 20, "1": 60 << 20}, 0.8),
                             ({"0": 0, "1": gib}, 0.0)):
        r, problems = row(pages={"nodes": pages, "file_nodes": {}}), []
        verdict.pages(r, problems, min_local)
        assert problems == [], pages  # enough local, under 64 MiB elsewhere, or no minimum
    r, problems = row(pages={"nodes": {}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert r["pages"]["local"] is None and problems == [] and verdict.local_cell(r) == "-"
    r, problems = row(memory_nodes=[0, 1], pages={"nodes": {"1": gib}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert r["pages"]["local"] == 1.0 and problems == []  # socket mode: every memory node counts


def test_sizes_statuses_and_the_min_local_check():
    assert [verdict._size(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 30)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
    assert verdict.status_of([]) == "ok"
    assert verdict.status_of([("remote-memory", ""), ("no-access", ""), ("unbound", "")]) == "no-access"
    assert [verdict.shown(s) for s in ("ok", "no-gpu", "no-gpus", "threads-drifted")] == \
        ["ok", "no-gpu", "no-gpus", "THREADS-DRIFTED"]
    assert verdict.PROBLEMS == set(verdict.STATUSES) - {"ok", "no-gpu", "no-gpus"}
    assert verdict.check_min_local(0) == 0.0 and verdict.check_min_local(1) == 1.0
    for bad in (True, -0.1, 1.01, float("nan"), "0.5", None):
        with pytest.raises(GpuAffinityError, match=r"min_local .*: give the share of memory that must be on the "
                                                   r"GPU's node\(s\), from 0 to 1 \(default 0.8\)"):
            verdict.check_min_local(bad)


def test_pages_as_a_row_holds_them():
    from gpuaffinity.proc import Pages

    assert verdict.pages_dict(None) is None
    assert verdict.pages_dict(Pages({1: 5, 0: 7}, {2: 1}, 3)) == {"nodes": {"0": 7, "1": 5}, "file_nodes": {"2": 1}}


def test_the_edges_of_each_rule():
    # the worst status by the table's order, not by its name: unbound is worse than threads-drifted
    assert verdict.status_of([("threads-drifted", ""), ("unbound", "")]) == "unbound"
    # a thread on exactly the binding's CPUs is within them
    r, problems = row(), []
    verdict.threads(r, problems, [(10, "main", frozenset({0})), (11, "all", frozenset({0, 1, 2, 3}))], 10)
    assert r["threads"]["off"] == [] and problems == []
    # exactly SHOWN_THREADS threads elsewhere: all named, no "and N more"
    r, problems = row(affinity=[0]), []
    verdict.threads(r, problems, [(10, "m", frozenset({0}))] + [(20 + i, "w", frozenset({5})) for i in range(5)], 10)
    assert problems[0][1].endswith("24 (w) on CPUs 5")
    # 64 MiB elsewhere exactly is enough to fail; one byte less is not
    for far, fails in ((64 << 20, True), ((64 << 20) - 1, False)):
        r, problems = row(pages={"nodes": {"0": 1, "1": far}, "file_nodes": {}}), []
        verdict.pages(r, problems)
        assert bool(problems) is fails, far
    # the share is rounded to four places; nodes named in order of their number
    r, problems = row(pages={"nodes": {"0": 1, "10": 1 << 30, "2": 1 << 30}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert r["pages"]["local"] == 0.0 and problems[0][1].endswith("node 2 1.0 GiB, node 10 1.0 GiB")
    r, problems = row(pages={"nodes": {"0": 2, "1": 1}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert r["pages"]["local"] == 0.6667 and verdict.local_cell(r) == "67%"
    assert verdict.local_cell({"pages": {"local": 1.0}}) == "100%"
    # a record without memory_nodes: the GPU's own nodes
    r, problems = row(memory_nodes=[], memory={"policy": "bind", "nodes": [1], "kernel": "MPOL_BIND"},
                      pages={"nodes": {"1": 1 << 30}, "file_nodes": {}}), []
    verdict.pages(r, problems)
    assert judged(r, memory="bind") == [("off-node", "memory bind to node(s) 1, off its GPU's node 0")]
    assert r["pages"]["local"] == 0.0
    # default and local policies name no node to be off
    assert judged(row(memory={"policy": "local", "nodes": [1]}), memory="any") == []
    assert judged(row(memory={"policy": "default", "nodes": [1]}), memory="any") == [
        ("unbound", "memory policy is the default: nothing keeps its memory on its GPU's node 0")]
    with pytest.raises(GpuAffinityError, match=r"min_local '" + "9" * 40 + "'"):
        verdict.check_min_local("9" * 50)  # a string: refused, shown cut to 40 characters
    with pytest.raises(GpuAffinityError, match=r"min_local 'None'"):
        verdict.check_min_local(None)
