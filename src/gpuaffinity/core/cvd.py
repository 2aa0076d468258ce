"""CUDA_VISIBLE_DEVICES as the CUDA driver reads it: a pure function.

This follows the table measured on driver 580.159.04 (docs/cvd-grammar.md):

* unset: every GPU; ``""``: none.
* The first entry decides the kind of the list: it is a list of UUIDs when the
  first entry starts with ``GPU-`` or ``MIG-``, else a list of integers.  An
  entry of the other kind ends the list.
* Integers are read the way C's ``strtoul`` reads them: leading white space and
  a sign are taken, text after the digits is ignored (``1gpu`` is 1, ``0x1`` is
  0), and the value is cut to 32 bits (4294967297 is 1; -1 is out of range).
  An entry with no digits or out of range ends the list.
* ``GPU-`` (upper case) plus a prefix of a GPU's UUID names that GPU if no
  other GPU shares the prefix: hex compared without regard to case, dashes
  ignored, text past the UUID's 32 digits ignored.  No white space is skipped.
  "Other GPU" means any GPU of the host, including those the process cannot
  open; a UUID or prefix that only such a GPU matches names nothing (measured
  on a 2x H200 host with one GPU's node hidden: ``GPU-`` names nothing there).
* The list stops at the first entry that names nothing; the devices before it
  stay visible.  Naming one device twice (in any form) is not a stop but an
  error: ``cuInit`` fails with CUDA_ERROR_INVALID_DEVICE and nothing is visible.
* ``CUDA_DEVICE_ORDER`` other than unset, ``FASTEST_FIRST`` or ``PCI_BUS_ID``
  (case matters) also makes ``cuInit`` fail with CUDA_ERROR_INVALID_DEVICE.
* MIG (modelled from NVIDIA's documentation, not measured): ``MIG-<uuid>`` and
  ``MIG-GPU-<uuid>/<gi>/<ci>`` name an instance; one MIG device a process, so a
  second MIG entry ends the list; a GPU in MIG mode reached by index or GPU UUID
  shows its first instance this process may use, and none at all when it may
  use none (unset: skipped; named: the list ends).

``apply_cvd(..., documented=True)`` reads only what NVIDIA documents, in its
plain form: decimal integers without sign, white space, leading zeros or
trailing text; ``GPU-``/``MIG-`` UUIDs or prefixes as nvidia-smi prints them
(lower-case hex, dashes in place); anything else ends the list.  Where the two
readings differ, the answer rests on measured, undocumented behaviour; and
where the list ends at a UUID that names nothing in the process's GPU list,
the answer rests on that list alone.  ``read_cvd`` says so in
``CvdResult.unsure``, and the default policy then asks the driver itself.

Owns: the driver's reading of CUDA_VISIBLE_DEVICES over a GPU list.
"""

from __future__ import annotations

from gpuaffinity.core.errors import shown
from gpuaffinity.core.model import MigInfo
from gpuaffinity.core.record import field, record, replace

TYPE_CHECKING = False
if TYPE_CHECKING:  # neither typing nor re is loaded to read the variable: a first resolve pays for neither
    from collections.abc import Sequence
    from typing import Protocol

    class _Mig(Protocol):
        uuid: str
        gpu_instance: int
        compute_instance: int

    class _Gpu(Protocol):
        @property
        def uuid(self) -> str: ...
        @property
        def migs(self) -> Sequence[_Mig]: ...

CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_DEVICE = 101

ORDERS = ("FASTEST_FIRST", "PCI_BUS_ID")
ULONG_MAX = 2**64 - 1


#: A MIG instance as the grammar sees it: the model's own record.
MigIdentity = MigInfo


@record(frozen=True)
class GpuIdentity:
    """The least the grammar needs to know of one physical GPU.

    ``apply_cvd`` takes anything with these two attributes; the machine's
    ``GpuInfo`` records (``gpuaffinity.core.model``) serve as they are.
    """

    uuid: str  # GPU-…
    migs: tuple[MigInfo, ...] = ()


