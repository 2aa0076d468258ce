"""The plugin contract, tried as a stranger would: write from the docs, install, resolve, get it wrong.

docs/plugins.md's two files are installed as written; a second distribution holds plugins that make every
mistake the contract names.  Nothing may reach the user as a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, child_env

GUIDE = ROOT / "docs" / "plugins.md"


def pip_install(src: Path, site: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(src)]
    if importlib.util.find_spec("setuptools"):
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def guide_files() -> dict[str, str]:
    """The code blocks of docs/plugins.md that start with a file name comment: that file's text, as written."""
    out = {}
    for _lang, body in re.findall(r"```(python|toml)\n(.*?)```", GUIDE.read_text(), re.S):
        first = body.splitlines()[0]
        if first.startswith("# ") and first.endswith((".py", ".toml")):
            out[first[2:]] = body
    return out


@pytest.fixture(scope="module")
def guide_site(tmp_path_factory) -> Path:
    files = guide_files()
    assert set(files) == {"scheduler_gpu_map.py", "pyproject.toml"}
    src = tmp_path_factory.mktemp("guide") / "scheduler-gpu-map"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    site = tmp_path_factory.mktemp("guide-site")
    pip_install(src, site)
    return site


MISBEHAVE = '''
import os, time
from gpuaffinity import Abstain, Answer, GpuInfo, Strategy, hookimpl

class Misbehave(Strategy):
    name = "misbehave"
    priority = 200
    env_vars = ("MISBEHAVE",)
    budget = 0.5

    def cost(self, ctx):
        how = os.environ.get("MISBEHAVE", "")
        if how == "cost-raise":
            raise RuntimeError("no idea")
        return "fast" if how == "cost-word" else "cheap"

    def answer(self, ctx, logical_id):
        how = os.environ.get("MISBEHAVE", "")
        gpu = ctx.inventory.gpus[logical_id]
        if how == "raise":
            raise ValueError("scheduler unreachable")
        if how == "undeclared":
            return Answer(ctx.env("SCHEDULER_NOT_DECLARED") or gpu.uuid)
        if how == "gpuinfo":
            return gpu
        if how == "answer-gpuinfo":
            return Answer(gpu)
        if how == "none":
            return Answer(None)
        if how == "mig":
            return Answer("MIG-68b49734-b70d-a03b-466b-3aa827a0018a")
        if how == "unknown":
            return Answer("GPU-00000000-0000-0000-0000-000000000000")
        if how == "abstain-none":
            return Abstain(None)
        if how == "string":
            return gpu.uuid
        if how == "slow":
            time.sleep(2)
        if how == "hang":
            time.sleep(1000)
        return Abstain("nothing to say", quiet=True)

@hookimpl
def gpuaffinity_strategies():
    return [Misbehave()]
'''

BROKEN = '''
import os
from gpuaffinity import Abstain, Strategy, hookimpl

class Broken(Strategy):
    name = "broken"
    priority = 10
    def answer(self, ctx, logical_id):
        return Abstain("x", quiet=True)

class NoAnswer:
    name = "noanswer"
    priority = 10

class OneArg(Strategy):
    name = "onearg"
    priority = 10
    def answer(self, ctx):
        return Abstain("x")

@hookimpl
def gpuaffinity_strategies():
    how = os.environ.get("BROKEN", "")
    s = Broken()
    if how == "name":
        s.name = "has space"
    elif how == "priority":
        s.priority = "high"
    elif how == "duplicate":
        s.name = "cvd"
    elif how == "env_vars":
        s.env_vars = "SCHEDULER"
    elif how == "budget":
        s.budget = 0
    elif how == "noanswer":
        return [NoAnswer()]
    elif how == "onearg":
        return [OneArg()]
    elif how == "raise":
        raise RuntimeError("no strategies today")
    return [s] if how else []
'''

NOHOOK = "def gpuaffinity_strategies():\n    return []\n"
MISSPELT = "from gpuaffinity import hookimpl\n\n@hookimpl\ndef gpuaffinity_strategy():\n    return []\n"


