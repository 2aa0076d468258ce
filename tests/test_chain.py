"""The chain (core/chain.py resolve_one), in-process with fake strategies: every branch."""

from __future__ import annotations

import time

import pytest

from gpuaffinity import Abstain, Answer, ResolveContext, Strategy
from gpuaffinity.core.chain import IDENTITY, resolve_one
from gpuaffinity.core.cvd import CvdResult
from gpuaffinity.core.errors import ConflictError, DisagreementWarning, FallbackWarning, GpuAffinityError
from gpuaffinity.core.model import GpuInfo, Inventory, MigInfo

MIG = MigInfo("MIG-11111111-2222-3333-4444-555555555555", 1, 0)
GPUS = tuple(GpuInfo(i, f"GPU-{i:08x}-0000-0000-0000-000000000000", f"0000:{i + 1:02x}:00.0", "H100",
                     (MIG,) if i == 2 else ()) for i in range(3))
U = [g.uuid for g in GPUS]


class Fake(Strategy):
    watchdog = False

    def __init__(self, name, priority, result, cost="cheap", driver=False, budget=5.0, delay=0.0):
        self.name, self.priority, self.result, self._cost = name, priority, result, cost
        self.asks_driver, self.budget, self.delay, self.calls = driver, budget, delay, 0

    def cost(self, ctx):
        if isinstance(self._cost, Exception):
            raise self._cost
        return self._cost

    def answer(self, ctx, logical_id):
        self.calls += 1
        time.sleep(self.delay)
        r = self.result
        return r(logical_id) if callable(r) else r


def ctx(unsure="", visible=3):
    return ResolveContext(Inventory(GPUS), None, None, visible, grammar=CvdResult((), unsure=unsure))


def run(strategies, policy="verify", c=None, logical_id=0):
    strategies = sorted(strategies, key=lambda s: (-s.priority, s.name))
    return resolve_one(strategies, c or ctx(), logical_id, policy)


def said(dev):
    return {v.strategy: (v.result.uuid if isinstance(v.result, Answer) else v.result.reason, v.ran)
            for v in dev.verdicts}


def test_first_takes_the_first_answer_and_asks_nobody_else():
    a, b = Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[2]))
    dev, warns = run([a, b], "first")
    assert (dev.uuid, dev.strategy, dev.answered, dev.agreed, dev.disagreed) == (U[1], "a", ("a",), (), ())
    assert said(dev)["b"] == ("not asked: policy 'first'", False) and b.calls == 0 and warns == []


def test_verify_checks_with_every_cheap_one_and_defers_the_expensive():
    a, b = Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[1]))
    drv = Fake("drv", 100, Answer(U[1]), cost="expensive", driver=True)
    dev, warns = run([a, b, drv])
    assert (dev.strategy, dev.agreed, dev.driver_asked, warns) == ("a", ("a", "b"), False, [])
    assert drv.calls == 0 and said(dev)["drv"][0].startswith("not asked: it is expensive, and nothing called for it")


def test_verify_asks_the_expensive_one_on_disagreement_and_the_highest_priority_stands():
    a, b = Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[2]))
    drv = Fake("drv", 100, Answer(U[2]), cost="expensive", driver=True)
    dev, warns = run([a, b, drv])
    assert (dev.uuid, dev.strategy, dev.agreed, dev.disagreed, dev.driver_asked) == (
        U[2], "drv", ("drv", "b"), ("a",), True)
    [(cat, msg)] = warns
    assert cat is DisagreementWarning and "using drv's answer" in msg and "a says NVML 1" in msg


@pytest.mark.parametrize("policy", ["verify", "first"])
def test_the_driver_once_asked_is_final_over_any_priority(policy):
    """Issue 19: a plugin of priority 500 answers a wrong, well-formed UUID; the driver, asked because the cheap
    strategy disagrees (verify), names another GPU: the driver's answer stands, and the warning names both sides.
    Under first, nothing asks the driver, and the first answer stands as documented."""
    top, drv, cvd = Fake("top", 500, Answer(U[0])), Fake("drv", 100, Answer(U[1]), "expensive", True), \
        Fake("cvd", 50, Answer(U[1]))
    dev, warns = run([top, drv, cvd], policy)
    if policy == "first":
        assert (dev.strategy, dev.uuid, drv.calls) == ("top", U[0], 0)
        return
    assert (dev.strategy, dev.uuid, dev.disagreed, dev.agreed) == ("drv", U[1], ("top",), ("drv", "cvd"))
    [(cat, msg)] = warns
    assert cat is DisagreementWarning
    assert "top says NVML 0" in msg and "drv says NVML 1" in msg
    assert msg.endswith("using drv's answer (the CUDA driver's own answer is final over every other)")


