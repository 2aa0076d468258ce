"""How the chain (core/chain.py) asks one strategy, in process, with the fakes of tests/helpers/fake_strategies.py.

What a duck-typed strategy gets by default, the context its methods are handed, answer_all batches, the watchdog
thread, time budgets, cost(), and the abstention that an exception or a malformed result becomes (its reason
text, cut where the text is long, and its traceback).
"""

from __future__ import annotations

import logging
import threading
import traceback

import pytest

from gpuaffinity import Abstain, Answer, Strategy
from gpuaffinity.core import chain
from gpuaffinity.core.model import Verdict
from helpers.fake_strategies import GPUS, Fake, U, make_ctx, run, verdict

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
    c.stash[chain.SPENT] = {"slow": 1.0}
    dev, _ = run([Fake("slow", 60, Answer(U[0]), budget=1.0), Fake("cvd", 50, Answer(U[1]))], c=c)
    v = verdict(dev, "slow")
    assert v.result == Abstain("over its time budget of 1 s for this resolution: not asked again")
    assert v.trace == "" and dev.strategy == "cvd"


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
    c.stash[chain.SPENT] = {"duck": 1.0}
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


def _raise(e):
    def fn(*args):
        raise e
    return fn


# --- chain._ask: answer_all's batch is kept in ctx.stash[chain.EVERY], by strategy name, for every device ----------

def test_the_batch_of_answer_all_and_its_absence_are_kept_in_the_stash():
    class Batch(Strategy):
        name, priority, watchdog = "batch", 70, False

        def answer_all(self, ctx):
            return [Answer(U[2]), Answer(U[1]), Answer(U[0])]

    c = make_ctx()
    dev, warns = run([Batch(), Fake("cvd", 50, Answer(U[2]))], c=c)
    assert (dev.strategy, dev.uuid, warns) == ("batch", U[2], [])
    assert c.stash[chain.EVERY] == {"batch": [Answer(U[2]), Answer(U[1]), Answer(U[0])], "cvd": None}


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
    c.stash[chain.SPENT] = {"a": 0.5}
    dev, _ = run([Fake("a", 60, Answer(U[1]))], c=c)
    assert dev.strategy == "a"
    assert 0.5 < c.stash[chain.SPENT]["a"] < 1.5


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


# --- strategy.Strategy.answer: a subclass without answer() abstains, naming itself -------------------------------

def test_a_strategy_without_answer_raises_naming_itself_and_so_abstains():
    class Bare(Strategy):
        name, priority, watchdog = "bare", 60, False

    with pytest.raises(NotImplementedError, match=r"^strategy 'bare' has no answer\(\)$"):
        Bare().answer(make_ctx(), 0)
    dev, _ = run([Bare(), Fake("cvd", 50, Answer(U[1]))])
    assert verdict(dev, "bare").result == Abstain("raised NotImplementedError: strategy 'bare' has no answer()")
