"""plugins.validate and collect_strategies, in process: a third-party strategy is checked part by part
before the chain may ask it, and the error names the plugin, the strategy and what is wrong with it.
"""

from __future__ import annotations

import types

import pytest

from fake_strategies import Good
from gpuaffinity.core import plugins as pl
from gpuaffinity.core.errors import PluginError

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
