#!/usr/bin/env python3
"""A sampled mutation pass over the modules outside ``core/`` and ``numa/`` (issue 22).

mutmut (3.8.1) makes the mutants; this script runs them. mutmut's own runner
runs only the tests it saw calling a function *in the test process*, and most
tests of the CLI, ``check``, the Ray hook and the launchers call the package
in a child process, so mutmut reports their mutants as "no tests". Here every
sampled mutant runs against its module's whole test selection instead, with
the mutated tree first on ``PYTHONPATH`` and ``MUTANT_UNDER_TEST`` in the
environment, so child processes that inherit the environment run the mutant
too. (A child given a scrubbed environment runs the original code: such a
test can only fail to kill, never kill falsely.)

    tools/mutation_sample.py generate --tree /tmp/mutx          # a clone of HEAD, mutants made there
    tools/mutation_sample.py run --tree /tmp/mutx --sample 20 --seed 20261206 [MODULE ...]
    tools/mutation_sample.py table --tree /tmp/mutx
    tools/mutation_sample.py survivors --tree /tmp/mutx [MODULE ...]   # each survivor's diff

The sample is drawn per module from the sorted mutant names with
``random.Random(f"{seed}:{module}")``, so it is stable for a given commit and
seed, and a later seed can draw from the mutants no earlier sample took
(``--exclude-sampled``). Results go to ``TREE/mutation-sample.json`` after each
mutant, so an interrupted run resumes where it stopped. Before a module's
mutants run, its selection runs once with no mutant active and must pass.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Each module's tests: the files that call it, in the test process or in a child. The quick marker
# (`-m "not slow"`) applies to all of them.
TESTS: dict[str, list[str]] = {
    "__init__": ["test_record.py", "test_resolve.py", "test_first_contact.py"],
    "_child": ["test_bind_policy.py", "test_resolve.py", "test_security.py"],
    "_ray_probe": ["test_ray_check.py", "test_ray_check_attack.py", "test_narrowed_mask.py", "test_check_ray.py"],
    "_state": ["test_concurrency.py", "test_ray_worker.py", "test_nvml_faults.py", "test_resolve.py"],
    "api": ["test_resolve.py", "test_resolve_options.py", "test_record.py", "test_first_contact.py",
            "test_concurrency.py", "test_device_access.py", "test_deployments.py", "test_plugin_contract.py"],
    "cli": ["test_cli_sim.py", "test_first_contact.py", "test_resolve.py", "test_resolve_options.py",
            "test_bind_policy.py", "test_check.py", "test_check_attack.py", "test_numa.py", "test_plugin_contract.py",
            "test_sim_processes.py"],
    "host": ["test_deployments.py", "test_numa_shapes.py", "test_numa.py", "test_concurrency.py", "test_resolve.py",
             "test_nvml_faults.py"],
    "reports": ["test_cli_sim.py", "test_first_contact.py", "test_resolve.py", "test_resolve_options.py",
                "test_plugin_contract.py", "test_bind_policy.py"],
    "sim.jobs": ["test_cli_sim.py", "test_sim_processes.py", "test_first_contact.py"],
    "text": ["test_cli_sim.py", "test_check.py", "test_ray_check_attack.py", "test_first_contact.py"],
    "inventory": ["test_resolve.py", "test_device_access.py", "test_sim_restricted.py", "test_nvml_faults.py",
                  "test_deployments.py", "test_record.py"],
    "launch": ["test_resolve.py", "test_resolve_options.py", "test_bind_policy.py", "test_security.py",
               "test_examples.py", "test_numa.py"],
    "live": ["test_check.py", "test_check_inprocess.py", "test_check_attack.py", "test_check_sim.py",
             "test_check_docs.py"],
    "nvml_lite": ["test_numa_nvml_lite.py", "test_sim_processes.py", "test_nvml_faults.py", "test_check_inprocess.py",
                  "test_check_sim.py"],
    "placement": ["test_bind_policy.py", "test_record.py", "test_resolve_options.py", "test_binding_records.py",
                  "test_check_attack.py", "test_cli_sim.py", "test_check_sim.py"],
    "proc": ["test_proc_formats.py", "test_proc_numa_maps.py", "test_check_inprocess.py", "test_check.py",
             "test_check_attack.py"],
    "ray_check": ["test_ray_check.py", "test_ray_check_attack.py", "test_check_ray.py", "test_narrowed_mask.py",
                  "test_ray_check_connect.py"],
    "ray_worker": ["test_ray_worker.py", "test_ray_check.py", "test_narrowed_mask.py", "test_bind_policy.py"],
    "select": ["test_resolve.py", "test_first_contact.py", "test_deployments.py"],
    "resolvers._common": ["test_resolve.py", "test_sim_nvml.py", "test_cli_sim.py", "test_record.py"],
    "resolvers._cuquery": ["test_resolve.py", "test_sim_cuda.py", "test_record.py", "test_security.py"],
    "resolvers.__init__": ["test_resolve.py", "test_record.py", "test_plugin_entry_points.py"],
    "resolvers.cvd": ["test_resolve.py", "test_record.py"],
    "resolvers.pci": ["test_resolve.py", "test_record.py", "test_sim_restricted.py", "test_device_access.py",
                      "test_resolve_options.py"],
    "resolvers.torch_helper": ["test_resolve.py", "test_torch_compat.py"],
    "sim.build": ["test_sim_cuda.py", "test_sim_nvml.py", "test_cli_sim.py", "test_numa_inprocess.py"],
    "sim.demo": ["test_cli_sim.py", "test_docs.py"],
    "sim.machine": ["test_sim_cuda.py", "test_sim_nvml.py", "test_sim_processes.py", "test_cli_sim.py"],
    "sim.raycluster": ["test_ray_check.py", "test_check_ray.py", "test_ray_check_connect.py"],
    "sim.render": ["test_topology.py", "test_sim_cuda.py", "test_sim_nvml.py", "test_sim_processes.py",
                   "test_numa_inprocess.py", "test_device_access.py", "test_numa_sysfs.py"],
    "sim.topology": ["test_topology.py", "test_sim_cuda.py", "test_sim_restricted.py", "test_device_access.py",
                     "test_check_sim.py", "test_numa_shapes.py", "test_sim_processes.py"],
    "examples.multiprocessing_workers": ["test_examples.py"],
    "examples.ray_actors": ["test_examples.py"],
    "examples.subprocess_launcher": ["test_examples.py"],
}
# Measured already, with mutmut's own runner (evidence/mutation-testing, pass M).
DONE = {"verdict", "intent"}
# Modules whose text is also run as a child's whole program (``python -I -c``): mutmut's form of the file
# (every mutant in one text, importing mutmut) cannot be that program, so the tests import the original there,
# and each mutant is written out as plain source in a private copy of the package instead.
# So are modules run as ``python -m``: there the functions' module is ``__main__``, which no trampoline matches.
PLAIN = {"resolvers._cuquery", "sim.demo", "examples.multiprocessing_workers", "examples.ray_actors",
         "examples.subprocess_launcher"}
# Modules whose code runs mostly in Ray workers or in the examples' own processes, under tests marked slow: their
# selection includes the slow tests, and runs whole for each mutant, since a Ray worker inherits the environment
# of the test that started the cluster, not of the test running now, so calls cannot be told apart by test.
SLOW = {"_ray_probe", "ray_worker", "sim.raycluster", "examples.multiprocessing_workers", "examples.ray_actors",
        "examples.subprocess_launcher"}
# Modules tested mostly by slow tests but run in the test process or its children (ray-check's driver side): the
# slow tests join their selection, and the record of calls still picks each mutant's tests.
SLOW_HITS = {"ray_check"}
# The import-cost tests forbid what mutmut's trampoline itself imports.
DESELECT = ["tests/test_record.py::test_the_resolution_path_loads_no_heavy_module"]


def _mutants(tree: Path) -> dict[str, list[str]]:
    """Every mutant name, by module (``sim.render``), from mutmut's record of the mutated tree."""
    out: dict[str, list[str]] = {}
    for meta in sorted((tree / "mutants/src/gpuaffinity").rglob("*.py.meta")):
        rel = meta.relative_to(tree / "mutants/src/gpuaffinity").as_posix()[: -len(".py.meta")]
        module = rel.replace("/", ".")
        if module.startswith(("core.", "numa.")):
            continue
        names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        if names:
            out[module] = names
    return out