@pytest.fixture(scope="module")
def mistakes_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("mistakes") / "plugin-mistakes"
    src.mkdir()
    for name, text in {"misbehave_mod.py": MISBEHAVE, "broken_mod.py": BROKEN, "nohook_mod.py": NOHOOK,
                       "misspelt_mod.py": MISSPELT}.items():
        (src / name).write_text(text)
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "plugin-mistakes"
        version = "0.3"
        [project.entry-points.gpuaffinity]
        misbehave = "misbehave_mod"
        broken = "broken_mod"
        nohook = "nohook_mod"
        misspelt = "misspelt_mod"
        [tool.setuptools]
        py-modules = ["misbehave_mod", "broken_mod", "nohook_mod", "misspelt_mod"]
    '''))
    site = tmp_path_factory.mktemp("mistakes-site")
    pip_install(src, site)
    return site


def on(machine, site, code, *args, **env):
    e = child_env(machine, **env)
    e["PYTHONPATH"] = f"{site}:{e.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, "-c", code, *args], env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plugin_site(site: Path, name: str, text: str) -> Path:
    """A folder on PYTHONPATH that holds the plugin module ``{name}_mod`` (``text``) and the distribution
    ``{name}-1.0`` whose entry point names it, as an installed plugin's are."""
    (site / f"{name}_mod.py").write_text(text)
    (site / f"{name}-1.0.dist-info").mkdir()
    (site / f"{name}-1.0.dist-info" / "entry_points.txt").write_text(f"[gpuaffinity]\n{name} = {name}_mod\n")
    return site


def cli(machine, site, *args, **env):
    e = child_env(machine, **env)
    e["PYTHONPATH"] = f"{site}:{e.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "gpuaffinity", *args], env=e, capture_output=True, text=True,
                          timeout=300)


STRANGER = r"""
import json, os, warnings, gpuaffinity
out = []
def step():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = gpuaffinity.resolve(0)
    out.append([d.strategy, d.nvml_index, list(d.agreed), [x.category.__name__ for x in w]])
step()
os.environ["SCHEDULER_GPU_MAP"] = os.environ["SCHEDULER_GPU_MAP"].split(",")[1]  # a stale, wrong record
step()                                   # noticed without clear_cache(): the variable is in the key
os.environ["GPUAFFINITY_DISABLE"] = "scheduler"
step()
print(json.dumps(out))
"""


def test_the_guides_plugin_installs_as_written_and_resolves(sim_factory, guide_site):
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    record = f"{gpus[3].uuid},{gpus[1].uuid}"
    first, stale, disabled = on(machine, guide_site, STRANGER, cvd="3,1", SCHEDULER_GPU_MAP=record)
    assert first == ["scheduler", 3, ["scheduler", "cvd"], []]
    # the record now says GPU 1 for device 0: cvd disagrees, the driver is asked, and its answer is final
    assert stale[:2] == ["pci", 3] and "DisagreementWarning" in stale[3]
    assert disabled[:2] == ["cvd", 3]
    doctor = cli(machine, guide_site, "doctor", cvd="3,1", SCHEDULER_GPU_MAP=record).stdout
    assert "scheduler  90" in doctor and "confirmed: scheduler, cvd agree" in doctor
    assert "scheduler  scheduler-gpu-map 1.0.0  scheduler = scheduler_gpu_map  scheduler" in doctor


MISTAKES = [
    ("raise", "raised ValueError: scheduler unreachable"),
    ("gpuinfo", "returned a GpuInfo record instead of an Answer: return Answer(gpu.uuid)"),
    ("answer-gpuinfo", "answered a GpuInfo record instead of its UUID: use Answer(gpu.uuid)"),
    ("none", "answered NoneType 'None', not a GPU UUID string"),
    ("mig", "put a MIG UUID where the GPU's belongs: use Answer(gpu_uuid, mig_uuid=...)"),
    ("unknown", "answered GPU-00000000-0000-0000-0000-000000000000, which is not a GPU this process can use"),
    ("abstain-none", "abstained without a reason (give one: doctor shows it)"),
    ("string", "returned str, not Answer or Abstain"),
    ("cost-raise", "cost() raised RuntimeError: no idea"),
    ("cost-word", "cost() returned 'fast', not 'cheap' or 'expensive'"),
    ("slow", "answer(0) ran past its time budget of 0.5 s: abandoned"),
    ("hang", "answer(0) ran past its time budget of 0.5 s: abandoned"),
    ("undeclared", "raised KeyError: \"'SCHEDULER_NOT_DECLARED' is no variable a strategy of this resolution "
                   "declared: list it in the strategy's env_vars"),
]

ASK = r"""
import json, sys, time, warnings, gpuaffinity
warnings.simplefilter("ignore")
t = time.perf_counter()
devs = gpuaffinity.resolve_all()
print(json.dumps([time.perf_counter() - t, [d.strategy for d in devs], [d.nvml_index for d in devs],
                  [v.result.reason for v in devs[0].verdicts if v.strategy == "misbehave"]]))
"""


@pytest.mark.parametrize(("how", "reason"), MISTAKES)
def test_a_plugins_mistake_is_an_abstention_that_names_it(sim_factory, mistakes_site, how, reason):
    machine = sim_factory("dgx-h100")
    seconds, strategies, indices, said = on(machine, mistakes_site, ASK, cvd="3,1", MISBEHAVE=how,
                                            GPUAFFINITY_DISABLE="broken")
    assert indices == [3, 1] and set(strategies) == {"cvd"}  # the others answer, right
    assert said and said[0].startswith(reason), said
    if how in ("slow", "hang"):
        assert seconds < 2.5  # the budget holds for the whole resolution, not per device (8 x 2 s, or forever)
    out = cli(machine, mistakes_site, "doctor", "--verbose", cvd="3,1", MISBEHAVE=how, GPUAFFINITY_DISABLE="broken")
    assert out.returncode == 0 and "Traceback (most recent call last)" not in out.stderr
    assert reason in out.stdout
    if how == "raise":  # the traceback is kept for the author: doctor --verbose prints it
        assert "| Traceback (most recent call last):" in out.stdout and "| ValueError: scheduler unreachable" \
            in out.stdout


BROKEN_CASES = [
    ("name", "returned a strategy <broken_mod.Broken object"),
    ("priority", "has priority 'high', not an int"),
    ("duplicate", "two strategies are named 'cvd'"),
    ("env_vars", "has env_vars 'SCHEDULER', not a tuple of variable names"),
    ("budget", "has budget 0: want seconds, more than 0 and at most 3600"),
    ("noanswer", "has no answer(ctx, logical_id) method"),
    ("onearg", "has no answer(ctx, logical_id) method"),
    ("raise", "failed in gpuaffinity_strategies: RuntimeError: no strategies today"),
]


@pytest.mark.parametrize(("how", "text"), BROKEN_CASES)
def test_a_broken_strategy_is_a_plugin_error_naming_the_plugin(sim_factory, mistakes_site, how, text):
    out = cli(sim_factory("dgx-h100"), mistakes_site, "resolve", BROKEN=how, GPUAFFINITY_DISABLE="misbehave")
    assert out.returncode == 1, out.stdout
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert text in line
    assert "plugin 'broken' (distribution plugin-mistakes 0.3, entry point broken = broken_mod)" in line
    assert "GPUAFFINITY_DISABLE=broken" in line


def test_a_plugin_that_contributes_nothing_is_reported_and_warned_once(sim_factory, mistakes_site):
    machine = sim_factory("dgx-h100")
    code = r"""
import json, warnings, gpuaffinity
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    gpuaffinity.resolve_all()
    gpuaffinity.clear_cache()
    gpuaffinity.resolve_all()
print(json.dumps([str(x.message) for x in w if x.category is gpuaffinity.PluginWarning]))
"""
    warned = on(machine, mistakes_site, code, GPUAFFINITY_DISABLE="misbehave,broken")
    assert len(warned) == 2  # each broken plugin once, though two resolutions ran
    assert any("plugin 'nohook'" in m and "implements no hook: mark gpuaffinity_strategies with "
               "@gpuaffinity.hookimpl" in m for m in warned)
    assert any("plugin 'misspelt'" in m and "gpuaffinity_strategy" in m for m in warned)
    doctor = cli(machine, mistakes_site, "doctor", GPUAFFINITY_DISABLE="misbehave,broken").stdout
    assert re.search(r"nohook +plugin-mistakes 0.3 +nohook = nohook_mod +none +implements no hook", doctor)
    assert "disabled: misbehave (from GPUAFFINITY_DISABLE), broken (from GPUAFFINITY_DISABLE)" in doctor


def test_strict_refusal_still_shows_every_verdict(sim_factory, guide_site):
    machine = sim_factory("dgx-h100")
    gpus = machine.topology.gpus
    out = cli(machine, guide_site, "doctor", "--policy", "strict", cvd="3,1", SCHEDULER_GPU_MAP=f"{gpus[1].uuid}")
    assert out.returncode == 3
    assert "DISAGREEMENT: scheduler named another GPU; using pci" in out.stdout
    for name in ("scheduler", "pci", "torch", "cvd"):
        assert re.search(rf"^ +{name} +(nvml|abstained|skipped)", out.stdout, re.M), name
    start = time.perf_counter()
    assert cli(machine, guide_site, "resolve", "--policy", "strict", cvd="3,1",
               SCHEDULER_GPU_MAP=f"{gpus[1].uuid}").returncode == 3
    assert time.perf_counter() - start < 60



DUCK = '''
import gpuaffinity
{top}

