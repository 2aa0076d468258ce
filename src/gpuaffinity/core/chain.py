"""The chain: strategies by priority, answers compared on the physical GPU, a policy to decide.

Policies:

``first``
    The first answer, in priority order, wins; nothing else runs.

Under ``first`` and ``verify``, expensive strategies (see ``Strategy.cost``)
are asked after the cheap ones, and only when something calls for them.
``verify`` (default)
    After the first answer, every other *cheap* strategy runs as a check.  The
    expensive ones (ground truth at a price: the built-in ``pci`` asks the
    driver in a child process, about 1 s of ``cuInit`` on the lent H200s)
    run too when no cheap strategy answered, when cheap ones disagree, or when
    the reading of CUDA_VISIBLE_DEVICES is unsure (``CvdResult.unsure``: it
    rests on undocumented driver behaviour, or ends at a UUID naming nothing in
    this process's GPU list): such an answer is checked against the driver.
    On disagreement a
    DisagreementWarning names every answer; the CUDA driver's answer stands
    where it was asked (see below), else the highest-priority answer.
``strict``
    Every strategy runs, expensive ones too; any disagreement is a ConflictError, and where no strategy answers
    it does not guess: UnresolvedError (both exit status 3 on the command line).

The CUDA driver's answer, once asked (a strategy with ``asks_driver``: the
built-in ``pci``; plugins may not claim it), is final: no priority outranks it.
A plugin above the driver's priority answers first, and where nothing calls
for the driver its answer stands; where the driver is asked and names another
GPU, the driver's answer stands and the warning names both.

A result says who answered (``answered``), who gave the same GPU (``agreed``:
empty when one strategy answered alone, since nothing confirmed it), whether
the CUDA driver itself answered (``driver_asked``) and how the GPU list was
established (``inventory``).

An answer is a *fallback* when a higher-priority strategy abstained for a
reason other than not applying here (see ``Abstain.quiet``), or when nothing
answered and the identity mapping (logical id = NVML index) was used; either
way a FallbackWarning says so.

Owns: the verdict of the strategies on one logical device.
"""

from __future__ import annotations

import time
from _collections_abc import Sequence  # what collections.abc re-exports, loaded with os: no import to pay for

from gpuaffinity.core.errors import (
    ConflictError,
    DisagreementWarning,
    FallbackWarning,
    GpuAffinityError,
    UnresolvedError,
    shown,
)
from gpuaffinity.core.model import Abstain, Answer, GpuInfo, PhysicalDevice, Verdict
from gpuaffinity.core.strategy import COSTS, OPTIONAL, ResolveContext, StashKey, Strategy

#: per resolution: the seconds each strategy spent (by name), and each one's answer_all (by name)
SPENT: StashKey[dict] = StashKey("chain.spent")
EVERY: StashKey[dict] = StashKey("chain.answer_all")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

IDENTITY = "identity"


def _debug(what: str) -> None:
    """The traceback of the exception being handled, at DEBUG on the logger "gpuaffinity" (loaded only here)."""
    import logging

    logging.getLogger("gpuaffinity").debug(what, exc_info=True)


class _Over(Exception):
    """A strategy ran past its budget."""