def test_a_plugin_above_the_driver_stands_where_nothing_calls_for_the_driver():
    top, drv, cvd = Fake("top", 500, Answer(U[1])), Fake("drv", 100, Answer(U[2]), "expensive", True), \
        Fake("cvd", 50, Answer(U[1]))
    dev, warns = run([top, drv, cvd])
    assert (dev.strategy, dev.agreed, drv.calls, warns) == ("top", ("top", "cvd"), 0, [])


def test_verify_asks_the_expensive_one_when_nothing_cheap_answered_or_the_reading_is_unsure():
    drv = Fake("drv", 100, Answer(U[1]), "expensive", True)
    dev, _ = run([Fake("a", 60, Abstain("mute", quiet=True)), drv])
    assert (dev.strategy, drv.calls) == ("drv", 1)
    drv2 = Fake("drv", 100, Answer(U[1]), "expensive", True)
    dev, _ = run([Fake("a", 60, Answer(U[1])), drv2], c=ctx(unsure="rests on measured behaviour"))
    assert drv2.calls == 1 and dev.agreed == ("drv", "a")
    drv3 = Fake("drv", 100, Answer(U[1]), "expensive", True)
    run([Fake("a", 60, Answer(U[1])), drv3], policy="first", c=ctx(unsure="x"))
    assert drv3.calls == 0  # first: the unsure reading is not checked


def test_strict_asks_everyone_and_refuses_to_choose_but_keeps_the_verdicts():
    a, drv = Fake("a", 60, Answer(U[1])), Fake("drv", 100, Answer(U[2]), "expensive", True)
    with pytest.raises(ConflictError) as e:
        run([a, drv], "strict")
    assert e.value.device.strategy == "drv" and set(said(e.value.device)) == {"a", "drv"}
    assert "the strict policy refuses to choose" in str(e.value)
    dev, warns = run([Fake("a", 60, Answer(U[1])), Fake("drv", 100, Answer(U[1]), "expensive", True)], "strict")
    assert dev.agreed == ("drv", "a") and warns == []


def test_a_loud_abstention_above_makes_a_fallback_a_quiet_one_does_not():
    dev, warns = run([Fake("a", 60, Abstain("cannot read the list")), Fake("b", 50, Answer(U[1]))])
    assert dev.fallback and warns[0][0] is FallbackWarning and "a: cannot read the list" in warns[0][1]
    dev, warns = run([Fake("a", 60, Abstain("not here", quiet=True)), Fake("b", 50, Answer(U[1]))])
    assert not dev.fallback and warns == []


def test_nothing_answers_the_identity_guess_is_loud_and_bounded():
    dev, warns = run([Fake("a", 60, Abstain("no"))], logical_id=1)
    assert (dev.strategy, dev.nvml_index, dev.fallback, dev.answered) == (IDENTITY, 1, True, ())
    assert warns[0][0] is FallbackWarning and "guessing NVML index 1" in warns[0][1]
    with pytest.raises(GpuAffinityError, match="NVML has only 3 GPUs"):
        run([Fake("a", 60, Abstain("no"))], c=ctx(visible=5), logical_id=4)


def test_the_mig_instance_comes_from_whoever_knows_it():
    dev, _ = run([Fake("a", 60, Answer(U[2])), Fake("b", 50, Answer(U[2], MIG.uuid))])
    assert dev.mig_uuid == MIG.uuid and dev.agreed == ("a", "b")


def test_a_cost_that_raises_or_says_nonsense_is_an_abstention():
    dev, warns = run([Fake("a", 60, Answer(U[1]), cost=RuntimeError("boom")), Fake("b", 50, Answer(U[1]))])
    assert said(dev)["a"] == ("cost() raised RuntimeError: boom", True) and dev.fallback
    dev, _ = run([Fake("a", 60, Answer(U[1]), cost="fast"), Fake("b", 50, Answer(U[1]))])
    assert said(dev)["a"][0] == "cost() returned 'fast', not 'cheap' or 'expensive'"