class Duck:  # no Strategy base: only what the contract asks, no env_vars, budget or describe
    name = "duck"
    priority = 95

    def answer(self, ctx, logical_id):
        return {abstain}("a duck never knows", quiet=True)


@gpuaffinity.hookimpl
def gpuaffinity_strategies():
    return [Duck()]
'''


def duck_on(sim_factory, tmp_path, top, abstain):
    plugin_site(tmp_path, "duck", DUCK.format(top=top, abstain=abstain))
    code = ("import json, time, warnings, gpuaffinity\nwarnings.simplefilter('error')\nt = time.monotonic()\n"
            "d = gpuaffinity.resolve(0)\nprint(json.dumps([d.pci_bus_id, d.agreed, time.monotonic() - t]))")
    machine = sim_factory("dgx-h100")
    bus, agreed, took = on(machine, tmp_path, code, CUDA_VISIBLE_DEVICES="3")
    assert bus == machine.topology.gpus[3].pci_bus_id and "duck" not in agreed
    return took


def test_a_strategy_without_the_optional_attributes_takes_their_defaults(sim_factory, tmp_path):
    """docs/plugins.md: env_vars, budget and describe may be left out (a duck-typed strategy has none)."""
    duck_on(sim_factory, tmp_path, "from gpuaffinity import Abstain", "Abstain")


def test_a_strategy_reading_gpuaffinity_s_names_in_its_answer_is_not_held_up(sim_factory, tmp_path):
    """Before: a plugin's first ``gpuaffinity.Abstain`` inside answer() (run in a watchdog thread) waited for the
    lock the resolving thread held while it waited for the answer: the budget ran out (5 s), and the answer was
    thrown away with a FallbackWarning."""
    assert duck_on(sim_factory, tmp_path, "", "gpuaffinity.Abstain") < 4


FLIP = '''
import os, gpuaffinity


