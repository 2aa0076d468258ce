"""What a user of the built distributions gets: the licence, the metadata, the examples, the docs.

The wheel and the source distribution are built here from a copy of the tree (``python -m build``, without
isolation: the test extra brings ``build`` and a setuptools that writes PEP 639 licence metadata), then read:
the licence is in both, the wheel's METADATA has the licence expression, the classifiers and a description
whose links do not point into the package index, the examples are in the wheel and one runs from it on the
simulator, and the source distribution has the docs, the example plugin project and the tests.
"""

from __future__ import annotations

import email
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import CPUS, ROOT

pytestmark = pytest.mark.slow  # builds both distributions and runs an example from the wheel: a whole tool end to end

EXAMPLES = ("multiprocessing_workers", "ray_actors", "subprocess_launcher", "torchrun_worker")
CLASSIFIERS = ("Development Status :: 3 - Alpha", "Environment :: GPU :: NVIDIA CUDA",
               "Operating System :: POSIX :: Linux", "Topic :: System :: Hardware",
               *(f"Programming Language :: Python :: 3.{v}" for v in range(10, 14)))
SKIP = shutil.ignore_patterns(".git", ".tox", ".hypothesis", ".*_cache", "__pycache__", "build", "dist", "mutants",
                              "*.egg-info", ".venv", ".whl", ".device")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """The source distribution, and the wheel built from it, as ``python -m build`` makes them."""
    pytest.importorskip("build", reason="the test extra installs build")
    src, out = tmp_path_factory.mktemp("tree") / "gpuaffinity", tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, src, ignore=SKIP)
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = (n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def test_the_wheel_carries_the_licence_and_its_metadata(dists):
    _, wheel = dists
    meta = wheel_metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert set(CLASSIFIERS) <= set(meta.get_all("Classifier"))
    assert not any(c.startswith("License ::") for c in meta.get_all("Classifier"))  # PEP 639: the expression only
    with zipfile.ZipFile(wheel) as z:
        (licence,) = (n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        assert z.read(licence) == (ROOT / "LICENSE").read_bytes()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()


def test_the_index_page_readme_has_no_link_into_the_index(dists):
    """A relative link on the package index page points into the index; each says where the file is instead."""
    _, wheel = dists
    description = wheel_metadata(wheel).get_payload()
    assert "## Documentation" in description
    assert not re.findall(r"\]\((?![a-z]+:|#)[^)]*\)", description)
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"`docs/{doc.name}` in the source distribution" in description, doc.name


def test_the_sdist_ships_the_licence_docs_plugin_project_and_tests(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in t.getnames()}
        assert t.extractfile(f"{top}/LICENSE").read() == (ROOT / "LICENSE").read_bytes()
        pkg_info = email.message_from_bytes(t.extractfile(f"{top}/PKG-INFO").read())
    assert pkg_info["License-Expression"] == "Apache-2.0"
    wanted = {"README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "tox.ini", ".ci/run",
              "examples/gpuaffinity-launcher-plugin/pyproject.toml",
              "examples/gpuaffinity-launcher-plugin/README.md",
              "examples/gpuaffinity-launcher-plugin/gpuaffinity_launcher_plugin.py"}
    for folder in ("docs", "tests", "tools", "benchmarks"):
        wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
    assert wanted <= names, sorted(wanted - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_examples_are_in_the_wheel_and_run_from_it(dists, host8, tmp_path):
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    _, wheel = dists
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)  # a pure wheel unpacked is what pip installs into site-packages
    assert {f"gpuaffinity/examples/{name}.py" for name in EXAMPLES} | {"gpuaffinity/examples/__init__.py"} <= names
    env = dict(os.environ, PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="6,1")  # this checkout's src is not on it
    here = subprocess.run([sys.executable, "-c", "import gpuaffinity.examples as m; print(m.__file__)"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(here).is_relative_to(site)
    proc = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(host8), "--", sys.executable,
                           "-m", "gpuaffinity.examples.subprocess_launcher"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [(r["nvml_index"], r["cpus"]) for r in rows] == [(6, [CPUS[1]]), (1, [CPUS[0]])]


def test_index_readme_links_follow_the_home_url_once_there_is_one():
    spec = importlib.util.spec_from_file_location("gpuaffinity_setup", ROOT / "setup.py")
    assert spec and spec.loader
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # setup() itself runs only as __main__
    text = "[the NUMA stage](docs/numa.md), [LICENSE](LICENSE), [pluggy](https://pluggy.readthedocs.io), [up](#set-up)"
    assert setup.index_readme(text, "https://forge.example/org/gpuaffinity") == (
        "[the NUMA stage](https://forge.example/org/gpuaffinity/blob/main/docs/numa.md), "
        "[LICENSE](https://forge.example/org/gpuaffinity/blob/main/LICENSE), [pluggy](https://pluggy.readthedocs.io), "
        "[up](#set-up)")
    assert setup.index_readme(text, "") == (
        "the NUMA stage (`docs/numa.md` in the source distribution), `LICENSE` (in the source distribution), "
        "[pluggy](https://pluggy.readthedocs.io), [up](#set-up)")
    assert setup.project_urls("") == {}
    assert setup.project_urls("https://forge.example/org/gpuaffinity")["Source"] == "https://forge.example/org/gpuaffinity"


def _import_graph() -> dict[str, set[str]]:
    """Which of the package's modules each module imports: every import, at the top or inside a function, except
    those under ``if TYPE_CHECKING:`` (annotations only)."""
    import ast

    src = Path(__file__).resolve().parent.parent / "src" / "gpuaffinity"
    mods = {}
    for p in src.rglob("*.py"):
        name = ".".join(("gpuaffinity", *p.relative_to(src).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                       for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            else:
                continue
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def test_the_package_has_no_import_cycle():
    """No module imports one that imports it back, directly or through others, lazy imports included: a stage
    takes what the stage before learned, and never asks a later one (select took api's private _resolved, and
    api imported select)."""
    graph = _import_graph()
    assert "gpuaffinity.api" in graph["gpuaffinity.placement"] and len(graph) > 40  # the graph is read at all
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_each_fact_has_one_owning_module_its_docstring_names():
    """A module that owns a fact says so in its docstring (``Owns: ...``); no fact is claimed twice, and every stage
    of a resolution (settings, the GPU list, the variable's reading, the chain, the cache, the Host, locality,
    placement, binding) has its owner."""
    import ast
    import re

    src = Path(__file__).resolve().parent.parent / "src" / "gpuaffinity"
    owners: dict[str, str] = {}
    for p in sorted(src.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        found = re.findall(r"^Owns: (.+?)\.$", doc, re.M | re.S)
        assert len(found) <= 1, p
        if found:
            fact = " ".join(found[0].split())
            assert fact not in owners, f"{fact!r}: claimed by {owners[fact]} and {p.name}"
            owners[fact] = str(p.relative_to(src))
    stages = {"core/settings.py", "inventory.py", "core/cvd.py", "core/chain.py", "api.py", "host.py",
              "numa/query.py", "placement.py", "numa/bind.py", "numa/sysfs.py", "resolvers/pci.py"}
    assert stages <= set(owners.values()), stages - set(owners.values())
