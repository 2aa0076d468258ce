"""plugins.build_manager and collect_strategies, in process: plugins found by their entry points are loaded
and registered with pluggy, their hooks called, and each failure (a module that fails to import, no hook, a
hook that raises, two strategies of one name) named with the plugin it came from.
"""

from __future__ import annotations

import sys
import types

import pluggy
import pytest

from gpuaffinity import Answer, Strategy, hookimpl
from gpuaffinity.core import plugins as pl
from gpuaffinity.core.errors import PluginError
from helpers.fake_strategies import Fake, Good, U

# --- plugins.build_manager + collect_strategies: loading, registering and asking each plugin ------------------------

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


# --- plugins.build_manager: of two entry points with one name, only the first is loaded --------------------------

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