@record(frozen=True)
class Visible:
    """One CUDA device: the GPU (its position in the list given) and MIG instance, if any."""

    gpu: int
    mig: int | None = None


@record(frozen=True)
class CvdResult:
    devices: tuple[Visible, ...]
    #: CUDA error cuInit reports (0: none; 100 nothing visible; 101 duplicate or bad order)
    error: int = 0
    #: why the list ended early, or "" when every entry was used
    stopped: str = ""
    notes: tuple[str, ...] = field(default=())
    #: the list ended at a GPU-/MIG- entry that names nothing among the GPUs given
    unmatched: bool = False
    #: a GPU- (MIG-) entry shorter than a whole UUID named a device
    prefix_used: bool = False
    mig_prefix_used: bool = False
    #: "" when the reading needs no check by the driver; else why the default policy checks it (see read_cvd)
    unsure: str = ""
    #: "" when this process can know the reading; else why only the driver can (any policy asks it)
    unknown: str = ""
    #: a MIG- entry that names no MIG instance was read as a GPU's UUID prefix (modelled from one case)
    gpu_as_mig: bool = False

    @property
    def gpus(self) -> list[int]:
        return [d.gpu for d in self.devices]


DIGITS = "0123456789"  # ASCII only: str.isdigit() also takes "²" and "٣", which C's strtoul does not


def _mig_path(entry: str) -> tuple[str, str, str] | None:
    """``MIG-GPU-<uuid>/<gi>/<ci>`` split into its parts (the instances as digit strings), else None."""
    if not entry.startswith("MIG-GPU-"):
        return None
    parts = entry[4:].split("/")
    if len(parts) != 3 or len(parts[0]) < 5 or not all(p and all(c in DIGITS for c in p) for p in parts[1:]):
        return None
    return parts[0], parts[1], parts[2]


def _same_number(digits: str, value: int) -> bool:
    """A digit string (any length: int() refuses thousands of digits) names ``value``."""
    return (digits.lstrip("0") or "0") == str(value)


