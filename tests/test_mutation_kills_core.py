"""In-process tests pinning core/chain.py, core/record.py, core/errors.py, core/settings.py and core/plugins.py.

Each group says what it pins; the strategies are fakes in the manner of tests/test_chain.py.
"""

from __future__ import annotations

import logging
import sys
import traceback
import types
from typing import ClassVar

import pytest

from fake_strategies import Fake, U, make_ctx, run
from gpuaffinity import Abstain, Answer, Strategy
from gpuaffinity.core import record as rec
from gpuaffinity.core.chain import IDENTITY
from gpuaffinity.core.errors import FallbackWarning, GpuAffinityError, PluginError, UnresolvedError, shown
from gpuaffinity.core.model import Verdict


def verdict(dev, name):
    [v] = [v for v in dev.verdicts if v.strategy == name]
    return v


# --- _ask / _call / resolve_one: a strategy that does not subclass Strategy gets OPTIONAL's defaults -------------
# (no answer_all: answer is asked; no watchdog: the default True applies; no asks_driver: the driver was not asked)

class Duck:
    name, priority = "duck", 60

    def answer(self, ctx, logical_id):
        return Answer(U[2 - logical_id])


def test_a_duck_typed_strategy_answers_with_the_defaults_of_every_optional_part():
    dev, warns = run([Duck()], logical_id=0)
    assert (dev.strategy, dev.uuid, dev.answered, dev.driver_asked, dev.fallback, warns) == (
        "duck", U[2], ("duck",), False, False, [])
    assert verdict(dev, "duck") == Verdict("duck", 60, Answer(U[2]), True)


# --- _ask / _cost / resolve_one: the strategy's methods are handed the real context -------------------------

def test_answer_answer_all_and_cost_receive_the_context():
    by_ctx = Fake("a", 60, lambda c, i: Answer(U[c.visible - 1 - i]), cost=lambda c: "cheap" if c.visible else "x")
    dev, warns = run([by_ctx], logical_id=0)
    assert (dev.strategy, dev.uuid, warns) == ("a", U[2], [])

    class Batch(Strategy):
        name, priority, watchdog = "batch", 70, False

        def answer_all(self, ctx):
            return [Answer(U[ctx.visible - 1 - i]) for i in range(ctx.visible)]

    dev, warns = run([Batch()], logical_id=1)
    assert (dev.strategy, dev.uuid, warns) == ("batch", U[1], [])


# --- _ask: the abstention of a strategy that raised (reason and traceback) or ran past its budget (no traceback) --

def test_a_raising_strategy_abstains_with_its_exception_and_keeps_the_traceback(caplog):
    raised = []

    def boom(c, i):
        e = ValueError("bad wiring")
        raised.append(e)
        raise e

    caplog.set_level(logging.DEBUG, logger="gpuaffinity")
    dev, warns = run([Fake("p", 60, boom), Fake("cvd", 50, Answer(U[1]))])
    v = verdict(dev, "p")
    assert v.result == Abstain("raised ValueError: bad wiring")
    assert v.trace == "".join(traceback.format_exception(raised[0]))
    assert v.trace.startswith("Traceback (most recent call last):\n") and v.trace.endswith("ValueError: bad wiring\n")
    assert (dev.strategy, dev.fallback) == ("cvd", True)
    # _debug: the traceback at DEBUG on the logger "gpuaffinity"
    [r] = [r for r in caplog.records if r.getMessage() == "strategy p raised"]
    assert (r.name, r.levelno) == ("gpuaffinity", logging.DEBUG)
    assert r.exc_info is not None and r.exc_info[1] is raised[0]


def test_an_over_budget_strategy_abstains_without_a_traceback():
    c = make_ctx()
    c.scratch["_spent"] = {"slow": 1.0}
    dev, _ = run([Fake("slow", 60, Answer(U[0]), budget=1.0), Fake("cvd", 50, Answer(U[1]))], c=c)
    v = verdict(dev, "slow")
    assert v.result == Abstain("over its time budget of 1 s for this resolution: not asked again")
    assert v.trace == "" and dev.strategy == "cvd"


# --- resolve_one, policy 'first': the skipped strategies' verdicts are quiet abstentions that did not run -------

