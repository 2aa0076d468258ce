"""tools/mutation_sample.py: the sample it draws is stable, and each mutant runs the tests that called its function.

The tool's numbers in evidence/mutation-testing are only worth what its sample and its test choice are worth: a
sample that changed between runs could not be resumed or repeated, and a mutant run against tests that never call
its function would be counted a survivor.
"""

from __future__ import annotations

import argparse
import json

import pytest

from conftest import ROOT, load_tool

TOOL = load_tool("mutation_sample")


def fake_tree(tmp_path, counts):
    """A scratch tree as mutmut leaves it: one .meta record per mutated file."""
    for rel, n in counts.items():
        meta = tmp_path / "mutants/src/gpuaffinity" / f"{rel}.py.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        module = "gpuaffinity." + rel.replace("/", ".")
        names = {f"{module}.x_f__mutmut_{i}": None for i in range(1, n + 1)}
        meta.write_text(json.dumps({"exit_code_by_key": names}))
    return tmp_path


def args(seed, *modules, sample=5, exclude=False):
    return argparse.Namespace(seed=seed, modules=list(modules), sample=sample, exclude_sampled=exclude)


def test_mutants_are_listed_by_module_without_core_and_numa(tmp_path):
    tree = fake_tree(tmp_path, {"launch": 3, "sim/render": 2, "core/chain": 4, "numa/bind": 1, "examples/__init__": 0})
    got = TOOL._mutants(tree)
    assert sorted(got) == ["launch", "sim.render"]
    assert got["sim.render"] == ["gpuaffinity.sim.render.x_f__mutmut_1", "gpuaffinity.sim.render.x_f__mutmut_2"]


def test_the_same_seed_draws_the_same_sample_and_another_seed_another(tmp_path):
    tree = fake_tree(tmp_path, {"launch": 60, "select": 3})
    first = TOOL._sample(tree, args(7), {})
    assert first == TOOL._sample(tree, args(7), {})
    assert len(first["launch"]) == 5 and len(first["select"]) == 3  # all where fewer than asked
    assert first["launch"] != TOOL._sample(tree, args(8), {})["launch"]
    # one module asked for: its sample is the one it has in the whole draw
    assert TOOL._sample(tree, args(7, "launch"), {}) == {"launch": first["launch"]}


def test_a_later_seed_can_draw_only_from_what_no_earlier_seed_took(tmp_path):
    tree = fake_tree(tmp_path, {"launch": 12})
    first = TOOL._sample(tree, args(7, sample=6), {})["launch"]
    results = {n: {"module": "launch", "result": "killed", "seed": 7} for n in first}
    second = TOOL._sample(tree, args(8, sample=6, exclude=True), results)["launch"]
    assert sorted(second) == sorted(set(TOOL._mutants(tree)["launch"]) - set(first))
    # without the flag, the earlier seed's mutants may be drawn again
    again = TOOL._sample(tree, args(7, sample=6, exclude=True), results)["launch"]
    assert again == first  # the seed's own results do not exclude themselves


def test_each_mutant_runs_the_tests_that_called_its_function_in_their_order(tmp_path):
    hits = tmp_path / "hits"
    hits.mkdir()
    (hits / "launch.tsv").write_text(
        "gpuaffinity.launch.x_popen\ttests/test_b.py::test_one\n"
        "gpuaffinity.launch.x_popen_more\ttests/test_b.py::test_other\n"
        "gpuaffinity.launch.x_popen\ttests/test_a.py::test_two[x]\n"
        "gpuaffinity.launch.x_popen\ttests/test_b.py::test_one\n")
    assert TOOL._tests_of(tmp_path, "launch", "gpuaffinity.launch.x_popen__mutmut_12") == [
        "tests/test_b.py::test_one", "tests/test_a.py::test_two"]  # a parametrized test whole
    assert TOOL._tests_of(tmp_path, "launch", "gpuaffinity.launch.x_spawn__mutmut_1") == []
    # a survivor is confirmed against the whole files (a fixture's calls are credited to its first test only)
    assert TOOL._tests_of(tmp_path, "launch", "gpuaffinity.launch.x_popen__mutmut_12", whole_files=True) == [
        "tests/test_b.py", "tests/test_a.py"]
    # a module run as a child's whole program keeps no record: its whole selection runs
    assert TOOL._tests_of(tmp_path, "resolvers._cuquery", "gpuaffinity.resolvers._cuquery.x_failed__mutmut_1") is None


def test_every_module_outside_core_and_numa_has_a_test_selection():
    src = ROOT / "src/gpuaffinity"
    modules = {p.relative_to(src).with_suffix("").as_posix().replace("/", ".") for p in src.rglob("*.py")}
    outside = {m for m in modules if not m.startswith(("core.", "numa."))}
    without_code = {"__main__", "sim.__init__", "examples.__init__", "examples.torchrun_worker"}  # no mutant in them
    missing = outside - set(TOOL.TESTS) - TOOL.DONE - without_code
    assert not missing, f"modules with no test selection in tools/mutation_sample.py: {sorted(missing)}"
    for files in TOOL.TESTS.values():
        assert all((ROOT / "tests" / f).is_file() for f in files), files


# The tool credits a call in a child to the test named by the child's PYTEST_CURRENT_TEST: a child run from a
# machine that sim_factory shares between tests must name the test running now, not the one that opened it.

@pytest.fixture(scope="module")
def shared(sim_factory):
    return sim_factory("h200x4-vm")


CHILD_TEST = "import json, os; print(json.dumps(os.environ.get('PYTEST_CURRENT_TEST')))"


@pytest.mark.parametrize("turn", ["first", "second"])
def test_a_child_of_a_shared_machine_names_the_test_that_runs_it(shared, request, turn):
    from conftest import run_json

    assert run_json(shared, CHILD_TEST).rsplit(" (", 1)[0] == request.node.nodeid


def test_a_timed_out_run_leaves_none_of_its_processes_behind(tmp_path):
    """A mutant's run that times out is killed with everything it started, a daemon in a session of its own too
    (a Ray cluster a test started outlived pytest, and the next mutants shared the two cores with it)."""
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    code = ("import os, subprocess, sys, time\n"
            "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pids)!r}, 'w').write(f'{{d.pid}} {{c.pid}}')\n"
            "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = [int(x) for x in pids.read_text().split()]
    TOOL._kill_tree(p.pid)
    assert p.wait(timeout=10) == -9
    time.sleep(0.2)
    for pid in started:  # gone, or a zombie its killed parent left to init (not running)
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"), pid
        except FileNotFoundError:
            pass
