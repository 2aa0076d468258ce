"""The docs stay true to the code and the data."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

from conftest import REAL_DATA, ROOT
from gpuaffinity.sim import list_presets


def test_cvd_table_in_docs_is_the_recorded_data():
    latest = REAL_DATA.parent / "real-h200x4-2026-11-27b" / "cvd_cases.json"
    table = subprocess.run([sys.executable, str(ROOT / "tools" / "cvd_table.py"), str(latest)],
                           capture_output=True, text=True, check=True).stdout
    doc = (ROOT / "docs" / "cvd-grammar.md").read_text()
    between = doc.split("<!-- table:begin -->\n", 1)[1].split("<!-- table:end -->", 1)[0]
    assert between == table
    cases = json.loads((REAL_DATA / "cvd_cases.json").read_text())["cases"]
    assert f"all {len(cases)} records" in (ROOT / "docs" / "validation.md").read_text()


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert len(blocks) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()


def test_every_preset_is_documented():
    doc = (ROOT / "docs" / "simulator.md").read_text()
    for name in list_presets():
        assert f"`{name}`" in doc


def test_every_example_is_run_by_a_test_and_documented():
    tests = (ROOT / "tests" / "test_examples.py").read_text()
    docs = (ROOT / "docs" / "launchers.md").read_text()
    examples = sorted((ROOT / "src" / "gpuaffinity" / "examples").glob("[!_]*.py"))
    assert examples
    for example in examples:
        module = f"gpuaffinity.examples.{example.stem}"
        assert f'"{module}"' in tests, module
        assert f"-m {module}" in docs, module
    assert not list((ROOT / "examples").glob("*.py"))  # every runnable example ships in the wheel


def test_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in readme, doc.name


#: Test files of which every test is marked slow, so the quick subset runs none of them: the benchmark run, the
#: fuzzing, Ray's measured facts (a Ray cluster per case) and the property-based search over resolution.  Every
#: other test file keeps a test in the quick subset.
WHOLLY_SLOW = {"tests/test_benchmark.py", "tests/test_fuzz.py", "tests/test_packaging.py", "tests/test_ray_facts.py",
               "tests/test_ray_check_connect.py", "tests/test_resolve_properties.py"}


def collected(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


def test_the_readme_quick_subset_runs_as_written_and_leaves_out_only_the_slow_tests():
    """The README names a quick subset beside the full command; pytest accepts it as written (the marker is
    registered, and --strict-markers refuses a misspelt one), and it leaves out the tests marked slow and no
    whole test file beyond WHOLLY_SLOW."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    (quick,) = re.findall(r"`(python3 -m pytest -q -m [^`]+)`", setup)
    assert re.search(r"about\s+\d+\s+minutes?", setup.split(quick, 1)[1][:300]), "the quick subset's duration"
    assert re.search(r"about\s+\d+\s+minutes?", setup.split("python3 -m pytest -q\n```", 1)[1][:400]), "the full run's"
    words = shlex.split(quick)
    assert words[:4] == ["python3", "-m", "pytest", "-q"]
    fast, slow = collected(*words[4:]), collected("-m", "slow")
    assert fast and slow and not fast & slow
    files = {n.split("::")[0] for n in fast}
    assert {n.split("::")[0] for n in slow} - files == WHOLLY_SLOW
    assert "--strict-markers" in (ROOT / "pyproject.toml").read_text()