def test_first_records_the_skipped_ones_as_quiet_and_not_run():
    dev, _ = run([Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[2]))], "first")
    v = verdict(dev, "b")
    assert (v.result, v.result.quiet, v.ran) == (Abstain("not asked: policy 'first'", quiet=True), True, False)


# --- resolve_one, nothing answers: the identity guess, the fallback warning, strict's UnresolvedError ----------

ENV = "CUDA_VISIBLE_DEVICES='2,1,0', CUDA_DEVICE_ORDER='PCI_BUS_ID'"


def test_the_identity_guess_is_the_whole_gpu_at_the_logical_id_with_every_verdict():
    dev, warns = run([Fake("a", 60, Abstain("no list"))], c=make_ctx("2,1,0", "PCI_BUS_ID"), logical_id=1)
    assert (dev.logical_id, dev.nvml_index, dev.uuid, dev.pci_bus_id, dev.mig_uuid, dev.name, dev.strategy) == (
        1, 1, U[1], "0000:02:00.0", None, "H100-1", IDENTITY)
    assert (dev.agreed, dev.disagreed, dev.fallback, dev.answered, dev.inventory) == ((), (), True, (), "nvml")
    assert dev.verdicts == (Verdict("a", 60, Abstain("no list")),)
    assert warns == [(FallbackWarning, f"gpuaffinity: no strategy could resolve CUDA device 1 ({ENV}); guessing NVML "
                                       "index 1 (0000:02:00.0), which is wrong whenever CUDA's numbering differs "
                                       "from NVML's. Abstained: a: no list.")]


def test_the_unset_variables_show_as_none_in_the_message():
    _, [(_, msg)] = run([Fake("a", 60, Abstain("no list"))], logical_id=0)
    assert msg.startswith("gpuaffinity: no strategy could resolve CUDA device 0 (CUDA_VISIBLE_DEVICES=None, "
                          "CUDA_DEVICE_ORDER=None); guessing NVML index 0 (0000:01:00.0)")


def test_strict_does_not_guess_and_says_why():
    with pytest.raises(UnresolvedError, match=r"^gpuaffinity: no strategy could resolve CUDA device 2 "
                       r"\(CUDA_VISIBLE_DEVICES='2,1,0', CUDA_DEVICE_ORDER='PCI_BUS_ID'\) and the strict policy "
                       r"does not guess \(use --policy verify to take NVML index 2 with a warning\)\. "
                       r"Abstained: a: no list\.$") as e:
        run([Fake("a", 60, Abstain("no list"))], "strict", c=make_ctx("2,1,0", "PCI_BUS_ID"), logical_id=2)
    assert (e.value.device.strategy, e.value.device.uuid, e.value.exit_status) == (IDENTITY, U[2], 3)


# --- errors.shown -------------------------------------------------------------------------------------------

def test_shown_is_the_repr_cut_to_its_limit():
    assert shown(None) == "None"
    assert shown("0,1") == "'0,1'"
    assert shown("x" * 10, limit=5) == "'xxxx... (10 characters)"


# --- record._build / record.field ------------------------------------------------------------------------------

def test_a_record_keeps_its_own_repr_and_hash():
    @rec.record(frozen=True)
    class P:
        x: int

        def __repr__(self):
            return "mine"

        def __hash__(self):
            return 7

    assert (repr(P(1)), hash(P(1)), P(1) == P(1), P(1) == P(2)) == ("mine", 7, True, False)


def test_a_frozen_record_that_defines_eq_gets_a_field_hash():
    @rec.record(frozen=True)
    class Q:
        x: int

        def __eq__(self, other):
            return True

    assert "__hash__" in Q.__dict__ and hash(Q(3)) == hash((3,)) and Q(3) == Q(4)


def test_classvar_annotations_are_not_fields_and_do_not_end_the_fields():
    @rec.record
    class C:
        a: int
        k: ClassVar[int] = 5
        b: str = "b"

    assert rec.fields(C) == ("a", "b") and C.k == 5
    assert (C(1).a, C(1).b, repr(C(1, "z")).rpartition("<locals>.")[2]) == (1, "b", "C(a=1, b='z')")


def test_a_subclass_without_annotations_inherits_the_fields():
    @rec.record
    class Base:
        a: int
        b: int = 2

    @rec.record
    class Sub(Base):
        def total(self):
            return self.a + self.b

    assert rec.fields(Sub) == ("a", "b") and Sub(1).total() == 3 and Sub(1, 5) == Sub(1, 5)