class Flip:
    name = "flip"
    priority = 95
    env_vars = ("MY_SCHEDULER",)

    def answer(self, ctx, logical_id):
        os.environ["CUDA_VISIBLE_DEVICES"] = "7"  # what another thread of the program may do at this moment
        return gpuaffinity.Abstain("never knows", quiet=True)


@gpuaffinity.hookimpl
def gpuaffinity_strategies():
    return [Flip()]
'''

FLIP_RUN = r"""
import json, os, gpuaffinity
os.environ["CUDA_VISIBLE_DEVICES"] = "0"
first = [d.pci_bus_id for d in gpuaffinity.resolve_all()]
os.environ["CUDA_VISIBLE_DEVICES"] = "7"
print(json.dumps([first, [d.pci_bus_id for d in gpuaffinity.resolve_all()]]))
"""


def test_an_answer_is_not_filed_under_a_value_the_variable_took_while_it_was_resolved(sim_factory, tmp_path):
    """The first resolution that sees a plugin's variables reads the key again to add them; the variable had
    changed meanwhile (to 7), and the answer for 0 was filed under 7: the next resolve_all() under 7 returned GPU
    0. (Found by an attack on the cache.)"""
    plugin_site(tmp_path, "flip", FLIP)
    machine = sim_factory("dgx-h100")
    buses = [g.pci_bus_id for g in machine.topology.gpus]
    assert on(machine, tmp_path, FLIP_RUN) == [[buses[0]], [buses[7]]]


def test_the_stash_takes_typed_keys_by_identity_and_refuses_strings():
    """ResolveContext.stash: two keys of the same name are two keys (no two plugins collide); a string key is a
    TypeError saying what to write."""
    from gpuaffinity import StashKey
    from gpuaffinity.core.strategy import Stash

    mine, theirs = StashKey[dict]("table"), StashKey[dict]("table")
    stash = Stash()
    stash.setdefault(mine, {})["a"] = 1
    assert mine in stash and theirs not in stash and stash.get(theirs) is None and len(stash) == 1
    stash[theirs] = {"b": 2}
    assert (stash[mine], stash[theirs]) == ({"a": 1}, {"b": 2})
    for wrong in ("pci.table", None):
        with pytest.raises(TypeError, match=r"^a stash is keyed by StashKey objects \(KEY = StashKey\[dict\]"):
            stash[wrong] = 1
        with pytest.raises(TypeError):
            _ = wrong in stash


ENV_RUN = r"""
import json, os, gpuaffinity
out = []
for value in ("3", "5", "5"):
    os.environ["SCHED_PICK"] = value
    out.append(gpuaffinity.resolve(0).nvml_index)
from gpuaffinity.core.settings import Settings, make_key
out.append(dict(Settings.from_key(make_key(None, None, True)).extra))
print(json.dumps(out))
"""

PICK = '''
import gpuaffinity