def _results(tree: Path, part: str | None = None) -> dict[str, dict]:
    """The results so far: of one part (one ``run --part``), or of every part together."""
    out: dict[str, dict] = {}
    for path in sorted(tree.glob("mutation-sample*.json")):
        if part is None or path.name == f"mutation-sample{part}.json":
            out.update(json.loads(path.read_text()))
    return out


def _save(tree: Path, results: dict[str, dict], part: str) -> None:
    path = tree / f"mutation-sample{part}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


_APPLY = """import sys
import libcst as cst
from mutmut.mutation.diff_apply import (find_mutant, find_top_level_function_or_method, read_mutant_function,
                                        read_mutants_module, read_orig_module)
from mutmut.utils.format_utils import orig_function_and_class_names_from_key
name = sys.argv[1]
path = find_mutant(name).path
func = orig_function_and_class_names_from_key(name)[0].rpartition(".")[-1]
orig = read_orig_module(path)
mutant = read_mutant_function(read_mutants_module(path), name).with_changes(name=cst.Name(func))
sys.stdout.write(orig.deep_replace(find_top_level_function_or_method(orig, func), mutant).code)
"""


def _plain_copy(tree: Path, module: str, mutant: str) -> Path:
    """A private copy of the original package with this one mutant written into its module as plain source."""
    import shutil
    import tempfile

    code = subprocess.run([sys.executable, "-c", _APPLY, mutant], cwd=tree, capture_output=True, text=True,
                          check=True).stdout
    src = Path(tempfile.mkdtemp(prefix="mutant-")) / "src"
    shutil.copytree(tree / "src", src)
    (src / "gpuaffinity" / (module.replace(".", "/") + ".py")).write_text(code)
    return src