def test_field_compares_by_default():
    @rec.record
    class F:
        a: int
        b: int = rec.field(default=0)
        c: list = rec.field(default_factory=list)

    assert F(1, 2) != F(1, 3) and F(1, c=[1]) != F(1) and F(1, 2, [1]) == F(1, 2, [1])
    assert [f.compare for f in F.__record_fields__] == [True, True, True]


# --- settings.Settings, normalize_disable, make_key: the environment read once, validated ----------------------

from gpuaffinity.core import settings as st  # noqa: E402


def snap(monkeypatch, policy=None, disable=None, allow=True, **env):
    for var in st.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return st.Settings.from_key(st.make_key(policy, disable, allow))


def test_settings_read_the_environment_into_their_fields(monkeypatch):
    s = snap(monkeypatch, "first", ("torch",), True, CUDA_VISIBLE_DEVICES="1,0", CUDA_DEVICE_ORDER="PCI_BUS_ID",
             GPUAFFINITY_POLICY="strict", GPUAFFINITY_DISABLE=" cvd, ,pci", GPUAFFINITY_NO_SUBPROCESS="1",
             GPUAFFINITY_PROCFS_ROOT="/p", GPUAFFINITY_DEV_ROOT="/d", GPUAFFINITY_SYSFS_ROOT="/s",
             GPUAFFINITY_INVENTORY="procfs")
    assert s == st.Settings("1,0", "PCI_BUS_ID", "first", "strict", ("torch",), " cvd, ,pci", True, "1", "/p",
                            "/d", "/s", "procfs")
    assert (s.policy, s.disabled, s.subprocess_allowed) == ("first", frozenset({"torch", "cvd", "pci"}), False)
    assert s.inventory_env == {"GPUAFFINITY_PROCFS_ROOT": "/p", "GPUAFFINITY_DEV_ROOT": "/d",
                               "GPUAFFINITY_SYSFS_ROOT": "/s", "GPUAFFINITY_INVENTORY": "procfs"}


def test_the_policy_defaults_to_verify_and_the_environment_counts_when_no_argument_is_given(monkeypatch):
    assert snap(monkeypatch).policy == "verify"
    assert snap(monkeypatch, GPUAFFINITY_POLICY="strict").policy == "strict"
    s = snap(monkeypatch)
    assert (s.disabled, s.subprocess_allowed, s.cvd) == (frozenset(), True, None)
    assert snap(monkeypatch, GPUAFFINITY_NO_SUBPROCESS="0").subprocess_allowed is True
    assert snap(monkeypatch, allow=False).subprocess_allowed is False


def test_an_unknown_policy_names_its_source(monkeypatch):
    with pytest.raises(GpuAffinityError, match=r"^unknown GPUAFFINITY_POLICY 'fast': choose one of first, verify, "
                                               r"strict$"):
        _ = snap(monkeypatch, GPUAFFINITY_POLICY="fast").policy
    with pytest.raises(GpuAffinityError, match=r"^unknown policy argument 'Strict': choose one of first, verify, "
                                               r"strict$"):
        _ = snap(monkeypatch, "Strict", GPUAFFINITY_POLICY="first").policy


def test_normalize_disable():
    assert st.normalize_disable(None) is None
    assert st.normalize_disable(" a, b,,a ") == ("a", "b")
    assert st.normalize_disable(["x", " y ", "x"]) == ("x", "y")
    assert st.normalize_disable(", ,") is None and st.normalize_disable([]) is None
    with pytest.raises(TypeError, match=r"^disable must hold strategy or plugin names \(strings\), not int$"):
        st.normalize_disable(["a", 3])


def test_stray_simulator_variables_are_named():
    assert st.stray_sim_variables({}) == []
    assert st.stray_sim_variables({"GPUAFFINITY_PROCFS_ROOT": "/tmp/p"}) == [
        "gpuaffinity: GPUAFFINITY_PROCFS_ROOT='/tmp/p' is set outside `gpuaffinity sim run`: gpuaffinity reads that "
        "folder instead of this machine's; unset it unless you mean it"]


# --- plugins: names, entry-point sections, validation, build_manager + collect_strategies ---------------------

