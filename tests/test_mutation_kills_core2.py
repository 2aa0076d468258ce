"""More in-process tests pinning core/chain.py, core/plugins.py, core/record.py, core/settings.py and core/notes.py.

Each group says what it pins; the strategies are fakes in the manner of tests/test_chain.py.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
import types
import zipfile

import pytest

from fake_strategies import Fake, U, make_ctx, run
from gpuaffinity import Abstain, Answer, Strategy, hookimpl
from gpuaffinity.core import chain
from gpuaffinity.core import notes as nt
from gpuaffinity.core import plugins as pl
from gpuaffinity.core import record as rec
from gpuaffinity.core import settings as st
from gpuaffinity.core.errors import FallbackWarning, GpuAffinityError, PluginError
from gpuaffinity.core.model import Verdict

ENV = r"CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None"


def verdict(dev, name):
    [v] = [v for v in dev.verdicts if v.strategy == name]
    return v


# --- chain._call / _ask: answer_all under a watchdog, in a named daemon thread, abandoned past its budget ------

def test_an_answer_all_past_its_budget_is_abandoned_and_named_as_answer_all():
    release = threading.Event()

    class SlowBatch(Strategy):
        name, priority, budget = "slow", 70, 0.05

        def answer_all(self, ctx):
            release.wait(5)
            return [Answer(U[0])] * ctx.visible

        def answer(self, ctx, logical_id):
            return Answer(U[0])

    try:
        dev, _ = run([SlowBatch(), Fake("cvd", 50, Answer(U[1]))])
    finally:
        release.set()
    assert verdict(dev, "slow").result == Abstain("answer_all ran past its time budget of 0.05 s: abandoned, and not "
                                                  "asked again in this resolution")
    assert (dev.strategy, dev.uuid, dev.fallback) == ("cvd", U[1], True)


def test_a_watchdog_runs_the_strategy_in_a_named_daemon_thread():
    seen = []

    def where(ctx, logical_id):
        t = threading.current_thread()
        seen.append((t.name, t.daemon, t is threading.main_thread()))
        return Answer(U[2])

    dev, warns = run([Fake("w", 60, where, watchdog=True)])
    assert (dev.strategy, dev.uuid, warns) == ("w", U[2], [])
    assert seen == [("gpuaffinity-w", True, False)]


# --- chain._ask / _mistake: a checked result carries no traceback; a bad uuid is shown cut to 60 characters ----

def test_answers_and_mistaken_results_have_no_traceback():
    dev, _ = run([Fake("bad", 70, "GPU-0"), Fake("good", 60, Answer(U[1]))])
    assert verdict(dev, "bad").result == Abstain("returned str, not Answer or Abstain")
    assert verdict(dev, "bad").trace == ""
    assert verdict(dev, "good") == Verdict("good", 60, Answer(U[1]), True)
    assert verdict(dev, "good").trace == ""


def test_a_non_string_uuid_is_shown_in_its_first_60_characters():
    big = 10 ** 70  # 71 digits
    dev, _ = run([Fake("n", 70, Answer(big)), Fake("cvd", 50, Answer(U[0]))])
    assert verdict(dev, "n").result == Abstain(f"answered int '{'1' + '0' * 59}', not a GPU UUID string")


# --- chain._cost: a strategy without cost() is cheap ----------------------------------------------------------

def test_a_strategy_without_cost_is_cheap():
    class Plain:
        name, priority = "plain", 10

    assert chain._cost(Plain(), make_ctx()) == "cheap"
    assert chain._cost(Fake("e", 1, None, cost="expensive"), make_ctx()) == "expensive"


# --- resolve_one: why a deferred (expensive) strategy was not asked, as a quiet abstention that did not run ----

def test_under_first_a_deferred_strategy_is_not_asked_because_of_the_policy():
    dev, warns = run([Fake("pci", 70, Answer(U[0]), cost="expensive"), Fake("cvd", 60, Answer(U[1]))], "first")
    assert (dev.strategy, dev.uuid, warns) == ("cvd", U[1], [])
    v = verdict(dev, "pci")
    assert v == Verdict("pci", 70, Abstain("not asked: policy 'first'", quiet=True), False)
    assert (v.result.quiet, v.ran) == (True, False)


def test_under_verify_a_deferred_strategy_nothing_called_for_is_not_asked_and_says_why():
    dev, warns = run([Fake("pci", 70, Answer(U[0]), cost="expensive"), Fake("cvd", 60, Answer(U[1]))])
    assert (dev.strategy, dev.uuid, dev.fallback, warns) == ("cvd", U[1], False, [])
    v = verdict(dev, "pci")
    assert v.result.reason == ("not asked: it is expensive, and nothing called for it (no cheaper answer was "
                               "contradicted, and CUDA_VISIBLE_DEVICES reads the same under the documented grammar); "
                               "policy 'strict' asks it")
    assert (v.result.quiet, v.ran) == (True, False)


def test_a_deferred_strategy_that_abstains_before_any_answer_makes_the_answer_a_fallback():
    dev, warns = run([Fake("a", 80, Abstain("driver says no"), cost="expensive"),
                      Fake("b", 70, Answer(U[2]), cost="expensive")])
    assert (dev.strategy, dev.uuid, dev.fallback, dev.answered) == ("b", U[2], True, ("b",))
    assert warns == [(FallbackWarning, "gpuaffinity: CUDA device 0 (CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None) "
                                       "resolved by fallback strategy 'b' because higher-priority strategies could "
                                       "not answer. Abstained: a: driver says no.")]


def test_a_logical_id_past_the_gpu_list_with_no_answer_is_an_error_not_a_guess():
    with pytest.raises(GpuAffinityError, match=r"^no strategy could resolve CUDA device 3 \(" + ENV + r"\) and NVML "
                                               r"has only 3 GPUs\. Abstained: a: no list\.$"):
        run([Fake("a", 60, Abstain("no list"))], logical_id=3)


# --- notes.kind_of ---------------------------------------------------------------------------------------------

def test_kind_of_reads_a_notes_kind_and_calls_a_plain_string_info():
    assert nt.kind_of(nt.attention("fewer cores than GPUs")) == "attention"
    assert nt.kind_of(nt.Note("split", "info")) == "info"
    assert nt.kind_of("from a plugin") == "info"


# --- plugins._load: the attribute path after ":" is followed dot by dot -----------------------------------------

def test_load_follows_a_dotted_attribute_path(monkeypatch):
    mod = types.ModuleType("gpa_test_load")
    mod.outer = types.SimpleNamespace(inner=types.SimpleNamespace(plugin="found"))
    monkeypatch.setitem(sys.modules, "gpa_test_load", mod)
    assert pl._load("gpa_test_load: outer.inner.plugin ") == "found"
    assert pl._load("gpa_test_load:outer") is mod.outer
    assert pl._load("gpa_test_load") is mod


# --- plugins._metadata_entry_points / build_manager: importlib.metadata when sys.path holds a zip ----------------

def _zip_dist(tmp_path, text):
    path = tmp_path / "plugs.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Zip_Plug-1.5.dist-info/METADATA", "Metadata-Version: 2.1\nName: Zip-Plug\nVersion: 1.5\n")
        z.writestr("Zip_Plug-1.5.dist-info/entry_points.txt", text)
    return path


def test_metadata_entry_points_reads_the_group_with_distribution_and_version(tmp_path, monkeypatch):
    path = _zip_dist(tmp_path, "[gpuaffinity]\nzp = gpa_test_zip:plugin\n[console_scripts]\nzz = a:b\n")
    monkeypatch.setattr(sys, "path", [str(path)])
    assert pl._metadata_entry_points("gpuaffinity") == [pl.PluginInfo("zp", "gpa_test_zip:plugin", "Zip-Plug", "1.5")]


def test_metadata_entry_points_without_a_distribution_leave_it_empty(monkeypatch):
    ep = importlib.metadata.EntryPoint("bare", "b:c", "gpuaffinity")
    assert getattr(ep, "dist", None) is None
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [ep] if group == "gpuaffinity" else [])
    got = pl._metadata_entry_points("gpuaffinity")
    assert got == [pl.PluginInfo("bare", "b:c", "", "")]
    assert (got[0].distribution, got[0].version) == ("", "")


def test_build_manager_falls_back_to_importlib_metadata_for_a_zip_on_sys_path(tmp_path, monkeypatch):
    mod = types.ModuleType("gpa_test_zip")
    mod.plugin = types.SimpleNamespace(gpuaffinity_strategies=hookimpl(lambda: [Good()]))
    monkeypatch.setitem(sys.modules, "gpa_test_zip", mod)
    path = _zip_dist(tmp_path, "[gpuaffinity]\nzp = gpa_test_zip:plugin\n")
    monkeypatch.setattr(sys, "path", [str(path)])
    assert pl.find_entry_points("gpuaffinity") is None
    pm, infos = pl.build_manager([], frozenset())
    assert pm is not None and infos == [pl.PluginInfo("zp", "gpa_test_zip:plugin", "Zip-Plug", "1.5")]
    assert [s.name for s in pl.collect_strategies(pm, frozenset(), infos)] == ["good"]


# --- plugins._register: what a plugin without a hook is told -------------------------------------------------

def _problem(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [pl.PluginInfo("ext", name)])
    pm, infos = pl.build_manager([], frozenset())
    return mod, pm, infos[0].problem


def test_a_hook_name_in_the_wrong_case_is_pointed_out(monkeypatch):
    _, _, problem = _problem(monkeypatch, "gpa_test_case", Gpuaffinity_Strategies=lambda: [])
    assert problem == "implements no hook: Gpuaffinity_Strategies is not a hook (the hook is gpuaffinity_strategies)"


def test_an_unmarked_hook_is_told_to_mark_it_and_an_empty_plugin_to_define_it(monkeypatch):
    _, _, problem = _problem(monkeypatch, "gpa_test_unmarked", gpuaffinity_strategies=lambda: [])
    assert problem == "implements no hook: mark gpuaffinity_strategies with @gpuaffinity.hookimpl"
    _, _, problem = _problem(monkeypatch, "gpa_test_empty")
    assert problem == "implements no hook: define gpuaffinity_strategies and mark it with @gpuaffinity.hookimpl"


def test_a_marked_but_misspelt_hook_is_unregistered_and_reported(monkeypatch):
    mod, pm, problem = _problem(monkeypatch, "gpa_test_misspelt", gpuaffinity_strategy=hookimpl(lambda: []))
    assert problem.startswith("implements no hook: unknown hook 'gpuaffinity_strategy' in plugin ")
    assert not pm.is_registered(mod)
    assert pm.get_plugin("ext") is None


# --- plugins._section: the first "=" splits; the value ends at the first "[" ---------------------------------

def test_section_splits_at_the_first_equals_sign_and_cuts_at_the_first_bracket():
    text = "[gpuaffinity]\nk = pkg:f=g\nx = m:f [a] [b]\n"
    assert pl._section(text, "gpuaffinity") == [("k", "pkg:f=g"), ("x", "m:f")]


# --- plugins._short / validate: the strategy shown by its repr, cut at 80 characters; every check named -------

def test_short_is_the_repr_cut_at_80_characters():
    assert pl._short(types.SimpleNamespace(name="ok")) == "namespace(name='ok')"
    assert pl._short("x" * 78) == "'" + "x" * 78 + "'"
    assert pl._short("x" * 100) == "'" + "x" * 79 + "..."


OWNER = pl.PluginInfo("ext", "ext_mod:plugin", "ext-dist", "2.0")
HEAD = r"^plugin 'ext' \(distribution ext-dist 2\.0, entry point ext = ext_mod:plugin\) returned a strategy "
TAIL = r"; fix it, or disable the plugin with GPUAFFINITY_DISABLE=ext$"


class _Strat:
    """A strategy with a short fixed repr, whose parts are given."""

    def __init__(self, **kw):
        self.name, self.priority, self.answer = "ok", 1, lambda c, i: None
        self.__dict__.update(kw)

    def __repr__(self):
        return "<strat>"


def test_validate_shows_the_strategy_and_refuses_a_nameless_one():
    with pytest.raises(PluginError, match=HEAD + r"namespace\(priority=1\) that has no usable name \(None: want a "
                                          r"short identifier such as 'launcher'\)" + TAIL):
        pl.validate(types.SimpleNamespace(priority=1), OWNER)


@pytest.mark.parametrize(("kw", "what"), [
    ({"count": 3}, "has count that is not a method taking (ctx)"),
    ({"answer_all": lambda: []}, "has answer_all that is not a method taking (ctx)"),
    ({"env_vars": ("X", "")}, "has env_vars ('X', ''), not a tuple of variable names"),
    ({"env_vars": ("X", 3)}, "has env_vars ('X', 3), not a tuple of variable names"),
])
def test_validate_checks_count_answer_all_and_every_env_var(kw, what):
    with pytest.raises(PluginError) as e:
        pl.validate(_Strat(**kw), OWNER)
    assert str(e.value) == (f"plugin 'ext' (distribution ext-dist 2.0, entry point ext = ext_mod:plugin) returned a "
                            f"strategy <strat> that {what}; fix it, or disable the plugin with GPUAFFINITY_DISABLE=ext")
    pl.validate(_Strat(count=lambda ctx: 1, answer_all=lambda ctx: [], env_vars=("X", "Y")), OWNER)


def test_validate_names_an_owner_without_a_name_as_itself():
    with pytest.raises(PluginError, match=r"^a test returned a strategy namespace\(priority=1\) that has no usable "
                                          r"name \(None: want a short identifier such as 'launcher'\); fix it, or "
                                          r"disable the plugin with GPUAFFINITY_DISABLE=a test$"):
        pl.validate(types.SimpleNamespace(priority=1), "a test")


# --- plugins.collect_strategies: third-party strategies are validated, with their plugin named ----------------

class Good(Strategy):
    name, priority = "good", 80

    def answer(self, ctx, logical_id):
        return Answer(U[0])


def test_a_third_party_strategy_is_validated_and_a_built_in_is_trusted(monkeypatch):
    bad = types.SimpleNamespace(name="2bad", priority=1)
    mod = types.ModuleType("gpa_test_badstrat")
    mod.gpuaffinity_strategies = hookimpl(lambda: [bad])
    monkeypatch.setitem(sys.modules, "gpa_test_badstrat", mod)
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [pl.PluginInfo("ext", "gpa_test_badstrat")])
    pm, infos = pl.build_manager([], frozenset())
    with pytest.raises(PluginError, match=r"^plugin 'ext' \(distribution \?, entry point ext = gpa_test_badstrat\) "
                                          r"returned a strategy namespace\(name='2bad', priority=1\) that has no "
                                          r"usable name \('2bad': want a short identifier such as 'launcher'\); fix "
                                          r"it, or disable the plugin with GPUAFFINITY_DISABLE=ext$"):
        pl.collect_strategies(pm, frozenset(), infos)
    odd = types.SimpleNamespace(name="odd", priority=3, budget=0)  # not a valid plugin strategy, but built in
    builtins = [("odd", types.SimpleNamespace(gpuaffinity_strategies=lambda: [odd]))]
    assert pl.collect_strategies(None, frozenset(), [pl.PluginInfo("odd")], builtins) == [odd]


# --- plugins.find_entry_points: a missing sys.path entry is skipped; entry_points.txt is read as UTF-8 --------

def test_find_entry_points_skips_a_missing_entry_and_reads_utf8_whatever_the_locale(tmp_path, monkeypatch):
    folder = tmp_path / "u_plug-1.0.dist-info"
    folder.mkdir()
    (folder / "entry_points.txt").write_bytes("# café\n[gpuaffinity]\nu = u_plug:plugin\n".encode())
    real_open = open

    def ascii_locale_open(*args, encoding=None, **kw):  # what open() does with no encoding under LANG=C
        return real_open(*args, encoding=encoding or "ascii", **kw)

    monkeypatch.setattr(pl, "open", ascii_locale_open, raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path)])
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("u", "u_plug:plugin", "u-plug", "1.0")]


# --- record._build ----------------------------------------------------------------------------------------------

def test_a_subclass_may_redeclare_an_inherited_field_with_a_new_default():
    @rec.record
    class Base:
        a: int
        b: int = 2

    @rec.record
    class Sub(Base):
        b: int = 5

    assert rec.fields(Sub) == ("a", "b") and (Sub(1).a, Sub(1).b) == (1, 5) and Base(1).b == 2


def test_a_field_without_a_default_after_a_default_factory_is_refused():
    with pytest.raises(TypeError, match=r"^Late: field 'b' without a default follows one with a default$"):
        @rec.record
        class Late:
            a: list = rec.field(default_factory=list)
            b: int


def test_a_mutable_record_assigns_through_its_own_setattr():
    @rec.record
    class Doubled:
        a: int

        def __setattr__(self, name, value):
            object.__setattr__(self, name, value * 2)

    assert Doubled(3).a == 6


def test_a_frozen_record_refuses_deletion_naming_its_class():
    @rec.record(frozen=True)
    class P:
        x: int

    with pytest.raises(rec.FrozenError, match=r"^cannot delete field 'x' of a frozen P$"):
        del P(1).x


# --- settings.stray_sim_variables: inside `gpuaffinity sim run` the roots beside the config are expected -------

def _msg(var, value, what="that folder"):
    return (f"gpuaffinity: {var}={value!r} is set outside `gpuaffinity sim run`: gpuaffinity reads {what} instead "
            "of this machine's; unset it unless you mean it")


def test_simulator_roots_beside_the_config_are_not_stray(tmp_path):
    config = tmp_path / "machine.json"
    config.write_text("{}")
    inside = str(tmp_path / "proc")
    env = {"GPUAFFINITY_SIM_CONFIG": str(config), "GPUAFFINITY_PROCFS_ROOT": inside,
           "GPUAFFINITY_SIM_ALLOWED_CPUS": "0-3"}
    assert st.stray_sim_variables(env) == []
    env["GPUAFFINITY_DEV_ROOT"] = "/elsewhere/dev"
    assert st.stray_sim_variables(env) == [_msg("GPUAFFINITY_DEV_ROOT", "/elsewhere/dev")]


def test_every_stray_variable_is_named_not_only_the_first(tmp_path):
    env = {"GPUAFFINITY_DEV_ROOT": "/d", "GPUAFFINITY_SIM_ALLOWED_CPUS": "0-3"}
    assert st.stray_sim_variables(env) == [_msg("GPUAFFINITY_DEV_ROOT", "/d"),
                                           _msg("GPUAFFINITY_SIM_ALLOWED_CPUS", "0-3", "its CPU list")]


# --- settings.watch: declared variables join every later key ----------------------------------------------------

def test_watch_adds_variables_to_the_key_once(monkeypatch):
    monkeypatch.setattr(st, "_EXTRA", ())
    monkeypatch.setattr(st, "_EXTRA_KEYS", ())
    monkeypatch.setenv("GPA_TEST_WATCH_A", "a-value")
    monkeypatch.delenv("GPA_TEST_WATCH_B", raising=False)
    base = st.make_key(None, None, True)
    assert st.watch(["GPA_TEST_WATCH_B", "GPA_TEST_WATCH_A"]) is True
    assert st._EXTRA == ("GPA_TEST_WATCH_A", "GPA_TEST_WATCH_B")
    key = st.make_key(None, None, True)
    assert key[:len(base)] == base and len(key) == len(base) + 2
    assert [st._str(v) for v in key[len(base):]] == ["a-value", None]
    assert st.watch(["GPA_TEST_WATCH_A"]) is False and st.watch([]) is False
    assert st.watch(["GPA_TEST_WATCH_C"]) is True
    assert st._EXTRA == ("GPA_TEST_WATCH_A", "GPA_TEST_WATCH_B", "GPA_TEST_WATCH_C")
    assert len(st.make_key(None, None, True)) == len(base) + 3


def test_stray_sim_variables_with_a_relative_config(tmp_path, monkeypatch):
    """Found while killing mutants: a relative GPUAFFINITY_SIM_CONFIG made its folder "" (so every absolute
    root counted as inside it, and a root anywhere went unwarned) or "sims" (so the roots really beside the
    config were warned about).  The folder is now taken from the config's absolute path."""
    from gpuaffinity.core.settings import stray_sim_variables

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "m.json").write_text("{}")
    (tmp_path / "m.json").write_text("{}")
    beside = {"GPUAFFINITY_SIM_CONFIG": "sims/m.json", "GPUAFFINITY_PROCFS_ROOT": str(tmp_path / "sims" / "proc")}
    assert stray_sim_variables(beside) == []
    elsewhere = {"GPUAFFINITY_SIM_CONFIG": "m.json", "GPUAFFINITY_PROCFS_ROOT": "/etc/anywhere"}
    assert stray_sim_variables(elsewhere) == [
        "gpuaffinity: GPUAFFINITY_PROCFS_ROOT='/etc/anywhere' is set outside `gpuaffinity sim run`: gpuaffinity "
        "reads that folder instead of this machine's; unset it unless you mean it"]