def _runsrc(tree: Path, module: str) -> Path:
    """The package the tests of ``module`` import: the original, but for ``module`` in mutmut's form (every mutant
    behind a trampoline). Only that one file is mutmut's, so the other modules cost what they cost in CI."""
    import shutil

    rel = "gpuaffinity/" + module.replace(".", "/") + ".py"
    src = tree / "runsrc" / module
    if not (src / rel).exists():
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(tree / "src", src)
        if module not in PLAIN:
            text = (tree / "mutants/src" / rel).read_text()
            future = "from __future__ import annotations\n"
            head, sep, rest = text.partition(future)  # the hook must be in place before a __main__ block runs
            (src / rel).write_text(head + sep + _HOOK + rest if sep else _HOOK + text)
    return src


# Put at the head of the module's mutmut form: in the clean run (MUTANT_UNDER_TEST=stats), every call through a
# trampoline is written down with the test that made it, in the test process and in every child that inherits the
# environment (pytest puts the running test's id in PYTEST_CURRENT_TEST). mutmut's own record stays in-process.
_HOOK = """

def _mutation_sample_hook():
    import os
    path = os.environ.get("MUTATION_SAMPLE_HITS")
    if not path or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    import mutmut.mutation.trampoline as trampoline
    seen = set()

    def hit(name, caller=None):
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        if test and (name, test) not in seen:
            seen.add((name, test))
            with open(path, "a", encoding="utf-8") as f:
                f.write(name + "\\t" + test + "\\n")

    trampoline.record_trampoline_hit = hit


_mutation_sample_hook()
"""


def _tests_of(tree: Path, module: str, mutant: str, whole_files: bool = False) -> list[str] | None:
    """The tests that called the mutated function in the clean run, in the order they ran; None where no record
    of calls is kept or none is trusted (PLAIN and SLOW modules: their whole selection runs).

    ``whole_files``: the files holding those tests, whole. A call made while a module- or session-scoped fixture
    is built is credited to the first test that asked for it, not to the later tests that use its result, so a
    survivor is confirmed against the whole files (``run --survivors``)."""
    if module in PLAIN or module in SLOW:
        return None
    func = mutant.rpartition("__mutmut_")[0]
    tests: dict[str, None] = {}
    hits = tree / "hits" / f"{module}.tsv"
    for line in hits.read_text(encoding="utf-8").splitlines() if hits.exists() else ():
        name, _, test = line.partition("\t")
        if name == func:
            # a parametrized test runs whole: its ids can hold what a command line cannot name again (spaces, "]",
            # escapes), which pytest answers with a usage error
            tests[test.split("::", 1)[0] if whole_files else test.split("[", 1)[0]] = None
    return list(tests)