from gpuaffinity.core import plugins as pl  # noqa: E402


def test_valid_name_and_dist_key():
    assert [pl.valid_name(n) for n in ("a", "launcher-2.x_y", "a" * 40, "a" * 41, "", "2a", "_a", "a b", "é")] == [
        True, True, True, False, False, False, False, False, False]
    assert pl._dist_key("My.Pkg--name__x") == "my_pkg_name_x"


def test_plugin_info_names_where_it_came_from():
    assert str(pl.PluginInfo("cvd")) == "built-in plugin 'cvd'"
    assert str(pl.PluginInfo("x", "m:f", "x-dist", "1.0")) == (
        "plugin 'x' (distribution x-dist 1.0, entry point x = m:f)")
    assert str(pl.PluginInfo("x", "m:f")) == "plugin 'x' (distribution ?, entry point x = m:f)"


def test_section_reads_one_group():
    text = "[console_scripts]\na = b:c\n\n# note\n[gpuaffinity]\n one = pkg.mod:attr [extra]\n;x\ntwo=m\n[other]\nz=y\n"
    assert pl._section(text, "gpuaffinity") == [("one", "pkg.mod:attr"), ("two", "m")]


def test_find_entry_points_reads_the_dist_info_folders(tmp_path, monkeypatch):
    for folder, text in (("my_plug-1.2.dist-info", "[gpuaffinity]\nmine = my_plug:plugin\n"),
                         ("My.Plug-9.0.dist-info", "[gpuaffinity]\nshadowed = x:y\n"),
                         ("other-0.1.dist-info", "[console_scripts]\nz = q:r\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "entry_points.txt").write_text(text)
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing")])
    got = pl.find_entry_points("gpuaffinity")
    # folders in sorted order (upper case first): the first of a normalised name wins, shown with "-" for "_"
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("shadowed", "x:y", "My.Plug", "9.0")]
    (tmp_path / "My.Plug-9.0.dist-info" / "entry_points.txt").unlink()
    (tmp_path / "a_b-3.dist-info").mkdir()
    (tmp_path / "a_b-3.dist-info" / "entry_points.txt").write_text("[gpuaffinity]\nab = a_b.x:y [opt]\n")
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("ab", "a_b.x:y", "a-b", "3")]


class Good(Strategy):
    name, priority = "good", 80

    def answer(self, ctx, logical_id):
        return Answer(U[0])


@pytest.mark.parametrize(("strategy", "what"), [
    (types.SimpleNamespace(name="2bad", priority=1), "has no usable name ('2bad': want a short identifier such as "
                                                     "'launcher')"),
    (types.SimpleNamespace(name="ok", priority=True), "has priority True, not an int"),
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda ctx: None), "has no answer(ctx, logical_id) method"),
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, cost=3),
     "has cost that is not a method taking (ctx)"),
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, describe=5),
     "has describe 5, not a string"),
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, env_vars="X"),
     "has env_vars 'X', not a tuple of variable names"),
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, budget=0),
     "has budget 0: want seconds, more than 0 and at most 3600"),
    # issue 19: the driver's answer is final, so no plugin may claim to be the driver
    (types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, asks_driver=True),
     "claims asks_driver: only the built-in pci strategy speaks for the CUDA driver, whose answer is final; leave "
     "asks_driver unset"),
])
def test_validate_names_the_plugin_and_what_is_wrong(strategy, what):
    owner = pl.PluginInfo("ext", "ext_mod:plugin", "ext-dist", "2.0")
    with pytest.raises(PluginError) as e:
        pl.validate(strategy, owner)
    assert str(e.value) == (f"plugin 'ext' (distribution ext-dist 2.0, entry point ext = ext_mod:plugin) returned "
                            f"a strategy {pl._short(strategy)} that {what}; fix it, or disable the plugin with "
                            "GPUAFFINITY_DISABLE=ext")
    pl.validate(Good(), owner)  # a usable one passes
    for falsy in (0, None, False):  # found by attacking the change: a falsy asks_driver claims nothing
        pl.validate(types.SimpleNamespace(name="ok", priority=1, answer=lambda c, i: None, asks_driver=falsy), owner)


