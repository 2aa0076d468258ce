"""The GPUs this process can use, in NVML's order: the list every strategy maps into.

CUDA and NVML enumerate only the GPUs *this process can open*.  Measured on a
2x H200 host (driver 580.159.04, docs/validation.md): in a private mount
namespace whose read-only ``/dev`` lacks ``/dev/nvidia0``, or holds it with an
open that is refused, NVML and CUDA both show one GPU, numbered 0, and a
lookup of the other by bus id or UUID is NOT_FOUND; the driver's
``/proc/driver/nvidia/gpus`` still lists both.  So ``nvml_index`` is the index
``pynvml`` gives in this process, and the list comes from one of:

* **NVML**, the process's own view by definition.
* **The driver's /proc files** (``gpus/<bus>/information``: model, UUID, bus
  location, device minor), which need no library and no ``nvmlInit``.  They
  list the *host's* GPUs, so they stand in for NVML only when this call proves
  them equal to NVML's view: ``/dev/nvidiactl`` opens; every listed GPU's node
  ``/dev/nvidia<minor>`` opens read-write (as NVML opens it) and is the
  character device of that minor; no other ``/dev/nvidia<N>`` opens; no GPU is
  excluded; no MIG instance exists (MIG UUIDs come from NVML alone).  What
  NVML enumerates is exactly the GPUs whose node opens (the measurement
  above), so under these checks both lists are the same.  If any check fails,
  NVML answers and the inventory says why.

An NVML error on any call the list depends on is an error (``InventoryError``),
never read as "no such feature"; only NOT_SUPPORTED and FUNCTION_NOT_FOUND mean
a GPU has no MIG mode.  ``GPUAFFINITY_INVENTORY=nvml`` forces NVML.  The
simulator moves /proc and /dev (``GPUAFFINITY_PROCFS_ROOT``,
``GPUAFFINITY_DEV_ROOT``); there a plain file stands for a device node.

Owns: the GPU list this process can use.
"""

from __future__ import annotations

import errno
import os
import stat

from gpuaffinity.core.errors import GpuAffinityError, GpuLostError, InventoryError, NoDriverError
from gpuaffinity.core.model import GpuInfo, Inventory, MigInfo, normalize_bus_id
from gpuaffinity.core.record import record
from gpuaffinity.core.settings import DEV_VAR, PROCFS_VAR, SOURCE_VAR, SYSFS_VAR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpuaffinity.host import Host
    from gpuaffinity.nvml_lite import Session

_join = os.path.join  # paths as plain strings: pathlib costs a fresh process milliseconds to import


def read_inventory(env: Mapping[str, str | None] | None = None, host: Host | None = None) -> Inventory:
    """This process's GPUs: from the driver's files where this call proves them equal to NVML's view,
    else from NVML.  ``env`` holds the values of the inventory's variables (``Settings.inventory_env``;
    default: os.environ); ``host``: the command's Host, whose NVML session is used (else one of this call's own)."""
    env = os.environ if env is None else env
    source = env.get(SOURCE_VAR)
    if source not in (None, "", "auto", "nvml"):
        raise GpuAffinityError(f"unknown {SOURCE_VAR} {source[:40]!r}: choose nvml (always ask NVML) or auto (the "
                               "default: the driver's /proc files where proven, else NVML)")
    listing = ProcListing.read(env)
    complete = bool(listing.gpus) and _bound_gpus(env) == len(listing.gpus)
    if env.get(SOURCE_VAR) != "nvml":
        why = listing.why_not_nvml_equal(env)
        if why is None:
            return Inventory(listing.gpus, source="procfs", host_gpus=len(listing.gpus), host_complete=complete,
                             host_uuids=tuple(g.uuid for g in listing.gpus),
                             notes=(f"listed from the driver's /proc files ({len(listing.gpus)} GPUs), checked "
                                    "against the device nodes: this process opens each listed GPU's node and no "
                                    "other",))
    else:
        why = f"{SOURCE_VAR}=nvml"
    inv = read_inventory_nvml(host)
    notes = [f"listed from NVML: {why}"]  # why is never empty: each reason of why_not_nvml_equal is a sentence
    if listing.gpus and len(listing.gpus) != len(inv.gpus):
        notes.append(f"the driver's /proc lists {len(listing.gpus)} GPUs of the host; this process can open "
                     f"{len(inv.gpus)} of them, and CUDA and NVML number only those")
    usable = {g.uuid.lower() for g in inv.gpus}
    hidden = tuple(g.uuid for g in listing.gpus if g.uuid.lower() not in usable)
    minor_of = dict(zip((g.pci_bus_id for g in listing.gpus), listing.minors, strict=True))
    odd = [g.pci_bus_id for g in inv.gpus if minor_of.get(g.pci_bus_id) in listing.mig_minors and not g.mig_enabled]
    doubt = (f"the driver's /proc has MIG instances on {', '.join(odd)}, but NVML reports MIG mode off there"
             if odd else "")
    if doubt:
        notes.append(doubt)
    return Inventory(inv.gpus, source="nvml", host_gpus=len(listing.gpus) if listing.gpus else None,
                     notes=tuple(notes), hidden=hidden, host_complete=complete, doubt=doubt,
                     host_uuids=tuple(g.uuid for g in listing.gpus))