class Pick:
    name = "pick"
    priority = 95
    env_vars = ("SCHED_PICK",)

    def answer(self, ctx, logical_id):
        reads.append(ctx.env("SCHED_PICK"))
        return gpuaffinity.Answer(ctx.inventory.gpus[int(ctx.env("SCHED_PICK"))].uuid)


reads = []


@gpuaffinity.hookimpl
def gpuaffinity_strategies():
    return [Pick()]
'''


def test_a_plugin_reads_its_declared_variable_from_the_context_and_a_change_reaches_the_cache(sim_factory, tmp_path):
    """ctx.env(name): the first resolution reads the declared variable (not yet in the key), the next ones take it
    from the snapshot that keys the cache, which Settings.from_key keeps (it dropped the declared variables): a
    change is a new answer without clear_cache(), the same value the cached one."""
    plugin_site(tmp_path, "pick", PICK)
    machine = sim_factory("dgx-h100")
    *indices, extra = on(machine, tmp_path, ENV_RUN, GPUAFFINITY_POLICY="first")
    assert indices == [3, 5, 5]
    assert extra == {"SCHED_PICK": "5"}


def test_ctx_env_reads_the_snapshot_then_the_environment_once_and_refuses_the_undeclared(monkeypatch):
    """In process: ctx.env(name) takes the snapshot's value where the key held the variable, else (declared, not in
    the key yet) the environment's, once a resolution; CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER come from the
    context itself; an undeclared name is a KeyError saying what to do."""
    from gpuaffinity.core.model import Inventory
    from gpuaffinity.core.settings import Settings
    from gpuaffinity.core.strategy import ResolveContext

    st = Settings("0", "PCI_BUS_ID", None, None, None, None, True, None, None, None, None, None,
                  (("IN_KEY", "snap"),))
    ctx = ResolveContext(Inventory(()), "0", "PCI_BUS_ID", 1, settings=st, declared=frozenset({"IN_KEY", "LATE"}))
    monkeypatch.setenv("IN_KEY", "changed since")
    monkeypatch.setenv("LATE", "first")
    assert ctx.env("IN_KEY") == "snap"  # the snapshot that keys the cache, not the variable now
    assert ctx.env("LATE") == "first"
    monkeypatch.setenv("LATE", "second")
    assert ctx.env("LATE") == "first"  # once a resolution: every device sees one value
    assert ctx.env("CUDA_VISIBLE_DEVICES") == "0" and ctx.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert dict(ctx.env) == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    monkeypatch.delenv("LATE")
    fresh = ResolveContext(Inventory(()), None, None, 0, declared=frozenset({"LATE"}))
    assert fresh.env("LATE") is None  # declared and unset: None, as os.environ.get gives
    with pytest.raises(KeyError, match=r"'NOPE' is no variable a strategy of this resolution declared: list it in the "
                                        r"strategy's env_vars \(then a change of it reaches the cache key\), and "
                                        r"read it with ctx.env\('NOPE'\)"):
        ctx.env("NOPE")


def test_settings_keep_the_declared_variables_the_key_holds_and_none_when_the_list_grew():
    from gpuaffinity.core import settings as s

    before = (s._EXTRA, s._EXTRA_KEYS)
    try:
        s.watch(["ZZ_ONE"])
        key = s.make_key(None, None, True)
        assert dict(s.Settings.from_key(key).extra) == {"ZZ_ONE": None}
        s.watch(["AA_TWO"])  # declared since the key was made: which value is which cannot be told
        assert s.Settings.from_key(key).extra == ()
        assert dict(s.Settings.from_key(s.make_key(None, None, True)).extra) == {"AA_TWO": None, "ZZ_ONE": None}
    finally:
        s._EXTRA, s._EXTRA_KEYS = before


def test_a_stash_key_shows_its_name_and_get_gives_the_default_only_where_nothing_is_kept():
    from gpuaffinity import StashKey
    from gpuaffinity.core.strategy import Stash

    assert repr(StashKey("mine.table")) == "StashKey('mine.table')" and repr(StashKey()) == "StashKey('')"
    key, other = StashKey[int]("n"), StashKey[int]("n")
    stash = Stash()
    stash[key] = 0
    assert stash.get(key, 7) == 0 and stash.get(other, 7) == 7 and stash.get(other) is None
    with pytest.raises(TypeError, match=r"\), not str$"):
        stash.get("n")


HOSTILE = '''
import gpuaffinity


