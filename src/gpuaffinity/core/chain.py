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
    DisagreementWarning names every answer; the highest-priority answer stands.
``strict``
    Every strategy runs, expensive ones too; any disagreement is a ConflictError.

A result says who answered (``answered``), who gave the same GPU (``agreed``:
empty when one strategy answered alone, since nothing confirmed it), whether
the CUDA driver itself answered (``driver_asked``) and how the GPU list was
established (``inventory``).

An answer is a *fallback* when a higher-priority strategy abstained for a
reason other than not applying here (see ``Abstain.quiet``), or when nothing
answered and the identity mapping (logical id = NVML index) was used; either
way a FallbackWarning says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuaffinity.core.errors import ConflictError, DisagreementWarning, FallbackWarning, GpuAffinityError, shown
from gpuaffinity.core.hookspec import ResolveContext, Strategy
from gpuaffinity.core.model import Abstain, Answer, PhysicalDevice, Verdict

IDENTITY = "identity"


def _ask(s: Strategy, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
    try:
        res = s.answer(ctx, logical_id)
    except Exception as e:  # a strategy that raises abstains; its reason says why
        return Abstain(f"raised {type(e).__name__}: {e}")
    if not isinstance(res, Answer | Abstain):
        return Abstain(f"returned {type(res).__name__}, not Answer or Abstain")
    if isinstance(res, Answer) and ctx.inventory.by_uuid(res.uuid) is None:
        return Abstain(f"answered {res.uuid}, which is not a GPU of this machine")
    return res


def _cost(s: Strategy, ctx: ResolveContext) -> str:
    fn = getattr(s, "cost", None)
    try:
        return fn(ctx) if fn else "cheap"
    except Exception:
        return "expensive"


def inventory_label(ctx: ResolveContext) -> str:
    """How the GPU list was established: ``procfs+device-nodes`` (the driver's files, checked against the
    device nodes this process opens) or ``nvml``."""
    return "procfs+device-nodes" if ctx.inventory.source == "procfs" else ctx.inventory.source


def resolve_one(strategies: Sequence[Strategy], ctx: ResolveContext, logical_id: int,
                policy: str) -> tuple[PhysicalDevice, list[tuple[type[Warning], str]]]:
    verdicts: dict[str, Verdict] = {}
    winner: tuple[Strategy, Answer] | None = None
    loud: list[str] = []  # higher-priority strategies that abstained for a reason

    def run(s: Strategy) -> Answer | Abstain:
        res = _ask(s, ctx, logical_id)
        verdicts[s.name] = Verdict(s.name, s.priority, res)
        return res

    deferred: list[Strategy] = []  # expensive strategies: ground truth at a price, asked only when needed

    for s in strategies:
        if winner is not None and policy == "first":
            verdicts[s.name] = Verdict(s.name, s.priority, Abstain("not asked: policy 'first'", quiet=True), False)
            continue
        if policy != "strict" and _cost(s, ctx) == "expensive":
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

    warns: list[tuple[type[Warning], str]] = []
    env = f"CUDA_VISIBLE_DEVICES={shown(ctx.cvd)}, CUDA_DEVICE_ORDER={shown(ctx.device_order)}"
    ordered = tuple(sorted(verdicts.values(), key=lambda v: (-v.priority, v.strategy)))
    if winner is None:
        if logical_id >= len(ctx.inventory.gpus):
            raise GpuAffinityError(f"no strategy could resolve CUDA device {logical_id} ({env}) and NVML has only "
                                   f"{len(ctx.inventory.gpus)} GPUs: " + _reasons(ordered))
        gpu = ctx.inventory.gpus[logical_id]
        warns.append((FallbackWarning, f"gpuaffinity: no strategy could resolve CUDA device {logical_id} ({env}); "
                                   f"guessing NVML index {logical_id} ({gpu.pci_bus_id}), which is wrong whenever "
                                   f"CUDA's numbering differs from NVML's. " + _reasons(ordered)))
        return PhysicalDevice(logical_id, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, None, gpu.name, IDENTITY,
                              (), (), True, inventory=inventory_label(ctx), verdicts=ordered), warns

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
    if disagreed:
        detail = "; ".join(f"{v.strategy} says {_gpu_text(ctx, v.result)}" for v in ordered
                           if isinstance(v.result, Answer))
        head = f"gpuaffinity: strategies disagree on CUDA device {logical_id} ({env}): {detail}"
        if policy == "strict":
            raise ConflictError(f"{head}; the strict policy refuses to choose (use --policy verify to take "
                                f"{strategy.name}'s answer with a warning)")
        warns.append((DisagreementWarning, f"{head}; using {strategy.name}'s answer"))
    if fallback:
        warns.append((FallbackWarning, f"gpuaffinity: CUDA device {logical_id} ({env}) resolved by fallback strategy "
                                   f"{strategy.name!r} because higher-priority strategies could not answer. "
                                   + _reasons(ordered)))
    return PhysicalDevice(logical_id, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, mig, gpu.name,
                          strategy.name, agreed, disagreed, fallback, answered=answered,
                          driver_asked=any(n in by_driver for n in answered), inventory=inventory_label(ctx),
                          verdicts=ordered), warns


def _gpu_text(ctx: ResolveContext, a: Answer | Abstain) -> str:
    assert isinstance(a, Answer)
    g = ctx.inventory.by_uuid(a.uuid)
    return f"NVML {g.nvml_index} ({g.pci_bus_id}, {g.uuid})" if g else a.uuid


def _reasons(verdicts: Sequence[Verdict]) -> str:
    parts = [f"{v.strategy}: {v.result.reason}" for v in verdicts
             if isinstance(v.result, Abstain) and v.ran]
    return ("Abstained: " + "; ".join(parts) + ".") if parts else ""