def _bound_gpus(env: Mapping[str, str | None]) -> int:
    """How many PCI devices the nvidia driver has bound (sysfs), or -1 when that cannot be read."""
    try:
        names = os.listdir(_join(env.get(SYSFS_VAR) or "/sys", "bus", "pci", "drivers", "nvidia"))
    except OSError:
        return -1
    return sum(1 for n in names if n.count(":") == 2 and "." in n)


@record(frozen=True)
class ProcListing:
    """What /proc/driver/nvidia says: the host's GPUs (PCI order) with their device minors, or why it cannot."""

    gpus: tuple[GpuInfo, ...]
    minors: tuple[int, ...]
    problem: str | None
    mig: bool = False
    mig_minors: frozenset[int] = frozenset()  # GPUs with MIG instances (capabilities/gpu<minor>/mig/gi*)

    @classmethod
    def read(cls, env: Mapping[str, str | None]) -> ProcListing:
        root = _join(env.get(PROCFS_VAR) or "/proc", "driver", "nvidia")
        try:
            entries = sorted(os.listdir(_join(root, "gpus")))
        except OSError as e:
            return cls((), (), f"{_join(root, 'gpus')} cannot be read ({e.strerror or e})")
        found: list[tuple[str, str, str, int]] = []
        for entry in entries:
            path = _join(root, "gpus", entry, "information")
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8")
            except OSError as e:
                return cls((), (), f"{path} cannot be read ({e.strerror or e})")
            except UnicodeDecodeError:
                return cls((), (), f"{path} is not text")
            info = _info(text)
            uuid, bus, model = info.get("GPU UUID", ""), info.get("Bus Location", ""), info.get("Model", "")
            minor = info.get("Device Minor", "")
            if not uuid.startswith("GPU-") or not bus or not model or not (minor.isascii() and minor.isdigit()):
                return cls((), (), f"{path} lacks a GPU UUID, bus location, model or device minor")
            if info.get("GPU Excluded", "No") != "No":
                return cls((), (), f"GPU {entry} is excluded by the driver")
            try:
                found.append((normalize_bus_id(bus), uuid, model, int(minor)))
            except ValueError:
                return cls((), (), f"{path} has a malformed bus location {bus[:40]!r}")
        if not found:
            return cls((), (), f"{_join(root, 'gpus')} lists no GPU")
        found.sort()
        mig_minors = _mig_minors(_join(root, "capabilities"))
        return cls(tuple(GpuInfo(i, uuid, bus, model) for i, (bus, uuid, model, _m) in enumerate(found)),
                   tuple(m for *_x, m in found), None, bool(mig_minors), mig_minors)

    def why_not_nvml_equal(self, env: Mapping[str, str | None]) -> str | None:
        """None when this listing equals what NVML enumerates in this process; else why it may not."""
        if self.problem:
            return self.problem
        if self.mig:
            return "MIG instances exist, and only NVML knows their UUIDs"
        return _device_nodes_mismatch(env.get(DEV_VAR) or "/dev", self.minors, simulated=bool(env.get(DEV_VAR)))


def _mig_minors(capabilities: str) -> frozenset[int]:
    """The minors of GPUs whose capabilities folder holds a MIG GPU instance (``gpu<minor>/mig/gi*``)."""
    out = set()
    try:
        names = os.listdir(capabilities)
    except OSError:
        return frozenset()
    for name in names:
        minor = name[3:]
        if name.startswith("gpu") and minor.isascii() and minor.isdigit():
            try:
                inner = os.listdir(_join(capabilities, name, "mig"))
            except OSError:
                continue
            if any(n.startswith("gi") for n in inner):
                out.add(int(minor))
    return frozenset(out)


