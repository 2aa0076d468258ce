"""Fuzzing: command lines, API arguments, environment values and topology files, valid and hostile.

The fast profile runs in CI.  The long profile is the same tests with more examples:

    GPUAFFINITY_FUZZ_EXAMPLES=50000 python -m pytest -q tests/test_fuzz.py

(50,000 command lines and 50,000 API calls on each simulated machine, and 100,000 topology files;
docs/security.md records its last result).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuaffinity.sim.render import render_config
from gpuaffinity.sim.topology import Topology, TopologyError, load_topology, parse_topology

EXAMPLES = int(os.environ.get("GPUAFFINITY_FUZZ_EXAMPLES", "0"))
HARNESS = Path(__file__).parent / "helpers" / "fuzz_cli.py"


@pytest.mark.parametrize("machine", ["dgx-h100", "slurm-2of8", "mig-container"])
@pytest.mark.slow
def test_command_line_and_api(machine, tmp_path):
    """Exit status documented, one line per problem, no traceback, nothing left behind (tests/helpers/fuzz_cli.py)."""
    examples = EXAMPLES or 120
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", machine, "--", sys.executable,
                          str(HARNESS), str(examples)], env=env, capture_output=True, text=True,
                         timeout=max(600, examples // 5))  # 2 x examples at 10 a second or more, even when loaded
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failure"] is None, result["failure"]
    assert result["examples"] == 2 * examples
    assert os.listdir(tmp_path) == []  # the simulated machine's own folder is gone too


names = st.one_of(st.text(max_size=30), st.sampled_from(["NVIDIA H100", "x\ny", "a\rb", "\x00", "ok"]))
ints = st.one_of(st.integers(-3, 2000), st.integers(), st.sampled_from([1023, 1024, -1, 2 ** 63, 10 ** 30]))
cpulists = st.one_of(st.sampled_from(["0-3", "0-999999999", "1024", "0,,1", "3-1", "0-7:2", "", " ", "a",
                                      "0-" + "9" * 40]), st.text(max_size=15))
anything = st.recursive(st.one_of(st.none(), st.booleans(), ints, names), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


@st.composite
def topologies(draw):
    """Mostly well formed, with a field or two broken: the checker's job is to say which, in one line."""
    nodes = [{"id": draw(st.one_of(st.just(i), ints)), "cpus": draw(st.one_of(st.just(f"{4 * i}-{4 * i + 3}"),
                                                                               cpulists))}
             for i in range(draw(st.integers(0, 3)))]
    gpus = []
    for i in range(draw(st.integers(0, 4))):
        g = {"uuid": draw(st.one_of(st.just(f"GPU-{i:08x}-0000-0000-0000-000000000000"), names)),
             "pci_bus_id": draw(st.one_of(st.just(f"0000:{16 * i + 1:02x}:00.0"), names)),
             "name": draw(names), "numa_node": draw(st.one_of(st.just(0), ints))}
        if draw(st.booleans()):
            g["mig"] = [{"uuid": draw(st.one_of(st.just(f"MIG-{i:08x}-1111-0000-0000-000000000000"), names)),
                         "gpu_instance": draw(ints), "compute_instance": draw(ints), "name": draw(names)}]
        if draw(st.integers(0, 5)) == 0:
            g[draw(st.sampled_from(["cuda_order", "memory_mib", "bogus", "compute_capability"]))] = draw(anything)
        gpus.append(g)
    data = {"name": draw(names), "numa_node": nodes, "gpu": gpus}
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.sampled_from(["driver_version", "threads_per_core", "description", "base", "process"]))] = \
            draw(anything)
    return data


@settings(max_examples=EXAMPLES * 2 or 300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=topologies())
@pytest.mark.slow
def test_topology_files(data):
    """Either a machine the simulator can hold exactly, or one TopologyError line naming the field."""
    try:
        topo = parse_topology(data, "fuzz.toml")
    except TopologyError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.toml") or "base" in str(e), str(e)
        return
    assert isinstance(topo, Topology)
    lines = render_config(topo).splitlines()  # one record a line: no field can add another
    assert sum(line.startswith("gpu ") for line in lines) == len(topo.gpus)
    assert sum(line.startswith("mig ") for line in lines) == sum(len(g.migs) for g in topo.gpus)


@settings(max_examples=EXAMPLES or 150, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
@pytest.mark.slow
def test_topology_text(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("t") / "t.toml"
    f.write_text(text, errors="surrogateescape")
    try:
        load_topology(f)
    except TopologyError as e:
        assert "\n" not in str(e)
