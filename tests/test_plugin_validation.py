"""plugins.validate and collect_strategies, in process: a third-party strategy is checked part by part
before the chain may ask it, and the error names the plugin, the strategy and what is wrong with it.
"""

from __future__ import annotations

import sys
import types

import pluggy
import pytest

from gpuaffinity import hookimpl
from gpuaffinity.core import plugins as pl
from gpuaffinity.core.errors import PluginError
from gpuaffinity.core.hookspec import HookSpec
from helpers.fake_strategies import Good

# --- plugins.validate: every check named, with the plugin and how to disable it -------------------------------------

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


# --- plugins._short / validate: the strategy shown by its repr, cut at 80 characters; every check named -------

def test_short_is_the_repr_cut_at_80_characters():
    assert pl._short(types.SimpleNamespace(name="ok")) == "namespace(name='ok')"
    assert pl._short("x" * 78) == "'" + "x" * 78 + "'"
    assert pl._short("x" * 100) == "'" + "x" * 79 + "..."


OWNER = pl.PluginInfo("ext", "ext_mod:plugin", "ext-dist", "2.0")
# the message around what is wrong: as regular expressions, and as plain text for a _Strat
HEAD_RE = r"^plugin 'ext' \(distribution ext-dist 2\.0, entry point ext = ext_mod:plugin\) returned a strategy "
TAIL_RE = r"; fix it, or disable the plugin with GPUAFFINITY_DISABLE=ext$"
HEAD = "plugin 'ext' (distribution ext-dist 2.0, entry point ext = ext_mod:plugin) returned a strategy <strat> that "
TAIL = "; fix it, or disable the plugin with GPUAFFINITY_DISABLE=ext"


class _Strat:
    """A strategy with a short fixed repr, whose parts are given (or, in ``drop``, left out)."""

    def __init__(self, drop=(), **kw):
        self.name, self.priority, self.answer = "ok", 1, lambda c, i: None
        self.__dict__.update(kw)
        for k in drop:
            del self.__dict__[k]

    def __repr__(self):
        return "<strat>"


def test_validate_shows_the_strategy_and_refuses_a_nameless_one():
    with pytest.raises(PluginError, match=HEAD_RE + r"namespace\(priority=1\) that has no usable name \(None: want a "
                                          r"short identifier such as 'launcher'\)" + TAIL_RE):
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


# --- plugins._accepts / validate: a builtin without a signature is taken on trust --------------------------------

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


# --- plugins._short: a repr of 81 characters is cut ----------------------------------------------------------------

def test_short_cuts_a_repr_of_81_characters():
    assert pl._short("x" * 78) == "'" + "x" * 78 + "'"
    assert pl._short("x" * 79) == "'" + "x" * 79 + "..."


# --- plugins.collect_strategies: a registered plugin without a PluginInfo is named by its plugin name ---------------

def test_a_plugin_missing_from_infos_is_named_by_its_registered_name():
    pm = pluggy.PluginManager("gpuaffinity")
    pm.add_hookspecs(HookSpec)
    pm.register(types.SimpleNamespace(gpuaffinity_strategies=hookimpl(lambda: [_Strat(priority="x")])), name="extra")
    with pytest.raises(PluginError) as e:
        pl.collect_strategies(pm, frozenset(), infos=())
    assert str(e.value) == ("built-in plugin 'extra' returned a strategy <strat> that has priority 'x', not an int; "
                            "fix it, or disable the plugin with GPUAFFINITY_DISABLE=extra")
