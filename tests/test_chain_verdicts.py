"""What resolve_one (core/chain.py) records and says, in process, with the fakes of tests/helpers/fake_strategies.py.

The verdicts of the strategies it did not ask (policy 'first', expensive ones nothing called for), when an
answer counts as a fallback, the identity guess and strict's refusal when nothing answers, the fields of the
answered device, and the text of the fallback and disagreement warnings.
"""

from __future__ import annotations

import pytest

from gpuaffinity import Abstain, Answer
from gpuaffinity.core import chain
from gpuaffinity.core.chain import IDENTITY
from gpuaffinity.core.errors import DisagreementWarning, FallbackWarning, GpuAffinityError, UnresolvedError
from gpuaffinity.core.model import Verdict
from helpers.fake_strategies import Fake, U, make_ctx, run, verdict

ENV = "CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None"


# --- resolve_one, policy 'first': the skipped strategies' verdicts are quiet abstentions that did not run -------

def test_first_records_the_skipped_ones_as_quiet_and_not_run():
    dev, _ = run([Fake("a", 60, Answer(U[1])), Fake("b", 50, Answer(U[2]))], "first")
    v = verdict(dev, "b")
    assert (v.result, v.result.quiet, v.ran) == (Abstain("not asked: policy 'first'", quiet=True), True, False)


# --- resolve_one, nothing answers: the identity guess, the fallback warning, strict's UnresolvedError ----------

ENV_SET = "CUDA_VISIBLE_DEVICES='2,1,0', CUDA_DEVICE_ORDER='PCI_BUS_ID'"


def test_the_identity_guess_is_the_whole_gpu_at_the_logical_id_with_every_verdict():
    dev, warns = run([Fake("a", 60, Abstain("no list"))], c=make_ctx("2,1,0", "PCI_BUS_ID"), logical_id=1)
    assert (dev.logical_id, dev.nvml_index, dev.uuid, dev.pci_bus_id, dev.mig_uuid, dev.name, dev.strategy) == (
        1, 1, U[1], "0000:02:00.0", None, "H100-1", IDENTITY)
    assert (dev.agreed, dev.disagreed, dev.fallback, dev.answered, dev.inventory) == ((), (), True, (), "nvml")
    assert dev.verdicts == (Verdict("a", 60, Abstain("no list")),)
    assert warns == [(FallbackWarning, f"gpuaffinity: no strategy could resolve CUDA device 1 ({ENV_SET}); guessing "
                                       "NVML index 1 (0000:02:00.0), which is wrong whenever CUDA's numbering "
                                       "differs from NVML's. Abstained: a: no list.")]


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
