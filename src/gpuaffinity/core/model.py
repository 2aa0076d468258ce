"""The device model: what the machine holds, what a strategy says, what resolve returns."""

from __future__ import annotations

from gpuaffinity.core.record import asdict, field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class MigInfo:
    uuid: str  # MIG-…
    gpu_instance: int
    compute_instance: int


@record(frozen=True)
class GpuInfo:
    """One physical GPU as NVML numbers it in this process."""

    nvml_index: int
    uuid: str  # GPU-…
    pci_bus_id: str  # 0000:3b:00.0, the lowercase sysfs form
    name: str
    migs: tuple[MigInfo, ...] = ()  # the MIG instances this process may use
    mig_enabled: bool = False  # MIG mode is on (then CUDA shows instances, never the whole GPU)


@record(frozen=True)
class Inventory:
    """The GPUs this process can use, in NVML (PCI bus) order, and how that list was established.

    ``source``: ``"nvml"``, or ``"procfs"`` (the driver's /proc files, checked
    against this process's device nodes).  ``host_gpus``: how many GPUs the
    driver's /proc lists for the whole host (None where it was not read).
    ``notes``: how the list was established, and any difference between sources.
    ``hidden``: UUIDs of GPUs the driver's /proc lists that this process cannot
    use; ``host_complete``: the /proc list is known to hold every GPU of the
    host (as many as the nvidia driver has bound in sysfs; a container's /proc
    may be masked).  CUDA decides a UUID prefix against every GPU of the host.
    """

    gpus: tuple[GpuInfo, ...]
    source: str = "nvml"
    host_gpus: int | None = None
    notes: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    host_complete: bool = False
    doubt: str = ""  # sources that disagree about the list's MIG facts: the driver should confirm a reading
    #: UUIDs of every GPU the driver's /proc lists, in the host's PCI order (empty where it was not read): how the
    #: host numbers the GPUs this process can open, for a message when a user wrote the host's numbers
    host_uuids: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How the list was established, as results report it: ``procfs+device-nodes`` (the driver's files,
        checked against the device nodes this process opens) or ``nvml``."""
        return "procfs+device-nodes" if self.source == "procfs" else self.source

    def by_uuid(self, uuid: str) -> GpuInfo | None:
        u = uuid.lower()
        for g in self.gpus:
            if g.uuid.lower() == u:
                return g
        return None

    def by_bus(self, bus_id: str) -> GpuInfo | None:
        b = normalize_bus_id(bus_id)
        for g in self.gpus:
            if g.pci_bus_id == b:
                return g
        return None

    def mig_owner(self, mig_uuid: str) -> tuple[GpuInfo, MigInfo] | None:
        u = mig_uuid.lower()
        for g in self.gpus:
            for m in g.migs:
                if m.uuid.lower() == u:
                    return g, m
        return None

    @property
    def uniform(self) -> bool:
        """All GPUs the same model: CUDA's FASTEST_FIRST order is then PCI order."""
        return len({g.name for g in self.gpus}) <= 1


def normalize_bus_id(bus_id: str) -> str:
    """``00000000:3B:00.0`` or ``0000:3b:00.0`` -> ``0000:3b:00.0``."""
    text = bus_id.strip().rstrip("\0").lower()
    dom, _, rest = text.rpartition(":")
    dom, _, bus = dom.rpartition(":") if dom.count(":") else ("", "", dom)
    if not dom:
        dom = "0"
    return f"{int(dom, 16):04x}:{bus}:{rest}"


@record(frozen=True)
class Answer:
    """A strategy's answer for one logical device: the physical GPU (and MIG instance)."""

    uuid: str
    mig_uuid: str | None = None
    detail: str = ""


@record(frozen=True)
class Abstain:
    """A strategy that gives no answer, and why.

    ``quiet`` abstentions are the normal case where a strategy does not apply
    (torch is not imported, CUDA is not initialised here); any other abstention
    makes an answer from a lower-priority strategy a fallback, with a warning.
    """

    reason: str
    quiet: bool = False


@record(frozen=True)
class Verdict:
    """What one strategy said about one logical device, as the chain saw it."""

    strategy: str
    priority: int
    result: Answer | Abstain
    ran: bool = True  # False: skipped (too expensive to verify with, or the policy stopped early)
    trace: str = field(default="", compare=False, repr=False)  # the traceback when the strategy raised


@record(frozen=True)
class PhysicalDevice:
    """The physical GPU behind a logical CUDA device, and what was checked to say so.

    ``nvml_index`` is the index pynvml gives this GPU *in this process* (which
    numbers only the GPUs the process can open).  ``strategy`` gave the
    answer; ``answered`` lists every strategy that gave one; ``agreed`` those
    that gave this same GPU, the chosen one included, and is empty when one
    strategy answered alone (nothing confirmed it); ``disagreed`` those that
    named another GPU.  ``driver_asked``: the CUDA driver itself answered (the
    ``pci`` strategy).  ``inventory``: how the GPU list was established,
    ``"procfs+device-nodes"`` (the driver's /proc files, checked against the
    device nodes this process can open) or ``"nvml"``.  ``fallback``: the
    answer came from a fallback, and a warning said so.
    """

    logical_id: int
    nvml_index: int
    uuid: str
    pci_bus_id: str
    mig_uuid: str | None
    name: str
    strategy: str
    agreed: tuple[str, ...]
    disagreed: tuple[str, ...]
    fallback: bool
    answered: tuple[str, ...] = ()
    driver_asked: bool = False
    inventory: str = ""
    verdicts: tuple[Verdict, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("verdicts")
        d["agreed"] = list(self.agreed)
        d["disagreed"] = list(self.disagreed)
        d["answered"] = list(self.answered)
        return d
