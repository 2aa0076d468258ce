"""Physical selectors: a GPU named by UUID (or unique prefix), MIG UUID or PCI bus id instead of a logical id.

For workers told their GPU some other way than CUDA_VISIBLE_DEVICES (Ray with
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, a launcher's record).

Owns: which GPU a physical selector names in a GPU list.
"""

from __future__ import annotations

from gpuaffinity.core.errors import DeviceNotVisibleError, shown
from gpuaffinity.core.model import PhysicalDevice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from gpuaffinity.core.model import Inventory
    from gpuaffinity.host import Host

_BUS_RE = None


def parse_selector(text: str) -> int | str:
    """A logical id ("3") as an int, or a physical selector as given (a UUID or MIG UUID, or a PCI bus id in
    the sysfs form, with the domain and function NVML takes as 0 when left out).  ASCII only."""
    global _BUS_RE
    text = text.strip()
    given = shown(text, 60)
    if not text.isascii() or len(text) > 100:
        raise ValueError(f"{given} is not a device: ids and selectors are short ASCII text: a logical CUDA id "
                         "(0), a GPU UUID or unique prefix (GPU-8932f937), a MIG UUID, or a PCI bus id (0000:3b:00.0)")
    if text.isdigit():
        if len(text) > 9:
            raise ValueError(f"{given} is not a device: no process sees that many CUDA devices")
        return int(text)
    if text.startswith(("GPU-", "MIG-")) and len(text) > 4:
        return text
    if _BUS_RE is None:
        import re
        _BUS_RE = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?")
    m = _BUS_RE.fullmatch(text)
    if m:
        return f"{int(m[1] or '0', 16):04x}:{int(m[2], 16):02x}:{int(m[3], 16):02x}.{m[4] or '0'}"
    raise ValueError(f"{given} is not a device: give a logical CUDA id (0), a GPU UUID or unique prefix "
                     "(GPU-8932f937), a MIG UUID, or a PCI bus id (0000:3b:00.0)")


def pick(selector: str, inv: Inventory, devices: Sequence[PhysicalDevice] | None, host: Host) -> PhysicalDevice:
    """The GPU (or MIG instance) ``selector`` names among ``inv``, the GPU list the resolution was made over, with
    its logical id among ``devices`` (the resolution's answer; -1 where it does not hold it, or where there is none:
    None).  ``host``: the command's, whose NVML session lists the MIG instances where the list came from the driver's
    files.  Called by ``gpuaffinity.api`` (resolve with a selector), which owns the resolution and its cache."""
    from gpuaffinity.core.cvd import find_mig, no_match_reason, prefix_hits

    gpu, mig = None, None
    why = "matches no GPU's PCI bus id"
    if selector.startswith("MIG-"):
        if inv.source != "nvml" and not any(g.migs for g in inv.gpus):
            from gpuaffinity.inventory import read_inventory_nvml
            inv = read_inventory_nvml(host)
        migs = [(g, m) for g in inv.gpus for m in g.migs]
        if selector.startswith("MIG-GPU-"):  # MIG-GPU-<uuid>/<gi>/<ci>, the form CUDA_VISIBLE_DEVICES takes too
            found = find_mig(selector, inv.gpus)
            hits = [] if found is None else [next(i for i, (g, m) in enumerate(migs) if g is inv.gpus[found[0]]
                                                  and m is inv.gpus[found[0]].migs[found[1]])]
            why = "names no MIG instance (MIG-GPU-<uuid>/<gpu instance>/<compute instance>)"
        else:
            hits = prefix_hits([m.uuid[4:] for _g, m in migs], selector[4:])
            why = no_match_reason(len(hits), "MIG UUID")
        if len(hits) == 1:
            gpu, mig = migs[hits[0]][0], migs[hits[0]][1].uuid
        if not migs:
            why = "names no MIG instance: none of the GPUs this process can open has MIG instances"
    elif selector.startswith("GPU-"):
        # as the driver decides a prefix: unique among every GPU of the host, and one this process can open
        hits = prefix_hits([g.uuid[4:] for g in inv.gpus] + [h[4:] for h in inv.hidden], selector[4:])
        if len(hits) == 1 and hits[0] >= len(inv.gpus):
            raise DeviceNotVisibleError(f"{shown(selector, 60)} names a GPU of the host that this process cannot "
                                        f"open ({inv.hidden[hits[0] - len(inv.gpus)]})")
        gpu = inv.gpus[hits[0]] if len(hits) == 1 else None
        why = no_match_reason(len(hits))
        away = sum(1 for h in hits if h >= len(inv.gpus))
        if len(hits) > 1 and away:
            why += f"; {away} of them {'is a GPU' if away == 1 else 'are GPUs'} of the host this process cannot open"
    else:
        gpu = inv.by_bus(selector)  # parse_selector gave the full sysfs form
    if gpu is None:
        raise DeviceNotVisibleError(f"{shown(selector, 60)} {why}; this process can open {len(inv.gpus)} GPU(s) "
                                    "(see `gpuaffinity doctor`)")
    logical = -1
    for d in devices or ():
        if d.uuid == gpu.uuid and (mig is None or d.mig_uuid == mig):
            logical = d.logical_id
            break
    # named by the caller: nothing else answered, so nothing agreed
    return PhysicalDevice(logical, gpu.nvml_index, gpu.uuid, gpu.pci_bus_id, mig, gpu.name, "selector", (), (),
                          False, answered=("selector",), inventory=inv.label)


