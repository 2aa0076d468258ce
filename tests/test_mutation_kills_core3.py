"""Third batch of in-process tests pinning core/chain.py, core/plugins.py, core/record.py and core/settings.py.

Each group says what it pins; the strategies are fakes in the manner of tests/test_chain.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from fake_strategies import Fake, U, make_ctx, run
from gpuaffinity import Abstain, Answer, Strategy, hookimpl
from gpuaffinity.core import plugins as pl
from gpuaffinity.core import record as rec
from gpuaffinity.core import settings as st
from gpuaffinity.core.model import Verdict


def verdict(dev, name):
    [v] = [v for v in dev.verdicts if v.strategy == name]
    return v


# --- _ask: answer_all returning something without a length abstains with "?" items, not with a TypeError -------

def test_answer_all_returning_a_non_sequence_abstains_with_a_question_mark():
    class NotAList(Fake):
        def answer_all(self, ctx):
            return 5

    dev, _ = run([NotAList("batch", 70, Answer(U[2])), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "batch").result == Abstain("answer_all returned int of ? items, not one per visible "
                                                   "device (3)")
    assert (dev.strategy, dev.uuid, dev.fallback) == ("cvd", U[1], True)


# --- _call: a budget spent exactly to 0 left is over (a strategy without answer_all goes straight to answer) ------

class DuckOnBudget:
    name, priority, budget, watchdog = "duck", 60, 1.0, False

    def answer(self, ctx, logical_id):
        return Answer(U[2])


def test_a_budget_with_exactly_nothing_left_is_over():
    c = make_ctx()
    c.scratch["_spent"] = {"duck": 1.0}
    dev, _ = run([DuckOnBudget(), Fake("cvd", 50, Answer(U[1]))], c=c)
    assert verdict(dev, "duck").result == Abstain("over its time budget of 1 s for this resolution: not asked again")
    assert (dev.strategy, dev.uuid) == ("cvd", U[1])


# --- _cost: an unknown cost word is shown cut to 40 characters ------------------------------------------------

def test_an_unknown_cost_word_is_shown_cut_to_40_characters():
    dev, _ = run([Fake("odd", 60, Answer(U[2]), cost="c" * 50), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "odd").result == Abstain("cost() returned '" + "c" * 40 + "', not 'cheap' or 'expensive'")
    assert verdict(dev, "odd").ran is True


# --- _mistake: a bad mig_uuid is shown cut to 60 characters ------------------------------------------------------

def test_a_bad_mig_uuid_is_shown_cut_to_60_characters():
    dev, _ = run([Fake("mig", 60, Answer(U[2], mig_uuid="m" * 70)), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "mig").result == Abstain("gave mig_uuid '" + "m" * 60 + "', not a MIG-... UUID")
    assert dev.strategy == "cvd"


# --- resolve_one: an answered device says how the GPU list was established -------------------------------------

def test_an_answered_device_carries_the_inventory_label():
    dev, warns = run([Fake("cvd", 50, Answer(U[1]))])
    assert (dev.strategy, dev.uuid, dev.inventory, warns) == ("cvd", U[1], "nvml", [])


# --- resolve_one: a strategy whose cost() is unusable is skipped, and the ones after it are still asked ---------

def test_the_strategies_after_one_with_a_bad_cost_are_still_asked():
    dev, warns = run([Fake("odd", 60, Answer(U[2]), cost="free"), Fake("cvd", 50, Answer(U[1])),
                      Fake("low", 40, Answer(U[1]))])
    assert (dev.strategy, dev.uuid, dev.answered, dev.agreed, dev.fallback) == (
        "cvd", U[1], ("cvd", "low"), ("cvd", "low"), True)
    assert verdict(dev, "odd") == Verdict("odd", 60, Abstain("cost() returned 'free', not 'cheap' or 'expensive'"))
    assert [w[1] for w in warns] == [
        "gpuaffinity: CUDA device 0 (CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None) resolved by fallback "
        "strategy 'cvd' because higher-priority strategies could not answer. Abstained: odd: cost() returned "
        "'free', not 'cheap' or 'expensive'."]


# --- plugins._section: a ";" comment is skipped even when it holds "="; the value ends at "[" without a space ---

def test_section_skips_semicolon_comments_and_cuts_an_extra_without_a_space():
    text = "[gpuaffinity]\n; off = old.mod:plugin\na = pkg.mod:attr[extra]\n"
    assert pl._section(text, "gpuaffinity") == [("a", "pkg.mod:attr")]


# --- plugins.build_manager: of two entry points with one name, only the first is loaded --------------------------

class Good(Strategy):
    name, priority = "good", 80

    def answer(self, ctx, logical_id):
        return Answer(U[0])


class Other(Strategy):
    name, priority = "other", 70

    def answer(self, ctx, logical_id):
        return Answer(U[1])


def test_the_first_entry_point_of_a_name_wins(monkeypatch):
    for mod_name, strategy in (("gpa_test_dup_a", Good()), ("gpa_test_dup_b", Other())):
        mod = types.ModuleType(mod_name)
        mod.gpuaffinity_strategies = hookimpl(lambda strategy=strategy: [strategy])
        monkeypatch.setitem(sys.modules, mod_name, mod)
    first, second = pl.PluginInfo("ext", "gpa_test_dup_a", "a", "1"), pl.PluginInfo("ext", "gpa_test_dup_b", "b", "2")
    monkeypatch.setattr(pl, "find_entry_points", lambda group: [first, second])
    pm, infos = pl.build_manager([], frozenset())
    assert infos == [first]
    assert [s.name for s in pl.collect_strategies(pm, frozenset(), infos)] == ["good"]


# --- settings.stray_sim_variables: a config that is not a file gives no folder for roots to be inside -----------

def test_a_root_beside_a_missing_config_is_still_stray(tmp_path):
    root = str(tmp_path / "proc")
    env = {"GPUAFFINITY_SIM_CONFIG": str(tmp_path / "gone.json"), "GPUAFFINITY_PROCFS_ROOT": root}
    assert st.stray_sim_variables(env) == [
        f"gpuaffinity: GPUAFFINITY_PROCFS_ROOT={root!r} is set outside `gpuaffinity sim run`: gpuaffinity reads "
        "that folder instead of this machine's; unset it unless you mean it"]


# --- record._build: a mutable record keeps its own __hash__; field() defaults become class attributes --------------

def test_a_mutable_record_keeps_its_own_hash():
    @rec.record
    class M:
        x: int

        def __hash__(self):
            return 11

    assert (hash(M(1)), M(1) == M(1), M(1) == M(2)) == (11, True, False)


def test_a_mutable_record_without_its_own_hash_is_unhashable():
    @rec.record
    class N:
        x: int

    assert N.__hash__ is None
    with pytest.raises(TypeError, match=r"^unhashable type: 'N'$"):
        hash(N(1))


def test_field_defaults_are_class_attributes_and_factories_are_not():
    @rec.record
    class F:
        a: int = rec.field(default=4)
        b: list = rec.field(default_factory=list)

    assert (F.__dict__.get("a"), "b" in F.__dict__) == (4, False)
    assert (F().a, F().b, F(1, [2]).b) == (4, [], [2])
