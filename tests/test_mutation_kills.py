"""Edge cases of the pure core (cpulist, model, cvd) that mutation testing found unpinned.

Each test pins documented behaviour at a boundary: exact results, and exact error messages where the
message is what a user reads.  Expected values come from the docstrings, docs/numa.md and
docs/cvd-grammar.md, not from running the code.
"""

from __future__ import annotations

import re
import signal
from contextlib import contextmanager

import pytest

from gpuaffinity.core.cpulist import format_cpumask, parse_cpulist, parse_cpumask, to_mask_words
from gpuaffinity.core.cvd import CvdResult, GpuIdentity, Visible, apply_cvd, strtoul32
from gpuaffinity.core.model import GpuInfo, Inventory, MigInfo, normalize_bus_id


def exact(message: str) -> str:
    """A pytest.raises pattern matching exactly this message."""
    return "^" + re.escape(message) + "$"


@contextmanager
def deadline(seconds: float = 5.0):
    """Fail, rather than hang, when the code under test loops for ever (the calls here take microseconds)."""
    def fire(signum, frame):
        raise TimeoutError("did not return: an endless loop")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------------- cpulist

@pytest.mark.parametrize(("text", "limit", "want"), [
    ("0-3:1", 1 << 16, {0, 1, 2, 3}),        # stride 1 is allowed (the check is "at least 1")
    ("0-6:2", 1 << 16, {0, 2, 4, 6}),
    ("3-3", 1 << 16, {3}),                   # a range of one number is not backwards
    ("000000000001", 1 << 16, {1}),          # up to 12 digits are read
    ("0-3", 4, {0, 1, 2, 3}),                # the last number below the limit
])
def test_parse_cpulist_accepts(text, limit, want):
    """parse_cpulist: strides of 1, one-number ranges, 12-digit numbers and numbers just below the limit."""
    assert parse_cpulist(text, limit) == frozenset(want)


@pytest.mark.parametrize(("text", "limit", "message"), [
    ("0,,1", 1 << 16, "empty entry in cpulist '0,,1'"),
    # the stride is everything after the first colon
    ("0-8:2:3", 1 << 16, "'2:3' is not a CPU number in cpulist '0-8:2:3'"),
    ("0-3:x", 1 << 16, "'x' is not a CPU number in cpulist '0-3:x'"),
    ("0-3:0", 1 << 16, "stride must be at least 1 in cpulist '0-3:0'"),
    # the range's end is everything after the first dash
    ("0-3-5", 1 << 16, "'3-5' is not a CPU number in cpulist '0-3-5'"),
    ("x-3", 1 << 16, "'x' is not a CPU number in cpulist 'x-3'"),
    ("5-3", 1 << 16, "range '5-3' runs backwards in cpulist '5-3'"),
    # both ends of a range, and single numbers, are checked against the limit; the start first
    ("5-6", 4, "5 is past the limit of 3 in cpulist '5-6'"),
    ("0-5", 4, "5 is past the limit of 3 in cpulist '0-5'"),
    ("4", 4, "4 is past the limit of 3 in cpulist '4'"),
    # more than 12 digits is not a number; the bad text is shown cut to 20 characters
    ("0000000000001", 1 << 16, "'0000000000001' is not a CPU number in cpulist '0000000000001'"),
    ("x" * 25, 1 << 16, f"'{'x' * 20}' is not a CPU number in cpulist '{'x' * 25}'"),
])
def test_parse_cpulist_refuses(text, limit, message):
    """parse_cpulist: each malformed list raises ValueError with a message naming the fault and the list."""
    with pytest.raises(ValueError, match=exact(message)):
        parse_cpulist(text, limit)


