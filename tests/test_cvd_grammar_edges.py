"""Edge cases of the CUDA_VISIBLE_DEVICES grammar (core/cvd.py): strtoul32 as C reads numbers, messages that
quote long values cut, MIG-mode GPUs without instances, MIG paths, UUID prefixes and the documented plain
forms.  Expected values come from the docstrings and docs/cvd-grammar.md, not from running the code.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest

from gpuaffinity.core.cvd import CvdResult, GpuIdentity, Visible, apply_cvd, strtoul32
from gpuaffinity.core.model import GpuInfo, MigInfo


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