def _info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _open_node(path: str, flags: int) -> os.stat_result | int:
    """The node's stat when it opens with ``flags``, else the errno."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _device_nodes_mismatch(dev: str, minors: tuple[int, ...], simulated: bool) -> str | None:
    """None when this process opens exactly the listed GPUs' device nodes; else the first difference.

    ``simulated``: a plain file stands for a device node (the simulator's /dev)."""
    ctl = _open_node(_join(dev, "nvidiactl"), os.O_RDWR)
    if isinstance(ctl, int):
        return f"{_join(dev, 'nvidiactl')} does not open ({_errname(ctl)})"
    major = os.major(ctl.st_rdev) if stat.S_ISCHR(ctl.st_mode) else None

    def is_node(st: os.stat_result, minor: int) -> bool:
        if stat.S_ISCHR(st.st_mode):
            return os.major(st.st_rdev) == major and os.minor(st.st_rdev) == minor
        return simulated and stat.S_ISREG(st.st_mode)

    for minor in minors:
        path = _join(dev, f"nvidia{minor}")
        st = _open_node(path, os.O_RDWR)
        if isinstance(st, int):
            return f"the driver's /proc lists GPU minor {minor}, but {path} does not open ({_errname(st)})"
        if not is_node(st, minor):
            return f"{path} is not the device node of GPU minor {minor}"
    try:
        names = os.listdir(dev)
    except OSError as e:
        return f"{dev} cannot be listed ({e.strerror or e})"
    listed = set(minors)
    for name in names:
        tail = name[6:]
        if name.startswith("nvidia") and tail.isascii() and tail.isdigit() and int(tail) not in listed:
            st = _open_node(_join(dev, name), os.O_RDWR)
            if not isinstance(st, int):
                return f"{_join(dev, name)} opens, but the driver's /proc does not list that GPU"
    return None


def read_inventory_nvml(host: Host | None = None) -> Inventory:
    """Every GPU NVML enumerates in this process, with its MIG instances; InventoryError on any NVML error.

    Through ``gpuaffinity.nvml_lite``: the C calls pynvml makes, without pynvml's import (about 0.1 s of a
    fresh process on the lent H200 host, where a process that can open only some GPUs needs this list).  NVML's
    session is ``host``'s (kept for the stages after: locality), else one of this call's own."""
    from gpuaffinity.nvml_lite import GPU_IS_LOST, NvmlLiteError, Session

    own: Session | None = None
    try:
        if host is not None:
            nv = host.nvml()
        else:
            own = Session()
            nv = own.__enter__()
    except NvmlLiteError as e:
        if e.code == -1:
            raise NoDriverError(
                "no NVIDIA driver here: libnvidia-ml.so.1 was not found; install the driver, or try gpuaffinity on "
                "a simulated machine: gpuaffinity sim run dgx-h100 -- gpuaffinity doctor") from None
        raise NoDriverError(_too_old(e) or f"NVML could not start ({e}); check that the NVIDIA driver is loaded "
                            "(nvidia-smi should work)") from None
    step = "counting GPUs"
    try:
        gpus = []
        for i in range(nv.count()):
            step = f"reading GPU {i}"
            h = nv.handle_by_index(i)
            bus = normalize_bus_id(nv.pci_bus_id(h))
            step = f"reading GPU {i} ({bus})"
            enabled, migs = _migs(nv, h)
            gpus.append(GpuInfo(i, nv.uuid(h), bus, nv.name(h), migs, enabled))
        return Inventory(tuple(gpus), source="nvml")
    except NvmlLiteError as e:
        if e.code == GPU_IS_LOST:  # as the locality says it (numa/query.py): a GpuLostError, named
            raise GpuLostError(f"a GPU is lost: NVML failed while {step}: {e}, so it has fallen off the bus; the GPU "
                               "list cannot be read until it is reset or the host rebooted (the kernel log says "
                               "more: Xid 79)") from None
        raise InventoryError(_too_old(e) or f"NVML failed while {step}: {e}; the GPU list cannot be trusted, so "
                             "nothing is resolved (nvidia-smi shows whether the driver is healthy)") from None
    finally:
        if own is not None:
            own.__exit__()  # a failed shutdown only leaves NVML initialised: the list is read


def _too_old(e: Exception) -> str | None:
    """The message for a function this driver's NVML lacks (FUNCTION_NOT_FOUND), else None."""
    if getattr(e, "code", None) != 13:
        return None
    return (f"this NVIDIA driver's NVML has no {getattr(e, 'call', '?')}: the driver is older than the calls "
            "gpuaffinity makes; upgrade the driver")


def _migs(nv: Session, handle: object) -> tuple[bool, tuple[MigInfo, ...]]:
    """(MIG mode on, the instances this process may use).  Raises NvmlLiteError on a real failure."""
    from gpuaffinity.nvml_lite import (
        NVML_DEVICE_MIG_ENABLE,
        NVML_ERROR_FUNCTION_NOT_FOUND,
        NVML_ERROR_NO_PERMISSION,
        NVML_ERROR_NOT_FOUND,
        NVML_ERROR_NOT_SUPPORTED,
        NvmlLiteError,
    )

    try:
        current = nv.mig_mode(handle)
    except NvmlLiteError as e:
        if e.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):  # a GPU (or driver) without MIG
            return False, ()
        raise
    if current != NVML_DEVICE_MIG_ENABLE:
        return False, ()
    out = []
    for j in range(nv.max_mig_devices(handle)):
        try:
            m = nv.mig_handle(handle, j)
        except NvmlLiteError as e:
            if e.code in (NVML_ERROR_NOT_FOUND, NVML_ERROR_NO_PERMISSION):  # an empty slot, or one not ours
                continue
            raise
        out.append(MigInfo(nv.uuid(m), nv.gpu_instance_id(m), nv.compute_instance_id(m)))
    return True, tuple(sorted(out, key=lambda x: (x.gpu_instance, x.compute_instance)))
