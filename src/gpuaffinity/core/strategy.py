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
    from typing import Generic, TypeVar

    T = TypeVar("T")

    class _Typed(Generic[T]):
        pass
else:
    Cost = str  # "cheap" or "expensive" (typing is not loaded for this)

    class _Typed:  # StashKey[dict] at run time, without loading typing
        __class_getitem__ = classmethod(lambda cls, _item: cls)


class StashKey(_Typed["T"]):
    """A key of ``ResolveContext.stash``, typed by what it holds (as pytest's ``StashKey``): make one per kind of
    state, at module level (``TABLE = StashKey[dict]("mine.table")``).  Keys are compared by identity, so two
    plugins' keys never collide, whatever their names; the name is for reading a repr only."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    """State kept for one resolution, under ``StashKey`` objects: work a strategy does once for all devices."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey, Any] = {}

    @staticmethod
    def _key(key: object) -> StashKey:
        if not isinstance(key, StashKey):
            raise TypeError(f"a stash is keyed by StashKey objects (KEY = StashKey[dict]('mine.table') at module "
                            f"level), not {type(key).__name__}")
        return key

    def __getitem__(self, key: StashKey[T]) -> T:
        return self._data[self._key(key)]

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[self._key(key)] = value

    def __contains__(self, key: object) -> bool:
        return self._key(key) in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        return self._data.get(self._key(key), default)

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return self._data.setdefault(self._key(key), default)


class Env(dict):
    """``ResolveContext.env``: ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` as this resolution read them (a
    dict, None where unset), and callable for any variable a strategy declared in ``env_vars``:
    ``ctx.env("MY_VAR")``, from the snapshot that keys the cache, read once a resolution (every device of it sees
    the same value).  A variable no strategy declared is a KeyError saying so: undeclared, a change of it would
    not reach the cache key."""

    __slots__ = ("_read", "_declared")

    def __init__(self, values: Mapping[str, str | None], read: Any, declared: frozenset[str] = frozenset()) -> None:
        super().__init__(values)
        self._read = read
        self._declared = declared

    def __call__(self, name: str) -> str | None:
        return self[name]

    def __missing__(self, name: str) -> str | None:  # env["X"] as env("X"): the declared variables too
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._declared

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name] if name in self else default


#: what ResolveContext.env(name) read, once a resolution (a name -> value dict)
_ENV_READ: StashKey[dict] = StashKey("gpuaffinity.env")



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
    ``timeout`` …).  ``stash`` keeps a strategy's work for one resolution
    under its own typed keys (``StashKey``), done once for all logical devices;
    ``scratch`` is the older plain dict for the same (keyed by strings: prefer
    ``stash``).  ``env(name)`` reads a variable a strategy declared in
    ``env_vars`` from the snapshot that keys the cache.
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
    stash: Stash = field(default_factory=Stash)
    #: the variables the strategies of this resolution declared (``env_vars``): what ``env(name)`` may read
    declared: frozenset[str] = frozenset()

    @property
    def env(self) -> Env:
        return Env({"CUDA_VISIBLE_DEVICES": self.cvd, "CUDA_DEVICE_ORDER": self.device_order}, self._declared,
                   self.declared)

    def _declared(self, name: str) -> str | None:
        read = self.stash.setdefault(_ENV_READ, {})
        if name not in read:
            snapshot = dict(self.settings.extra) if self.settings is not None else {}
            if name in snapshot:
                read[name] = snapshot[name]
            elif name in self.declared:
                import os

                # declared, but not in the snapshot yet: the first resolution that saw the strategy (its variables
                # join every key from then on, gpuaffinity.core.settings.watch)
                read[name] = os.environ.get(name)
            else:
                raise KeyError(f"{name!r} is no variable a strategy of this resolution declared: list it in the "
                               "strategy's env_vars (then a change of it reaches the cache key), and read it with "
                               f"ctx.env({name!r})")
        return read[name]


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