def _plugin_module(monkeypatch, name, strategies):
    from gpuaffinity import hookimpl

    mod = types.ModuleType(name)

    @hookimpl
    def gpuaffinity_strategies():
        return strategies

    mod.gpuaffinity_strategies = gpuaffinity_strategies
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_build_manager_loads_a_registered_plugin_and_collects_its_strategies(monkeypatch):
    builtin = types.SimpleNamespace(gpuaffinity_strategies=lambda: [Fake("cvd", 50, Answer(U[1]))])
    _plugin_module(monkeypatch, "gpa_test_plug", [Good()])
    info = pl.PluginInfo("ext", "gpa_test_plug", "ext-dist", "2.0")
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [info, pl.PluginInfo("cvd", "x:y")])
    builtins = [("cvd", builtin)]
    pm, infos = pl.build_manager(builtins, frozenset())
    assert pm is not None and [i.name for i in infos] == ["cvd", "ext"] and infos[1].problem == ""
    got = pl.collect_strategies(pm, frozenset(), infos, builtins)
    assert [s.name for s in got] == ["good", "cvd"]
    assert (infos[0].strategies, infos[1].strategies) == (["cvd"], ["good"])
    # disabled by strategy name: still collected into the infos, left out of the list
    pm, infos = pl.build_manager(builtins, frozenset())
    assert [s.name for s in pl.collect_strategies(pm, frozenset({"good"}), infos, builtins)] == ["cvd"]


def test_build_manager_without_third_party_plugins_builds_no_manager():
    builtins = [("pci", object()), ("cvd", object())]
    pm, infos = pl.build_manager(builtins, frozenset({"pci"}), entry_points=False)
    assert pm is None and [(i.name, i.target) for i in infos] == [("cvd", "")]


def test_a_plugin_that_fails_to_load_is_named(monkeypatch):
    info = pl.PluginInfo("ext", "gpa_no_such_module_xyz:plugin", "ext-dist", "2.0")
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [info])
    with pytest.raises(PluginError, match=r"^plugin 'ext' \(distribution ext-dist 2\.0, entry point ext = "
                                          r"gpa_no_such_module_xyz:plugin\) failed to load: ModuleNotFoundError: No "
                                          r"module named 'gpa_no_such_module_xyz'; disable it with "
                                          r"GPUAFFINITY_DISABLE=ext$"):
        pl.build_manager([], frozenset())


def test_a_plugin_without_a_hook_is_reported_not_refused(monkeypatch):
    mod = types.ModuleType("gpa_test_nohook")
    mod.gpuaffinity_strategy = lambda: []  # misspelt, unmarked
    monkeypatch.setitem(sys.modules, "gpa_test_nohook", mod)
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [pl.PluginInfo("ext", "gpa_test_nohook")])
    pm, infos = pl.build_manager([], frozenset())
    assert infos[0].problem == ("implements no hook: gpuaffinity_strategy is not a hook (the hook is "
                                "gpuaffinity_strategies)")
    assert pl.collect_strategies(pm, frozenset(), infos) == []


def test_a_hook_that_raises_or_a_duplicate_name_is_a_plugin_error(monkeypatch):
    def broken():
        raise OSError("no device")

    builtins = [("cvd", types.SimpleNamespace(gpuaffinity_strategies=broken))]
    with pytest.raises(PluginError, match=r"^built-in plugin 'cvd' failed in gpuaffinity_strategies: OSError: no "
                                          r"device; disable it with GPUAFFINITY_DISABLE=cvd$"):
        pl.collect_strategies(None, frozenset(), [pl.PluginInfo("cvd")], builtins)
    builtins = [("cvd", types.SimpleNamespace(gpuaffinity_strategies=lambda: [Fake("cvd", 50, Answer(U[1]))]))]
    _plugin_module(monkeypatch, "gpa_test_dup", [Fake("cvd", 10, Answer(U[0]))])
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [pl.PluginInfo("ext", "gpa_test_dup")])
    pm, infos = pl.build_manager(builtins, frozenset())
    with pytest.raises(PluginError, match=r"^two strategies are named 'cvd' \(built-in plugin 'cvd' and plugin "
                                          r"'ext' \(distribution \?, entry point ext = gpa_test_dup\)\); disable one "
                                          r"with GPUAFFINITY_DISABLE=ext$"):
        pl.collect_strategies(pm, frozenset(), infos, builtins)
