"""Fake strategies and a context on a 3-GPU inventory, for tests that drive the chain (``resolve_one``) in the
test process, as tests/test_chain.py does with its own MIG-aware fakes; and ``Good``, a plain plugin strategy,
for the tests of plugin loading and validation."""

from __future__ import annotations

from gpuaffinity import Answer, ResolveContext, Strategy
from gpuaffinity.core.chain import resolve_one
from gpuaffinity.core.cvd import CvdResult
from gpuaffinity.core.model import GpuInfo, Inventory

GPUS = tuple(GpuInfo(i, f"GPU-{i:08x}-0000-0000-0000-000000000000", f"0000:{i + 1:02x}:00.0", f"H100-{i}")
             for i in range(3))
U = [g.uuid for g in GPUS]


class Fake(Strategy):
    """A strategy whose answer (or a function of (ctx, logical_id)) and cost (or a function of ctx) are given;
    no watchdog unless asked for."""

    def __init__(self, name, priority, result, cost="cheap", budget=5.0, watchdog=False):
        self.name, self.priority, self.result, self._cost = name, priority, result, cost
        self.budget, self.watchdog = budget, watchdog

    def cost(self, ctx):
        return self._cost(ctx) if callable(self._cost) else self._cost

    def answer(self, ctx, logical_id):
        r = self.result
        return r(ctx, logical_id) if callable(r) else r


def make_ctx(cvd=None, order=None, visible=3, unsure="", source="nvml"):
    return ResolveContext(Inventory(GPUS, source=source), cvd, order, visible, grammar=CvdResult((), unsure=unsure))


def run(strategies, policy="verify", c=None, logical_id=0):
    """resolve_one over ``strategies`` in priority order, on ``c`` (default: make_ctx())."""
    strategies = sorted(strategies, key=lambda s: (-s.priority, s.name))
    return resolve_one(strategies, c or make_ctx(), logical_id, policy)


def verdict(dev, name):
    """The verdict of the strategy ``name`` on the resolved device ``dev``."""
    [v] = [v for v in dev.verdicts if v.strategy == name]
    return v


class Good(Strategy):
    name, priority = "good", 80

    def answer(self, ctx, logical_id):
        return Answer(U[0])
