"""The device model: what the machine holds, what a strategy says, what resolve returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MigInfo:
    uuid: str  # MIG-…
    gpu_instance: int
    compute_instance: int


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML numbers it."""

    nvml_index: int
    uuid: str  # GPU-…
    pci_bus_id: str  # 0000:3b:00.0, the lowercase sysfs form
    name: str
    migs: tuple[MigInfo, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """Every GPU of the machine, in NVML (PCI bus) order."""

    gpus: tuple[GpuInfo, ...]
    source: str = "nvml"  # where the list came from: "nvml" or "procfs"

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


@dataclass(frozen=True)
class Answer:
    """A strategy's answer for one logical device: the physical GPU (and MIG instance)."""

    uuid: str
    mig_uuid: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Abstain:
    """A strategy that gives no answer, and why.

    ``quiet`` abstentions are the normal case where a strategy does not apply
    (torch is not imported, CUDA is not initialised here); any other abstention
    makes an answer from a lower-priority strategy a fallback, with a warning.
    """

    reason: str
    quiet: bool = False


@dataclass(frozen=True)
class Verdict:
    """What one strategy said about one logical device, as the chain saw it."""

    strategy: str
    priority: int
    result: Answer | Abstain
    ran: bool = True  # False: skipped (too expensive to verify with, or the policy stopped early)


@dataclass(frozen=True)
class PhysicalDevice:
    """The physical GPU behind a logical CUDA device."""

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
    verdicts: tuple[Verdict, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("verdicts")
        d["agreed"] = list(self.agreed)
        d["disagreed"] = list(self.disagreed)
        return d