def _pytest(tree: Path, module: str, mutant: str, timeout: float,
            deselect: list[str] = (), whole_files: bool = False) -> tuple[str, float, str]:
    root = tree / "mutants"
    src = _plain_copy(tree, module, mutant) if module in PLAIN and mutant else _runsrc(tree, module)
    env = dict(os.environ, MUTANT_UNDER_TEST=mutant or "stats",
               PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "pytest", "-x" if mutant else "-q", "-q", "-p", "no:cacheprovider"]
    cmd += [] if module in SLOW or module in SLOW_HITS else ["-m", "not slow"]
    for d in [*DESELECT, *deselect]:
        cmd += ["--deselect", d]
    tests = _tests_of(tree, module, mutant, whole_files) if mutant else None
    if tests == []:
        return "no-tests", 0.0, ""
    if not mutant:
        (tree / "hits").mkdir(exist_ok=True)
        env["MUTATION_SAMPLE_HITS"] = str(tree / "hits" / f"{module}.tsv")
        (tree / "hits" / f"{module}.tsv").unlink(missing_ok=True)
    cmd += tests if tests is not None else [f"tests/{t}" for t in TESTS[module]]
    start = time.monotonic()
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the tests' own children too (a Ray cluster a test started outlived pytest, and the next runs shared
        # the two cores with it)
        _kill_tree(p.pid)
        p.communicate()
        return "timeout", time.monotonic() - start, ""
    finally:
        if src.parent.name.startswith("mutant-"):
            import shutil

            shutil.rmtree(src.parent, ignore_errors=True)
    took = time.monotonic() - start
    tail = (out + err)[-3000:]
    status = {0: "survived", 1: "killed", 5: "no-tests"}.get(p.returncode, f"error-{p.returncode}")
    if status == "killed":
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
        tail = " ".join(failed) if failed else tail[-400:]
    return status, took, tail


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descended from it, found through /proc while they are still its
    descendants (a daemon that started its own session is one of them until its parent dies), and its session."""
    import signal

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, seen = [pid], []
    while todo:
        one = todo.pop()
        seen.append(one)
        todo += children.get(one, [])
    for one in seen:
        try:
            os.kill(one, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)  # the session's leader's group: anything started meanwhile
    except (ProcessLookupError, PermissionError):
        pass


def generate(args: argparse.Namespace) -> None:
    tree = Path(args.tree)
    if not tree.exists():
        subprocess.run(["git", "clone", "-q", str(Path(__file__).resolve().parent.parent), str(tree)], check=True)
    pyproject = tree / "pyproject.toml"
    text = re.sub(r"only_mutate = \[[^\]]*\]",
                  'only_mutate = ["src/gpuaffinity/*.py", "src/gpuaffinity/resolvers/*", '
                  '"src/gpuaffinity/sim/*.py", "src/gpuaffinity/examples/*"]', pyproject.read_text())
    pyproject.write_text(text)
    code = ("import os\n"
            "from mutmut.__main__ import create_mutants\n"
            "from mutmut.mutation.trampoline import set_mutant_under_test\n"
            "from mutmut.utils.file_utils import copy_src_dir, copy_also_copy_files, setup_source_paths\n"
            "set_mutant_under_test('mutant_generation')\n"
            "os.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(2)\n")
    subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, stdout=subprocess.DEVNULL)
    import shutil

    for name in ("README.md", "LICENSE", "tox.ini", "setup.py", "MANIFEST.in", ".ci"):  # the docs tests read them
        if (tree / name).is_dir():
            shutil.copytree(tree / name, tree / "mutants" / name, dirs_exist_ok=True)
        elif (tree / name).exists():
            shutil.copy2(tree / name, tree / "mutants" / name)
    counts = {m: len(n) for m, n in _mutants(tree).items()}
    print(f"{sum(counts.values())} mutants in {len(counts)} modules")


def _sample(tree: Path, args: argparse.Namespace, results: dict[str, dict]) -> dict[str, list[str]]:
    chosen: dict[str, list[str]] = {}
    for module, names in _mutants(tree).items():
        if module in DONE or (args.modules and module not in args.modules):
            continue
        if module not in TESTS:
            print(f"{module}: no test selection named in TESTS", file=sys.stderr)
            continue
        pool = [n for n in names if not (args.exclude_sampled and n in results
                                         and results[n].get("seed") != args.seed)]
        k = min(args.sample, len(pool))
        chosen[module] = sorted(random.Random(f"{args.seed}:{module}").sample(pool, k))
    return chosen


def run(args: argparse.Namespace) -> None:
    tree = Path(args.tree)
    part = f"-{args.part}" if args.part else ""
    everything = _results(tree)
    results = _results(tree, part)
    chosen = _sample(tree, args, everything)
    for module, names in chosen.items():
        todo = [n for n in names if n not in everything or args.again
                or (args.survivors and everything[n]["result"] not in ("killed", "timeout"))]
        if not todo:
            continue
        if args.survivors:  # new tests: the tree takes this checkout's tests, and the clean run records again
            import shutil

            shutil.copytree(Path(__file__).resolve().parent.parent / "tests", tree / "mutants/tests",
                            dirs_exist_ok=True)
            everything.pop("clean:" + module, None)
            results.pop("clean:" + module, None)
        clean = results.setdefault("clean:" + module, everything.get("clean:" + module, {}))
        if "secs" not in clean:
            status, base, tail = _pytest(tree, module, "", timeout=1800)
            if status not in ("survived", "killed") or (status == "killed" and "::" not in tail):
                sys.exit(f"{module}: its tests cannot run with no mutant active ({status}):\n{tail}")
            # Tests that fail with no mutant active fail for the harness's sake (a warning's stack level that
            # now points into mutmut's trampoline): they are left out of this module's runs, and listed.
            clean.update(secs=round(base, 1), deselected=tail.split() if status == "killed" else [])
            _save(tree, results, part)
        deselect, timeout = clean["deselected"], max(60.0, 3 * clean["secs"])
        print(f"{module}: {len(todo)} mutants, clean run {clean['secs']:.0f} s, {len(deselect)} tests left out",
              flush=True)

        def one(name: str, module: str = module, timeout: float = timeout,
                deselect: list[str] = deselect) -> tuple[str, tuple[str, float, str]]:
            return name, _pytest(tree, module, name, timeout, deselect, args.survivors)

        with ThreadPoolExecutor(args.jobs) as pool:
            for name, (status, took, tail) in pool.map(one, todo):
                results[name] = {"module": module, "result": status, "secs": round(took, 1), "seed": args.seed,
                                 "by": tail if status == "killed" else ""}
                _save(tree, results, part)
                print(f"  {status:9} {took:5.0f} s  {name}", flush=True)


def table(args: argparse.Namespace) -> None:
    results = _results(Path(args.tree))
    rows: dict[str, dict[str, int]] = {}
    for key, r in results.items():
        if key.startswith("clean:"):
            if r.get("deselected"):
                print(f"{key[6:]}: left out (they fail with no mutant active): {' '.join(r['deselected'])}")
            continue
        if args.seed and r["seed"] != args.seed:
            continue
        row = rows.setdefault(r["module"], {})
        kind = "killed" if r["result"] in ("killed", "timeout") else r["result"]
        row[kind] = row.get(kind, 0) + 1
    print("| module | sampled | killed (or timed out) | survived | killed |")
    print("|---|---|---|---|---|")
    for module in sorted(rows):
        row = rows[module]
        n = sum(row.values())
        print(f"| `{module}` | {n} | {row.get('killed', 0)} | {n - row.get('killed', 0)} | "
              f"{100 * row.get('killed', 0) / n:.0f}% |")


def survivors(args: argparse.Namespace) -> None:
    tree = Path(args.tree)
    for name, r in sorted(_results(tree).items()):
        if name.startswith("clean:") or r["result"] in ("killed", "timeout"):
            continue
        if args.modules and r["module"] not in args.modules:
            continue
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=tree, capture_output=True,
                              text=True).stdout
        print(f"### {name} ({r['result']})\n{diff}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "run", "table", "survivors"):
        p = sub.add_parser(name)
        p.add_argument("--tree", required=True, help="the scratch clone holding mutmut's mutants/")
        if name == "run":
            p.add_argument("--sample", type=int, default=20, help="mutants per module (all where fewer)")
            p.add_argument("--seed", type=int, required=True)
            p.add_argument("--jobs", type=int, default=2)
            p.add_argument("--again", action="store_true", help="re-run mutants that already have a result")
            p.add_argument("--survivors", action="store_true",
                           help="re-run the sample's survivors against this checkout's tests (copied into the tree; "
                                "the clean run records which tests call what again)")
            p.add_argument("--part", default="", help="write to mutation-sample-PART.json, so that two runs over "
                                                      "different modules can go on side by side")
            p.add_argument("--exclude-sampled", action="store_true",
                           help="draw only from mutants no other seed has taken")
        if name == "table":
            p.add_argument("--seed", type=int, default=0, help="only this sample")
        if name in ("run", "survivors"):
            p.add_argument("modules", nargs="*", help="modules such as cli or sim.render (default: every one)")
    args = parser.parse_args()
    {"generate": generate, "run": run, "table": table, "survivors": survivors}[args.command](args)


if __name__ == "__main__":
    main()