def _call(s: Strategy, ctx: ResolveContext, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` for strategy ``s``, within what is left of its budget for this resolution (a worker thread when
    its ``watchdog`` is on, so that even a call that never returns ends there).  Raises _Over past it."""
    budget = float(getattr(s, "budget", OPTIONAL["budget"]))
    spent = ctx.stash.setdefault(SPENT, {})
    left = budget - spent.get(s.name, 0.0)
    if left <= 0:
        raise _Over(f"over its time budget of {budget:g} s for this resolution: not asked again")
    start = time.perf_counter()
    try:
        if not getattr(s, "watchdog", OPTIONAL["watchdog"]):
            return fn()
        box: list[Any] = []

        def work() -> None:
            try:
                box.append((True, fn()))
            except BaseException as e:  # handed to the caller below
                box.append((False, e))

        import threading  # only for a strategy with a watchdog: no built-in has one

        worker = threading.Thread(target=work, name=f"gpuaffinity-{s.name}", daemon=True)
        worker.start()
        worker.join(left)
        if not box:
            spent[s.name] = budget
            raise _Over(f"{what} ran past its time budget of {budget:g} s: abandoned, and not asked again in this "
                        "resolution")
        ok, value = box[0]
        if not ok:
            raise value
        return value
    finally:
        spent[s.name] = spent.get(s.name, 0.0) + time.perf_counter() - start


def _mistake(s: Strategy, res: object, ctx: ResolveContext) -> str | None:
    """What is wrong with a strategy's result, in words a plugin author can act on; None when it is usable."""
    if isinstance(res, Abstain):
        return None if isinstance(res.reason, str) and res.reason else \
            "abstained without a reason (give one: doctor shows it)"
    if not isinstance(res, Answer):
        if isinstance(res, GpuInfo):
            return "returned a GpuInfo record instead of an Answer: return Answer(gpu.uuid)"
        return f"returned {type(res).__name__}, not Answer or Abstain"
    if isinstance(res.uuid, GpuInfo):
        return "answered a GpuInfo record instead of its UUID: use Answer(gpu.uuid)"
    if not isinstance(res.uuid, str):
        return f"answered {type(res.uuid).__name__} {str(res.uuid)[:60]!r}, not a GPU UUID string"
    if res.uuid.startswith("MIG-"):
        return "put a MIG UUID where the GPU's belongs: use Answer(gpu_uuid, mig_uuid=...)"
    if res.mig_uuid is not None and (not isinstance(res.mig_uuid, str) or not res.mig_uuid.startswith("MIG-")):
        return f"gave mig_uuid {str(res.mig_uuid)[:60]!r}, not a MIG-... UUID"
    if ctx.inventory.by_uuid(res.uuid) is None:
        return f"answered {res.uuid[:60]}, which is not a GPU this process can use"
    return None


def _ask(s: Strategy, ctx: ResolveContext, logical_id: int) -> tuple[Answer | Abstain, str]:
    """The strategy's answer for one device, checked, and the traceback text of an exception ("" if none)."""
    try:
        every = ctx.stash.setdefault(EVERY, {})
        if s.name not in every:  # one call for every device, where the strategy offers it
            fn = getattr(s, "answer_all", None)
            every[s.name] = _call(s, ctx, "answer_all", lambda: fn(ctx)) if fn else None
        batch = every[s.name]
        if batch is not None:
            if isinstance(batch, str | bytes) or not isinstance(batch, Sequence) or len(batch) != ctx.visible:
                res: object = Abstain(f"answer_all returned {type(batch).__name__} of "
                                      f"{len(batch) if isinstance(batch, Sequence) else '?'} items, not one per "
                                      f"visible device ({ctx.visible})")
            else:
                res = batch[logical_id]
        else:
            res = _call(s, ctx, f"answer({logical_id})", lambda: s.answer(ctx, logical_id))
    except _Over as e:
        return Abstain(str(e)), ""
    except Exception as e:  # a strategy that raises abstains; its reason says why, the traceback is kept
        import traceback

        _debug(f"strategy {s.name} raised")
        return Abstain(f"raised {type(e).__name__}: {str(e)[:300]}"), "".join(traceback.format_exception(e))
    why = _mistake(s, res, ctx)
    return (Abstain(why), "") if why else (res, "")  # type: ignore[return-value]


def _cost(s: Strategy, ctx: ResolveContext) -> str | Abstain:
    """"cheap" or "expensive"; an abstention when cost() raises or says something else."""
    fn = getattr(s, "cost", None)
    if fn is None:
        return "cheap"
    try:
        word = fn(ctx)
    except Exception as e:
        _debug(f"strategy {s.name}: cost() raised")
        return Abstain(f"cost() raised {type(e).__name__}: {str(e)[:200]}")
    if word not in COSTS:
        return Abstain(f"cost() returned {str(word)[:40]!r}, not 'cheap' or 'expensive'")
    return word


def resolve_one(strategies: Sequence[Strategy], ctx: ResolveContext, logical_id: int,
                policy: str) -> tuple[PhysicalDevice, list[tuple[type[Warning], str]]]:
    verdicts: dict[str, Verdict] = {}
    winner: tuple[Strategy, Answer] | None = None
    loud: list[str] = []  # higher-priority strategies that abstained for a reason

    def run(s: Strategy) -> Answer | Abstain:
        res, trace = _ask(s, ctx, logical_id)
        verdicts[s.name] = Verdict(s.name, s.priority, res, trace=trace)
        return res

    deferred: list[Strategy] = []  # expensive strategies: ground truth at a price, asked only when needed

    for s in strategies:
        if winner is not None and policy == "first":
            verdicts[s.name] = Verdict(s.name, s.priority, Abstain("not asked: policy 'first'", quiet=True), False)
            continue
        cost = _cost(s, ctx)
        if isinstance(cost, Abstain):  # a strategy that cannot say what it costs is not asked
            verdicts[s.name] = Verdict(s.name, s.priority, cost)
            if winner is None:
                loud.append(s.name)
            continue
        if policy != "strict" and cost == "expensive":
            deferred.append(s)
            continue
        res = run(s)
        if isinstance(res, Answer):
            if winner is None:
                winner = (s, res)
        elif winner is None and not res.quiet:
            loud.append(s.name)

    def doubtful() -> bool:
        """No answer yet, answers that disagree, or (verify) an answer read with a measured quirk."""
        if winner is None:
            return True
        if policy == "verify" and ctx.grammar.unsure:
            return True
        return any(isinstance(v.result, Answer) and v.result.uuid.lower() != winner[1].uuid.lower()
                   for v in verdicts.values())

    # Deferred strategies run when nothing cheaper answered, to settle a disagreement, or to check a reading
    # that rests on undocumented driver behaviour.
    for s in deferred:
        if winner is not None and (policy == "first" or not doubtful()):
            why = ("policy 'first'" if policy == "first" else
                   "it is expensive, and nothing called for it (no cheaper answer was contradicted, and "
                   "CUDA_VISIBLE_DEVICES reads the same under the documented grammar); policy 'strict' asks it")
            verdicts[s.name] = Verdict(s.name, s.priority, Abstain(f"not asked: {why}", True), False)
            continue
        res = run(s)
        if isinstance(res, Answer) and (winner is None or s.priority > winner[0].priority):
            winner = (s, res)
        elif isinstance(res, Abstain) and winner is None and not res.quiet:
            loud.append(s.name)
    # The driver's answer, once asked, is final: it stands over any priority (a plugin's included).
    driver = next((s for s in strategies if getattr(s, "asks_driver", False) and s.name in verdicts
                   and isinstance(verdicts[s.name].result, Answer)), None)
    if driver is not None:
        winner = (driver, verdicts[driver.name].result)  # type: ignore[assignment]

    warns: list[tuple[type[Warning], str]] = []
    env = f"CUDA_VISIBLE_DEVICES={shown(ctx.cvd)}, CUDA_DEVICE_ORDER={shown(ctx.device_order)}"
    ordered = tuple(sorted(verdicts.values(), key=lambda v: (-v.priority, v.strategy)))
    if winner is None:
        if logical_id >= len(ctx.inventory.gpus):
            raise GpuAffinityError(f"no strategy could resolve CUDA device {logical_id} ({env}) and NVML has only "
                                   f"{len(ctx.inventory.gpus)} GPUs." + _reasons(ordered))
        gpu = ctx.inventory.gpus[logical_id]
        guess = PhysicalDevice(logical_id, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, None, gpu.name, IDENTITY,
                               (), (), True, inventory=ctx.inventory.label, verdicts=ordered)
        if policy == "strict":
            raise UnresolvedError(f"gpuaffinity: no strategy could resolve CUDA device {logical_id} ({env}) and the "
                                  "strict policy does not guess (use --policy verify to take NVML index "
                                  f"{logical_id} with a warning)." + _reasons(ordered), device=guess)
        warns.append((FallbackWarning, f"gpuaffinity: no strategy could resolve CUDA device {logical_id} ({env}); "
                                   f"guessing NVML index {logical_id} ({gpu.pci_bus_id}), which is wrong whenever "
                                   f"CUDA's numbering differs from NVML's." + _reasons(ordered)))
        return guess, warns

    strategy, ans = winner
    gpu = ctx.inventory.by_uuid(ans.uuid)
    assert gpu is not None
    answered = tuple(v.strategy for v in ordered if isinstance(v.result, Answer))
    agreed = tuple(v.strategy for v in ordered
                   if isinstance(v.result, Answer) and v.result.uuid.lower() == ans.uuid.lower())
    if len(agreed) < 2:
        agreed = ()  # one answer alone: nothing agreed with it
    disagreed = tuple(v.strategy for v in ordered
                      if isinstance(v.result, Answer) and v.result.uuid.lower() != ans.uuid.lower())
    by_driver = {s.name for s in strategies if getattr(s, "asks_driver", False)}
    fallback = any(verdicts[n].priority > strategy.priority for n in loud)
    # answers are compared on the physical GPU; the MIG instance comes from whoever knows it
    mig = ans.mig_uuid or next((v.result.mig_uuid for v in ordered if isinstance(v.result, Answer)
                                and v.result.uuid.lower() == ans.uuid.lower() and v.result.mig_uuid), None)
    device = PhysicalDevice(logical_id, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, mig, gpu.name,
                            strategy.name, agreed, disagreed, fallback, answered=answered,
                            driver_asked=any(n in by_driver for n in answered), inventory=ctx.inventory.label,
                            verdicts=ordered)
    if disagreed:
        detail = "; ".join(f"{v.strategy} says {_gpu_text(ctx, v.result)}" for v in ordered
                           if isinstance(v.result, Answer))
        head = f"gpuaffinity: strategies disagree on CUDA device {logical_id} ({env}): {detail}"
        if policy == "strict":
            raise ConflictError(f"{head}; the strict policy refuses to choose (use --policy verify to take "
                                f"{strategy.name}'s answer with a warning)", device=device)
        final = " (the CUDA driver's own answer is final over every other)" if strategy.name in by_driver else ""
        warns.append((DisagreementWarning, f"{head}; using {strategy.name}'s answer{final}"))
    if fallback:
        warns.append((FallbackWarning, f"gpuaffinity: CUDA device {logical_id} ({env}) resolved by fallback strategy "
                                   f"{strategy.name!r} because higher-priority strategies could not answer."
                                   + _reasons(ordered)))
    return device, warns


def _gpu_text(ctx: ResolveContext, a: Answer | Abstain) -> str:
    assert isinstance(a, Answer)
    g = ctx.inventory.by_uuid(a.uuid)
    return f"NVML {g.nvml_index} ({g.pci_bus_id}, {g.uuid})" if g else a.uuid


def _reasons(verdicts: Sequence[Verdict]) -> str:
    """Why the strategies that ran abstained; ``quiet`` ones ("I do not apply here") are left out, as
    docs/plugins.md promises (doctor still shows them)."""
    parts = [f"{v.strategy}: {v.result.reason}" for v in verdicts
             if isinstance(v.result, Abstain) and v.ran and not v.result.quiet]
    return (" Abstained: " + "; ".join(parts) + ".") if parts else ""