def strtoul32(text: str) -> int | None:
    """C's strtoul(text, NULL, 10) cut to 32 bits; None when no digits are found."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    sign = text[i] if i < n and text[i] in "+-" else ""
    i += len(sign)
    j = i
    while j < n and text[j] in DIGITS:
        j += 1
    if j == i:
        return None
    digits = text[i:j].lstrip("0") or "0"
    # more than 20 digits is past 2^64 whatever they are (and int() refuses thousands of digits)
    value = int(digits) if len(digits) <= 20 else 1 << 64
    if value > ULONG_MAX:  # strtoul saturates at ULONG_MAX, whatever the sign
        return ULONG_MAX & 0xFFFFFFFF
    if sign == "-":
        value = -value & ULONG_MAX
    return value & 0xFFFFFFFF


def match_uuid(text: str, candidates: Sequence[str]) -> int | None:
    """Index of the one UUID body (after its tag) that ``text`` is a prefix of, as the driver matches."""
    return _prefix_match(candidates, text)


def _prefix_match(candidates: Sequence[str], text: str) -> int | None:
    """Index of the one candidate (a UUID without its tag) that starts with text.

    Dashes are ignored on both sides and hex digits compared without regard to
    case (measured: ``GPU-`` plus the 32 digits without dashes selects the GPU).
    """
    hits = prefix_hits(candidates, text)
    return hits[0] if len(hits) == 1 else None


def prefix_hits(candidates: Sequence[str], text: str) -> list[int]:
    """Indexes of every candidate (a UUID without its tag) that ``text`` is a prefix of, as ``_prefix_match``
    compares them: none, one (a match), or several (an ambiguous prefix, which names nothing)."""
    if not text:  # nothing after the tag names nothing, whatever the GPU count (measured: `GPU-` on one GPU)
        return []
    want = text.replace("-", "").lower()  # dashes alone are skipped as any dashes: `GPU--` names the only GPU
    hexes = [c.replace("-", "").lower() for c in candidates]
    return [i for i, h in enumerate(hexes) if h[: len(want)] == want[: len(h)]]


def no_match_reason(hits: int, what: str = "GPU UUID") -> str:
    """Why a UUID entry or selector names nothing, given how many UUIDs its prefix matched."""
    return f"matches no {what}" if hits == 0 else f"matches {hits} {what}s (a prefix must be unique)"



def read_cvd(cvd: str | None, gpus: Sequence[_Gpu], base_order: Sequence[int] | None = None,
             device_order: str | None = None, hidden: Sequence[str] = (), host_complete: bool = True,
             doubt: str = "") -> CvdResult:
    """``apply_cvd`` as the driver reads the value, with ``unsure`` saying why the driver should confirm it:
    the reading rests on measured, undocumented behaviour (the documented reading differs); it ends at a
    UUID naming nothing here; or it takes a UUID prefix as unique without knowing every GPU of the host
    (``host_complete`` False: a container's /proc may list only its own GPUs).  ``hidden``: UUIDs of the
    host's GPUs this process cannot open.  ``doubt``: a reason the GPU list itself is in doubt."""
    measured = apply_cvd(cvd, gpus, base_order, device_order, hidden=hidden)
    if measured.prefix_used and not host_complete:
        why = ("takes a UUID prefix as unique, but the driver compares it with every GPU of the host, and "
               "this process cannot list them all (the driver's /proc lists fewer GPUs than the nvidia driver "
               "has bound)")
        return replace(measured, unsure=why, unknown=why)
    if measured.gpu_as_mig:
        why = ("reads a MIG- entry that names no MIG instance as the GPU whose UUID it begins (measured on a one-GPU "
               "host without MIG only): the driver decides it")
        return replace(measured, unsure=why, unknown=why)
    documented = apply_cvd(cvd, gpus, base_order, device_order, documented=True, hidden=hidden)
    if (documented.devices, documented.error) != (measured.devices, measured.error):
        why = (f"rests on measured, undocumented driver behaviour: read as documented, "
               f"{documented.stopped or 'the value'}, but the driver's measured grammar reads "
               f"{len(measured.devices)} device(s) from it")
    elif measured.unmatched:
        why = (f"ends at {measured.stopped}: whether that entry names a device rests on this process's GPU "
               "list alone")
    elif measured.mig_prefix_used:
        why = "takes a MIG UUID prefix as unique (modelled, not measured)"
    elif any(getattr(g, "mig_enabled", False) and not g.migs for g in gpus):
        why = ("counts on a GPU in MIG mode showing no device, as NVML gives it no MIG instance this process may "
               "use (modelled, not measured)")
    elif doubt:
        why = f"rests on a GPU list in doubt: {doubt}"
    else:
        return measured
    return replace(measured, unsure=why)


def _plain_int(text: str) -> bool:
    """``0`` or digits without a leading zero: a number as nvidia-smi prints it."""
    return bool(text) and all(c in DIGITS for c in text) and (text == "0" or text[0] != "0")

_CANON_BODY = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"


def _plain_prefix(text: str) -> bool:
    """A lower-case UUID body, or a prefix of one, with its dashes where nvidia-smi prints them."""
    if not text or len(text) > len(_CANON_BODY):
        return False
    for c, shape in zip(text, _CANON_BODY, strict=False):
        if (shape == "-") != (c == "-") or (c != "-" and c not in "0123456789abcdef"):
            return False
    return True


def apply_cvd(cvd: str | None, gpus: Sequence[_Gpu], base_order: Sequence[int] | None = None,
              device_order: str | None = None, documented: bool = False, hidden: Sequence[str] = ()) -> CvdResult:
    """The CUDA devices a process sees, in CUDA's order.

    ``gpus`` are the GPUs this process can open in NVML (PCI) order, anything
    with ``uuid`` and ``migs`` (``GpuIdentity``, the inventory's ``GpuInfo``);
    ``base_order`` lists their positions in CUDA's order before
    CUDA_VISIBLE_DEVICES is applied (for FASTEST_FIRST; default PCI order);
    ``device_order`` is the value of CUDA_DEVICE_ORDER, under which PCI_BUS_ID
    ignores ``base_order``.  ``documented``: read only the documented plain
    forms (see the module's text).  ``hidden``: UUIDs of the host's GPUs this
    process cannot open (they make a prefix ambiguous, and name nothing).
    """
    if device_order is not None and device_order not in ORDERS and gpus:  # no GPU to open: no device (100),
        return CvdResult((), CUDA_ERROR_INVALID_DEVICE,                    # measured on a one-GPU host, hidden
                         f"CUDA_DEVICE_ORDER={shown(device_order, 80)} is not FASTEST_FIRST or PCI_BUS_ID")
    if device_order == "PCI_BUS_ID" or base_order is None:
        base = list(range(len(gpus)))
    else:
        base = list(base_order)
    out: list[Visible] = []
    prefix_used = mig_prefix_used = gpu_as_mig = False

    def done(stopped: str, unmatched: bool = False) -> CvdResult:
        return CvdResult(tuple(out), 0 if out else CUDA_ERROR_NO_DEVICE, stopped, unmatched=unmatched,
                         prefix_used=prefix_used, mig_prefix_used=mig_prefix_used, gpu_as_mig=gpu_as_mig)

    def whole(g: int) -> Visible | str | None:
        """The device a whole GPU shows; None: none (MIG mode, no instance this process may use)."""
        if not gpus[g].migs:
            return None if getattr(gpus[g], "mig_enabled", False) else Visible(g)
        if any(d.mig is not None for d in out):
            return "one MIG device a process: a second GPU in MIG mode ends the list"
        return Visible(g, 0)

    def add(v: Visible) -> CvdResult | None:
        if v in out:
            return CvdResult((), CUDA_ERROR_INVALID_DEVICE, "a device is named twice")
        out.append(v)
        return None

    if cvd is None:
        for g in base:
            v = whole(g)
            if isinstance(v, str):
                return done(v)
            if v is not None:
                out.append(v)
        return done("")
    entries = cvd.split(",")
    uuid_list = cvd.startswith(("GPU-", "MIG-"))
    bodies = [g.uuid[4:] for g in gpus] + [h[4:] for h in hidden]

    for pos, entry in enumerate(entries):
        where = f"entry {pos} ({shown(entry, 80)})"
        if documented and not _plain_entry(entry, uuid_list):
            return done(f"{where} is not in a documented plain form")
        if uuid_list:
            if entry == "MIG-":  # measured on a one-GPU host without MIG; a MIG host may differ: unsure
                return done(f"{where} has nothing after MIG-: it names no MIG instance", unmatched=True)
            v: Visible | str | None
            if entry.startswith("MIG-"):
                found = find_mig(entry, gpus)
                hits = [] if found is not None or entry.startswith("MIG-GPU-") else prefix_hits(bodies, entry[4:])
                if found is None and len(hits) == 1 and hits[0] < len(gpus):
                    # measured on a one-GPU host without MIG (run 11): `MIG--`, `MIG-e` and `MIG-<the GPU's UUID
                    # without GPU->` show the GPU, and with the GPU's own UUID after it the GPU is named twice.  So a
                    # MIG- prefix that names no MIG instance is matched against the GPUs' UUIDs, and a GPU it names
                    # alone shows whole.  Not measured on several GPUs or on a MIG host: the driver is asked
                    # (read_cvd marks the reading unknown).
                    gpu_as_mig = True
                    v = whole(hits[0])
                elif found is None:
                    return done(f"{where} names no MIG instance", unmatched=True)
                elif any(d.mig is not None for d in out):
                    return done(f"{where}: one MIG device a process")
                else:
                    v = Visible(*found)
                    mig_prefix_used = mig_prefix_used or _short(entry)
            elif entry == "GPU-":  # measured on a one-GPU host (580.159.04): no GPU, not "the only one"
                return done(f"{where} has nothing after GPU-: it names no GPU")
            elif entry.startswith("GPU-"):
                hits = prefix_hits(bodies, entry[4:])
                if len(hits) != 1:
                    return done(f"{where} {no_match_reason(len(hits))}", unmatched=True)
                g = hits[0]
                if g >= len(gpus):
                    return done(f"{where} names a GPU this process cannot open", unmatched=True)
                prefix_used = prefix_used or _short(entry)
                v = whole(g)
            else:
                return done(f"{where} is not a GPU- or MIG- UUID")
        else:
            n = strtoul32(entry)
            if n is None:
                return done(f"{where} is not a number")
            if n >= len(base):
                return done(f"{where} is out of range (this process's GPUs are numbered "
                            f"{'0-' + str(len(base) - 1) if len(base) > 1 else '0'})" if base else
                            f"{where} is out of range (this process can open no GPU)")
            v = whole(base[n])
        if v is None:
            return done(f"{where} names a GPU in MIG mode with no MIG instance this process may use")
        if isinstance(v, str):
            return done(f"{where}: {v}")
        failed = add(v)
        if failed:
            return failed
    return done("")


def _short(entry: str) -> bool:
    """A GPU-/MIG- entry with fewer hex digits than a whole UUID (32): a prefix."""
    return entry.startswith(("GPU-", "MIG-")) and not entry.startswith("MIG-GPU-") and \
        len(entry[4:].replace("-", "")) < 32


def _plain_entry(entry: str, uuid_list: bool) -> bool:
    if not uuid_list:
        return _plain_int(entry)
    if entry.startswith("MIG-GPU-"):
        m = _mig_path(entry)
        return m is not None and len(m[0]) == 40 and _plain_prefix(m[0][4:]) and _plain_int(m[1]) and \
            _plain_int(m[2])
    return entry.startswith(("GPU-", "MIG-")) and _plain_prefix(entry[4:])


def find_mig(entry: str, gpus: Sequence[_Gpu]) -> tuple[int, int] | None:
    """(GPU position, MIG position) of the MIG instance a ``MIG-…`` entry names, either form, as the driver reads it."""
    m = _mig_path(entry)
    if m:
        for gi_, g in enumerate(gpus):
            if g.uuid.lower() == m[0].lower():
                for mi, mig in enumerate(g.migs):
                    if _same_number(m[1], mig.gpu_instance) and _same_number(m[2], mig.compute_instance):
                        return gi_, mi
        return None
    if entry.startswith("MIG-GPU-"):  # a malformed path names nothing, even where an old driver's MIG UUID
        return None                   # (MIG-GPU-<uuid>/<gi>/<ci>) would take it as a prefix
    flat = [(gi_, mi, mig.uuid[4:]) for gi_, g in enumerate(gpus) for mi, mig in enumerate(g.migs)]
    hit = _prefix_match([f[2] for f in flat], entry[4:])
    return None if hit is None else flat[hit][:2]


def _digits_end(entry: str) -> int | None:
    """Where ``strtoul32`` stops reading ``entry`` (past white space, a sign and the digits); None: no digits."""
    i, n = 0, len(entry)
    while i < n and entry[i] in " \t\n\v\f\r":
        i += 1
    if i < n and entry[i] in "+-":
        i += 1
    j = i
    while j < n and entry[j] in DIGITS:
        j += 1
    return None if j == i else j


def _as_range(entry: str, count: int | None) -> str | None:
    """``0-3`` (a range as a user means it) written out as ``0,1,2,3``, cut to the ``count`` GPUs numbered here
    (None: not cut); None when the entry is no small range, or names none of them."""
    first, dash, last = entry.strip().partition("-")
    last = last.strip()
    if not dash or not all(c in DIGITS for c in first + last) or not 0 < len(first) <= 9 or not 0 < len(last) <= 9:
        return None  # digits only, and short: int() refuses thousands of digits, and no GPU count needs ten
    a, b = int(first), int(last)
    if not a < b <= a + 63:
        return None
    top = b if count is None else min(b, count - 1)
    if top < a:
        return None
    spelled = ",".join(str(i) for i in range(a, top + 1))
    return spelled if top == b else f"{spelled} (this process's GPUs are numbered 0-{count - 1})"  # type: ignore


def reading_notes(cvd: str | None, result: CvdResult, stop: bool = True, count: int | None = None) -> list[str]:
    """Where the driver reads CUDA_VISIBLE_DEVICES otherwise than a person would: entries it reads only in part
    (``0-3`` is GPU 0: the digits, then nothing) or cut to 32 bits (4294967297 is 1), and the entry where it
    stops reading (every entry from there on is ignored, and no error is given).  Each note says how the driver
    read it and, where it can tell, what to write instead.  Empty for an unset or empty value (both documented:
    every GPU, none) and for a value the driver refuses outright (that is an error of its own).  ``stop``:
    include the note on where reading stopped (``no_device_text`` says it where nothing is visible).
    ``count``: how many GPUs integers index here (a range is spelled out no further)."""
    if not cvd or result.error == CUDA_ERROR_INVALID_DEVICE:
        return []
    entries = cvd.split(",")
    used = len(entries) if not result.stopped else len(result.devices)
    notes: list[str] = []
    if not cvd.startswith(("GPU-", "MIG-")):
        for pos, entry in enumerate(entries[:used]):
            end = _digits_end(entry)
            rest = entry[end:] if end is not None else ""
            value = strtoul32(entry)
            if not rest.strip(" \t\n\v\f\r"):
                digits = entry.strip(" \t\n\v\f\r+").lstrip("0") or "0"
                if len(digits) > 10 or int(digits) != value:
                    notes.append(f"entry {pos} ({shown(entry, 80)}) is read as {value}: the driver cuts the number "
                                 "to 32 bits")
                continue
            note = (f"entry {pos} ({shown(entry, 80)}) is read as {value}: the driver takes the digits "
                    f"and ignores the rest ({shown(rest, 40)})")
            spelled = _as_range(entry, count)
            if spelled:
                note += f"; CUDA_VISIBLE_DEVICES has no ranges: write {spelled}"
            notes.append(note)
    if result.stopped and stop:
        ignored = len(entries) - used - 1
        after = (f"; the {ignored} {'entry' if ignored == 1 else 'entries'} after it {'is' if ignored == 1 else 'are'}"
                 " ignored too") if ignored > 0 else ""
        seen = (f"this process sees only the {len(result.devices)} device(s) named before it"
                if result.devices else "this process sees no CUDA device")
        notes.append(f"the driver stops reading where {result.stopped}{after}; it gives no error, and {seen}")
    return notes


def short_uuid(uuid: str, every: Sequence[str]) -> str:
    """The shortest of ``GPU-`` plus 8 hex digits, or the whole UUID, that names ``uuid`` alone among ``every``
    (UUIDs, its own included) as the driver matches a prefix."""
    short = uuid[:12]
    return short if len(prefix_hits([u[4:] for u in every], short[4:])) == 1 else uuid


def no_device_text(cvd: str | None, result: CvdResult, gpus: Sequence[object], host_uuids: Sequence[str] = (),
                   driver_count: bool = False, pci_order: bool = True) -> str:
    """One line for a process that sees no CUDA device: why, which GPUs it can open and how CUDA numbers them
    here, and what to write.  ``gpus``: the GPUs it can open (``GpuInfo``: uuid, pci_bus_id, migs), in PCI
    order; ``host_uuids``: every GPU of the host in PCI order (nvidia-smi's numbering on the host, which a job's
    user often writes by mistake); ``driver_count``: the CUDA driver itself counted no device, whatever the
    grammar read; ``pci_order``: CUDA's numbering is PCI order here (CUDA_DEVICE_ORDER=PCI_BUS_ID, or one GPU
    model); else it is FASTEST_FIRST over mixed models, which only CUDA knows, and no number is offered."""
    host = [u.lower() for u in host_uuids]
    if not gpus:
        if host:
            return (f"this process sees no CUDA device: it can open none of the host's {len(host)} GPU(s) (their "
                    "device nodes are absent or refused here: a device cgroup or a container keeps them away); "
                    "run it where the scheduler gives it a GPU")
        return "this process sees no CUDA device: NVML lists no GPU it can open"
    uuids = [g.uuid for g in gpus]  # type: ignore[attr-defined]
    every = list(dict.fromkeys([*uuids, *host_uuids]))
    # what CUDA shows with the variable unset: every GPU, but a GPU in MIG mode only as a MIG instance it may use
    shows = [d.gpu for d in apply_cvd(None, gpus).devices]  # type: ignore[arg-type]

    def tag(g: int) -> str:
        u = uuids[g].lower()
        smi = f", nvidia-smi's GPU {host.index(u)}" if len(host) > len(gpus) and u in host else ""
        return f"{gpus[g].pci_bus_id} ({short_uuid(uuids[g], every)}{smi})"  # type: ignore[attr-defined]

    if pci_order:
        can = f"it can open {len(gpus)} GPU(s), numbered here " + ", ".join(f"{i}: {tag(g)}"
                                                                            for i, g in enumerate(shows))
    else:
        can = (f"it can open {len(gpus)} GPU(s): " + ", ".join(tag(g) for g in shows) + " (CUDA numbers them "
               "fastest first, which on this mix of models only CUDA knows: name them by UUID, or set "
               "CUDA_DEVICE_ORDER=PCI_BUS_ID to number them in this order)")
    silent = [g for g in range(len(gpus)) if g not in shows]
    if silent:
        can += ("; " + ", ".join(tag(g) for g in silent) + " in MIG mode show(s) no CUDA device unless named by a "
                "MIG UUID this process may use (one MIG device a process)")
    if cvd == "":
        return (f"this process sees no CUDA device: CUDA_VISIBLE_DEVICES is empty, which hides every GPU; {can}: "
                "unset the variable, or name the GPUs to use")
    if driver_count:
        return (f"this process sees no CUDA device: the CUDA driver counts none for CUDA_VISIBLE_DEVICES="
                f"{shown(cvd)}; {can}")
    if cvd is None:
        return f"this process sees no CUDA device: no GPU it can open shows as one; {can}"
    why = f"the driver stops reading where {result.stopped}" if result.stopped else "it names none of them"
    fix = "name them as listed, or unset the variable"
    entries = cvd.split(",")
    if not cvd.startswith(("GPU-", "MIG-")) and len(host) > len(gpus) and len(entries) <= len(gpus) \
            and all(_plain_int(e.strip(" \t\n\v\f\r")) for e in entries):
        # the classic mistake in a job: nvidia-smi's numbers on the host, where CUDA numbers only the job's GPUs
        mine = [uuids.index(host_uuids[int(e)]) if int(e) < len(host) and host_uuids[int(e)] in uuids else None
                for e in entries]
        if mine and None not in mine and len(set(mine)) == len(mine) and all(m in shows for m in mine):
            if pci_order:
                fix = ("these look like nvidia-smi's numbers on the host; CUDA numbers only this process's GPUs: "
                       f"write CUDA_VISIBLE_DEVICES={','.join(str(shows.index(m)) for m in mine)}, or unset it")
            else:
                fix = ("these look like nvidia-smi's numbers on the host; CUDA numbers only this process's GPUs: "
                       f"write CUDA_VISIBLE_DEVICES={','.join(short_uuid(uuids[m], every) for m in mine)}, or "
                       "unset it")
    return f"this process sees no CUDA device: CUDA_VISIBLE_DEVICES={shown(cvd)} names none of its GPUs ({why}); " \
           f"{can}: {fix}"