class Hostile:
    name = "hostile"
    priority = 95

    def answer(self, ctx, logical_id):
        if logical_id == 0:
            return gpuaffinity.Answer(ctx.inventory.gpus[3].uuid, detail="det\\x1b]0;TITLE\\x07\\nforged: line")
        return gpuaffinity.Abstain("why\\x1b[2J\\x9b2J\\nforged line")


@gpuaffinity.hookimpl
def gpuaffinity_strategies():
    return [Hostile()]
'''


def test_a_plugins_words_reach_doctor_escaped_and_forge_no_line(sim_factory, tmp_path):
    """doctor prints a strategy's reasons and details, which a plugin writes: escape sequences (ESC, the one-byte
    C1 introducer 0x9b) and newlines reach the terminal escaped, on the line they belong to.  (Found by an attack:
    doctor printed them raw.)"""
    plugin_site(tmp_path, "hostile", HOSTILE)
    out = cli(sim_factory("dgx-h100"), tmp_path, "doctor", "-v", cvd="3,1")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x9b" not in out.stdout and "\x07" not in out.stdout
    lines = out.stdout.splitlines()
    assert not any(line.startswith(("forged", " forged")) for line in lines)
    assert any(r"(det\x1b]0;TITLE\x07\nforged: line)" in line for line in lines), out.stdout
    assert any(r"abstained: why\x1b[2J\x9b2J\nforged line" in line for line in lines), out.stdout


def test_ctx_env_as_a_dict_reads_the_declared_variables_too(monkeypatch):
    """ctx.env["X"], ctx.env.get("X") and "X" in ctx.env say what ctx.env("X") says for a declared variable (they
    gave None and False: a plugin using the dict idiom abstained quietly); items() stays the two CUDA variables, as
    the pci strategy's child is given them.  (Found by an attack.)"""
    from gpuaffinity.core.model import Inventory
    from gpuaffinity.core.strategy import ResolveContext

    monkeypatch.setenv("MY_MAP", "hello")
    ctx = ResolveContext(Inventory(()), "1", None, 1, declared=frozenset({"MY_MAP", "UNSET_ONE"}))
    env = ctx.env
    assert env["MY_MAP"] == env.get("MY_MAP") == env("MY_MAP") == "hello" and "MY_MAP" in env
    assert env.get("UNSET_ONE", "x") is None and "UNSET_ONE" in env
    assert env.get("NOPE", "x") == "x" and "NOPE" not in env and "CUDA_VISIBLE_DEVICES" in env
    with pytest.raises(KeyError, match="'NOPE' is no variable a strategy of this resolution declared"):
        env["NOPE"]
    assert dict(env.items()) == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": None}
