"""What a strategy is and what it may read: the contract, without pluggy.

A strategy maps a logical CUDA device to the physical GPU behind it, or
abstains and says why.  This module defines ``Strategy`` (the base class with
defaults for the optional parts) and ``ResolveContext``; ``gpuaffinity.core.
hookspec`` declares the pluggy hook through which a plugin contributes
strategies.  Keeping the two apart lets a resolution that has no third-party
plugin run without loading pluggy.
"""

from __future__ import annotations

from gpuaffinity.core.cvd import CvdResult
from gpuaffinity.core.model import Abstain, Answer, Inventory
from gpuaffinity.core.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Literal

    from gpuaffinity.core.settings import Settings

    Cost = Literal["cheap", "expensive"]
else:
    Cost = str  # "cheap" or "expensive" (typing is not loaded for this)



@record
class ResolveContext:
    """What every strategy may read while one resolution runs.

    ``inventory`` lists the GPUs this process can open, in NVML order (as
    NVML numbers them in this process); ``cvd`` and ``device_order`` are the
    values of CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER (None when unset),
    read once for the whole resolution; ``visible`` is how many CUDA devices
    this process sees; ``grammar`` is CUDA_VISIBLE_DEVICES read with the
    driver's grammar over the inventory in PCI order (computed once);
    ``options`` holds the caller's keyword options (``allow_subprocess``,
    ``timeout`` …).  ``scratch`` is a per-resolution dict a strategy may use to
    do its work once for all logical devices (key it with the strategy's name).
    """

    inventory: Inventory
    cvd: str | None
    device_order: str | None
    visible: int
    options: Mapping[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    grammar: CvdResult = field(default_factory=lambda: CvdResult(()))
    settings: Settings | None = None  # the snapshot this resolution reads (gpuaffinity.core.settings)
    #: the command's gpuaffinity.host.Host: the machine's facts past the GPU list (locality), read once a command
    host: Any = None

    @property
    def env(self) -> dict[str, str | None]:
        return {"CUDA_VISIBLE_DEVICES": self.cvd, "CUDA_DEVICE_ORDER": self.device_order}


class Strategy:
    """A strategy: what ``gpuaffinity_strategies`` returns a list of.

    Subclass it (``gpuaffinity.Strategy``) and set ``name``, ``priority`` and
    ``answer``; every other part has a default.  An object of another class
    with the same attributes works too: the defaults below then apply.

    ``name``: unique, a short identifier (letters, digits, ``_ . -``, at most
    40): what users disable and what reports show.  ``priority``: an int;
    higher runs first, and among answers that disagree the highest priority
    stands, except that the CUDA driver's answer (``pci``), once asked, is
    final over every priority (built-ins: pci 100, torch 60, cvd 50; equal
    priorities go by name).
    ``describe``: one line for ``gpuaffinity doctor``.  ``env_vars``: the
    environment variables ``answer`` reads: they join the cache key, so a
    changed value is noticed without ``clear_cache()``.  ``budget``: seconds
    this strategy may spend in one resolution, all its calls together; past it
    (or still running then), it abstains for the rest of the resolution.
    ``watchdog``: run each call in a worker thread, so that even a call that
    never returns ends at the budget (built-ins, which are fast or bound their
    own child, set it False).  ``asks_driver``: the answer is the CUDA
    driver's own (the built-in ``pci`` only: a plugin that sets it is
    refused); reports say whether the driver was asked.
    """

    name: str = ""
    priority: int = 0
    describe: str = ""
    env_vars: tuple[str, ...] = ()
    budget: float = 5.0
    watchdog: bool = True
    asks_driver: bool = False

    def cost(self, ctx: ResolveContext) -> Cost:
        """``"cheap"`` (runs to verify other answers) or ``"expensive"`` (runs only when something calls for it,
        core/chain.py, or under the strict policy)."""
        return "cheap"

    def count(self, ctx: ResolveContext) -> int | None:
        """How many CUDA devices the process sees, where the grammar cannot tell (MIG GPUs under an unknown
        FASTEST_FIRST order); None when this strategy cannot say."""
        return None

    def answer_all(self, ctx: ResolveContext) -> Sequence[Answer | Abstain] | None:
        """Every visible device at once, in logical order, for a strategy whose work is per resolution (one
        call instead of ``ctx.visible``); None: ask ``answer`` device by device."""
        return None

    def answer(self, ctx: ResolveContext, logical_id: int) -> Answer | Abstain:
        """The physical GPU behind ``logical_id`` (0 <= logical_id < ctx.visible), or an abstention with its
        reason.  Must not bind, fork, or initialise CUDA in the calling process; an exception counts as an
        abstention."""
        raise NotImplementedError(f"strategy {self.name!r} has no answer()")


#: a strategy's optional parts, and their defaults for objects that do not subclass Strategy
OPTIONAL = {"describe": "", "env_vars": (), "budget": 5.0, "watchdog": True, "asks_driver": False}
COSTS = ("cheap", "expensive")


