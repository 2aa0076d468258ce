"""Still more in-process tests pinning core/chain.py, plugins.py, record.py, settings.py, errors.py, notes.py and
strategy.py.

Each group says what it pins; the strategies are fakes in the manner of tests/test_chain.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
import typing

import pluggy
import pytest

from fake_strategies import GPUS, Fake, U, make_ctx, run
from gpuaffinity import Abstain, Answer, Strategy, hookimpl
from gpuaffinity.core import chain
from gpuaffinity.core import notes as nt
from gpuaffinity.core import plugins as pl
from gpuaffinity.core import record as rec
from gpuaffinity.core import settings as st
from gpuaffinity.core.errors import DisagreementWarning, FallbackWarning, PluginError, shown
from gpuaffinity.core.hookspec import HookSpec

ENV = "CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None"


def verdict(dev, name):
    [v] = [v for v in dev.verdicts if v.strategy == name]
    return v


def _raise(e):
    def fn(*args):
        raise e
    return fn


# --- chain._ask: answer_all's batch is kept in ctx.scratch["_all"], by strategy name, for every device ----------

def test_the_batch_of_answer_all_and_its_absence_are_kept_in_scratch_all():
    class Batch(Strategy):
        name, priority, watchdog = "batch", 70, False

        def answer_all(self, ctx):
            return [Answer(U[2]), Answer(U[1]), Answer(U[0])]

    c = make_ctx()
    dev, warns = run([Batch(), Fake("cvd", 50, Answer(U[2]))], c=c)
    assert (dev.strategy, dev.uuid, warns) == ("batch", U[2], [])
    assert c.scratch["_all"] == {"batch": [Answer(U[2]), Answer(U[1]), Answer(U[0])], "cvd": None}


# --- chain._ask: a batch that is a string, or not a sequence at all, is refused whatever its length -------------

@pytest.mark.parametrize(("batch", "reason"), [
    ("abc", "answer_all returned str of 3 items, not one per visible device (3)"),
    (b"abc", "answer_all returned bytes of 3 items, not one per visible device (3)"),
    ({"a", "b", "c"}, "answer_all returned set of ? items, not one per visible device (3)"),
    (5, "answer_all returned int of ? items, not one per visible device (3)"),
])
def test_a_batch_of_the_wrong_kind_abstains_saying_what_it_was(batch, reason):
    class Odd(Strategy):
        name, priority, watchdog = "odd", 70, False

        def answer_all(self, ctx):
            return batch

    dev, _ = run([Odd(), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "odd").result == Abstain(reason)
    assert (dev.strategy, dev.fallback) == ("cvd", True)


# --- chain._ask / _cost: an exception's text is cut to 300 (answer) and 200 (cost) characters; cost's is logged --

def test_a_raising_answer_is_cut_to_300_characters_and_a_raising_cost_to_200(caplog):
    caplog.set_level(logging.DEBUG, logger="gpuaffinity")
    dev, _ = run([Fake("a", 70, _raise(ValueError("y" * 350))),
                  Fake("c", 60, Answer(U[0]), cost=_raise(KeyError("k" * 250))),
                  Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "a").result == Abstain("raised ValueError: " + "y" * 300)
    assert verdict(dev, "c").result == Abstain("cost() raised KeyError: '" + "k" * 199)
    [r] = [r for r in caplog.records if "cost()" in r.getMessage()]
    assert (r.getMessage(), r.name, r.levelno) == ("strategy c: cost() raised", "gpuaffinity", logging.DEBUG)
    assert isinstance(r.exc_info[1], KeyError)


# --- chain._call: the watchdog is on unless a strategy turns it off; its thread hands back exceptions as such ----

def test_a_strategy_without_a_watchdog_attribute_runs_under_the_watchdog():
    threads = []

    class Duck:
        name, priority = "duck", 60

        def answer(self, ctx, logical_id):
            threads.append(threading.current_thread().name)
            return Answer(U[1])

    dev, warns = run([Duck()])
    assert (dev.strategy, dev.uuid, warns, threads) == ("duck", U[1], [], ["gpuaffinity-duck"])


def test_an_exception_in_the_watchdog_thread_is_the_strategys_abstention():
    dev, _ = run([Fake("w", 60, _raise(ValueError("bad wiring")), watchdog=True), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "w").result == Abstain("raised ValueError: bad wiring")
    assert "ValueError: bad wiring" in verdict(dev, "w").trace
    assert (dev.strategy, dev.fallback) == ("cvd", True)


def test_time_spent_adds_to_what_the_strategy_had_spent_before():
    c = make_ctx()
    c.scratch["_spent"] = {"a": 0.5}
    dev, _ = run([Fake("a", 60, Answer(U[1]))], c=c)
    assert dev.strategy == "a"
    assert 0.5 < c.scratch["_spent"]["a"] < 1.5


# --- chain._mistake: each misuse of the result types is named -------------------------------------------------

LONG = "GPU-" + "z" * 70


@pytest.mark.parametrize(("result", "why"), [
    (Abstain(""), "abstained without a reason (give one: doctor shows it)"),
    (GPUS[2], "returned a GpuInfo record instead of an Answer: return Answer(gpu.uuid)"),
    (Answer(GPUS[2]), "answered a GpuInfo record instead of its UUID: use Answer(gpu.uuid)"),
    (Answer("MIG-aaaa-bbbb"), "put a MIG UUID where the GPU's belongs: use Answer(gpu_uuid, mig_uuid=...)"),
    (Answer(LONG), f"answered {LONG[:60]}, which is not a GPU this process can use"),
])
def test_a_mistaken_result_is_an_abstention_that_names_the_mistake(result, why):
    dev, _ = run([Fake("a", 60, result), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "a").result == Abstain(why)
    assert (dev.strategy, dev.uuid) == ("cvd", U[1])


# --- chain._gpu_text: a GPU of the list is shown by index, bus id and UUID; any other by its UUID ----------------

def test_gpu_text_names_a_listed_gpu_fully_and_an_unlisted_one_by_uuid():
    c = make_ctx()
    assert chain._gpu_text(c, Answer(U[1].upper())) == f"NVML 1 (0000:02:00.0, {U[1]})"
    assert chain._gpu_text(c, Answer("GPU-nowhere")) == "GPU-nowhere"


# --- chain._reasons: the abstentions that ran, joined by "; "; nothing at all when none ran -------------------

def test_the_fallback_warning_lists_every_abstention_joined_by_semicolons():
    dev, warns = run([Fake("a", 70, Abstain("x")), Fake("b", 60, Abstain("y")), Fake("c", 50, Answer(U[1]))])
    assert (dev.strategy, dev.fallback) == ("c", True)
    assert warns == [(FallbackWarning, f"gpuaffinity: CUDA device 0 ({ENV}) resolved by fallback strategy 'c' because "
                                       "higher-priority strategies could not answer. Abstained: a: x; b: y.")]


def test_with_no_abstention_the_guess_warning_has_no_abstained_part():
    dev, warns = run([])
    assert (dev.strategy, dev.uuid) == ("identity", U[0])
    assert warns == [(FallbackWarning, f"gpuaffinity: no strategy could resolve CUDA device 0 ({ENV}); guessing NVML "
                                       "index 0 (0000:01:00.0), which is wrong whenever CUDA's numbering differs "
                                       "from NVML's.")]
    assert chain._reasons(()) == ""


# --- resolve_one: every strategy gets a verdict, under 'first' and for deferred ones nothing called for -----------

def test_under_first_every_strategy_after_the_answer_is_recorded_as_not_asked():
    dev, warns = run([Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[2])), Fake("c", 40, Answer(U[0]))],
                     "first")
    assert (dev.strategy, dev.uuid, warns) == ("a", U[1], [])
    assert [v.strategy for v in dev.verdicts] == ["a", "b", "c"]
    for name in ("b", "c"):
        assert (verdict(dev, name).result, verdict(dev, name).ran) == (Abstain("not asked: policy 'first'", True),
                                                                        False)


def test_every_deferred_strategy_nothing_called_for_is_recorded_as_not_asked():
    dev, warns = run([Fake("a", 60, Answer(U[1])), Fake("e1", 50, Answer(U[1]), cost="expensive"),
                      Fake("e2", 40, Answer(U[1]), cost="expensive")])
    assert (dev.strategy, warns) == ("a", [])
    assert [v.strategy for v in dev.verdicts] == ["a", "e1", "e2"]
    for name in ("e1", "e2"):
        v = verdict(dev, name)
        assert (v.ran, v.result.quiet, v.result.reason.startswith("not asked: it is expensive")) == (False, True, True)


# --- resolve_one: a deferred answer of equal priority does not displace the cheap one -------------------------

def test_a_deferred_answer_of_equal_priority_leaves_the_cheap_answer_standing():
    dev, warns = run([Fake("c", 50, Answer(U[1])), Fake("e", 50, Answer(U[2]), cost="expensive")],
                     c=make_ctx(unsure="a UUID prefix"))
    assert (dev.strategy, dev.uuid, dev.disagreed, dev.fallback) == ("c", U[1], ("e",), False)
    assert warns == [(DisagreementWarning, f"gpuaffinity: strategies disagree on CUDA device 0 ({ENV}): c says NVML 1 "
                                           f"(0000:02:00.0, {U[1]}); e says NVML 2 (0000:03:00.0, {U[2]}); using c's "
                                           "answer")]


# --- resolve_one: a deferred strategy abstaining after an answer exists makes nothing a fallback ----------------

@pytest.mark.parametrize("abstain", [Abstain("no driver"), Abstain("not here", quiet=True)])
def test_a_deferred_abstention_after_an_answer_is_no_fallback(abstain):
    dev, warns = run([Fake("c", 50, Answer(U[1])), Fake("e", 90, abstain, cost="expensive")],
                     c=make_ctx(unsure="a UUID prefix"))
    assert verdict(dev, "e").result == abstain and verdict(dev, "e").ran
    assert (dev.strategy, dev.uuid, dev.fallback, warns) == ("c", U[1], False, [])


# --- resolve_one: only a strictly higher-priority abstention makes an answer a fallback -------------------------

def test_an_abstention_of_equal_priority_is_no_fallback():
    dev, warns = run([Fake("a", 50, Abstain("broken")), Fake("b", 50, Answer(U[1]))])
    assert (dev.strategy, dev.uuid, dev.fallback, warns) == ("b", U[1], False, [])


# --- resolve_one: the answered device's fields come from the GPU list and the context ----------------------------

def test_an_answered_device_is_the_listed_gpu_at_its_logical_id_with_the_inventory_label():
    dev, warns = run([Fake("a", 60, Answer(U[2].upper()))], c=make_ctx(source="procfs"), logical_id=1)
    assert (dev.logical_id, dev.nvml_index, dev.uuid, dev.pci_bus_id, dev.mig_uuid, dev.name, dev.strategy) == (
        1, 2, U[2], "0000:03:00.0", None, "H100-2", "a")
    assert (dev.inventory, warns) == ("procfs+device-nodes", [])


# --- strategy.Strategy.answer: a subclass without answer() abstains, naming itself -------------------------------

def test_a_strategy_without_answer_raises_naming_itself_and_so_abstains():
    class Bare(Strategy):
        name, priority, watchdog = "bare", 60, False

    with pytest.raises(NotImplementedError, match=r"^strategy 'bare' has no answer\(\)$"):
        Bare().answer(make_ctx(), 0)
    dev, _ = run([Bare(), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "bare").result == Abstain("raised NotImplementedError: strategy 'bare' has no answer()")


# --- errors.shown: the repr whole up to 200 characters, cut past that ------------------------------------------

def test_shown_keeps_a_repr_of_exactly_200_characters_and_cuts_one_of_201():
    assert shown("a" * 198) == "'" + "a" * 198 + "'"
    assert shown("a" * 199) == "'" + "a" * 199 + "... (199 characters)"


# --- notes.Note.__repr__: the text and the kind ----------------------------------------------------------------

def test_a_notes_repr_shows_its_text_and_kind():
    assert repr(nt.Note("look here", "attention")) == "Note('look here', 'attention')"


# --- plugins._accepts / validate: a builtin without a signature is taken on trust --------------------------------

class _Strat:
    """A strategy with a short fixed repr, whose parts are given (or, in ``drop``, left out)."""

    def __init__(self, drop=(), **kw):
        self.name, self.priority, self.answer = "ok", 1, lambda c, i: None
        self.__dict__.update(kw)
        for k in drop:
            del self.__dict__[k]

    def __repr__(self):
        return "<strat>"


OWNER = pl.PluginInfo("ext", "ext_mod:plugin", "ext-dist", "2.0")
HEAD = "plugin 'ext' (distribution ext-dist 2.0, entry point ext = ext_mod:plugin) returned a strategy <strat> that "
TAIL = "; fix it, or disable the plugin with GPUAFFINITY_DISABLE=ext"


def test_a_builtin_without_a_signature_is_accepted_as_a_method():
    with pytest.raises(ValueError):
        __import__("inspect").signature(max)
    assert pl._accepts(max, 2) is True
    pl.validate(_Strat(answer=max, cost=max), OWNER)


# --- plugins.validate: a missing priority or answer is reported, not an AttributeError; the budget's bounds ------

@pytest.mark.parametrize(("drop", "what"), [
    (("priority",), "has priority None, not an int"),
    (("answer",), "has no answer(ctx, logical_id) method"),
])
def test_validate_reports_a_missing_priority_or_answer(drop, what):
    with pytest.raises(PluginError) as e:
        pl.validate(_Strat(drop=drop), OWNER)
    assert str(e.value) == HEAD + what + TAIL


@pytest.mark.parametrize("budget", [1, 0.001, 3600, 3600.0])
def test_validate_accepts_a_budget_above_0_up_to_3600(budget):
    pl.validate(_Strat(budget=budget), OWNER)


@pytest.mark.parametrize("budget", [True, False, 0, -1, 3600.5, 3601, "5"])
def test_validate_refuses_a_budget_outside_0_to_3600_or_not_a_number(budget):
    with pytest.raises(PluginError) as e:
        pl.validate(_Strat(budget=budget), OWNER)
    assert str(e.value) == HEAD + f"has budget {budget!r}: want seconds, more than 0 and at most 3600" + TAIL


# --- plugins.PluginInfo.__str__: a distribution without a version leaves no trailing space -------------------------

def test_a_plugin_of_a_distribution_without_version_is_named_without_a_trailing_space():
    assert str(pl.PluginInfo("p", "m:a", "foo-dist", "")) == "plugin 'p' (distribution foo-dist, entry point p = m:a)"


# --- plugins._dist_key: only "-", "_" and "." separate -----------------------------------------------------------

def test_dist_key_folds_only_dashes_underscores_and_dots():
    assert pl._dist_key("Xtra.-Pkg_X") == "xtra_pkg_x"


# --- plugins._section: nothing before the group's header; "#" and ";" lines are comments ---------------------------

def test_section_ignores_lines_before_any_header_and_comment_lines():
    text = "a = outside:x\n[gpuaffinity]\n# c = commented:x\n; d = commented:y\nb = m:f\n[other]\ne = o:p\n"
    assert pl._section(text, "gpuaffinity") == [("b", "m:f")]


# --- plugins._short: a repr of 81 characters is cut ----------------------------------------------------------------

def test_short_cuts_a_repr_of_81_characters():
    assert pl._short("x" * 78) == "'" + "x" * 78 + "'"
    assert pl._short("x" * 79) == "'" + "x" * 79 + "..."


# --- plugins._metadata_entry_points: an entry point object without a dist attribute -------------------------------

def test_metadata_entry_points_of_an_entry_point_without_a_dist_attribute(monkeypatch):
    import importlib.metadata

    ep = types.SimpleNamespace(name="bare", value="b:c")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "gpuaffinity" else [])
    assert pl._metadata_entry_points("gpuaffinity") == [pl.PluginInfo("bare", "b:c", "", "")]


# --- plugins.build_manager: entry points are looked for in the group "gpuaffinity", and only when asked ------------

def test_build_manager_reads_the_projects_group_and_none_when_told_not_to(monkeypatch):
    calls = []

    def find(group):
        calls.append(group)
        return [pl.PluginInfo("ext", "gpa_test_nowhere_at_all:plugin")]

    monkeypatch.setattr(pl, "find_entry_points", find)
    assert pl.build_manager([("b", object())], frozenset(), entry_points=False) == (None, [pl.PluginInfo("b")])
    assert calls == []
    monkeypatch.setattr(pl, "find_entry_points", lambda group: calls.append(group) or [])
    assert pl.build_manager([("b", object())], frozenset()) == (None, [pl.PluginInfo("b")])
    assert calls == ["gpuaffinity"]


# --- plugins._register: pluggy's refusal is wrapped, naming the plugin -----------------------------------------

def test_a_hookimpl_with_an_unknown_argument_is_not_a_valid_plugin(monkeypatch):
    mod = types.ModuleType("gpa_test_badargs")

    @hookimpl
    def gpuaffinity_strategies(bogus):
        return []

    mod.gpuaffinity_strategies = gpuaffinity_strategies
    monkeypatch.setitem(sys.modules, "gpa_test_badargs", mod)
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [pl.PluginInfo("ext", "gpa_test_badargs")])
    with pytest.raises(PluginError) as e:
        pl.build_manager([], frozenset())
    assert isinstance(e.value.__cause__, pluggy.PluginValidationError)
    assert str(e.value) == (f"plugin 'ext' (distribution ?, entry point ext = gpa_test_badargs) is not a valid "
                            f"gpuaffinity plugin: {e.value.__cause__}; disable it with GPUAFFINITY_DISABLE=ext")


# --- plugins.collect_strategies: a registered plugin without a PluginInfo is named by its plugin name ---------------

def test_a_plugin_missing_from_infos_is_named_by_its_registered_name():
    pm = pluggy.PluginManager("gpuaffinity")
    pm.add_hookspecs(HookSpec)
    pm.register(types.SimpleNamespace(gpuaffinity_strategies=hookimpl(lambda: [_Strat(priority="x")])), name="extra")
    with pytest.raises(PluginError) as e:
        pl.collect_strategies(pm, frozenset(), infos=())
    assert str(e.value) == ("built-in plugin 'extra' returned a strategy <strat> that has priority 'x', not an int; "
                            "fix it, or disable the plugin with GPUAFFINITY_DISABLE=extra")


# --- plugins.find_entry_points: egg-info too, other files skipped, a distribution once, "" is the working folder ---

def _dist(folder, name, text):
    d = folder / name
    d.mkdir()
    (d / "entry_points.txt").write_text(text, encoding="utf-8")


def test_find_entry_points_reads_dist_info_and_egg_info_once_per_distribution(tmp_path, monkeypatch):
    (tmp_path / "aaa.txt").write_text("not a distribution")
    _dist(tmp_path, "foo_bar-1.0.dist-info", "[gpuaffinity]\nfb = fb_mod:plugin\n")
    _dist(tmp_path, "foo_bar-2.0.dist-info", "[gpuaffinity]\nfb2 = fb2_mod:plugin\n")
    _dist(tmp_path, "zed-3.0-py3.11.egg-info", "[gpuaffinity]\nz = z_mod:plugin\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution) for i in got] == [("fb", "fb_mod:plugin", "foo-bar"),
                                                                 ("z", "z_mod:plugin", "zed")]
    assert got[0] == pl.PluginInfo("fb", "fb_mod:plugin", "foo-bar", "1.0")


def test_find_entry_points_reads_the_working_folder_for_an_empty_path_entry(tmp_path, monkeypatch):
    _dist(tmp_path, "here-1.0.dist-info", "[gpuaffinity]\nh = h_mod:plugin\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [""])
    assert pl.find_entry_points("gpuaffinity") == [pl.PluginInfo("h", "h_mod:plugin", "here", "1.0")]


# --- record._build: typing.ClassVar annotations are no fields; field() defaults are class attributes -------------

def test_a_typing_classvar_is_not_a_field():
    @rec.record
    class C:
        a: int
        k: typing.ClassVar[int] = 7

    assert (rec.fields(C), C(1).k, C(1) == C(1), repr(C(2)).endswith(".C(a=2)")) == (("a",), 7, True, True)
    with pytest.raises(TypeError):
        C(1, 2)


def test_a_field_default_is_the_class_attribute():
    @rec.record
    class F:
        a: int = rec.field(default=4)

    assert (F.__dict__.get("a"), F().a, F(5).a) == (4, 4, 5)


def test_a_record_without_fields_is_built_and_called():
    @rec.record
    class Empty:
        pass

    assert (Empty() == Empty(), repr(Empty()).endswith(".Empty()"), rec.fields(Empty)) == (True, True, ())


# --- record._copy / asdict: dict keys and values are copied through ---------------------------------------------

def test_asdict_copies_the_keys_and_values_of_a_dict():
    @rec.record(frozen=True)
    class K:
        x: int

    @rec.record
    class D:
        m: dict

    inner = [1, 2]
    got = rec.asdict(D({"k": inner, ("t", 1): K(2)}))
    assert got == {"m": {"k": [1, 2], ("t", 1): {"x": 2}}}
    assert got["m"]["k"] is not inner


# --- record: frozen assignment's message; record(cls, frozen=True) called directly; replace's and Field's ---------

def test_a_frozen_record_refuses_assignment_naming_field_and_class():
    @rec.record(frozen=True)
    class P:
        x: int

    with pytest.raises(rec.FrozenError, match=r"^cannot assign to field 'x' of a frozen P$"):
        P(1).x = 2


def test_record_called_with_a_class_and_frozen_makes_it_frozen():
    class Q:
        x: int

    rec.record(Q, frozen=True)
    with pytest.raises(rec.FrozenError, match=r"^cannot assign to field 'x' of a frozen Q$"):
        Q(1).x = 2
    assert hash(Q(1)) == hash(Q(1))


def test_replace_names_the_record_and_the_unknown_field():
    @rec.record
    class R:
        x: int

    with pytest.raises(TypeError, match=r"^R has no field 'z'$"):
        rec.replace(R(1), z=3)


def test_a_field_takes_one_default_and_has_no_name_until_a_record_names_it():
    with pytest.raises(ValueError, match=r"^a field takes a default or a default_factory, not both$"):
        rec.field(default=1, default_factory=list)
    assert rec.field(default=1).name == ""


# --- settings.stray_sim_variables: the environment by default; values cut to 120 characters ----------------------

def _msg(var, value, what="that folder"):
    return (f"gpuaffinity: {var}={value!r} is set outside `gpuaffinity sim run`: gpuaffinity reads {what} instead "
            "of this machine's; unset it unless you mean it")


def test_stray_sim_variables_reads_the_process_environment_by_default(monkeypatch):
    for var in (*st.SIM_ROOTS, st.SIM_CONFIG_VAR):
        monkeypatch.delenv(var, raising=False)
    assert st.stray_sim_variables() == []
    monkeypatch.setenv("GPUAFFINITY_DEV_ROOT", "/d")
    assert st.stray_sim_variables() == [_msg("GPUAFFINITY_DEV_ROOT", "/d")]


def test_a_stray_value_is_shown_cut_to_120_characters():
    value = "/" + "v" * 200
    assert st.stray_sim_variables({"GPUAFFINITY_DEV_ROOT": value}) == [_msg("GPUAFFINITY_DEV_ROOT", value[:120])]


def test_without_a_config_no_file_of_the_working_folder_stands_for_it(tmp_path, monkeypatch):
    for name in ("XXXX", "machine.json", "None"):
        (tmp_path / name).write_text("{}")
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "proc")
    assert st.stray_sim_variables({"GPUAFFINITY_PROCFS_ROOT": root}) == [_msg("GPUAFFINITY_PROCFS_ROOT", root)]
    assert st.stray_sim_variables({"GPUAFFINITY_SIM_CONFIG": "", "GPUAFFINITY_PROCFS_ROOT": root}) == [
        _msg("GPUAFFINITY_PROCFS_ROOT", root)]
    assert os.path.isfile("XXXX")