def test_the_budget_is_for_the_whole_resolution_and_the_watchdog_ends_a_hang():
    slow = Fake("slow", 60, Answer(U[1]), budget=0.2, delay=0.3)
    c = ctx()
    first, _ = run([slow, Fake("b", 50, Answer(U[1]))], c=c, logical_id=0)
    again, _ = run([slow, Fake("b", 50, Answer(U[1]))], c=c, logical_id=1)
    assert first.strategy == "slow"  # the first call finished, over budget; its answer still counts
    assert said(again)["slow"][0].startswith("over its time budget of 0.2 s") and slow.calls == 1
    hang = Fake("hang", 60, Answer(U[1]), budget=0.3, delay=30)
    hang.watchdog = True
    start = time.perf_counter()
    dev, _ = run([hang, Fake("b", 50, Answer(U[1]))])
    assert time.perf_counter() - start < 5 and dev.strategy == "b"
    assert said(dev)["hang"][0] == ("answer(0) ran past its time budget of 0.3 s: abandoned, and not asked again in "
                                    "this resolution")


class Batch(Strategy):
    name, priority, watchdog = "batch", 70, False

    def __init__(self, result):
        self.result, self.calls = result, 0

    def answer_all(self, ctx):
        self.calls += 1
        return self.result

    def answer(self, ctx, logical_id):
        raise AssertionError("answer_all was offered: answer is not asked")


def test_answer_all_is_asked_once_for_every_device():
    b, c = Batch([Answer(U[2]), Answer(U[0]), Abstain("no", quiet=True)]), ctx()
    got = [run([b], c=c, logical_id=i)[0] for i in range(3)]
    assert [d.strategy for d in got] == ["batch", "batch", IDENTITY] and b.calls == 1
    wrong = Batch([Answer(U[0])])
    dev, _ = run([wrong, Fake("cvd", 50, Answer(U[1]))])
    assert said(dev)["batch"][0] == ("answer_all returned list of 1 items, not one per visible device (3)")


@pytest.mark.parametrize(("result", "reason"), [
    (GPUS[0], "returned a GpuInfo record instead of an Answer"),
    (Answer(GPUS[0]), "answered a GpuInfo record instead of its UUID"),
    (Answer(None), "answered NoneType 'None', not a GPU UUID string"),
    (Answer(MIG.uuid), "put a MIG UUID where the GPU's belongs"),
    (Answer(U[0], mig_uuid="GPU-x"), "gave mig_uuid 'GPU-x', not a MIG-... UUID"),
    (Answer("GPU-ffffffff-0000-0000-0000-000000000000"), "which is not a GPU this process can use"),
    (Abstain(None), "abstained without a reason"),
    (Abstain(""), "abstained without a reason"),
    ("GPU-x", "returned str, not Answer or Abstain"),
])
def test_every_answer_is_checked(result, reason):
    dev, warns = run([Fake("p", 60, result), Fake("cvd", 50, Answer(U[1]))])
    assert reason in said(dev)["p"][0] and dev.strategy == "cvd" and dev.fallback and warns


def test_a_guess_with_every_strategy_disabled_ends_its_sentence_cleanly(sim_factory):
    """No abstention to list: each warning ends at its full stop, without a dangling space."""
    from conftest import run_json

    code = ("import json, warnings, gpuaffinity\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    gpuaffinity.resolve(0, disable=['pci', 'cvd', 'torch'])\n"
            "print(json.dumps([str(x.message) for x in w]))")
    messages = run_json(sim_factory("dgx-h100"), code)
    assert len(messages) == 8 and all(m.endswith("differs from NVML's.") for m in messages), messages


def test_the_fallback_warning_leaves_out_quiet_abstentions():
    """Issue 19: docs/plugins.md says a quiet abstention ("I do not apply here") makes no fallback warning; nor
    does it appear among the reasons of one that another strategy caused.  doctor still shows it."""
    top = Fake("launcher", 90, Abstain("LAUNCHER_GPU_UUIDS is not set", quiet=True))
    loud = Fake("torch", 60, Abstain("torch broke"))
    dev, warns = run([top, loud, Fake("cvd", 50, Answer(U[1]))])
    [(cat, msg)] = warns
    assert cat is FallbackWarning and msg.endswith("Abstained: torch: torch broke.")
    assert "LAUNCHER_GPU_UUIDS" not in msg
    assert said(dev)["launcher"] == ("LAUNCHER_GPU_UUIDS is not set", True)
    _, warns = run([top, Fake("cvd", 50, Answer(U[1]))])
    assert warns == []