@pytest.mark.parametrize(("length", "shown"), [
    (80, None),       # up to 80 characters the whole list is shown
    (81, 80),         # past that, its first 80 and "..."
    (120, 80),
])
def test_cpulist_message_cuts_long_lists(length, shown):
    """A message quotes the list whole up to 80 characters, else its first 80 characters and '...'."""
    text = "1," * ((length - 2) // 2) + "x" * (2 + length % 2)
    assert len(text) == length
    quoted = f"'{text}'" if shown is None else f"'{text[:shown]}'..."
    with pytest.raises(ValueError, match=exact(f"'{text.rpartition(',')[2]}' is not a CPU number in cpulist {quoted}")):
        parse_cpulist(text)


def test_to_mask_words():
    """to_mask_words: 64-bit words by default, least significant first; no numbers is one zero word."""
    assert to_mask_words([64]) == [0, 1]
    assert to_mask_words([0, 63]) == [1 | 1 << 63]
    assert to_mask_words([]) == [0]
    assert format_cpumask([]) == "00000000"


@pytest.mark.parametrize(("text", "limit", "want"), [
    ("00000000,00000001", 33, {0}),   # one full group past the first: bits up to 32 are below a limit of 33
    ("ff", 40, set(range(8))),        # one group: no group check beyond the first
    ("FF", 1 << 16, set(range(8))),   # upper-case hex as well as lower
    ("80", 8, {7}),                   # the highest bit just below the limit
])
def test_parse_cpumask_accepts(text, limit, want):
    """parse_cpumask: masks just inside the limit, and hex in either case."""
    assert parse_cpumask(text, limit) == frozenset(want)


@pytest.mark.parametrize(("text", "limit", "message"), [
    ("00000000,00000000", 32, "cpumask '00000000,00000000' has 2 groups: past the limit of 31"),
    ("0000000X", 1 << 16, "'0000000X' is not a group of 32-bit hex digits in cpumask '0000000X'"),
    ("0" * 25, 1 << 16, f"'{'0' * 20}' is not a group of 32-bit hex digits in cpumask '{'0' * 25}'"),
    ("100", 8, "cpumask '100' names a number past the limit of 7"),
])
def test_parse_cpumask_refuses(text, limit, message):
    """parse_cpumask: too many groups for the limit, a bad group, a bit at or past the limit."""
    with pytest.raises(ValueError, match=exact(message)):
        parse_cpumask(text, limit)


# ------------------------------------------------------------------------------------------------ model

def test_normalize_bus_id_keeps_what_it_does_not_strip():
    """Only white space and NUL are stripped: a malformed ID does not become a valid one, nor match a GPU."""
    assert normalize_bus_id("0000:3B:00.0X") == "0000:3b:00.0x"
    inv = Inventory((GpuInfo(0, "GPU-a", "0000:3b:00.0", "A100"),))
    assert inv.by_bus("0000:3B:00.0\0") is inv.gpus[0]
    assert inv.by_bus("0000:3B:00.0X") is None


def test_normalize_bus_id_refuses_an_extra_field():
    """The domain is what precedes the bus: an ID with one field too many has no hex domain and is refused."""
    with pytest.raises(ValueError):
        normalize_bus_id("0000:00:3b:00.0")


# -------------------------------------------------------------------------------------------------- cvd

@pytest.mark.parametrize(("text", "want"), [
    ("X5", None),                      # no digits after the white space and sign: nothing read
    ("  5", 5),                        # any run of leading white space is skipped
    (" \t\n+5", 5),
    ("0" * 25 + "5", 5),               # leading zeros count for nothing, however many
    ("10", 10),                        # trailing zeros are digits
    ("9" * 5000, 0xFFFFFFFF),          # saturates at ULONG_MAX, even past int()'s digit limit
    ("1" + "0" * 20, 0xFFFFFFFF),
])
def test_strtoul32(text, want):
    """strtoul32 reads as C's strtoul(text, NULL, 10) cut to 32 bits."""
    with deadline():
        assert strtoul32(text) == want


U0 = "GPU-0123abcd-4567-89ab-cdef-0123456789ab"
U1 = "GPU-fedcba98-7654-3210-fedc-ba9876543210"
MU = "MIG-11112222-3333-4444-5555-666677778888"


def test_apply_cvd_result_flags_are_false_not_unset():
    """A plain index list uses no prefix: the flags are False, and the result equals the plain record."""
    res = apply_cvd("0", [GpuIdentity(U0)])
    assert res == CvdResult((Visible(0),))
    assert res.prefix_used is False and res.mig_prefix_used is False and res.unmatched is False


def test_apply_cvd_quotes_long_values_cut_to_80():
    """Messages quote CUDA_DEVICE_ORDER and entries as a repr cut to 80 characters, with the full length."""
    res = apply_cvd(None, [GpuIdentity(U0)], device_order="X" * 100)
    assert res == CvdResult((), 101, "CUDA_DEVICE_ORDER='" + "X" * 79 + "... (100 characters) is not FASTEST_FIRST "
                                     "or PCI_BUS_ID")
    res = apply_cvd("0," + "y" * 100, [GpuIdentity(U0), GpuIdentity(U1)])
    assert res == CvdResult((Visible(0),), 0, "entry 1 ('" + "y" * 79 + "... (100 characters)) is not a number")


def test_apply_cvd_mig_mode_gpu_without_instances():
    """A GPU in MIG mode with no instance this process may use shows no device: skipped when unset, ends a list."""
    gpus = [GpuInfo(0, U0, "0000:3b:00.0", "A100", mig_enabled=True), GpuInfo(1, U1, "0000:5e:00.0", "A100")]
    assert apply_cvd(None, gpus) == CvdResult((Visible(1),))
    why = "names a GPU in MIG mode with no MIG instance this process may use"
    assert apply_cvd("0", gpus) == CvdResult((), 100, f"entry 0 ('0') {why}")
    assert apply_cvd("1,0", gpus) == CvdResult((Visible(1),), 0, f"entry 1 ('0') {why}")
    assert apply_cvd(f"{U1},{U0}", gpus) == CvdResult((Visible(1),), 0, f"entry 1 ('{U0}') {why}")


def test_apply_cvd_unmatched_stops():
    """A MIG- entry naming no instance, or a GPU- entry naming only a GPU this process cannot open, ends the
    list as unmatched (whether it names a device rests on this process's GPU list)."""
    gpus = [GpuIdentity(U0, (MigInfo(MU, 1, 0),))]
    assert apply_cvd("MIG-zz", gpus) == CvdResult((), 100, "entry 0 ('MIG-zz') names no MIG instance",
                                                   unmatched=True)
    res = apply_cvd("GPU-fedc", [GpuIdentity(U0)], hidden=[U1])
    assert res == CvdResult((), 100, "entry 0 ('GPU-fedc') names a GPU this process cannot open", unmatched=True)
    assert res.unmatched is True


@pytest.mark.parametrize("cvd", [f"MIG-{U0}//0", f"MIG-{U0}/1/", f"MIG-{U0}/x/0"])
def test_apply_cvd_mig_path_needs_digit_instances(cvd):
    """MIG-GPU-<uuid>/<gi>/<ci>: an empty or non-digit instance makes a malformed path, which names nothing
    (an empty field is not instance 0)."""
    gpus = [GpuIdentity(U0, (MigInfo(MU, 0, 0), MigInfo("MIG-99990000-0000-0000-0000-000000000000", 1, 0)))]
    assert apply_cvd(cvd, gpus) == CvdResult((), 100, f"entry 0 ('{cvd}') names no MIG instance", unmatched=True)
    assert apply_cvd(f"MIG-{U0}/1/0", gpus) == CvdResult((Visible(0, 1),))


def test_apply_cvd_mig_path_of_short_uuid():
    """The path form takes any GPU UUID with at least one character after ``GPU-`` (simulated GPUs may carry
    short ones), and a path is never a UUID prefix, however short."""
    gpus = [GpuIdentity("GPU-a", (MigInfo("MIG-b", 1, 0),))]
    res = apply_cvd("MIG-GPU-a/1/0", gpus)
    assert res == CvdResult((Visible(0, 0),))
    assert res.mig_prefix_used is False


@pytest.mark.parametrize(("cvd", "prefix"), [
    (U0, False),                                          # the whole UUID, 32 hex digits: not a prefix
    ("GPU-" + U0[4:].replace("-", ""), False),            # the same without dashes
    ("GPU-" + U0[4:].replace("-", "")[:31], True),        # one digit short: a prefix
    ("GPU-0", True),
])
def test_apply_cvd_prefix_used(cvd, prefix):
    """prefix_used: a GPU- entry with fewer than 32 hex digits named the device."""
    res = apply_cvd(cvd, [GpuIdentity(U0), GpuIdentity(U1)])
    assert res == CvdResult((Visible(0),), prefix_used=prefix)


@pytest.mark.parametrize(("cvd", "plain"), [
    (U0, True),                      # a whole UUID as nvidia-smi prints it
    ("GPU-0", True),                 # a one-digit prefix
    ("GPU-0123abcd-45", True),
    ("GPU-", False),                 # no digits at all
    (U0 + "0", False),               # longer than a UUID
    ("GPU-0123ABCD", False),         # upper-case hex
    ("GPU-X", False),
    ("GPU-0123abcd4", False),        # a dash missing
])
def test_apply_cvd_documented_plain_uuids(cvd, plain):
    """documented=True reads only lower-case UUIDs or prefixes with nvidia-smi's dashes; else the list ends."""
    gpus = [GpuIdentity(U0)]
    res = apply_cvd(cvd, gpus, documented=True)
    if plain:
        assert res.devices == (Visible(0),) and res.stopped == ""
    else:
        assert res == CvdResult((), 100, f"entry 0 ({cvd!r}) is not in a documented plain form")
